// Services registered into the chosen namespace (service discovery) in every cluster,
// with their live nodes; clusters whose agent could not be asked are named with why.

import * as api from '../api.js';
import { h, replace, table, badge, when, paginate } from '../dom.js';

const PAGE = 20;

/** @param {import('../app.js').Ctx} ctx */
export async function renderRegistry(ctx) {
  const ns = api.namespace();
  const registry = await api.get(`/namespaces/${encodeURIComponent(ns)}/registry`);
  const search = h('input', { type: 'search', placeholder: 'Search services', 'aria-label': 'search services' });
  const results = h('div');
  let page = 0;
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const matching = registry.items.filter((/** @type {any} */ s) => !q || `${s.cluster} ${s.service}`.toLowerCase().includes(q));
    const paged = paginate(matching, page, PAGE, (p) => {
      page = p;
      draw();
    });
    page = paged.page;
    const services = paged.shown;
    replace(
      results,
      services.length
        ? services.map((/** @type {any} */ s) =>
            h(
              'section',
              { class: 'card' },
              h('h2', null, s.service, h('small', { class: 'muted' }, ` in ${s.cluster}`), ' ', badge(`${s.nodes.length} node${s.nodes.length === 1 ? '' : 's'}`, s.nodes.length ? 'ok' : 'warn')),
              table(
                ['Node', 'Address', 'Weight', 'Metadata', 'Registered', 'TTL'],
                s.nodes.map((/** @type {any} */ n) => [h('code', null, n.node_id), `${n.host}:${n.port}`, String(n.weight), Object.entries(n.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—', when(n.registered_at_ms), `${n.ttl_secs} s`]),
                'No live node.',
                `nodes of ${s.service}`,
              ),
            ),
          )
        : h('p', { class: 'empty' }, q ? 'Nothing matches.' : 'No service registered in this namespace.'),
      services.length ? paged.pager : null,
    );
  };
  search.addEventListener('input', () => {
    page = 0;
    draw();
  });
  draw();
  replace(
    ctx.view,
    h('h1', null, 'Registered services'),
    registry.unreachable.length
      ? h('div', { class: 'notice warn', role: 'status' }, 'Not asked: ', registry.unreachable.map((/** @type {any} */ u) => `${u.cluster} (${u.error})`).join('; '))
      : null,
    h('div', { class: 'toolbar' }, search),
    results,
  );
}
