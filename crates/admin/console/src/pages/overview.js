// An instance at a glance: has the latest revision reached its nodes ("reached N of M
// nodes in T ms"), each node (address, revision, up or gone, load), the instance's
// requests/s and error rate over the last minutes, and its agent link. Refreshed
// every few seconds while open.

import * as api from '../api.js';
import { h, replace, table, badge, when, ago } from '../dom.js';
import { record, chart } from '../chart.js';
import { agentBadge } from './clusters.js';

/** @param {any} c the convergence answer */
export function convergenceLine(c) {
  if (c.nodes === 0) return h('p', { class: 'convergence', id: 'convergence' }, `Revision ${c.revision}: no gateway node online.`);
  return h(
    'p',
    { class: 'convergence', id: 'convergence' },
    c.converged ? badge('converged', 'ok') : badge('converging', 'warn'),
    ` Latest revision ${c.revision} reached ${c.reached} of ${c.nodes} node${c.nodes === 1 ? '' : 's'}`,
    c.took_ms !== null && c.took_ms !== undefined ? ` in ${c.took_ms} ms` : '',
    c.committed_at_ms ? h('small', { class: 'muted' }, ` (committed ${ago(c.committed_at_ms)})`) : null,
  );
}

/** @param {import('../app.js').Ctx} ctx */
export async function renderOverview(ctx) {
  const instance = /** @type {{cluster: string, name: string}} */ (ctx.instance);
  const base = api.instancePath(instance);
  const key = `${instance.cluster}/${instance.name}`;
  const body = h('div');
  const stale = h('div', { 'aria-live': 'polite' });
  replace(ctx.view, h('h1', null, 'Instance ', h('span', { class: 'instance-name' }, key)), stale, body);

  const draw = async () => {
    const [info, nodes, convergence] = await Promise.all([
      api.get(base, { scoped: true }),
      api.get(`${base}/nodes`, { scoped: true }),
      api.get(`${base}/convergence`, { scoped: true }),
    ]);
    record(key, convergence.load.requests_per_second, convergence.load.error_rate ?? 0);
    const online = nodes.items.map((/** @type {any} */ n) => [
      h('code', null, n.node_id),
      n.address,
      `r${n.applied_revision}`,
      n.unbound ? badge('serves nothing', 'bad') : badge('up', 'ok'),
      n.config_source,
      n.requests_per_second === undefined ? '—' : n.requests_per_second.toFixed(2),
      n.load ? String(n.load.errors) : '—',
      n.error_rate === undefined ? '—' : `${(n.error_rate * 100).toFixed(1)} %`,
      n.applied_at_ms ? when(n.applied_at_ms) : '—',
    ]);
    const gone = nodes.gone.map((/** @type {any} */ n) => [h('code', null, n.node_id), n.address, '—', badge('down', 'bad'), '—', '—', '—', '—', `gone ${when(n.gone_at_ms)}`]);
    replace(
      body,
      convergenceLine(convergence),
      h(
        'dl',
        { class: 'facts' },
        h('dt', null, 'Status'),
        h('dd', null, info.status === 'online' ? badge('online', 'ok') : badge(info.status, 'bad')),
        h('dt', null, 'Agent'),
        h('dd', null, h('code', null, info.agent_address), ' ', agentBadge(nodes.agent)),
        h('dt', null, 'Revision'),
        h('dd', null, `admin r${info.revision}, store r${info.applied_revision ?? '?'}`),
        h('dt', null, 'Config store'),
        h('dd', null, info.store ? `${info.store.backend} ${info.store.endpoints.join(', ')}` : '—'),
        h('dt', null, 'Namespace'),
        h('dd', null, info.namespace, info.namespace_exists ? null : badge('does not exist: its nodes serve nothing', 'bad')),
      ),
      h('div', { class: 'charts' }, chart(key, 'rps', 'Requests per second'), chart(key, 'errorRate', 'Error rate (5xx)')),
      h('h2', null, 'Nodes'),
      table(['Node', 'Address', 'Serves', 'State', 'Config from', 'Requests/s', 'Errors (1 min)', 'Error rate', 'Swapped in'], [...online, ...gone], 'No gateway node has reported yet.', 'nodes'),
      convergence.behind.length
        ? [h('h2', null, 'Behind'), table(['Node', 'Serves', 'Why'], convergence.behind.map((/** @type {any} */ b) => [b.node_id, `r${b.applied_revision}`, b.unbound ?? 'not there yet']))]
        : null,
    );
  };
  await draw();
  const timer = setInterval(
    () =>
      void draw().then(
        () => replace(stale),
        (e) => replace(stale, h('p', { class: 'notice warn' }, `Not refreshed: ${e instanceof Error ? e.message : e}. Showing the last answer.`)),
      ),
    5000,
  );
  ctx.onLeave(() => clearInterval(timer));
}
