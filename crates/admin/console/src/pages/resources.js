// An instance's config objects, one kind at a time: a list with search and pages,
// a form generated from the kind's schema in the API's OpenAPI document (or the
// object as raw JSON), a dry run that previews the change, inline errors from the
// server's validation, and deletion after confirmation. Writes carry the revision the
// form was opened at, so a change made meanwhile by someone else is refused (409), not
// overwritten.

import * as api from '../api.js';
import { h, replace, table, errorBox, confirmDialog, field, toast, notice, pretty, badge, paginate } from '../dom.js';
import { schemaForm, FieldError } from '../form.js';
import { changesView, reroutedView } from './changes.js';

/**
 * @typedef {{kind: string, title: string, schema: string, secrets?: string[], multiline?: string[], summary: (o: any) => (string | Node)[]}} Kind
 */

/** @param {any} o */
const plugins = (o) => Object.keys(o.plugins ?? {}).join(', ') || '—';

/** @type {Kind[]} */
export const KINDS = [
  {
    kind: 'routes',
    title: 'Routes',
    schema: 'Route',
    summary: (o) => [(o.paths ?? []).join(' '), (o.hosts ?? []).join(' ') || 'any host', (o.methods ?? []).join(' ') || 'any method', o.service_id ? `service ${o.service_id}` : o.upstream_id ? `upstream ${o.upstream_id}` : o.upstream ? 'inline upstream' : '—', plugins(o), o.enabled === false ? badge('disabled', 'warn') : badge('enabled', 'ok')],
  },
  { kind: 'services', title: 'Services', schema: 'Service', summary: (o) => [o.name || '—', o.upstream_id ? `upstream ${o.upstream_id}` : o.upstream ? 'inline upstream' : '—', plugins(o)] },
  {
    kind: 'upstreams',
    title: 'Upstreams',
    schema: 'Upstream',
    summary: (o) => [o.name || '—', o.discovery ? `${Object.keys(o.discovery)[0] ?? 'discovery'} discovery` : (o.nodes ?? []).map((/** @type {any} */ n) => `${n.host}:${n.port}`).join(' ') || '—', o.lb ?? 'roundrobin', o.checks ? 'health checks' : '—'],
  },
  { kind: 'certificates', title: 'Certificates', schema: 'Certificate', secrets: ['key'], multiline: ['cert', 'key'], summary: (o) => [(o.snis ?? []).join(' '), 'key write-only'] },
  { kind: 'consumers', title: 'Consumers', schema: 'Consumer', summary: (o) => [o.description || '—', (o.credentials ?? []).map((/** @type {any} */ c) => Object.keys(c)[0] ?? '').join(', ') || 'no credential', o.group_id ?? '—', plugins(o)] },
  { kind: 'consumer_groups', title: 'Consumer groups', schema: 'ConsumerGroup', summary: (o) => [o.description || '—', plugins(o)] },
  { kind: 'global_rules', title: 'Global rules', schema: 'GlobalRule', summary: (o) => [plugins(o)] },
  { kind: 'plugin_templates', title: 'Plugin templates', schema: 'PluginTemplate', summary: (o) => [o.enabled === false ? badge('disabled', 'warn') : 'enabled', o.priority === undefined ? 'default priority' : `priority ${o.priority}`, o.defaults ? 'defaults' : '—'] },
];

const COLUMNS = /** @type {Record<string, string[]>} */ ({
  routes: ['Paths', 'Hosts', 'Methods', 'Goes to', 'Plugins', 'State'],
  services: ['Name', 'Goes to', 'Plugins'],
  upstreams: ['Name', 'Nodes', 'Balancing', 'Checks'],
  certificates: ['SNIs', 'Key'],
  consumers: ['Description', 'Credentials', 'Group', 'Plugins'],
  consumer_groups: ['Description', 'Plugins'],
  global_rules: ['Plugins'],
  plugin_templates: ['Enabled', 'Priority', 'Defaults'],
});

const PAGE = 20;


/**
 * @param {import('../app.js').Ctx} ctx
 * @param {string} kindName
 */
export async function renderResources(ctx, kindName) {
  const kind = KINDS.find((k) => k.kind === kindName);
  if (!kind) {
    replace(ctx.view, h('h1', null, 'Not found'), h('p', null, `No kind ${kindName}.`));
    return;
  }
  if (ctx.params[0] === 'new') return editor(ctx, kind, null);
  if (ctx.params[0] === 'edit' && ctx.params[1]) return editor(ctx, kind, ctx.params[1]);
  return list(ctx, kind);
}

