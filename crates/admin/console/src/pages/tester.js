// The route tester: a request (method, host, path, headers, query, client address,
// TLS) tried against the instance's config by the gateway's own router on the admin:
// which route takes it, with its plugins in running order, and why each other route
// does not.

import * as api from '../api.js';
import { h, replace, table, errorBox, field, badge } from '../dom.js';

/** @param {import('../app.js').Ctx} ctx */
export async function renderTester(ctx) {
  const base = api.instancePath(/** @type {any} */ (ctx.instance));
  const method = h('select', null, ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].map((m) => h('option', { value: m }, m)));
  const host = h('input', { type: 'text', placeholder: 'api.example.com', spellcheck: 'false' });
  const path = h('input', { type: 'text', value: '/', required: true, spellcheck: 'false' });
  const query = h('input', { type: 'text', placeholder: 'a=1&b=2', spellcheck: 'false' });
  const headers = h('textarea', { rows: 3, placeholder: 'x-canary: 1', spellcheck: 'false' });
  const clientIp = h('input', { type: 'text', placeholder: '10.0.0.7', spellcheck: 'false' });
  const tls = h('input', { type: 'checkbox' });
  const output = h('div', { id: 'tester-output', 'aria-live': 'polite' });
  const run = h('button', { type: 'submit' }, 'Test');

  const submit = async () => {
    replace(output);
    /** @type {Record<string, string[]>} */
    const headerMap = {};
    for (const [i, line] of headers.value.split('\n').entries()) {
      if (!line.trim()) continue;
      const colon = line.indexOf(':');
      if (colon <= 0) {
        replace(output, errorBox({ message: `headers line ${i + 1}: write it as name: value` }));
        return;
      }
      const name = line.slice(0, colon).trim().toLowerCase();
      (headerMap[name] ??= []).push(line.slice(colon + 1).trim());
    }
    /** @type {Record<string, any>} */
    const body = { method: method.value, path: path.value, tls: tls.checked };
    if (host.value) body.host = host.value;
    if (query.value) body.query = query.value.replace(/^\?/, '');
    if (clientIp.value) body.client_ip = clientIp.value;
    if (Object.keys(headerMap).length) body.headers = headerMap;
    run.disabled = true;
    try {
      const r = await api.call('POST', `${base}/route-test`, { body, scoped: true });
      replace(output, result(r));
    } catch (e) {
      replace(output, errorBox(e));
    } finally {
      run.disabled = false;
    }
  };

  replace(
    ctx.view,
    h('h1', null, 'Route tester'),
    h('p', { class: 'hint' }, 'Which route of this instance takes a request, decided by the gateway\'s own router on the current config.'),
    h(
      'form',
      { class: 'card tester', 'aria-label': 'request to test', onsubmit: (/** @type {Event} */ e) => { e.preventDefault(); void submit(); } },
      h('div', { class: 'row' }, field('Method', method), field('Host', host), field('Path', path)),
      h('div', { class: 'row' }, field('Query', query), field('Client address', clientIp), field('TLS', tls)),
      field('Headers', headers, 'One per line, name: value.'),
      run,
    ),
    output,
  );
}

/** @param {any} r */
function result(r) {
  const outcome = r.outcome.kind;
  const tone = outcome === 'matched' ? 'ok' : 'bad';
  const why = r.outcome.allow ? `allowed: ${r.outcome.allow.join(', ')}` : r.outcome.reason ?? '';
  const m = r.matched;
  return h(
    'section',
    { class: 'card' },
    h('h2', null, badge(outcome.replace(/_/g, ' '), tone), r.status ? ` ${r.status}` : '', ` at revision ${r.revision}`),
    why ? h('p', null, why) : null,
    r.unbound ? h('p', { class: 'notice bad' }, r.unbound) : null,
    r.request ? h('p', null, 'Seen as ', h('code', null, `${r.request.method} ${r.request.host}${r.request.path}${r.request.query ? `?${r.request.query}` : ''}`), r.request.client_ip ? ` from ${r.request.client_ip}` : '') : null,
    m
      ? [
          h('p', { id: 'matched-route' }, 'Route ', h('strong', null, m.route_id), ' by path ', h('code', null, m.path), m.host ? [' and host ', h('code', null, m.host)] : '', m.service_id ? ` via service ${m.service_id}` : '', m.upstream_id ? ` to upstream ${m.upstream_id}` : ` (${m.upstream_from} upstream)`),
          m.plugins.length
            ? [h('h3', null, 'Plugins in running order'), table(['Plugin', 'Priority', 'From'], m.plugins.map((/** @type {any} */ p) => [p.name, String(p.priority), `${p.source.kind}${p.source.id ? ` ${p.source.id}` : ''}`]))]
            : h('p', { class: 'muted' }, 'No plugin runs.'),
        ]
      : null,
    h('h3', null, 'Why not the others'),
    table(
      ['Route', 'Reason', 'Detail', 'Expected', 'Got'],
      r.near_misses.map((/** @type {any} */ n) => [h('code', null, n.route_id), n.reason.replace(/_/g, ' '), n.detail + (n.shadowed_by ? ` (by ${n.shadowed_by})` : ''), n.expected ?? '—', n.got ?? '—']),
      'No other route comes close.',
      'near misses',
    ),
    r.truncated ? h('p', { class: 'muted' }, `${r.truncated} more not shown.`) : null,
  );
}
