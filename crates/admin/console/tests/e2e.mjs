// The web console end to end, in a real headless Chromium against a running
// `portico demo` and a second cluster's agent: sign in, create a namespace, register
// a cluster and see its instance appear, create an upstream and a route through the
// forms and send a request through the gateway that they serve, see the node reach
// the new revision, break a field and see the server's inline error, edit, compare
// revisions, roll back, test a route, delete. Screenshots of the main pages go to the
// artifacts directory (and to docs/console/ with PORTICO_DOCS_SHOTS=1).
//
// Run by `cargo xtask test` (or `cargo xtask console`); see harness.mjs.

import assert from 'node:assert/strict';
import { startPortico, launchBrowser, screenshot, test, run } from './harness.mjs';

const portico = await startPortico();
const { browser, page, problems } = await launchBrowser();
const INSTANCE = '#/i/local/demo';

/** Calls the admin API directly (to check what the console did). */
async function api(method, path, body) {
  const response = await fetch(`${portico.api}${path}`, {
    method,
    headers: { authorization: `Bearer ${portico.token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** Retries `f` until it stops throwing, for up to `ms`. */
async function eventually(f, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function open(hash) {
  await page.goto(`${portico.consoleUrl}${hash}`);
  await page.locator('.loading').first().waitFor({ state: 'detached', timeout: 10000 }).catch(() => {});
}

test('a wrong token is refused with a message, the admin token signs in', async () => {
  await page.goto(portico.consoleUrl);
  await page.getByRole('heading', { name: 'Sign in to Portico' }).waitFor();
  await screenshot(page, 'login');
  await page.getByLabel('Token', { exact: true }).fill('not-the-token');
  await page.getByRole('button', { name: 'Sign in with token' }).click();
  await page.getByRole('alert').filter({ hasText: 'Sign-in refused' }).waitFor();
  await page.getByLabel('Token', { exact: true }).fill(portico.token);
  await page.getByRole('button', { name: 'Sign in with token' }).click();
  await page.locator('#whoami').filter({ hasText: 'admin' }).waitFor();
  assert.match(await page.locator('#whoami').innerText(), /platform admin/);
});

let namespaceId = '';
test('a namespace is created and its generated id shown', async () => {
  await open('#/namespaces');
  await page.getByRole('button', { name: 'New namespace' }).click();
  const form = page.getByRole('form', { name: 'new namespace' });
  await form.getByLabel('Name', { exact: true }).fill('payments');
  await form.getByLabel('Description', { exact: true }).fill('the payments business line');
  await form.getByRole('button', { name: 'Create namespace' }).click();
  const saved = page.getByRole('status').filter({ hasText: 'Created namespace payments with id' });
  await saved.waitFor();
  namespaceId = (await saved.innerText()).match(/ns-[0-9a-f]{16}/)?.[0] ?? '';
  assert.ok(namespaceId, 'the id is shown');
  await page.getByRole('table', { name: 'namespaces' }).getByText(namespaceId).waitFor();
  // the switcher offers it at once, and the choice survives a reload
  await page.locator('#namespace-switcher').selectOption(namespaceId);
  await page.reload();
  assert.equal(await page.locator('#namespace-switcher').inputValue(), namespaceId);
  await page.locator('#namespace-switcher').selectOption('default');
  await open('#/namespaces');
  await screenshot(page, 'namespaces');
});

test('a registered cluster shows its agent and its instance appears', async () => {
  await open('#/clusters');
  await page.getByRole('button', { name: 'Register a cluster' }).click();
  const form = page.getByRole('form', { name: 'register a cluster' });
  await form.getByLabel('Name', { exact: true }).fill('edge');
  await form.getByLabel('Agent address', { exact: true }).fill(portico.agent2.address);
  await form.getByLabel('Agent token', { exact: true }).fill(portico.agent2.token);
  await form.getByRole('button', { name: 'Register cluster' }).click();
  await page.getByRole('status').filter({ hasText: 'Registered edge' }).waitFor();
  await eventually(async () => {
    await open('#/instances');
    await page.getByRole('table', { name: 'instances' }).getByRole('row').filter({ hasText: 'edge' }).filter({ hasText: 'online' }).waitFor({ timeout: 1000 });
  });
  await open('#/clusters');
  await page.getByRole('row').filter({ hasText: 'edge' }).getByText('ok').waitFor();
  await screenshot(page, 'clusters');
  await open('#/instances');
  await screenshot(page, 'instances');
});

test('a namespace holding an instance is not deleted, and the console says why', async () => {
  await open('#/instances');
  await page.getByLabel('namespace of edge/edge', { exact: true }).selectOption(namespaceId);
  await page.getByText(`Moved edge/edge to ${namespaceId}`).waitFor();
  await open('#/namespaces');
  const defaultRow = page.getByRole('table', { name: 'namespaces' }).getByRole('row').filter({ has: page.getByRole('cell', { name: 'default', exact: true }) });
  await defaultRow.first().waitFor();
  assert.equal(await defaultRow.getByRole('button', { name: 'Delete' }).count(), 0, 'default cannot be deleted');
  await page.getByRole('row').filter({ hasText: namespaceId }).getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('alert').filter({ hasText: 'still holds instances edge/edge' }).waitFor();
  await page.getByRole('table', { name: 'namespaces' }).getByText(namespaceId).waitFor();
  // the instance shows up under its new namespace
  await page.locator('#namespace-switcher').selectOption(namespaceId);
  await page.getByRole('table', { name: 'instances' }).getByText('edge').first().waitFor();
  await page.locator('#namespace-switcher').selectOption('default');
  await page.getByRole('table', { name: 'instances' }).getByText('demo').first().waitFor();
});

let echo = null;
test('an upstream and a route made through the forms serve a request through the gateway', async () => {
  const sample = await api('GET', '/clusters/local/instances/demo/upstreams');
  echo = sample.body.items[0].nodes[0];
  await open('#/instances');
  await page.getByRole('row').filter({ hasText: 'demo' }).getByRole('link', { name: 'Configure' }).click();
  await page.locator('#convergence').waitFor();

  await open(`${INSTANCE}/res/upstreams/new`);
  const upstream = page.getByRole('form', { name: 'New upstream' });
  await upstream.getByRole('textbox', { name: 'id', exact: true }).fill('shop-up');
  await upstream.getByRole('textbox', { name: 'name', exact: true }).fill('the shop');
  await upstream.getByRole('textbox', { name: 'nodes (JSON)', exact: true }).fill(JSON.stringify([{ host: echo.host, port: echo.port, weight: 1 }]));
  await screenshot(page, 'upstream-form');
  await upstream.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('heading', { name: 'Upstream shop-up' }).waitFor();

  await open(`${INSTANCE}/res/routes/new`);
  const route = page.getByRole('form', { name: 'New route' });
  await route.getByRole('textbox', { name: 'id', exact: true }).fill('shop');
  await route.getByRole('textbox', { name: 'paths (one per line)', exact: true }).fill('/shop/*');
  await route.getByRole('textbox', { name: 'upstream id', exact: true }).fill('shop-up');
  await route.getByLabel('plugin to add', { exact: true }).selectOption('request-id');
  await route.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('heading', { name: 'Route shop' }).waitFor();

  const served = await eventually(async () => {
    const r = await fetch(`${portico.gatewayUrl}/shop/hello`);
    assert.equal(r.status, 200);
    return r;
  });
  assert.ok(served.headers.get('x-request-id'), 'the plugin added in the form runs');
});

test('the node is seen reaching the new revision', async () => {
  const { body: instance } = await api('GET', '/clusters/local/instances/demo');
  await open(INSTANCE);
  await eventually(async () => {
    await open(INSTANCE);
    const line = await page.locator('#convergence').innerText();
    assert.match(line, new RegExp(`Latest revision ${instance.revision} reached 1 of 1 node`));
    assert.match(line, /converged/);
  }, 20000);
  await screenshot(page, 'instance-overview');
});

test('a broken field gets the server\'s error inline and nothing is saved', async () => {
  const before = await api('GET', '/clusters/local/instances/demo/routes/shop');
  await open(`${INSTANCE}/res/routes/edit/shop`);
  const form = page.getByRole('form', { name: 'Route shop' });
  await form.getByRole('textbox', { name: 'paths (one per line)', exact: true }).fill('no-leading-slash');
  await form.getByRole('button', { name: 'Save' }).click();
  const error = page.locator('[data-path="paths"] .field-error');
  await error.waitFor({ state: 'visible' });
  assert.match(await error.innerText(), /paths\[0\]/);
  assert.equal(await form.getByRole('textbox', { name: 'paths (one per line)', exact: true }).getAttribute('aria-invalid'), 'true');
  await screenshot(page, 'route-inline-error');
  const after = await api('GET', '/clusters/local/instances/demo/routes/shop');
  assert.deepEqual(after.body, before.body);
});

test('an edit, its diff side by side, and a rollback with a preview', async () => {
  await open(`${INSTANCE}/res/routes/edit/shop`);
  const form = page.getByRole('form', { name: 'Route shop' });
  await form.getByRole('textbox', { name: 'paths (one per line)', exact: true }).fill('/shop/*\n/store/*');
  await form.getByLabel('Change message', { exact: true }).fill('serve the store too');
  await form.getByRole('button', { name: 'Dry run' }).click();
  await page.getByRole('heading', { name: 'What would change' }).waitFor();
  await form.getByRole('button', { name: 'Save' }).click();
  await page.getByText(/Saved shop as revision/).waitFor();
  await eventually(async () => assert.equal((await fetch(`${portico.gatewayUrl}/store/x`)).status, 200));

  await open(`${INSTANCE}/history`);
  const latest = page.getByRole('table', { name: 'revisions' }).getByRole('row').nth(1);
  await latest.getByText('serve the store too').waitFor();
  await latest.getByRole('button', { name: 'Changes' }).click();
  const diff = page.getByRole('table', { name: 'routes shop before and after' });
  await diff.getByText('/store/*').first().waitFor();
  await screenshot(page, 'history-diff');

  const previous = page.getByRole('table', { name: 'revisions' }).getByRole('row').nth(2);
  await previous.getByRole('button', { name: 'Roll back to this' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  await page.getByRole('heading', { name: /Rolling back to \d+ would change/ }).waitFor();
  await dialog.getByRole('button', { name: 'Roll back' }).click();
  await page.getByRole('status').filter({ hasText: 'Rolled back to revision' }).first().waitFor();
  const route = await api('GET', '/clusters/local/instances/demo/routes/shop');
  assert.deepEqual(route.body.paths, ['/shop/*']);
  await eventually(async () => assert.equal((await fetch(`${portico.gatewayUrl}/store/x`)).status, 404));
});

test('the route tester says which route matches and why the others do not', async () => {
  await open(`${INSTANCE}/tester`);
  await page.getByLabel('Path', { exact: true }).fill('/shop/a');
  await page.getByRole('button', { name: 'Test' }).click();
  await page.locator('#matched-route').filter({ hasText: 'shop' }).waitFor();
  await page.getByRole('table', { name: 'near misses' }).getByText('path mismatch').first().waitFor();
  await screenshot(page, 'route-tester');
});

test('the other pages render without errors', async () => {
  for (const [hash, heading, shot] of [
    [`${INSTANCE}/res/routes`, 'Routes', 'routes'],
    [`${INSTANCE}/plugins/shop`, 'Plugins', 'plugins'],
    [`${INSTANCE}/health`, 'Health', 'health'],
    [`${INSTANCE}/config`, 'Config file', 'config-file'],
    ['#/registry', 'Registered services', 'registry'],
  ]) {
    await open(hash);
    await page.getByRole('heading', { name: heading, exact: true }).waitFor();
    await screenshot(page, shot);
  }
  await open(`${INSTANCE}/plugins/shop`);
  await page.getByRole('table', { name: 'effective plugins' }).getByText('request-id').waitFor();
  // a laptop screen: nothing wider than the window
  await page.setViewportSize({ width: 1280, height: 720 });
  await open(`${INSTANCE}/res/routes`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a laptop screen`);
  await page.setViewportSize({ width: 1440, height: 900 });
});

test('a route deleted after confirmation stops being served', async () => {
  await open(`${INSTANCE}/res/routes`);
  await page.getByRole('button', { name: 'delete shop' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('table', { name: 'routes' }).getByText('shop', { exact: true }).waitFor({ state: 'detached' });
  await eventually(async () => assert.equal((await fetch(`${portico.gatewayUrl}/shop/hello`)).status, 404));
  assert.equal((await api('GET', '/clusters/local/instances/demo/routes/shop')).status, 404);
});

test('signing out forgets the token', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Portico' }).waitFor();
  await page.reload();
  await page.getByRole('heading', { name: 'Sign in to Portico' }).waitFor();
});

await run({ portico, problems, page, browser });
