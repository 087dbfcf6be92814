// The events view: the filters of `GET /admin/events` (kept in the address after `#/events?`, so
// back and forward work), one page at a time, newest first, and which source answered.

import { call, describe, withQuery } from './api.js';
import { badge, byId, el, number, replace, show, tableHead, time } from './dom.js';

const FILTERS = ['endpoint_id', 'status', 'event_type', 'channel', 'idempotency_key', 'received_after', 'received_before'];
const TIMES = new Set(['received_after', 'received_before']);

let query = {};
let cursors = [];
let cursor = null;
let nextCursor = null;
/** Loads asked for so far: only the latest one's answer is shown. */
let loads = 0;

/** `2026-12-05T10:00` (a datetime-local value, read as UTC) → `2026-12-05T10:00:00Z`. */
function toRfc3339(local) {
  if (!local) return '';
  const withSeconds = /T\d\d:\d\d$/.test(local) ? `${local}:00` : local;
  return `${withSeconds}Z`;
}

/** `2026-12-05T10:00:00Z` → the datetime-local value. */
function fromRfc3339(text) {
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?)/.exec(text ?? '');
  return match ? match[1] : '';
}

function form() {
  return byId('events-form');
}

export function setUp() {
  form().addEventListener('submit', (submitted) => {
    submitted.preventDefault();
    const parameters = new URLSearchParams();
    for (const name of FILTERS) {
      const raw = form().elements[name].value.trim();
      const value = TIMES.has(name) ? toRfc3339(raw) : raw;
      if (value) parameters.set(name, value);
    }
    const limit = form().elements.limit.value;
    if (limit !== '50') parameters.set('limit', limit);
    const hash = `#/events?${parameters}`;
    if (location.hash === hash) load(true);
    else location.hash = hash;
  });
  byId('events-reset').addEventListener('click', () => {
    form().reset();
    location.hash = '#/events';
  });
  byId('events-next').addEventListener('click', () => {
    if (nextCursor === null) return;
    cursors.push(cursor);
    cursor = nextCursor;
    load(false);
  });
  byId('events-previous').addEventListener('click', () => {
    if (cursors.length === 0) return;
    cursor = cursors.pop();
    load(false);
  });
}

export async function enter({ parameters }) {
  query = {};
  for (const name of FILTERS) {
    const value = parameters.get(name) ?? '';
    form().elements[name].value = TIMES.has(name) ? fromRfc3339(value) : value;
    if (value) query[name] = value;
  }
  const limit = parameters.get('limit') ?? '50';
  form().elements.limit.value = ['25', '50', '100'].includes(limit) ? limit : '50';
  query.limit = form().elements.limit.value;
  await load(true);
}

async function load(fromStart) {
  const generation = ++loads;
  if (fromStart) {
    cursors = [];
    cursor = null;
  }
  const table = byId('events-table');
  table.setAttribute('aria-busy', 'true');
  // Until this page is in, the pager's cursors are not known.
  byId('events-previous').disabled = true;
  byId('events-next').disabled = true;
  try {
    const page = await call('GET', withQuery('/admin/events', { ...query, cursor }));
    if (generation !== loads) return; // a later load was asked for meanwhile
    nextCursor = page?.next_cursor ?? null;
    const source = page?.source === 'index' ? 'the Postgres index (whole history)' : 'memory (recent and waiting events)';
    replace(byId('events-source'), `Answered from ${source}.`);
    byId('events-source').dataset.source = show(page?.source);
    render(page?.events ?? []);
    // Which search the table shows (the browser test waits on it).
    table.dataset.query = withQuery('', { ...query, cursor }).slice(1);
  } catch (error) {
    if (generation !== loads) return;
    nextCursor = null;
    replace(byId('events-source'));
    replace(table, el('p', { class: 'error', role: 'alert' }, `Could not search events: ${describe(error)}`));
  } finally {
    if (generation === loads) table.removeAttribute('aria-busy');
    byId('events-previous').disabled = cursors.length === 0;
    byId('events-next').disabled = nextCursor === null;
  }
}

function render(list) {
  const headings = ['Event', 'Received', 'Endpoint', 'Type', 'Channel', 'Status', 'Attempts', 'Idempotency key'];
  const head = tableHead(headings);
  const body = el('tbody');
  for (const event of list) {
    body.append(
      el(
        'tr',
        { 'data-event': event.event_id },
        el('th', { scope: 'row', class: 'id' }, el('a', { href: `#/events/${encodeURIComponent(event.event_id)}` }, show(event.event_id))),
        el('td', {}, time(event.received_at)),
        el('td', { class: 'id' }, show(event.endpoint_id)),
        el('td', { class: 'type' }, show(event.type)),
        el('td', {}, show(event.channel)),
        el('td', {}, badge(event.status)),
        el('td', { class: 'number' }, number(event.attempt_count)),
        el('td', { class: 'key' }, show(event.idempotency_key)),
      ),
    );
  }
  const caption = el('caption', { class: 'visually-hidden' }, 'Events, newest first');
  replace(
    byId('events-table'),
    list.length ? el('table', { class: 'data', id: 'events' }, caption, head, body) : el('p', { class: 'empty' }, 'No events match.'),
  );
}