/** @param {import('../app.js').Ctx} ctx */
function instanceHash(ctx) {
  const i = /** @type {{cluster: string, name: string}} */ (ctx.instance);
  return `#/i/${encodeURIComponent(i.cluster)}/${encodeURIComponent(i.name)}`;
}

/** @param {import('../app.js').Ctx} ctx @param {Kind} kind */
async function list(ctx, kind) {
  const base = `${api.instancePath(/** @type {any} */ (ctx.instance))}/${kind.kind}`;
  const listed = await api.get(base, { scoped: true });
  const status = h('div', { 'aria-live': 'polite' });
  const search = h('input', { type: 'search', placeholder: `Search ${kind.title.toLowerCase()}`, 'aria-label': `search ${kind.title.toLowerCase()}` });
  const results = h('div');
  let page = 0;
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const matching = listed.items.filter((/** @type {any} */ o) => !q || JSON.stringify(o).toLowerCase().includes(q));
    const paged = paginate(matching, page, PAGE, (p) => {
      page = p;
      draw();
    });
    page = paged.page;
    const shown = paged.shown;
    const rows = shown.map((/** @type {any} */ o) => [
      h('a', { href: `${instanceHash(ctx)}/res/${kind.kind}/edit/${encodeURIComponent(o.id)}` }, h('code', null, o.id)),
      ...kind.summary(o),
      h(
        'button',
        {
          type: 'button',
          class: 'link danger',
          'aria-label': `delete ${o.id}`,
          onclick: async () => {
            if (!(await confirmDialog(`Delete ${kind.title.toLowerCase().replace(/s$/, '')} ${o.id}?`, h('p', null, 'A new revision without it is written; history keeps it and a rollback brings it back.')))) return;
            try {
              await api.call('DELETE', `${base}/${encodeURIComponent(o.id)}`, { scoped: true, query: { expected_revision: listed.revision } });
              toast(`Deleted ${o.id}`);
              await renderResources(ctx, kind.kind);
            } catch (e) {
              replace(status, errorBox(e));
            }
          },
        },
        'Delete',
      ),
    ]);
    replace(
      results,
      table(['Id', ...(COLUMNS[kind.kind] ?? []), ''], rows, q ? 'Nothing matches.' : `No ${kind.title.toLowerCase()} yet.`, kind.title.toLowerCase()),
      paged.pager,
    );
  };
  search.addEventListener('input', () => {
    page = 0;
    draw();
  });
  draw();
  replace(
    ctx.view,
    h('h1', null, kind.title),
    h('p', { class: 'muted' }, `At revision ${listed.revision}.`),
    status,
    h('div', { class: 'toolbar' }, search, h('a', { class: 'button', href: `${instanceHash(ctx)}/res/${kind.kind}/new` }, `New ${kind.title.toLowerCase().replace(/s$/, '')}`)),
    results,
  );
}

/**
 * The create/edit page of one object.
 * @param {import('../app.js').Ctx} ctx @param {Kind} kind @param {string | null} id
 */
