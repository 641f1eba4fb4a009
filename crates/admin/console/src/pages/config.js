// The instance's whole config as one YAML file: export it, edit it here or paste one,
// check it with a dry run (every change and rerouted request shown), then apply
// exactly what was previewed. The apply shows its progress until the server answers.

import * as api from '../api.js';
import { h, replace, errorBox, notice, confirmDialog, toast } from '../dom.js';
import { changesView, reroutedView } from './changes.js';

/** @param {import('../app.js').Ctx} ctx */
export async function renderConfig(ctx) {
  const base = `${api.instancePath(/** @type {any} */ (ctx.instance))}/config`;
  const exported = await api.call('GET', base, { scoped: true, text: true });
  const area = h('textarea', { class: 'json raw', rows: 28, spellcheck: 'false', 'aria-label': 'config file (YAML)' });
  area.value = exported.text;
  const status = h('div', { 'aria-live': 'polite' });
  const output = h('div');
  const message = h('input', { type: 'text', placeholder: 'why (kept in the history)', maxlength: 1024, 'aria-label': 'change message' });
  const progress = h('progress', { hidden: true, 'aria-label': 'applying' });
  const buttons = /** @type {HTMLButtonElement[]} */ ([]);

  /** @param {boolean} busy */
  const setBusy = (busy) => {
    progress.hidden = !busy;
    for (const b of buttons) b.disabled = busy;
  };

  const check = async () => {
    replace(status);
    replace(output);
    setBusy(true);
    try {
      const preview = await api.call('PUT', base, { raw: area.value, scoped: true, query: { dry_run: 'true' } });
      if (!preview.changed) {
        replace(status, notice('The instance already has exactly this config.', 'info'));
        return null;
      }
      replace(status, notice(`Dry run: revision ${preview.revision} would be written; nothing was.`, 'info'));
      replace(output, h('h2', null, 'What would change'), changesView(preview.changes), reroutedView(preview.rerouted ?? []));
      return preview;
    } catch (e) {
      replace(status, errorBox(e));
      return null;
    } finally {
      setBusy(false);
    }
  };

  const apply = async () => {
    const preview = await check();
    if (!preview) return;
    if (!(await confirmDialog('Apply this file?', h('p', null, `${preview.changes.length} object(s) change in one revision, as previewed below the dialog.`), 'Apply'))) return;
    setBusy(true);
    try {
      const done = await api.call('PUT', base, {
        raw: area.value,
        scoped: true,
        query: { expected_revision: preview.from_revision },
        headers: message.value ? { 'x-portico-message': message.value } : {},
      });
      toast(`Applied as revision ${done.revision}`);
      replace(status, notice(`Applied as revision ${done.revision}.`));
    } catch (e) {
      replace(status, errorBox(e));
    } finally {
      setBusy(false);
    }
  };

  const checkButton = h('button', { type: 'button', class: 'secondary', onclick: () => void check() }, 'Dry run');
  const applyButton = h('button', { type: 'button', onclick: () => void apply() }, 'Apply');
  buttons.push(checkButton, applyButton);
  const file = h('input', { type: 'file', accept: '.yaml,.yml,.json', 'aria-label': 'load a file' });
  file.addEventListener('change', async () => {
    const f = file.files?.[0];
    if (f) area.value = await f.text();
  });
  replace(
    ctx.view,
    h('h1', null, 'Config file'),
    h('p', { class: 'hint' }, 'The instance\'s whole config, without secrets: an object left without its secret keeps the current one. Applying makes the instance exactly this file, in one revision.'),
    status,
    h('div', { class: 'toolbar' }, file, h('a', { class: 'button secondary', href: URL.createObjectURL(new Blob([exported.text], { type: 'application/yaml' })), download: `${ctx.instance?.cluster}-${ctx.instance?.name}.yaml` }, 'Download')),
    area,
    message,
    h('div', { class: 'actions' }, checkButton, applyButton, progress),
    output,
  );
}
