// Plugins: the catalog (every plugin, its default priority, phases and config schema),
// the order actually used for a route (its effective plugins, optionally for a
// consumer, with what was skipped and why), and the namespace's plugin template
// overrides (N5) with a form generated from each plugin's schema.

import * as api from '../api.js';
import { h, replace, table, errorBox, field, badge, toast, confirmDialog, pretty } from '../dom.js';
import { schemaForm } from '../form.js';

/** @param {any} source */
const from = (source) => `${source.kind.replace(/_/g, ' ')} ${source.id ?? ''}`;

/** @param {import('../app.js').Ctx} ctx */
export async function renderPlugins(ctx) {
  const base = api.instancePath(/** @type {any} */ (ctx.instance));
  const ns = api.namespace();
  const [catalog, routes, consumers, overrides] = await Promise.all([
    api.pluginCatalog(),
    api.get(`${base}/routes`, { scoped: true }),
    api.get(`${base}/consumers`, { scoped: true }),
    api.get(`/namespaces/${encodeURIComponent(ns)}/plugin_templates`),
  ]);
  const routeSelect = h('select', { 'aria-label': 'route' }, routes.items.map((/** @type {any} */ r) => h('option', { value: r.id }, r.id)));
  const consumerSelect = h('select', { 'aria-label': 'consumer' }, h('option', { value: '' }, '— no consumer —'), consumers.items.map((/** @type {any} */ c) => h('option', { value: c.id }, c.id)));
  if (ctx.params[0]) routeSelect.value = ctx.params[0];
  const effective = h('div', { id: 'effective', 'aria-live': 'polite' });

  const showEffective = async () => {
    if (!routeSelect.value) {
      replace(effective, h('p', { class: 'empty' }, 'No route yet.'));
      return;
    }
    try {
      const e = await api.get(`${base}/routes/${encodeURIComponent(routeSelect.value)}/plugins/effective`, { scoped: true, query: { consumer: consumerSelect.value || undefined } });
      replace(
        effective,
        e.servable ? null : h('div', { class: 'notice bad' }, 'The gateway does not serve this route: its merged plugin configuration is invalid.'),
        table(['#', 'Plugin', 'Priority', 'From', 'Config'], e.plugins.map((/** @type {any} */ p, /** @type {number} */ i) => [String(i + 1), h('strong', null, p.name), String(p.priority), from(p.source), h('pre', { class: 'value' }, pretty(p.config))]), 'No plugin runs for this route.', 'effective plugins'),
        e.skipped.length ? [h('h3', null, 'Skipped'), table(['Plugin', 'From', 'Why'], e.skipped.map((/** @type {any} */ s) => [s.name, from(s.source), s.reason]))] : null,
        e.errors.length ? errorBox({ message: 'Invalid merged configuration', details: e.errors }) : null,
      );
    } catch (err) {
      replace(effective, errorBox(err));
    }
  };
  routeSelect.addEventListener('change', () => void showEffective());
  consumerSelect.addEventListener('change', () => void showEffective());

  const overrideSlot = h('div');
  /** @param {string} plugin @param {any} [current] */
  const editOverride = (plugin, current) => {
    const entry = catalog.find((p) => p.name === plugin);
    const enabled = h('select', null, h('option', { value: '' }, 'as the instance says'), h('option', { value: 'true' }, 'enabled'), h('option', { value: 'false' }, 'disabled'));
    enabled.value = current?.enabled === undefined ? '' : String(current.enabled);
    const priority = h('input', { type: 'number', step: '1', value: current?.priority ?? '', placeholder: String(entry?.priority ?? '') });
    const defaults = schemaForm(entry?.schema ?? {}, entry?.schema ?? {}, current?.defaults ?? {});
    const errors = h('div');
    return h(
      'form',
      {
        class: 'card',
        'aria-label': `override of ${plugin}`,
        onsubmit: async (/** @type {Event} */ ev) => {
          ev.preventDefault();
          replace(errors);
          try {
            /** @type {Record<string, any>} */
            const body = { id: plugin };
            if (enabled.value) body.enabled = enabled.value === 'true';
            if (priority.value !== '') body.priority = Number(priority.value);
            const d = defaults.read();
            if (Object.keys(d).length) body.defaults = d;
            await api.call('PUT', `/namespaces/${encodeURIComponent(ns)}/plugin_templates/${encodeURIComponent(plugin)}`, { body });
            toast(`Saved the override of ${plugin}`);
            await renderPlugins(ctx);
          } catch (err) {
            const details = err instanceof api.ApiError ? err.details : [];
            defaults.showErrors(details.map((d) => ({ ...d, field: d.field.replace(/^defaults\.?/, '') })));
            replace(errors, errorBox(err));
          }
        },
      },
      h('h3', null, `Namespace override of ${plugin}`),
      errors,
      h('div', { class: 'row' }, field('Enabled', enabled), field('Priority', priority, `Catalog default ${entry?.priority ?? '?'}.`)),
      h('h4', null, 'Default config'),
      defaults.el,
      h('button', { type: 'submit' }, 'Save override'),
    );
  };
  const overrideRows = overrides.items.map((/** @type {any} */ o) => [
    h('strong', null, o.id),
    o.enabled === undefined ? '—' : o.enabled ? badge('enabled', 'ok') : badge('disabled', 'warn'),
    o.priority === undefined ? '—' : String(o.priority),
    o.defaults ? h('pre', { class: 'value' }, pretty(o.defaults)) : '—',
    h(
      'span',
      { class: 'row-actions' },
      h('button', { type: 'button', class: 'link', onclick: () => replace(overrideSlot, editOverride(o.id, o)) }, 'Edit'),
      h('button', {
        type: 'button',
        class: 'link danger',
        onclick: async () => {
          if (!(await confirmDialog(`Remove the override of ${o.id}?`, h('p', null, 'The instances\' own templates apply again.'), 'Remove'))) return;
          try {
            await api.call('DELETE', `/namespaces/${encodeURIComponent(ns)}/plugin_templates/${encodeURIComponent(o.id)}`);
            await renderPlugins(ctx);
          } catch (err) {
            replace(overrideSlot, errorBox(err));
          }
        },
      }, 'Remove'),
    ),
  ]);
  const addOverride = h('select', { 'aria-label': 'plugin to override' }, h('option', { value: '' }, 'Override a plugin…'), catalog.map((p) => h('option', { value: p.name }, p.name)));
  addOverride.addEventListener('change', () => addOverride.value && replace(overrideSlot, editOverride(addOverride.value)));

  replace(
    ctx.view,
    h('h1', null, 'Plugins'),
    h('h2', null, 'Effective plugins of a route'),
    h('p', { class: 'hint' }, 'The order the gateway runs them in: global rules < service < route < consumer group < consumer, under the plugin templates.'),
    h('div', { class: 'toolbar' }, h('label', null, 'Route ', routeSelect), h('label', null, 'as consumer ', consumerSelect)),
    effective,
    h('h2', null, `Template overrides of namespace ${ns}`),
    table(['Plugin', 'Enabled', 'Priority', 'Defaults', ''], overrideRows, 'No override: every instance\'s own template applies.', 'namespace plugin overrides'),
    addOverride,
    overrideSlot,
    h('h2', null, 'Catalog'),
    table(['Plugin', 'Priority', 'Phases', 'What it does'], catalog.map((p) => [h('strong', null, p.name), String(p.priority), (p.phases ?? []).join(', '), p.summary ?? '']), '', 'plugin catalog'),
  );
  await showEffective();
}
