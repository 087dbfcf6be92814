// Drives Kapsel's dashboard (/ui/) in a real browser: Debian's chromium, headless, through
// playwright-core, against a live Kapsel that tests/it/dashboard.rs started and filled. Exits 0
// when every check holds; on the first failure it prints why, saves a screenshot and exits 1.
//
// Environment (set by tests/it/dashboard.rs):
//   KAPSEL_URL          http://127.0.0.1:PORT
//   KAPSEL_TOKEN        the operator token
//   KAPSEL_SCENARIO     "tour" (the default) or "many"
//   KAPSEL_SCREENSHOTS  directory for screenshots
//   KAPSEL_CHROMIUM     the browser (default /usr/bin/chromium)
//   tour:  KAPSEL_READ_KEY (tenant B's read-only key), KAPSEL_INGEST_KEY (one that may only
//          ingest), KAPSEL_B_ENDPOINTS (its endpoints, comma
//          separated), KAPSEL_FAILED_EVENT (a failed event whose sink now succeeds),
//          KAPSEL_PUBLISHED_EVENT, KAPSEL_B_EVENT, KAPSEL_DISABLE_ENDPOINT, KAPSEL_HOSTILE_URL,
//          KAPSEL_TRAFFIC_ENDPOINT (open to ingest, delivering: the overview's traffic),
//          KAPSEL_OPEN_ENDPOINT (one whose breaker is open),
//          KAPSEL_HOSTILE_STRINGS (JSON array of the strings stored in the response excerpt and
//          the payload), KAPSEL_HOSTILE_KEY (the failed event's idempotency key, hostile too)
//   many:  KAPSEL_ENDPOINT_COUNT (endpoints ep-00000 … in ascending order)

import { readFile, mkdir, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

// The dashboard's own arithmetic, loaded as the browser loads it (ui/ has no package.json to
// make Node read its files as modules).
const metricsUrl = new URL('../../ui/metrics.js', import.meta.url);
const { bucketDelta, parseMetrics, quantile, rate, summarize } = await import(
  `data:text/javascript,${encodeURIComponent(await readFile(metricsUrl, 'utf8'))}`
);

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const base = env('KAPSEL_URL').replace(/\/$/, '');
const token = env('KAPSEL_TOKEN');
const scenario = env('KAPSEL_SCENARIO', 'tour');
const screenshots = env('KAPSEL_SCREENSHOTS');
/** How long a wait may last before the test fails: generous, to catch a stall, never to judge speed. */
const WAIT_MS = 30_000;
const started = Date.now();

function log(message) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${message}`);
}

/** The admin API, for checks the browser's view must agree with. */
async function api(method, pathAndQuery, credential = token) {
  const response = await fetch(base + pathAndQuery, { method, headers: { Authorization: `Bearer ${credential}` } });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null };
}

// The overview's arithmetic, checked without a browser: rates, histogram deltas and p99.
function checkMetricsArithmetic() {
  const before = parseMetrics([
    '# HELP kapsel_ingest_requests_total x',
    'kapsel_ingest_requests_total{status="202",code=""} 100',
    'kapsel_ingest_requests_total{status="401",code="E1001"} 5',
    'kapsel_delivery_attempt_duration_seconds_bucket{le="0.001"} 10',
    'kapsel_delivery_attempt_duration_seconds_bucket{le="0.01"} 10',
    'kapsel_delivery_attempt_duration_seconds_bucket{le="+Inf"} 10',
  ].join('\n'));
  const after = parseMetrics([
    'kapsel_ingest_requests_total{status="202",code=""} 400',
    'kapsel_ingest_requests_total{status="401",code="E1001"} 5',
    'kapsel_delivery_attempt_duration_seconds_bucket{le="0.001"} 10',
    'kapsel_delivery_attempt_duration_seconds_bucket{le="0.01"} 110',
    'kapsel_delivery_attempt_duration_seconds_bucket{le="+Inf"} 110',
    'kapsel_circuit_breakers{state="open"} 2',
    'kapsel_circuit_open{endpoint_id="a\\"b",tenant_id="t",state="open"} 1',
  ].join('\n'));
  const summary = summarize(before, after, 3);
  assert.equal(summary.ingestPerSecond, 100);
  assert.equal(summary.acceptedPerSecond, 100);
  // 100 new observations, all between 1 and 10 ms: the 99th lies at 99 % of that bucket.
  assert.ok(Math.abs(summary.attemptP99.window - (0.001 + 0.009 * 0.99)) < 1e-12, String(summary.attemptP99.window));
  assert.equal(summary.breakersOpen, 2);
  assert.deepEqual(summary.openEndpoints, [{ endpoint: 'a"b', tenant: 't', state: 'open' }]);
  assert.equal(quantile(0.99, []), null);
  assert.equal(quantile(0.99, [[1, 0], [Infinity, 0]]), null);
  assert.equal(quantile(0.5, [[1, 0], [Infinity, 4]]), 1, 'past the last bound: that bound');
  assert.equal(rate(10, 4, 2), 2, 'a counter that went down restarted');
  assert.deepEqual(bucketDelta([[1, 5]], [[1, 2]]), [[1, 2]]);
  log('metrics arithmetic holds');
}

async function launch() {
  return chromium.launch({
    executablePath: env('KAPSEL_CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

/** A page that records what must never happen: script errors, requests to another origin,
 *  the token in a URL, CSP violations (each is something that tried to run or load). */
async function openPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, serviceWorkers: 'block' });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(`${base}/`) && !url.startsWith('data:')) problems.push(`request to another origin: ${url}`);
    if (url.includes(token) || (process.env.KAPSEL_READ_KEY && url.includes(process.env.KAPSEL_READ_KEY))) {
      problems.push(`a token in a URL: ${url}`);
    }
  });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (event) => {
      window.__violations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sample}`);
    });
  });
  return { context, page, problems };
}

