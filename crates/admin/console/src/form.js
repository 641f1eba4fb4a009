// Forms generated from JSON Schema: the resource kinds' schemas in the API's OpenAPI
// document and each plugin's config schema from the plugin catalog, so a form never
// drifts from what the server accepts. A control per scalar field, a fieldset per
// nested object, one line per item for lists of scalars, a plugin editor for
// `plugins`, and a JSON box for the shapes a form cannot say better (lists of
// objects, maps, alternatives). Server errors name fields by path (`paths[0]`,
// `plugins.limit-count.count`); `showErrors` puts each under its control.

import { h, replace, pretty } from './dom.js';

/**
 * @typedef {Record<string, any>} Schema
 * @typedef {{ read: () => any, el: HTMLElement, path: string }} Control
 * @typedef {{ el: HTMLElement, read: () => any, showErrors: (details: {field: string, message: string}[]) => string[], clearErrors: () => void, focusFirstError: () => void }} Form
 */

/** A client-side refusal of a field, like the server's. */
export class FieldError extends Error {
  /** @param {string} field @param {string} message */
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

/**
 * Follows `$ref`s (`#/components/schemas/X` in the OpenAPI document, `#/$defs/X` in a
 * plugin's schema).
 * @param {Schema} schema
 * @param {Schema} root
 * @returns {Schema}
 */
export function resolve(schema, root) {
  let s = schema;
  for (let i = 0; i < 32 && s && typeof s.$ref === 'string'; i++) {
    const parts = s.$ref.replace(/^#\//, '').split('/');
    /** @type {any} */
    let target = root;
    for (const p of parts) target = target?.[p.replace(/~1/g, '/').replace(/~0/g, '~')];
    s = target ? { ...target, description: s.description ?? target.description } : {};
  }
  // `allOf: [X]` with one member is how generators wrap a described reference.
  if (s && Array.isArray(s.allOf) && s.allOf.length === 1) {
    return { ...resolve(s.allOf[0], root), description: s.description };
  }
  return s ?? {};
}

/** The schema's types without `null`. @param {Schema} s */
function types(s) {
  const t = s.type;
  if (Array.isArray(t)) return t.filter((x) => x !== 'null');
  return t ? [t] : [];
}

/**
 * The schema with a nullable alternative (`oneOf: [{type: null}, X]`) reduced to X.
 * @param {Schema} s @param {Schema} root
 */
function unwrapNullable(s, root) {
  const alts = s.oneOf ?? s.anyOf;
  if (Array.isArray(alts)) {
    const rest = alts.filter((a) => !(a.type === 'null' || (Array.isArray(a.type) && a.type.length === 1 && a.type[0] === 'null')));
    if (rest.length === 1) return { ...resolve(rest[0], root), description: s.description ?? rest[0].description };
  }
  return s;
}

/** The allowed strings of an enumeration, if the schema is one. @param {Schema} s @param {Schema} root */
function enumeration(s, root) {
  if (Array.isArray(s.enum)) return s.enum.filter((/** @type {any} */ v) => v !== null).map(String);
  const alts = s.oneOf ?? s.anyOf;
  if (Array.isArray(alts)) {
    const values = [];
    for (const alt of alts) {
      const a = resolve(alt, root);
      if (a.const !== undefined) values.push(String(a.const));
      else if (Array.isArray(a.enum) && a.enum.length === 1) values.push(String(a.enum[0]));
      else if (a.type === 'null') continue;
      else return null;
    }
    return values.length ? values : null;
  }
  return null;
}

/** A field's label from its name. @param {string} name */
function label(name) {
  return name.replace(/_/g, ' ');
}

/** @param {string} parent @param {string} name */
function join(parent, name) {
  return parent ? `${parent}.${name}` : name;
}

/**
 * Builds a form for `schema` holding `value`.
 * @param {Schema} schema the object's schema
 * @param {Schema} root what `$ref`s point into
 * @param {any} value the current object (empty for a new one)
 * @param {{ readonly?: string[], plugins?: any[], omit?: string[], secrets?: string[], multiline?: string[] }} [options] `readonly`: top-level fields shown but not editable (an id after creation); `plugins`: the catalog, for `plugins` fields; `secrets`: field paths that are write-only (never prefilled; the API never answers them); `multiline`: field paths edited in a text area (PEM)
 * @returns {Form}
 */
export function schemaForm(schema, root, value, options = {}) {
  /** @type {Map<string, HTMLElement>} */
  const slots = new Map();
  const top = objectControl(resolve(schema, root), root, value ?? {}, '', slots, options, true);
  const summary = h('div', { class: 'form-errors', role: 'alert', hidden: true });
  const el = h('div', { class: 'schema-form' }, summary, top.el);
  return {
    el,
    read: () => top.read(),
    clearErrors() {
      summary.hidden = true;
      summary.replaceChildren();
      for (const slot of slots.values()) {
        slot.textContent = '';
        slot.hidden = true;
        slot.parentElement?.querySelector('[aria-invalid]')?.removeAttribute('aria-invalid');
      }
    },
    showErrors(details) {
      this.clearErrors();
      const unplaced = [];
      for (const d of details) {
        const slot = bestSlot(slots, d.field ?? '');
        if (!slot) {
          unplaced.push(d.field ? `${d.field}: ${d.message}` : d.message);
          continue;
        }
        slot.hidden = false;
        slot.append(h('span', null, d.field ? h('code', null, d.field) : null, ' ', d.message));
        const input = slot.parentElement?.querySelector('input, select, textarea');
        input?.setAttribute('aria-invalid', 'true');
        // opens a collapsed section holding the error
        for (let p = slot.parentElement; p; p = p.parentElement) {
          if (p instanceof HTMLDetailsElement) p.open = true;
        }
      }
      if (unplaced.length) {
        summary.hidden = false;
        summary.append(h('ul', null, unplaced.map((u) => h('li', null, u))));
      }
      return unplaced;
    },
    focusFirstError() {
      /** @type {HTMLElement | null} */
      const bad = el.querySelector('[aria-invalid="true"]');
      bad?.focus();
    },
  };
}

/**
 * The slot of the field the server's path names: the longest field path that is the
 * error's path or a prefix of it at a `.` or `[`.
 * @param {Map<string, HTMLElement>} slots @param {string} field
 */
function bestSlot(slots, field) {
  let best = null;
  let bestLength = -1;
  for (const [path, slot] of slots) {
    const fits = path === field || (field.startsWith(path) && (field[path.length] === '.' || field[path.length] === '['));
    if (fits && path.length > bestLength) {
      best = slot;
      bestLength = path.length;
    }
  }
  return best;
}

/**
 * @param {Schema} s @param {Schema} root @param {any} value @param {string} path
 * @param {Map<string, HTMLElement>} slots @param {any} options @param {boolean} isTop
 * @returns {Control}
 */
function objectControl(s, root, value, path, slots, options, isTop) {
  const required = new Set(s.required ?? []);
  /** @type {[string, Control][]} */
  const children = [];
  const box = h('div', { class: 'fields' });
  for (const [name, raw] of Object.entries(s.properties ?? {})) {
    if (isTop && options.omit?.includes(name)) continue;
    const childPath = join(path, name);
    const readonly = isTop && options.readonly?.includes(name);
    const control = propertyControl(name, raw, root, value?.[name], childPath, required.has(name), slots, options, readonly);
    children.push([name, control]);
    box.append(control.el);
  }
  return {
    el: box,
    path,
    read() {
      /** @type {Record<string, any>} */
      const out = {};
      for (const [name, control] of children) {
        const v = control.read();
        if (v !== undefined) out[name] = v;
      }
      return out;
    },
  };
}

/**
 * One property: a labelled control with its error slot.
 * @param {string} name @param {Schema} raw @param {Schema} root @param {any} value @param {string} path
 * @param {boolean} required @param {Map<string, HTMLElement>} slots @param {any} options @param {boolean} readonly
 * @returns {Control}
 */
function propertyControl(name, raw, root, value, path, required, slots, options, readonly) {
  const s = unwrapNullable(resolve(raw, root), root);
  const id = `f-${path.replace(/[^a-zA-Z0-9_-]/g, '-')}-${Math.random().toString(36).slice(2, 7)}`;
  const slot = h('div', { class: 'field-error', id: `${id}-error`, hidden: true });
  slots.set(path, slot);
  const description = s.description ?? raw.description;
  const hint = description ? h('small', { class: 'hint', id: `${id}-hint` }, description) : null;
  const labelEl = h('label', { for: id }, label(name), required ? h('span', { class: 'req', 'aria-hidden': 'true' }, ' *') : null);
  const described = [hint ? `${id}-hint` : '', `${id}-error`].filter(Boolean).join(' ');
  const t = types(s);
  const values = enumeration(s, root);

  /** @param {HTMLElement} control @param {() => any} read @param {string} [kind] */
  const wrap = (control, read, kind = '') => {
    control.id = id;
    control.setAttribute('aria-describedby', described);
    control.setAttribute('name', path);
    if (required) control.setAttribute('aria-required', 'true');
    if (readonly) control.setAttribute('readonly', '');
    if (readonly && control instanceof HTMLSelectElement) control.disabled = true;
    return { el: h('div', { class: `field ${kind}`, 'data-path': path }, labelEl, control, hint, slot), read, path };
  };

  if (name === 'plugins' && options.plugins && (t.includes('object') || !t.length)) {
    return pluginsControl(path, value ?? {}, options.plugins, slots, labelEl, slot, hint);
  }
  if (values) {
    const select = h(
      'select',
      null,
      required ? null : h('option', { value: '' }, '—'),
      values.map((v) => h('option', { value: v }, v)),
    );
    select.value = value === undefined || value === null ? (required ? values[0] : '') : String(value);
    return wrap(select, () => (select.value === '' ? undefined : select.value));
  }
  if (t.length === 1 && t[0] === 'boolean') {
    const box = h('input', { type: 'checkbox' });
    box.checked = value ?? s.default ?? false;
    const initial = box.checked;
    return wrap(box, () => (value === undefined && box.checked === initial && !required ? undefined : box.checked), 'check');
  }
  if (t.length === 1 && (t[0] === 'integer' || t[0] === 'number')) {
    const input = h('input', { type: 'number', step: t[0] === 'integer' ? '1' : 'any', inputmode: 'numeric' });
    if (s.minimum !== undefined) input.min = String(s.minimum);
    if (s.maximum !== undefined) input.max = String(s.maximum);
    input.value = value === undefined || value === null ? '' : String(value);
    if (s.default !== undefined && s.default !== null) input.placeholder = String(s.default);
    return wrap(input, () => {
      if (input.value.trim() === '') return undefined;
      const n = Number(input.value);
      if (!Number.isFinite(n)) throw new FieldError(path, 'must be a number');
      return n;
    });
  }
  if (t.length === 1 && t[0] === 'string') {
    const secret = options.secrets?.includes(path) ?? false;
    const multiline = options.multiline?.includes(path) ?? false;
    /** @type {HTMLInputElement | HTMLTextAreaElement} */
    const input = multiline ? h('textarea', { rows: 4, spellcheck: 'false' }) : h('input', { type: secret ? 'password' : 'text', autocomplete: secret ? 'new-password' : 'off', spellcheck: 'false' });
    if (!secret) input.value = value ?? '';
    if (secret) input.placeholder = value === undefined ? 'write-only' : 'write-only: leave empty to keep';
    else if (s.default !== undefined && s.default !== null) input.placeholder = String(s.default);
    return wrap(input, () => (input.value === '' ? undefined : input.value));
  }
  if (t.length === 1 && t[0] === 'array') {
    const items = unwrapNullable(resolve(s.items ?? {}, root), root);
    const it = types(items);
    if (it.length === 1 && ['string', 'integer', 'number'].includes(it[0]) || enumeration(items, root)) {
      const area = h('textarea', { rows: Math.min(6, Math.max(2, (value?.length ?? 0) + 1)), spellcheck: 'false' });
      area.value = Array.isArray(value) ? value.join('\n') : '';
      const numeric = it[0] === 'integer' || it[0] === 'number';
      const control = wrap(area, () => {
        const lines = area.value.split('\n').map((l) => l.trim()).filter(Boolean);
        if (!lines.length) return required ? [] : undefined;
        if (!numeric) return lines;
        return lines.map((l, i) => {
          const n = Number(l);
          if (!Number.isFinite(n)) throw new FieldError(`${path}[${i}]`, 'must be a number');
          return n;
        });
      }, 'lines');
      control.el.querySelector('label')?.append(h('span', { class: 'muted' }, ' (one per line)'));
      return control;
    }
  }
  if (t.length === 1 && t[0] === 'object' && s.properties && !s.additionalProperties) {
    const inner = objectControl(s, root, value ?? {}, path, slots, options, false);
    const open = required || (value !== undefined && value !== null);
    // An optional object the user left as it was drawn (a required choice inside it
    // shows its first value) is not sent.
    const absent = !required && (value === undefined || value === null);
    let pristine = '';
    try {
      pristine = JSON.stringify(inner.read());
    } catch {
      pristine = '';
    }
    const details = h('details', { class: 'nested', open }, h('summary', null, label(name), required ? ' *' : ''), hint, slot, inner.el);
    return {
      el: h('div', { class: 'field object', 'data-path': path }, details),
      path,
      read() {
        const v = inner.read();
        if (absent && JSON.stringify(v) === pristine) return undefined;
        return Object.keys(v).length === 0 && !required ? undefined : v;
      },
    };
  }
  // Lists of objects, maps and alternatives: JSON, checked here before it is sent.
  const area = h('textarea', { rows: value === undefined ? 3 : Math.min(14, pretty(value).split('\n').length + 1), spellcheck: 'false', class: 'json' });
  area.value = value === undefined ? '' : pretty(value);
  const control = wrap(area, () => {
    if (area.value.trim() === '') return undefined;
    try {
      return JSON.parse(area.value);
    } catch (e) {
      throw new FieldError(path, `is not valid JSON: ${e instanceof Error ? e.message : e}`);
    }
  }, 'json');
  control.el.querySelector('label')?.append(h('span', { class: 'muted' }, ' (JSON)'));
  return control;
}

/**
 * The plugins of a route, service, consumer or global rule: each attached plugin's
 * config as a form from its own schema; plugins added from the catalog.
 * @param {string} path @param {Record<string, any>} value @param {any[]} catalog
 * @param {Map<string, HTMLElement>} slots @param {HTMLElement} labelEl @param {HTMLElement} slot @param {HTMLElement | null} hint
 * @returns {Control}
 */
function pluginsControl(path, value, catalog, slots, labelEl, slot, hint) {
  /** @type {Map<string, {control: Control, el: HTMLElement}>} */
  const attached = new Map();
  const list = h('div', { class: 'plugin-list' });
  const add = (/** @type {string} */ name, /** @type {any} */ config) => {
    const entry = catalog.find((p) => p.name === name);
    const schema = entry?.schema ?? {};
    const form = objectControl(resolve(schema, schema), schema, config ?? {}, join(path, name), slots, {}, false);
    const pluginSlot = h('div', { class: 'field-error', hidden: true });
    slots.set(join(path, name), pluginSlot);
    const el = h(
      'fieldset',
      { class: 'plugin', 'data-plugin': name },
      h('legend', null, name, entry ? h('span', { class: 'muted' }, ` priority ${entry.priority}`) : null),
      entry?.summary ? h('p', { class: 'hint' }, entry.summary) : null,
      pluginSlot,
      form.el,
      h('button', { type: 'button', class: 'link danger', onclick: () => { attached.delete(name); el.remove(); refresh(); } }, `Remove ${name}`),
    );
    attached.set(name, { control: form, el });
    list.append(el);
    refresh();
  };
  const picker = h('select', { 'aria-label': 'plugin to add' });
  const refresh = () => {
    replace(
      picker,
      h('option', { value: '' }, 'Add a plugin…'),
      catalog.filter((p) => !attached.has(p.name)).map((p) => h('option', { value: p.name }, p.name)),
    );
  };
  picker.addEventListener('change', () => {
    if (picker.value) add(picker.value, {});
    picker.value = '';
  });
  for (const [name, config] of Object.entries(value)) add(name, config);
  refresh();
  labelEl.removeAttribute('for');
  return {
    el: h('div', { class: 'field plugins', 'data-path': path }, labelEl, hint, slot, list, picker),
    path,
    read() {
      /** @type {Record<string, any>} */
      const out = {};
      for (const [name, { control }] of attached) out[name] = control.read();
      return Object.keys(out).length ? out : undefined;
    },
  };
}
