// The browser tests' harness: starts `portico demo` and a second cluster's agent on
// free loopback ports, launches Debian's Chromium headless through playwright-core
// (which downloads nothing), collects every browser console error, page error and
// failed request, saves screenshots, and runs the tests in order, stopping at the
// first failure with a screenshot and the processes' logs.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, createWriteStream, readFileSync, copyFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
const ARTIFACTS = process.env.PORTICO_ARTIFACTS ?? join(REPO, 'target', 'console-artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

/** @type {import('node:child_process').ChildProcess[]} */
const children = [];
const logs = [];
const stopAll = () => children.forEach((c) => c.exitCode === null && c.kill('SIGKILL'));
process.on('exit', stopAll);
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

function start(name, args, env) {
  const bin = process.env.PORTICO_BIN ?? join(REPO, 'target', 'debug', 'portico');
  const log = join(ARTIFACTS, `${name}.log`);
  logs.push(log);
  const child = spawn(bin, args, { env: { ...process.env, PORTICO_LOG: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const file = createWriteStream(log);
  child.stdout.pipe(file);
  child.stderr.pipe(file);
  children.push(child);
  return child;
}

/** Waits for a line of the child's output that `pattern` matches. */
function waitForLine(child, pattern, ms) {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${pattern} within ${ms} ms`)), ms);
    child.stdout.on('data', (chunk) => {
      seen += chunk;
      const m = seen.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.on('exit', (code) => reject(new Error(`exited with ${code} before printing ${pattern}`)));
  });
}

/**
 * `portico demo` (admin, agent, gateway, echo upstream; SQLite in a temporary
 * directory) and a second agent managing instance `edge` on an in-process store.
 */
export async function startPortico() {
  const dir = mkdtempSync(join(tmpdir(), 'portico-console-'));
  const [admin, agent, gateway, echo, agent2] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  // the demo generates the admin token and prints it once
  delete process.env.PORTICO_ADMIN_TOKEN;
  const demo = start('demo', [
    'demo',
    '--admin-listen', `127.0.0.1:${admin}`,
    '--agent-listen', `127.0.0.1:${agent}`,
    '--gateway-listen', `127.0.0.1:${gateway}`,
    '--echo-listen', `127.0.0.1:${echo}`,
    '--database', `sqlite://${join(dir, 'demo.db')}`,
    '--data-key-file', join(dir, 'data-key'),
  ], {});
  const [, token] = await waitForLine(demo, /Admin token: (\S+)/, 120000);
  const agentToken = randomBytes(24).toString('hex');
  start('agent-edge', ['agent', '--listen', `127.0.0.1:${agent2}`, '--store', 'memory://'], {
    PORTICO_AGENT_TOKEN: agentToken,
    PORTICO_INSTANCES: 'edge',
  });
  return {
    consoleUrl: `http://127.0.0.1:${admin}/`,
    api: `http://127.0.0.1:${admin}/gateway/apiserver/v1`,
    token,
    gatewayUrl: `http://127.0.0.1:${gateway}`,
    agent2: { address: `http://127.0.0.1:${agent2}`, token: agentToken, instances: ['edge'] },
    stop() {
      stopAll();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Chromium headless, 1440×900, with everything that goes wrong in it collected. */
export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: process.env.PORTICO_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox'],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    // The browser logs every 4xx answer as an error; the tests provoke refusals on
    // purpose (and check the page shows them), so only the page's own messages and
    // 5xx answers (below) count.
    if (/^Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) return;
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // a navigation cancels what the page it leaves was still loading
    if (r.failure()?.errorText === 'net::ERR_ABORTED') return;
    problems.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 500) problems.push(`server error: ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  page.setDefaultTimeout(10000);
  return { browser, context, page, problems };
}

/** A full-page PNG in the artifacts (and docs/console/ with PORTICO_DOCS_SHOTS=1). */
export async function screenshot(page, name) {
  const file = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.PORTICO_DOCS_SHOTS === '1') {
    mkdirSync(join(REPO, 'docs', 'console'), { recursive: true });
    copyFileSync(file, join(REPO, 'docs', 'console', `${name}.png`));
  }
}

const tests = [];

/** Registers a test; tests run in order and share state. */
export function test(name, fn) {
  tests.push({ name, fn });
}

function tail(file, lines) {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/**
 * Runs the tests; any failure, or any problem in the browser, fails the run (exit 1).
 * @param {{ portico: any, problems: string[], page: any, browser: any }} state
 */
export async function run({ portico, problems, page, browser }) {
  let failed = false;
  for (const t of tests) {
    const started = Date.now();
    try {
      await t.fn();
      console.log(`ok   ${t.name} (${Date.now() - started} ms)`);
    } catch (e) {
      failed = true;
      console.log(`FAIL ${t.name} (${Date.now() - started} ms)\n${e?.stack ?? e}`);
      await screenshot(page, `failure-${t.name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}`).catch(() => {});
      break;
    }
  }
  if (problems.length) {
    failed = true;
    console.log(`FAIL the browser reported problems:\n  ${problems.join('\n  ')}`);
  }
  if (failed) for (const log of logs) console.log(`--- last lines of ${log}\n${tail(log, 50)}`);
  await browser.close();
  portico.stop();
  console.log(failed ? 'console e2e: FAILED' : `console e2e: ${tests.length} passed; screenshots in ${ARTIFACTS}`);
  process.exit(failed ? 1 : 0);
}