async function shot(page, name) {
  const file = path.join(screenshots, name);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

/** Nothing an attacker stored ran or became markup: no flag set, no element the dashboard never
 *  makes (img, iframe, object, script other than its own modules), no inline handler attribute,
 *  no CSP violation, no script error. */
async function checkNothingRan(page, problems, where) {
  const found = await page.evaluate(() => ({
    xss: typeof window.__xss,
    images: document.querySelectorAll('img, iframe, object, embed, svg').length,
    scripts: [...document.scripts].map((script) => script.getAttribute('src')),
    handlers: [...document.querySelectorAll('*')]
      .flatMap((node) => [...node.attributes].filter((attribute) => attribute.name.startsWith('on')).map((attribute) => `${node.tagName} ${attribute.name}`)),
    violations: window.__violations,
  }));
  assert.equal(found.xss, 'undefined', `${where}: an injected script ran`);
  assert.equal(found.images, 0, `${where}: an injected element`);
  assert.deepEqual(found.scripts, ['app.js'], `${where}: scripts`);
  assert.deepEqual(found.handlers, [], `${where}: inline handlers`);
  assert.deepEqual(found.violations, [], `${where}: CSP violations`);
  assert.deepEqual(problems, [], `${where}: page problems`);
}

const axeSource = await readFile(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core on the page as it is: no serious or critical violation. */
async function checkAccessibility(page, where) {
  const hasAxe = await page.evaluate(() => typeof window.axe !== 'undefined');
  // Evaluated through the DevTools protocol, which the page's CSP does not govern.
  if (!hasAxe) await page.evaluate(axeSource);
  const results = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = results.violations.filter((violation) => ['serious', 'critical'].includes(violation.impact));
  const described = bad.map((violation) => `${violation.id} (${violation.impact}): ${violation.help} at ${violation.nodes.map((node) => node.target.join(' ')).join(', ')}`);
  assert.deepEqual(described, [], `${where}: accessibility`);
  const minor = results.violations.length - bad.length;
  log(`axe on ${where}: no serious or critical violation${minor ? ` (${minor} minor)` : ''}`);
}

/** The proof section agrees with the API: a seal shown is one the API proves (with the same
 *  root); "not sealed yet" may be overtaken by a seal since, never the other way round. */
async function checkProof(page, eventId, credential = token) {
  const shown = await page.textContent('#proof-state');
  const proof = await api('GET', `/admin/events/${eventId}/proof`, credential);
  if (shown.startsWith('Sealed')) {
    assert.equal(proof.status, 200, `the dashboard shows a seal the API does not have: ${JSON.stringify(proof.json)}`);
    assert.ok((await page.textContent('#proof-facts')).includes(proof.json.root), 'the root shown is the proof\'s');
  } else {
    assert.match(shown, /^Not sealed yet/);
  }
  return shown;
}

async function signIn(page, credential) {
  await page.fill('#token', credential);
  await page.click('#sign-in-form button[type=submit]');
}

async function confirmDialog(page, expectText) {
  const dialog = page.locator('#confirm-dialog');
  await dialog.waitFor({ state: 'visible', timeout: WAIT_MS });
  assert.match(await dialog.innerText(), expectText);
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'confirm-cancel', 'focus starts on Cancel');
  await page.click('#confirm-ok');
  await dialog.waitFor({ state: 'hidden', timeout: WAIT_MS });
}

async function tour(browser) {
  const readKey = env('KAPSEL_READ_KEY');
  const bEndpoints = env('KAPSEL_B_ENDPOINTS').split(',').sort();
  const failedEvent = env('KAPSEL_FAILED_EVENT');
  const publishedEvent = env('KAPSEL_PUBLISHED_EVENT');
  const bEvent = env('KAPSEL_B_EVENT');
  const disable = env('KAPSEL_DISABLE_ENDPOINT');
  const hostileUrl = env('KAPSEL_HOSTILE_URL');
  const hostile = JSON.parse(env('KAPSEL_HOSTILE_STRINGS'));
  const { page, problems } = await openPage(browser);

  // Sign-in: a wrong token is refused and said so; nothing is stored.
  await page.goto(`${base}/ui/`);
  await page.locator('#token').waitFor({ timeout: WAIT_MS });
  assert.equal(await page.getAttribute('html', 'lang'), 'en');
  await checkAccessibility(page, 'sign-in');
  await shot(page, 'sign-in.png');
  await signIn(page, 'not-the-token');
  await page.locator('#sign-in-error', { hasText: 'Wrong token' }).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await shot(page, 'sign-in-wrong-token.png');
  log('a wrong token is refused');

  // The operator token: kept in sessionStorage only.
  await signIn(page, token);
  await page.locator('#principal', { hasText: 'Operator' }).waitFor({ timeout: WAIT_MS });
  const storage = await page.evaluate(() => ({ session: Object.values(sessionStorage), local: localStorage.length, cookie: document.cookie }));
  assert.deepEqual(storage, { session: [token], local: 0, cookie: '' });
  assert.ok(!page.url().includes(token));

  // Overview: with events arriving (sent from here), the ingest and delivery rates, computed
  // from two scrapes' difference, rise above zero.
  let sending = true;
  const traffic = (async () => {
    while (sending) {
      await fetch(`${base}/ingest/${env('KAPSEL_TRAFFIC_ENDPOINT')}`, { method: 'POST', body: '{"traffic":true}' });
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  try {
    await page.waitForFunction(() => {
      const rate = (id) => Number.parseFloat(document.querySelector(`#card-${id} .value`)?.textContent ?? '');
      return rate('ingest') > 0 && rate('delivery') > 0;
    }, null, { timeout: WAIT_MS });
  } finally {
    sending = false;
    await traffic;
  }
  const breakers = await page.textContent('#card-breakers .value');
  assert.ok(Number(breakers) >= 1, `a breaker is open: ${breakers}`);
  const open = await page.$$eval('#overview-breakers li .id', (items) => items.map((item) => item.textContent));
  assert.ok(open.includes(env('KAPSEL_OPEN_ENDPOINT')), `the open breaker is named: ${JSON.stringify(open)}`);
  await checkAccessibility(page, 'overview');
  await shot(page, 'overview.png');
  const card = (id) => page.textContent(`#card-${id} .value`);
  log(`overview: ingest ${await card('ingest')}, delivered ${await card('delivery')}, attempt p99 ${await card('attempt-p99')}, breakers open ${breakers}`);

  // Endpoints: the hostile URL is text in its cell.
  await page.click('#nav a[data-view=endpoints]');
  await page.locator('#endpoints tbody tr').first().waitFor({ timeout: WAIT_MS });
  const urls = await page.$$eval('#endpoints td.url', (cells) => cells.map((cell) => cell.textContent));
  assert.ok(urls.includes(hostileUrl), `the hostile URL is shown as text: ${JSON.stringify(urls)}`);
  const failedRow = page.locator(`#endpoints tr[data-endpoint="${(await api('GET', `/admin/events/${failedEvent}`)).json.endpoint_id}"]`);
  assert.match(await failedRow.locator('td.last-error').innerText(), /E2003/);
  await checkNothingRan(page, problems, 'endpoints');
  await checkAccessibility(page, 'endpoints');
  await shot(page, 'endpoints.png');

  // Keyboard: an action button opens the dialog with focus inside; Escape closes it, nothing is
  // done, and focus returns to the button.
  const retryButton = page.locator(`#endpoints tr[data-endpoint="${disable}"] button[data-action=retry-failed]`);
  await retryButton.focus();
  await page.keyboard.press('Enter');
  await page.locator('#confirm-dialog').waitFor({ state: 'visible', timeout: WAIT_MS });
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'confirm-cancel');
  await checkAccessibility(page, 'confirmation dialog');
  await shot(page, 'confirm-dialog.png');
  await page.keyboard.press('Escape');
  await page.locator('#confirm-dialog').waitFor({ state: 'hidden', timeout: WAIT_MS });
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.action), 'retry-failed', 'focus returns');
  log('the confirmation dialog works from the keyboard');

  // Disable an endpoint, confirmed in the dialog; the API agrees.
  await page.click(`#endpoints tr[data-endpoint="${disable}"] button[data-action=disable]`);
  await confirmDialog(page, new RegExp(`Disable ${disable}`));
  await page.locator(`#endpoints tr[data-endpoint="${disable}"] .badge-disabled`).waitFor({ timeout: WAIT_MS });
  const disabled = await api('GET', `/admin/endpoints/${disable}`);
  assert.equal(disabled.json.enabled, false, 'the API says the endpoint is disabled');
  log(`endpoint ${disable} disabled through the dashboard`);

  // Clearing the filters loads the unfiltered page once the address changes, which also sets
  // the form from the address: filling a field before that load would be undone by it.
  const clearEvents = async (page) => {
    await page.click('#events-reset');
    await page.locator('#events-table[data-query="limit=50"]').waitFor({ timeout: WAIT_MS });
  };
  // Events: the failed one, found by status and by its hostile idempotency key; the source shown.
  await page.click('#nav a[data-view=events]');
  await page.locator('#events tbody tr').first().waitFor({ timeout: WAIT_MS });
  assert.match(await page.textContent('#events-source'), /memory|index/);
  await page.selectOption('#filter-status', 'failed');
  await page.click('#events-form button[type=submit]');
  await page.locator('#events-table[data-query="status=failed&limit=50"]').waitFor({ timeout: WAIT_MS });
  await page.locator(`#events tr[data-event="${failedEvent}"]`).waitFor({ timeout: WAIT_MS });
  const statuses = await page.$$eval('#events tbody .badge', (badges) => badges.map((badge) => badge.textContent));
  assert.ok(statuses.length > 0 && statuses.every((status) => status === 'failed'), JSON.stringify(statuses));
  // By channel: the published event's deliveries only.
  await clearEvents(page);
  await page.fill('#filter-channel', 'receipts');
  await page.click('#events-form button[type=submit]');
  await page.locator('#events-table[data-query="channel=receipts&limit=50"]').waitFor({ timeout: WAIT_MS });
  const byChannel = await page.$$eval('#events tbody tr', (rows) => rows.map((row) => row.dataset.event));
  assert.ok(byChannel.length > 0 && byChannel.every((id) => id === publishedEvent), JSON.stringify(byChannel));
  // A time window before any event: nothing (the window is sent as RFC 3339, read as UTC).
  await clearEvents(page);
  await page.fill('#filter-before', '2001-02-03T04:05:06');
  await page.click('#events-form button[type=submit]');
  await page.locator('#events-table[data-query="received_before=2001-02-03T04%3A05%3A06Z&limit=50"]').waitFor({ timeout: WAIT_MS });
  assert.equal(await page.textContent('#events-table'), 'No events match.');
  await clearEvents(page);
  const hostileKey = env('KAPSEL_HOSTILE_KEY');
  await page.fill('#filter-key', hostileKey);
  await page.click('#events-form button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#events-table')?.dataset.query?.startsWith('idempotency_key='));
  await page.locator(`#events tr[data-event="${failedEvent}"]`).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator('#events tbody tr').count(), 1);
  assert.equal(await page.textContent(`#events tr[data-event="${failedEvent}"] td.key`), hostileKey);
  await checkNothingRan(page, problems, 'events');
  await checkAccessibility(page, 'events');
  await shot(page, 'events.png');
  log('events searched by status, channel, time window and idempotency key');

  // Event detail: attempts, the hostile excerpt and payload as text, the proof's state.
  await page.click(`#events tr[data-event="${failedEvent}"] a`);
  await page.locator('#event-facts').waitFor({ timeout: WAIT_MS });
  assert.equal(await page.textContent('#event-facts .badge'), 'failed');
  const excerpt = await page.textContent('pre.excerpt');
  const payload = await page.textContent('#payload-preview');
  for (const text of hostile) {
    assert.ok(excerpt.includes(text), `the response excerpt shows as text: ${text}`);
    assert.ok(payload.includes(text), `the payload shows as text: ${text}`);
  }
  assert.ok((await page.textContent('#event-facts')).includes(hostileKey), 'the idempotency key shows as text');
  assert.ok(await page.locator('table.attempts tbody tr').count() >= 1);
  // Each attempt's own response, where the API gives it (the failed last one's from memory).
  const responses = await page.$$eval('table.attempts td.response', (cells) => cells.map((cell) => cell.textContent));
  const attempts = (await api('GET', `/admin/events/${failedEvent}`)).json.attempts;
  if (attempts.some((attempt) => attempt.response_excerpt)) {
    assert.ok(responses.some((text) => hostile.every((markup) => text.includes(markup))), `an attempt's response shows as text: ${JSON.stringify(responses)}`);
  }
  assert.match(await checkProof(page, failedEvent), /^Sealed/, 'tests/it/dashboard.rs waited for the seal');
  await checkNothingRan(page, problems, 'event detail');
  await checkAccessibility(page, 'event detail');
  await shot(page, 'event-detail.png');

  // Redrive it (the sink succeeds now) and see it delivered, in the page and through the API.
  await page.click('#redrive');
  await confirmDialog(page, /Deliver .* again/);
  await page.locator('#event-facts .badge-delivered').waitFor({ timeout: WAIT_MS });
  assert.equal((await api('GET', `/admin/events/${failedEvent}`)).json.status, 'delivered');
  await shot(page, 'event-redriven.png');
  log(`event ${failedEvent} redriven and delivered`);

  // A published event shows one delivery per endpoint.
  await page.goto(`${base}/ui/#/events/${publishedEvent}`);
  await page.locator('#event-deliveries-title').waitFor({ timeout: WAIT_MS });
  const published = await api('GET', `/admin/events/${publishedEvent}`);
  const shown = await page.$$eval('.delivery', (parts) => parts.map((part) => part.dataset.endpoint));
  assert.deepEqual(shown, published.json.deliveries.map((delivery) => delivery.endpoint_id));
  assert.equal(await page.locator('.delivery button[data-action=redrive]').count(), shown.length);
  await checkNothingRan(page, problems, 'published event');

  // Sign out: the token is gone from the tab.
  await page.click('#sign-out');
  await page.locator('#token').waitFor({ timeout: WAIT_MS });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);

  // A key that may only ingest cannot read: it is turned away at sign-in, and says why.
  await signIn(page, env('KAPSEL_INGEST_KEY'));
  await page.locator('#sign-in-error', { hasText: 'no read scope' }).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);

  // Tenant B's read-only key: only B's endpoints and events, and no action anywhere.
  await signIn(page, readKey);
  await page.locator('#principal', { hasText: 'read' }).waitFor({ timeout: WAIT_MS });
  await page.click('#nav a[data-view=endpoints]');
  await page.locator('#endpoints tbody tr').first().waitFor({ timeout: WAIT_MS });
  const seen = (await page.$$eval('#endpoints tbody tr', (rows) => rows.map((row) => row.dataset.endpoint))).sort();
  assert.deepEqual(seen, bEndpoints, 'a tenant key sees only its tenant');
  assert.equal(await page.locator('button[data-action]').count(), 0, 'no action without write');
  await shot(page, 'read-only-endpoints.png');
  await page.click('#nav a[data-view=events]');
  await page.locator(`#events tr[data-event="${bEvent}"]`).waitFor({ timeout: WAIT_MS });
  const events = await page.$$eval('#events tbody tr', (rows) => rows.map((row) => row.dataset.event));
  assert.ok(!events.includes(failedEvent), 'another tenant\'s events stay hidden');
  await page.click(`#events tr[data-event="${bEvent}"] a`);
  await page.locator('#event-facts').waitFor({ timeout: WAIT_MS });
  await checkProof(page, bEvent, readKey);
  assert.equal(await page.locator('button[data-action]').count(), 0, 'no redrive without write');
  await page.goto(`${base}/ui/#/events/${failedEvent}`);
  await page.locator('#event-body .error', { hasText: 'E1004' }).waitFor({ timeout: WAIT_MS });
  await checkNothingRan(page, problems, 'read-only key');
  await checkAccessibility(page, 'read-only key');
  log('tenant B\'s read-only key sees its endpoints and events only, and no action');
}

