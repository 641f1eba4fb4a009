// The console's shell: sign-in state, the namespace and instance switchers, the
// navigation and a hash router that renders one page at a time into <main>. Pages
// live in ./pages/; each gets a `Ctx` and returns when its view is drawn.

import * as api from './api.js';
import { h, replace, errorBox, badge } from './dom.js';
import { renderLogin } from './pages/login.js';
import { renderNamespaces } from './pages/namespaces.js';
import { renderClusters } from './pages/clusters.js';
import { renderInstances } from './pages/instances.js';
import { renderOverview } from './pages/overview.js';
import { renderResources, KINDS } from './pages/resources.js';
import { renderPlugins } from './pages/plugins.js';
import { renderHistory } from './pages/history.js';
import { renderTester } from './pages/tester.js';
import { renderConfig } from './pages/config.js';
import { renderHealth } from './pages/health.js';
import { renderRegistry } from './pages/registry.js';

/**
 * What a page gets.
 * @typedef {{
 *   me: any,
 *   namespaces: any[],
 *   instance: {cluster: string, name: string} | null,
 *   params: string[],
 *   view: HTMLElement,
 *   go: (hash: string) => void,
 *   refresh: () => Promise<void>,
 *   onLeave: (f: () => void) => void,
 *   role: (namespace?: string) => string | null,
 * }} Ctx
 */

/** @type {any} */
let me = null;
/** @type {any[]} */
let namespaces = [];
/** @type {(() => void)[]} */
let leaving = [];
let rendering = 0;

const INSTANCE_PAGES = [
  ['', 'Overview'],
  ...KINDS.map((k) => [`res/${k.kind}`, k.title]),
  ['plugins', 'Plugins'],
  ['history', 'History'],
  ['tester', 'Route tester'],
  ['config', 'Config file'],
  ['health', 'Health'],
];

/** The signed-in user's role in a namespace (`platform` for a platform admin). @param {string} [ns] */
function role(ns = api.namespace()) {
  if (!me) return null;
  if (me.user.platform_admin) return 'platform admin';
  return me.user.roles?.[ns] ?? null;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  return raw.split('/').map(decodeURIComponent);
}

/** @param {string} hash */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function loadSession() {
  me = await api.get('/me');
  const listed = await api.get('/namespaces');
  namespaces = listed.items;
  if (!namespaces.some((n) => n.id === api.namespace()) && namespaces.length) {
    api.setNamespace(namespaces.some((n) => n.id === 'default') ? 'default' : namespaces[0].id);
  }
}

function header() {
  const bar = /** @type {HTMLElement} */ (document.getElementById('topbar'));
  if (!me) {
    replace(bar, h('a', { class: 'brand', href: '#/' }, 'Portico'));
    return;
  }
  const nsSelect = h(
    'select',
    { id: 'namespace-switcher', 'aria-label': 'namespace' },
    namespaces.map((n) => h('option', { value: n.id }, `${n.name} (${n.id})`)),
  );
  nsSelect.value = api.namespace();
  nsSelect.addEventListener('change', () => {
    api.setNamespace(nsSelect.value);
    go('#/instances');
  });
  const current = role();
  replace(
    bar,
    h('a', { class: 'brand', href: '#/' }, 'Portico'),
    h('label', { class: 'switcher' }, 'Namespace ', nsSelect),
    h('span', { class: 'spacer' }),
    h(
      'span',
      { class: 'whoami', id: 'whoami' },
      h('strong', null, me.user.name),
      ' ',
      current ? badge(current, 'info') : badge('no role here', 'warn'),
    ),
    h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'),
  );
}

