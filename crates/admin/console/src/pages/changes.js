// How a change is shown everywhere (history, dry runs, rollbacks, applies): each
// object's before and after side by side, per field for an update (secrets only
// named), and the requests the change would send to another route.

import { h, table, pretty, badge } from '../dom.js';

/** @param {unknown} v */
function show(v) {
  if (v === undefined || v === null) return h('span', { class: 'muted' }, '—');
  return h('pre', { class: 'value' }, typeof v === 'string' ? v : pretty(v));
}

/**
 * Object changes side by side: what was (left) and what is (right), per field for an
 * update; secrets are only named.
 * @param {any[]} changes
 */
export function changesView(changes) {
  if (!changes.length) return h('p', { class: 'empty' }, 'No difference.');
  return h(
    'div',
    { class: 'diff' },
    changes.map((c) => {
      const tone = c.op === 'create' ? 'ok' : c.op === 'delete' ? 'bad' : 'warn';
      const rows =
        c.op === 'update'
          ? (c.fields ?? []).map((/** @type {any} */ f) => [h('code', null, f.path), f.secret ? badge('secret changed', 'warn') : show(f.before), f.secret ? badge('secret changed', 'warn') : show(f.after)])
          : [['(object)', show(c.before), show(c.after)]];
      return h(
        'section',
        { class: 'object-diff' },
        h('h3', null, badge(c.op, tone), ' ', c.kind, ' ', h('code', null, c.id)),
        h(
          'table',
          { class: 'side-by-side', 'aria-label': `${c.kind} ${c.id} before and after` },
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Field'), h('th', { scope: 'col' }, 'Before'), h('th', { scope: 'col' }, 'After'))),
          h('tbody', null, rows.map((/** @type {any[]} */ r) => h('tr', null, r.map((cell) => h('td', null, cell))))),
        ),
      );
    }),
  );
}

/**
 * The requests a change would send to another route (a dry run's `rerouted`).
 * @param {any[]} rerouted
 */
export function reroutedView(rerouted) {
  if (!rerouted.length) return null;
  return [
    h('h3', null, 'Requests that would change route'),
    table(['Method', 'Host', 'Path', 'Now', 'After'], rerouted.map((r) => [r.method, r.host ?? 'any', h('code', null, r.path + (r.query ? `?${r.query}` : '')), r.before ?? 'none (404/405)', r.after ?? 'none (404/405)']), '', 'rerouted requests'),
  ];
}
