// An instance's history: every revision with its author, time and message; the
// difference between any two side by side; a rollback that shows what it would change
// (a dry run) and then writes exactly that (`expected_revision` = the dry run's
// `from_revision`), as a new revision — history is never deleted.

import * as api from '../api.js';
import { h, replace, table, errorBox, confirmDialog, when, notice, toast, badge } from '../dom.js';
import { changesView, reroutedView } from './changes.js';


/** @param {import('../app.js').Ctx} ctx */
export async function renderHistory(ctx) {
  const base = api.instancePath(/** @type {any} */ (ctx.instance));
  const page = await api.get(`${base}/revisions`, { scoped: true, query: { limit: 100 } });
  const status = h('div', { 'aria-live': 'polite' });
  const output = h('div', { id: 'history-output' });
  const revisions = page.items;
  const options = () => [h('option', { value: '0' }, '0 (empty)'), revisions.map((/** @type {any} */ r) => h('option', { value: String(r.revision) }, `${r.revision} — ${r.op}${r.message ? `: ${r.message}` : ''}`))];
  const from = h('select', { 'aria-label': 'from revision' }, options());
  const to = h('select', { 'aria-label': 'to revision' }, options());
  to.value = String(page.revision);
  from.value = String(revisions[1]?.revision ?? 0);

  const compare = async () => {
    replace(status);
    try {
      const diff = await api.get(`${base}/diff`, { scoped: true, query: { from: from.value, to: to.value } });
      replace(output, h('h2', null, `Revision ${diff.from} → ${diff.to}`), changesView(diff.changes));
    } catch (e) {
      replace(status, errorBox(e));
    }
  };

  /** @param {number} revision */
  const rollback = async (revision) => {
    replace(status);
    try {
      const preview = await api.call('POST', `${base}/revisions/${revision}/rollback`, { scoped: true, query: { dry_run: 'true' } });
      if (!preview.changed) {
        replace(status, notice(`The config already is what it was at revision ${revision}.`, 'info'));
        return;
      }
      replace(output, h('h2', null, `Rolling back to ${revision} would change`), changesView(preview.changes), reroutedView(preview.rerouted ?? []));
      const ok = await confirmDialog(
        `Roll back to revision ${revision}?`,
        [h('p', null, `This writes revision ${preview.revision} equal to revision ${revision}; ${preview.changes.length} object(s) change, as shown below the dialog. Nothing is deleted from the history.`)],
        'Roll back',
      );
      if (!ok) return;
      const done = await api.call('POST', `${base}/revisions/${revision}/rollback`, { scoped: true, query: { expected_revision: preview.from_revision } });
      toast(`Rolled back to ${revision} as revision ${done.revision}`);
      await renderHistory(ctx);
      ctx.view.prepend(notice(`Rolled back to revision ${revision}: now at revision ${done.revision}.`));
    } catch (e) {
      replace(status, errorBox(e));
    }
  };

  const rows = revisions.map((/** @type {any} */ r) => [
    h('strong', null, String(r.revision)),
    r.op,
    r.author ?? '—',
    when(r.at),
    r.message ?? '—',
    (r.objects ?? []).map((/** @type {any} */ o) => `${o.op} ${o.kind}/${o.id}`).join(', ') || '—',
    h(
      'span',
      { class: 'row-actions' },
      h('button', { type: 'button', class: 'link', onclick: () => { from.value = String(Math.max(0, r.revision - 1)); to.value = String(r.revision); void compare(); } }, 'Changes'),
      r.revision !== page.revision ? h('button', { type: 'button', class: 'link', onclick: () => void rollback(r.revision) }, 'Roll back to this') : badge('current', 'ok'),
    ),
  ]);
  replace(
    ctx.view,
    h('h1', null, 'History'),
    h('p', { class: 'muted' }, `Current revision ${page.revision}.`),
    status,
    h('form', { class: 'toolbar', onsubmit: (/** @type {Event} */ e) => { e.preventDefault(); void compare(); } }, h('label', null, 'From ', from), h('label', null, 'to ', to), h('button', { type: 'submit' }, 'Compare')),
    output,
    h('h2', null, 'Revisions'),
    table(['Revision', 'Operation', 'Author', 'Time', 'Message', 'Objects', ''], rows, 'No revision yet.', 'revisions'),
  );
}