/** @param {{cluster: string, name: string} | null} instance @param {string} page */
function nav(instance, page) {
  const side = /** @type {HTMLElement} */ (document.getElementById('sidebar'));
  if (!me) {
    side.hidden = true;
    return;
  }
  side.hidden = false;
  const link = (/** @type {string} */ href, /** @type {string} */ text, /** @type {boolean} */ active) =>
    h('li', null, h('a', { href, 'aria-current': active ? 'page' : null }, text));
  const top = parseHash()[0] || 'instances';
  replace(
    side,
    h(
      'nav',
      { 'aria-label': 'console' },
      h('h2', null, 'Namespace'),
      h(
        'ul',
        null,
        link('#/instances', 'Instances', top === 'instances'),
        link('#/registry', 'Registered services', top === 'registry'),
        link('#/namespaces', 'Namespaces', top === 'namespaces'),
        link('#/clusters', 'Clusters', top === 'clusters'),
      ),
      instance
        ? [
            h('h2', null, 'Instance ', h('span', { class: 'instance-name' }, `${instance.cluster}/${instance.name}`)),
            h(
              'ul',
              null,
              INSTANCE_PAGES.map(([p, text]) =>
                link(`#/i/${encodeURIComponent(instance.cluster)}/${encodeURIComponent(instance.name)}${p ? '/' + p : ''}`, text, top === 'i' && page === p),
              ),
            ),
          ]
        : null,
    ),
  );
}

async function signOut() {
  try {
    if (me?.session) await api.call('POST', '/logout');
  } catch {
    // the session is dropped here whatever the server says
  }
  api.setToken(null);
  me = null;
  go('#/login');
}

async function route() {
  const ticket = ++rendering;
  for (const f of leaving) f();
  leaving = [];
  const view = /** @type {HTMLElement} */ (document.getElementById('view'));
  const parts = parseHash();
  if (parts[0] === 'login' || !api.token()) {
    me = null;
    header();
    nav(null, '');
    replace(view);
    await renderLogin(view, async () => {
      await loadSession();
      go('#/instances');
    });
    return;
  }
  try {
    if (!me) await loadSession();
  } catch (e) {
    if (e instanceof api.ApiError && e.status === 401) {
      api.setToken(null);
      go('#/login');
      return;
    }
    header();
    replace(view, errorBox(e));
    return;
  }
  header();
  /** @type {{cluster: string, name: string} | null} */
  let instance = null;
  let params = parts.slice(1);
  let page = parts[0] || 'instances';
  if (page === 'i' && parts.length >= 3) {
    instance = { cluster: parts[1], name: parts[2] };
    sessionStorage.setItem(`portico.instance.${api.namespace()}`, `${parts[1]}/${parts[2]}`);
    params = parts.slice(4);
    page = parts[3] ?? '';
    if (page === 'res') {
      page = `res/${parts[4]}`;
      params = parts.slice(5);
    }
  } else {
    const remembered = sessionStorage.getItem(`portico.instance.${api.namespace()}`);
    if (remembered) {
      const [cluster, ...name] = remembered.split('/');
      instance = { cluster, name: name.join('/') };
    }
  }
  nav(instance, page);
  replace(view, h('p', { class: 'loading', 'aria-busy': 'true' }, 'Loading…'));
  /** @type {Ctx} */
  const ctx = {
    me,
    namespaces,
    instance,
    params,
    view,
    go,
    refresh: async () => {
      await loadSession();
      header();
    },
    onLeave: (f) => leaving.push(f),
    role,
  };
  try {
    const top = parts[0] || 'instances';
    if (top === 'namespaces') await renderNamespaces(ctx);
    else if (top === 'clusters') await renderClusters(ctx);
    else if (top === 'instances') await renderInstances(ctx);
    else if (top === 'registry') await renderRegistry(ctx);
    else if (top === 'i' && instance) {
      if (page === '') await renderOverview(ctx);
      else if (page.startsWith('res/')) await renderResources(ctx, page.slice(4));
      else if (page === 'plugins') await renderPlugins(ctx);
      else if (page === 'history') await renderHistory(ctx);
      else if (page === 'tester') await renderTester(ctx);
      else if (page === 'config') await renderConfig(ctx);
      else if (page === 'health') await renderHealth(ctx);
      else replace(view, h('h1', null, 'Not found'), h('p', null, `No page ${page}.`));
    } else replace(view, h('h1', null, 'Not found'), h('p', null, 'No such page.'), h('a', { href: '#/instances' }, 'Instances'));
  } catch (e) {
    if (ticket !== rendering) return;
    replace(view, h('h1', null, 'Something went wrong'), errorBox(e));
  }
}

api.onSignedOut.push(() => {
  api.setToken(null);
  me = null;
  if (!location.hash.startsWith('#/login')) go('#/login');
});
window.addEventListener('hashchange', () => void route());
document.getElementById('skip')?.addEventListener('click', () => document.getElementById('view')?.focus());
void route();