async function editor(ctx, kind, id) {
  const base = `${api.instancePath(/** @type {any} */ (ctx.instance))}/${kind.kind}`;
  const [doc, catalog, current, listing] = await Promise.all([
    api.openapiDocument(),
    api.pluginCatalog(),
    id ? api.get(`${base}/${encodeURIComponent(id)}`, { scoped: true }) : Promise.resolve(null),
    api.get(base, { scoped: true }),
  ]);
  const schema = doc.components?.schemas?.[kind.schema];
  if (!schema) throw new Error(`the API's document has no schema ${kind.schema}`);
  const openedAt = listing.revision;
  const form = schemaForm(schema, doc, current ?? {}, { readonly: id ? ['id'] : [], plugins: catalog, secrets: kind.secrets, multiline: kind.multiline });
  const raw = h('textarea', { class: 'json raw', rows: 24, spellcheck: 'false', 'aria-label': 'the object as JSON', hidden: true });
  const rawErrors = h('div');
  let mode = 'form';
  const status = h('div', { 'aria-live': 'polite' });
  const preview = h('div');
  const message = h('input', { type: 'text', placeholder: 'why (kept in the history)', maxlength: 1024 });

  const read = () => {
    if (mode === 'json') {
      try {
        return JSON.parse(raw.value);
      } catch (e) {
        throw new FieldError('', `the JSON does not parse: ${e instanceof Error ? e.message : e}`);
      }
    }
    return form.read();
  };
  /** @param {unknown} e */
  const showError = (e) => {
    form.clearErrors();
    replace(rawErrors);
    if (e instanceof FieldError) {
      const details = [{ field: e.field, message: e.message }];
      if (mode === 'form') form.showErrors(details);
      replace(status, errorBox({ message: 'Fix the marked field before saving.', details }));
      form.focusFirstError();
      return;
    }
    const details = e instanceof api.ApiError ? e.details : [];
    if (mode === 'form' && details.length) {
      form.showErrors(details);
      form.focusFirstError();
    }
    if (mode === 'json') replace(rawErrors, errorBox(e));
    replace(status, errorBox(e));
  };
  const toggle = h('button', {
    type: 'button',
    class: 'secondary',
    onclick: () => {
      try {
        if (mode === 'form') {
          raw.value = pretty(form.read());
          mode = 'json';
        } else {
          const value = JSON.parse(raw.value);
          const rebuilt = schemaForm(schema, doc, value, { readonly: id ? ['id'] : [], plugins: catalog, secrets: kind.secrets, multiline: kind.multiline });
          form.el.replaceWith(rebuilt.el);
          Object.assign(form, rebuilt);
          mode = 'form';
        }
        raw.hidden = mode !== 'json';
        form.el.hidden = mode !== 'form';
        toggle.textContent = mode === 'form' ? 'Edit as JSON' : 'Edit as form';
        replace(status);
      } catch (e) {
        showError(e instanceof SyntaxError ? new FieldError('', `the JSON does not parse: ${e.message}`) : e);
      }
    },
  }, 'Edit as JSON');

  /** @param {boolean} dryRun */
  const send = async (dryRun) => {
    replace(status);
    replace(preview);
    form.clearErrors();
    let body;
    try {
      body = read();
    } catch (e) {
      showError(e);
      return;
    }
    /** @type {Record<string, string>} */
    const headers = {};
    if (message.value) headers['x-portico-message'] = message.value;
    const options = {
      headers,
      body,
      scoped: true,
      query: { dry_run: dryRun ? 'true' : undefined, expected_revision: openedAt },
    };
    try {
      const answer = id ? await api.call('PUT', `${base}/${encodeURIComponent(id)}`, options) : await api.call('POST', base, options);
      if (dryRun) {
        replace(status, notice(`Dry run: this would make revision ${answer.revision ?? answer._meta?.revision ?? '?'}; nothing was written.`, 'info'));
        const change = { kind: kind.kind, id: body.id ?? id, op: answer.op, fields: answer.fields, before: answer.before, after: answer.after };
        replace(preview, h('h2', null, 'What would change'), changesView([change]), reroutedView(answer.rerouted ?? []));
        return;
      }
      const sync = answer?._meta?.sync;
      toast(`Saved ${answer.id} as revision ${answer._meta?.revision ?? '?'}${sync === 'pending' ? ' (agent unreachable: delivered later)' : ''}`);
      ctx.go(`${instanceHash(ctx)}/res/${kind.kind}/edit/${encodeURIComponent(answer.id)}`);
    } catch (e) {
      showError(e);
    }
  };

  const title = id ? `${kind.title.replace(/s$/, '')} ${id}` : `New ${kind.title.toLowerCase().replace(/s$/, '')}`;
  replace(
    ctx.view,
    h('p', { class: 'crumbs' }, h('a', { href: `${instanceHash(ctx)}/res/${kind.kind}` }, kind.title), ' / ', id ?? 'new'),
    h('h1', null, title),
    h('p', { class: 'muted' }, `Opened at revision ${openedAt}; saving is refused if the instance changes meanwhile.`),
    status,
    h(
      'form',
      {
        class: 'editor',
        novalidate: true,
        'aria-label': title,
        onsubmit: (/** @type {Event} */ e) => {
          e.preventDefault();
          void send(false);
        },
      },
      h('div', { class: 'toolbar' }, toggle),
      form.el,
      raw,
      rawErrors,
      field('Change message', message),
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit' }, id ? 'Save' : 'Create'),
        h('button', { type: 'button', class: 'secondary', onclick: () => void send(true) }, 'Dry run'),
        h('a', { href: `${instanceHash(ctx)}/res/${kind.kind}`, class: 'button secondary' }, 'Cancel'),
        id && kind.kind === 'routes' ? h('a', { href: `${instanceHash(ctx)}/plugins/${encodeURIComponent(id)}`, class: 'button secondary' }, 'Effective plugins') : null,
      ),
    ),
    preview,
  );
}
