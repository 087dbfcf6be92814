// The endpoints view: one page of `GET /admin/endpoints?limit=&cursor=` at a time (ascending by
// id), so 10 000 endpoints cost one page of rows; previous pages are a stack of cursors.

import { call, describe, withQuery } from './api.js';
import { announce, badge, byId, confirmAction, el, number, replace, show, tableHead, time } from './dom.js';

const PAGE_SIZE = 100;

let context = { canWrite: false, isOperator: false };
/** Cursors of the pages before the current one, and the current one's (null: the first). */
let cursors = [];
let cursor = null;
let nextCursor = null;
/** Loads asked for so far: only the latest one's answer is shown. */
let loads = 0;

export function setUp() {
  byId('endpoints-refresh').addEventListener('click', () => load());
  byId('endpoints-next').addEventListener('click', () => {
    if (nextCursor === null) return;
    cursors.push(cursor);
    cursor = nextCursor;
    load();
  });
  byId('endpoints-previous').addEventListener('click', () => {
    if (cursors.length === 0) return;
    cursor = cursors.pop();
    load();
  });
}

export async function enter(entered) {
  context = entered;
  cursors = [];
  cursor = null;
  await load();
}

async function load() {
  const generation = ++loads;
  const table = byId('endpoints-table');
  table.setAttribute('aria-busy', 'true');
  // Until this page is in, the pager's cursors are not known.
  byId('endpoints-previous').disabled = true;
  byId('endpoints-next').disabled = true;
  try {
    const page = await call('GET', withQuery('/admin/endpoints', { limit: PAGE_SIZE, cursor }));
    if (generation !== loads) return; // a later load was asked for meanwhile
    nextCursor = page?.next_cursor ?? null;
    render(page?.endpoints ?? []);
  } catch (error) {
    if (generation !== loads) return;
    nextCursor = null;
    replace(table, el('p', { class: 'error' }, `Could not list endpoints: ${describe(error)}`));
  } finally {
    if (generation === loads) table.removeAttribute('aria-busy');
    byId('endpoints-previous').disabled = cursors.length === 0;
    byId('endpoints-next').disabled = nextCursor === null;
    replace(byId('endpoints-page'), `Page ${cursors.length + 1}`);
  }
}

function lastError(stats) {
  const last = stats?.last_error;
  if (!last) return '—';
  const status = last.status_code ? ` (HTTP ${last.status_code})` : '';
  return el('span', {}, `${show(last.error_code)}${status} `, el('br'), time(last.at));
}

function render(list) {
  const headings = ['Endpoint', 'URL'];
  if (context.isOperator) headings.push('Tenant');
  headings.push('Enabled', 'Circuit', 'Queue', 'In flight', 'Delivered', 'Failed', 'Last error', 'Actions');
  const head = tableHead(headings);
  const body = el('tbody');
  for (const endpoint of list) body.append(row(endpoint));
  const caption = el('caption', { class: 'visually-hidden' }, `Endpoints, page ${cursors.length + 1}`);
  const table = list.length
    ? el('table', { class: 'data', id: 'endpoints' }, caption, head, body)
    : el('p', { class: 'empty' }, 'No endpoints.');
  replace(byId('endpoints-table'), table);
}

function row(endpoint) {
  const stats = endpoint.stats ?? {};
  const cells = [
    el('th', { scope: 'row', class: 'id' }, show(endpoint.id)),
    el('td', { class: 'url' }, show(endpoint.url)),
  ];
  if (context.isOperator) cells.push(el('td', {}, show(endpoint.tenant_id)));
  cells.push(
    el('td', {}, badge(endpoint.enabled ? 'enabled' : 'disabled')),
    el('td', {}, badge(endpoint.circuit_state)),
    el('td', { class: 'number' }, number(endpoint.queue_depth)),
    el('td', { class: 'number' }, number(endpoint.in_flight)),
    el('td', { class: 'number' }, number(stats.delivered)),
    el('td', { class: 'number' }, number(stats.failed)),
    el('td', { class: 'last-error' }, lastError(stats)),
    el('td', { class: 'actions' }, actions(endpoint)),
  );
  return el('tr', { 'data-endpoint': endpoint.id }, cells);
}

function actions(endpoint) {
  const events = el('a', { href: `#/events?${new URLSearchParams({ endpoint_id: endpoint.id })}` }, 'Events');
  if (!context.canWrite) return events;
  const toggle = endpoint.enabled
    ? el('button', { type: 'button', class: 'secondary', 'data-action': 'disable', onclick: () => setEnabled(endpoint, false) }, 'Disable')
    : el('button', { type: 'button', class: 'secondary', 'data-action': 'enable', onclick: () => setEnabled(endpoint, true) }, 'Enable');
  const retry = el(
    'button',
    { type: 'button', class: 'secondary', 'data-action': 'retry-failed', onclick: () => retryFailed(endpoint) },
    'Retry failed',
  );
  return [events, ' ', toggle, ' ', retry];
}

async function setEnabled(endpoint, enabled) {
  const verb = enabled ? 'Enable' : 'Disable';
  const consequence = enabled
    ? 'Deliveries to it resume.'
    : 'Deliveries to it stop; its events keep being accepted and wait in the log.';
  if (!(await confirmAction(`${verb} endpoint?`, `${verb} ${endpoint.id}? ${consequence}`, verb))) return;
  const path = `/admin/endpoints/${encodeURIComponent(endpoint.id)}/${enabled ? 'enable' : 'disable'}`;
  try {
    await call('POST', path);
    announce(`Endpoint ${endpoint.id} ${enabled ? 'enabled' : 'disabled'}.`, 'success');
  } catch (error) {
    announce(`Could not ${verb.toLowerCase()} ${endpoint.id}: ${describe(error)}`, 'error');
  }
  await load();
}

async function retryFailed(endpoint) {
  const confirmed = await confirmAction(
    'Retry failed events?',
    `Redeliver every failed event of ${endpoint.id} with a fresh retry budget?`,
    'Retry failed',
  );
  if (!confirmed) return;
  try {
    const answer = await call('POST', `/admin/endpoints/${encodeURIComponent(endpoint.id)}/retry-failed`);
    announce(`${endpoint.id}: ${number(answer?.requeued ?? 0)} failed events queued again, ${number(answer?.expired ?? 0)} expired.`, 'success');
  } catch (error) {
    announce(`Could not retry ${endpoint.id}: ${describe(error)}`, 'error');
  }
  await load();
}