async function many(browser) {
  const count = Number(env('KAPSEL_ENDPOINT_COUNT'));
  const id = (n) => `ep-${String(n).padStart(5, '0')}`;
  const { page, problems } = await openPage(browser);
  await page.goto(`${base}/ui/#/endpoints`);
  await signIn(page, token);
  const before = Date.now();
  await page.locator('#endpoints tbody tr').first().waitFor({ timeout: WAIT_MS });
  log(`first page of ${count} endpoints shown ${Date.now() - before} ms after sign-in`);
  const pageIds = () => page.$$eval('#endpoints tbody tr', (rows) => rows.map((row) => row.dataset.endpoint));
  const first = await pageIds();
  assert.equal(first.length, 100, 'one page of rows, not all of them');
  assert.deepEqual(first, Array.from({ length: 100 }, (_, n) => id(n)));
  assert.equal(await page.isDisabled('#endpoints-previous'), true);
  await shot(page, 'endpoints-10000.png');
  // Forward through a few pages, then back.
  for (let pageNumber = 2; pageNumber <= 5; pageNumber += 1) {
    const started = Date.now();
    await page.click('#endpoints-next');
    await page.locator('#endpoints-page', { hasText: `Page ${pageNumber}` }).waitFor({ timeout: WAIT_MS });
    await page.locator(`#endpoints tr[data-endpoint="${id((pageNumber - 1) * 100)}"]`).waitFor({ timeout: WAIT_MS });
    const ids = await pageIds();
    assert.deepEqual(ids, Array.from({ length: 100 }, (_, n) => id((pageNumber - 1) * 100 + n)));
    log(`page ${pageNumber} in ${Date.now() - started} ms`);
  }
  await page.click('#endpoints-previous');
  await page.locator('#endpoints-page', { hasText: 'Page 4' }).waitFor({ timeout: WAIT_MS });
  await page.locator(`#endpoints tr[data-endpoint="${id(300)}"]`).waitFor({ timeout: WAIT_MS });
  assert.equal((await pageIds())[0], id(300));
  assert.equal(await page.locator('#endpoints tbody tr').count(), 100);
  await checkNothingRan(page, problems, 'many endpoints');
  log('pagination through 10 000 endpoints works both ways');
}

async function main() {
  checkMetricsArithmetic();
  await mkdir(screenshots, { recursive: true });
  await rm(path.join(screenshots, `failure-${scenario}.png`), { force: true });
  const browser = await launch();
  log(`chromium ${browser.version()}`);
  try {
    if (scenario === 'many') await many(browser);
    else await tour(browser);
  } catch (error) {
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        await page.screenshot({ path: path.join(screenshots, `failure-${scenario}.png`), fullPage: true }).catch(() => {});
      }
    }
    throw error;
  } finally {
    await browser.close();
  }
  log(`${scenario}: every check passed`);
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack ?? error}`);
  process.exit(1);
});
