// The console's only way to the admin: its public REST API under
// /gateway/apiserver/v1, with the signed-in bearer token, the chosen namespace and
// the server's JSON errors turned into `ApiError`s that name their fields.

export const BASE = '/gateway/apiserver/v1';
const TOKEN_KEY = 'portico.token';
const NAMESPACE_KEY = 'portico.namespace';

/** An answer that is not 2xx: the server's message, code and field details. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {string} [code]
   * @param {{field: string, message: string}[]} [details]
   */
  constructor(status, message, code, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details ?? [];
  }
}

/** The session token (kept for this browser tab only). */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** @param {string | null} value */
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The namespace everything is scoped to, remembered across reloads. */
export function namespace() {
  return localStorage.getItem(NAMESPACE_KEY) ?? 'default';
}

/** @param {string} id */
export function setNamespace(id) {
  localStorage.setItem(NAMESPACE_KEY, id);
}

/** Listeners told when the server no longer accepts the token. @type {(() => void)[]} */
export const onSignedOut = [];

/**
 * Calls the API. `query` values that are undefined are left out; `namespace: true`
 * adds the chosen namespace.
 * @param {string} method
 * @param {string} path
 * @param {{body?: unknown, raw?: string, contentType?: string, query?: Record<string, string | number | boolean | undefined>, headers?: Record<string, string>, scoped?: boolean, text?: boolean, signingIn?: boolean}} [options]
 * `signingIn`: a 401 is the answer to a sign-in attempt, not a session that ended.
 * @returns {Promise<any>}
 */
export async function call(method, path, options = {}) {
  const url = new URL(BASE + path, location.origin);
  const query = { ...(options.query ?? {}) };
  if (options.scoped) query.namespace = namespace();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined) url.searchParams.set(k, String(v));
  }
  /** @type {Record<string, string>} */
  const headers = { accept: options.text ? 'application/yaml, application/json' : 'application/json', ...(options.headers ?? {}) };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  /** @type {string | undefined} */
  let body;
  if (options.raw !== undefined) {
    body = options.raw;
    headers['content-type'] = options.contentType ?? 'application/yaml';
  } else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['content-type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (e) {
    throw new ApiError(0, `the admin cannot be reached (${e instanceof Error ? e.message : e})`, 'unreachable');
  }
  const text = await response.text();
  if (!response.ok) {
    /** @type {any} */
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not our JSON error: the status line says what happened
    }
    if (response.status === 401 && !options.signingIn && path !== '/login') onSignedOut.forEach((f) => f());
    throw new ApiError(
      response.status,
      parsed?.error ?? (text.trim() || `${response.status} ${response.statusText}`),
      parsed?.code,
      parsed?.details,
    );
  }
  const revision = response.headers.get('x-portico-revision');
  const sync = response.headers.get('x-portico-sync');
  if (options.text) return { text, revision, sync };
  const value = text ? JSON.parse(text) : null;
  if (value && typeof value === 'object' && !Array.isArray(value) && (revision || sync)) {
    Object.defineProperty(value, '_meta', { value: { revision, sync }, enumerable: false });
  }
  return value;
}

export const get = (/** @type {string} */ path, /** @type {any} */ options = {}) => call('GET', path, options);

/** The path of an instance. @param {{cluster: string, name: string}} i */
export function instancePath(i) {
  return `/clusters/${encodeURIComponent(i.cluster)}/instances/${encodeURIComponent(i.name)}`;
}

/** @type {Promise<any> | null} */
let openapi = null;

/** The API's OpenAPI document (schemas of every resource kind), fetched once. */
export function openapiDocument() {
  openapi ??= get('/openapi.json').catch((e) => {
    openapi = null;
    throw e;
  });
  return openapi;
}

/** @type {Promise<any[]> | null} */
let catalog = null;

/** The plugin catalog with each plugin's JSON Schema, fetched once. */
export function pluginCatalog() {
  catalog ??= get('/plugins').then(
    (r) => r.items,
    (e) => {
      catalog = null;
      throw e;
    },
  );
  return catalog;
}
