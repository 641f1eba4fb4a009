// Health of an instance: upstream nodes as the gateway nodes' checks see them,
// objects nodes skip and why, how each recent change reached the nodes ("reached N of
// M in T ms", p50/p99), and the cross-cluster view (each cluster's Kubernetes link
// and the endpoints it contributes).

import * as api from '../api.js';
import { h, replace, table, badge, when } from '../dom.js';
import { kubernetesBadge, contributionsList } from './clusters.js';
import { convergenceLine } from './overview.js';

/** @param {import('../app.js').Ctx} ctx */
export async function renderHealth(ctx) {
  const base = api.instancePath(/** @type {any} */ (ctx.instance));
  const [nodes, convergence, history, clusters] = await Promise.all([
    api.get(`${base}/nodes`, { scoped: true }),
    api.get(`${base}/convergence`, { scoped: true }),
    api.get(`${base}/convergence/history`, { scoped: true, query: { last: 20 } }),
    api.get('/clusters'),
  ]);
  /** @type {Map<string, {upstream: string, address: string, up: string[], down: string[]}>} */
  const upstreamNodes = new Map();
  for (const node of nodes.items) {
    for (const u of node.upstreams ?? []) {
      for (const n of u.nodes) {
        const key = `${u.upstream_id} ${n.address}`;
        const entry = upstreamNodes.get(key) ?? { upstream: u.upstream_id, address: n.address, up: /** @type {string[]} */ ([]), down: /** @type {string[]} */ ([]) };
        if (n.healthy) entry.up.push(node.node_id);
        else entry.down.push(`${node.node_id}${n.reason ? `: ${n.reason}` : ''}`);
        upstreamNodes.set(key, entry);
      }
    }
  }
  const s = history.summary;
  replace(
    ctx.view,
    h('h1', null, 'Health'),
    convergenceLine(convergence),
    h('h2', null, 'Upstream nodes'),
    table(
      ['Upstream', 'Node', 'State', 'Healthy on', 'Down on'],
      [...upstreamNodes.values()].map((e) => [e.upstream, h('code', null, e.address), e.down.length ? badge('down', 'bad') : badge('healthy', 'ok'), e.up.join(', ') || '—', e.down.join('; ') || '—']),
      'No upstream with health checks, and no node marked down.',
      'upstream nodes',
    ),
    h('h2', null, 'Skipped objects'),
    table(
      ['Gateway node', 'Object', 'Why'],
      convergence.skipped.flatMap((/** @type {any} */ n) => n.objects.map((/** @type {any} */ o) => [n.node_id, h('code', null, o.key), o.reason])),
      'Every node serves every object.',
      'skipped objects',
    ),
    h('h2', null, 'How changes reached the nodes'),
    s.count ? h('p', null, `Over the last ${s.count} converged revisions: p50 ${s.p50_ms} ms, p99 ${s.p99_ms} ms, max ${s.max_ms} ms.`) : null,
    table(
      ['Revision', 'Committed', 'Reached', 'Took', 'Behind'],
      history.items.map((/** @type {any} */ r) => [
        String(r.revision),
        when(r.committed_at_ms),
        h('span', null, r.converged ? badge('all', 'ok') : badge('not all', 'warn'), ` ${r.reached} of ${r.expected} nodes`),
        r.took_ms === null || r.took_ms === undefined ? '—' : `${r.took_ms} ms`,
        (r.behind ?? []).map((/** @type {any} */ b) => b.node_id ?? b).join(', ') || '—',
      ]),
      'No revision yet.',
      'convergence history',
    ),
    h('h2', null, 'Cross-cluster'),
    table(
      ['Cluster', 'Role', 'Link', 'Services', 'Endpoints contributed', 'Per Service', 'Reported'],
      clusters.items
        .filter((/** @type {any} */ c) => c.kubernetes)
        .map((/** @type {any} */ c) => [
          c.name,
          `${c.kubernetes.role}${c.kubernetes.provider ? ` (${c.kubernetes.provider})` : ''}`,
          kubernetesBadge(c.kubernetes_status),
          c.kubernetes_status ? String(c.kubernetes_status.services) : '—',
          c.kubernetes_status ? String(c.kubernetes_status.endpoints_contributed) : '—',
          contributionsList(c.kubernetes_status),
          c.kubernetes_status ? when(c.kubernetes_status.reported_at_ms) : '—',
        ]),
      'No cluster has a Kubernetes face: cross-cluster traffic is not set up.',
      'cross-cluster',
    ),
  );
}
