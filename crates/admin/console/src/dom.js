// DOM helpers of the console: element building, tables, notices, confirmation
// dialogs and time formatting. Every page builds its view with these, never with
// innerHTML, so no value from the API is ever parsed as markup.

/**
 * @typedef {string | number | Node | null | undefined | false} Child
 * @typedef {Child | any[]} Kids a child, or arrays of them nested to any depth (flattened)
 * @typedef {Record<string, any>} Attrs
 */

/**
 * Builds an element. Attributes starting with `on` are listeners; `class`, `for`
 * and everything else are set as attributes; `value`, `checked` and `disabled` as
 * properties.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs | null} [attrs]
 * @param {...Kids} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'value' || name === 'checked' || name === 'disabled') {
      /** @type {any} */ (el)[name] = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

/**
 * @param {Element} el
 * @param {Kids[]} children
 */
export function append(el, children) {
  for (const child of /** @type {Child[]} */ (children.flat(Infinity))) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === 'object' ? child : String(child));
  }
}

/**
 * Replaces an element's children.
 * @param {Element} el
 * @param {...Kids} children
 */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/**
 * A table: `columns` are header labels; `rows` are arrays of cells.
 * @param {string[]} columns
 * @param {Kids[][]} rows
 * @param {string} [empty] what to say when there are no rows
 * @param {string} [label] the table's accessible name
 */
export function table(columns, rows, empty = 'Nothing here yet.', label) {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { 'aria-label': label },
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h(
        'tbody',
        null,
        rows.map((cells) => h('tr', null, cells.map((c) => h('td', null, c)))),
      ),
    ),
  );
}

/** @param {string} text @param {'ok'|'warn'|'bad'|'info'} tone */
export function badge(text, tone) {
  return h('span', { class: `badge ${tone}` }, text);
}

/**
 * An error as the page shows it: the server's message, its code and every field it
 * names.
 * @param {any} error
 */
export function errorBox(error) {
  const details = Array.isArray(error?.details) ? error.details : [];
  return h(
    'div',
    { class: 'notice bad', role: 'alert' },
    h('strong', null, error?.message ?? String(error)),
    error?.code ? h('span', { class: 'code' }, ` (${error.status ?? ''} ${error.code})`) : null,
    details.length
      ? h(
          'ul',
          null,
          details.map((/** @type {any} */ d) =>
            h('li', null, d.field ? h('code', null, d.field) : null, d.field ? ': ' : '', d.message),
          ),
        )
      : null,
  );
}

/** @param {string} text @param {'ok'|'info'|'warn'} [tone] */
export function notice(text, tone = 'ok') {
  return h('div', { class: `notice ${tone}`, role: 'status' }, text);
}

/** A transient message in the corner. @param {string} text */
export function toast(text) {
  const area = document.getElementById('toasts');
  if (!area) return;
  const el = h('div', { class: 'toast', role: 'status' }, text);
  area.append(el);
  setTimeout(() => el.remove(), 4000);
}

/**
 * Asks before something that cannot be undone; resolves true on confirmation.
 * @param {string} title
 * @param {Kids} body
 * @param {string} [action]
 * @returns {Promise<boolean>}
 */
export function confirmDialog(title, body, action = 'Delete') {
  return new Promise((resolve) => {
    const dialog = h(
      'dialog',
      { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title' }, title),
      h('div', { class: 'dialog-body' }, body),
    );
    const done = (/** @type {boolean} */ ok) => {
      dialog.close();
      dialog.remove();
      resolve(ok);
    };
    dialog.append(
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'button', class: 'danger', onclick: () => done(true) }, action),
        h('button', { type: 'button', onclick: () => done(false) }, 'Cancel'),
      ),
    );
    dialog.addEventListener('cancel', (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Unix seconds or milliseconds as a local date and time. @param {number | null | undefined} t */
export function when(t) {
  if (t === null || t === undefined || t === 0) return '—';
  const ms = t < 1e12 ? t * 1000 : t;
  return new Date(ms).toLocaleString();
}

/** How long ago, short. @param {number | null | undefined} ms */
export function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** A labelled form control. @param {string} label @param {HTMLElement} control @param {string} [hint] */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, label),
    control,
    hint ? h('small', { class: 'hint' }, hint) : null,
  );
}

/**
 * One page of a list and the controls to move between pages: `draw(page)` is called
 * with the new page's number.
 * @template T
 * @param {T[]} items @param {number} page @param {number} size @param {(page: number) => void} draw
 * @returns {{ shown: T[], page: number, pager: HTMLElement }}
 */
export function paginate(items, page, size, draw) {
  const pages = Math.max(1, Math.ceil(items.length / size));
  const current = Math.min(page, pages - 1);
  const shown = items.slice(current * size, current * size + size);
  const pager =
    pages > 1
      ? h(
          'nav',
          { class: 'pager', 'aria-label': 'pages' },
          h('button', { type: 'button', disabled: current === 0, onclick: () => draw(current - 1) }, 'Previous'),
          h('span', null, ` page ${current + 1} of ${pages} (${items.length}) `),
          h('button', { type: 'button', disabled: current >= pages - 1, onclick: () => draw(current + 1) }, 'Next'),
        )
      : h('p', { class: 'muted' }, `${items.length} shown`);
  return { shown, page: current, pager };
}

/** Pretty JSON. @param {unknown} value */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}
