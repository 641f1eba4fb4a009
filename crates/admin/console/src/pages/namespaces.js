// Namespaces: every namespace the user has a role in, with its instances and online
// gateway nodes; create (the generated id is shown after saving and never changes),
// rename, delete (the server refuses while it is in use and says why).

import * as api from '../api.js';
import { h, replace, table, errorBox, confirmDialog, field, toast, notice, when } from '../dom.js';

/** @param {import('../app.js').Ctx} ctx */
export async function renderNamespaces(ctx) {
  const listed = await api.get('/namespaces');
  const platform = ctx.me.user.platform_admin;
  const status = h('div', { 'aria-live': 'polite' });

  /** @param {any} [existing] */
  const editor = (existing) => {
    const name = h('input', { type: 'text', value: existing?.name ?? '', required: true });
    const description = h('textarea', { rows: 2 });
    description.value = existing?.description ?? '';
    const errors = h('div');
    const save = h('button', { type: 'submit' }, existing ? 'Save' : 'Create namespace');
    return h(
      'form',
      {
        class: 'card',
        'aria-label': existing ? `edit namespace ${existing.id}` : 'new namespace',
        onsubmit: async (/** @type {Event} */ e) => {
          e.preventDefault();
          replace(errors);
          save.disabled = true;
          try {
            const body = { name: name.value, description: description.value };
            const saved = existing
              ? await api.call('PUT', `/namespaces/${encodeURIComponent(existing.id)}`, { body })
              : await api.call('POST', '/namespaces', { body });
            await ctx.refresh();
            await renderNamespaces(ctx);
            ctx.view.prepend(notice(existing ? `Saved ${saved.id}.` : `Created namespace ${saved.name} with id ${saved.id}.`));
          } catch (err) {
            replace(errors, errorBox(err));
          } finally {
            save.disabled = false;
          }
        },
      },
      h('h2', null, existing ? `Edit ${existing.id}` : 'New namespace'),
      existing ? h('p', null, 'Id ', h('code', null, existing.id), ' (never changes)') : h('p', { class: 'hint' }, 'The id is generated when you create it and never changes.'),
      errors,
      field('Name', name),
      field('Description', description),
      save,
    );
  };

  const formSlot = h('div');
  const rows = listed.items.map((/** @type {any} */ n) => [
    h('code', null, n.id),
    n.name,
    n.description || '—',
    String(n.instances),
    String(n.online_nodes),
    when(n.created_at),
    h(
      'span',
      { class: 'row-actions' },
      h('button', { type: 'button', class: 'link', onclick: () => replace(formSlot, editor(n)) }, 'Edit'),
      platform && n.id !== 'default'
        ? h(
            'button',
            {
              type: 'button',
              class: 'link danger',
              onclick: async () => {
                if (!(await confirmDialog(`Delete namespace ${n.name}?`, h('p', null, 'Its plugin template overrides go with it. A namespace that holds instances cannot be deleted.')))) return;
                try {
                  await api.call('DELETE', `/namespaces/${encodeURIComponent(n.id)}`);
                  toast(`Deleted ${n.id}`);
                  await ctx.refresh();
                  await renderNamespaces(ctx);
                } catch (err) {
                  replace(status, errorBox(err));
                }
              },
            },
            'Delete',
          )
        : null,
    ),
  ]);
  replace(
    ctx.view,
    h('h1', null, 'Namespaces'),
    status,
    table(['Id', 'Name', 'Description', 'Instances', 'Online nodes', 'Created', ''], rows, 'No namespace you have a role in.', 'namespaces'),
    platform ? h('button', { type: 'button', onclick: () => replace(formSlot, editor()) }, 'New namespace') : null,
    formSlot,
  );
}
