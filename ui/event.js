// One event: its state, every attempt, the last response, a payload preview, its Merkle proof
// once its segment is sealed, and redrive (of the event, or of one delivery of a published one).
// While a redriven event is still on its way the view refreshes itself.

import { ApiError, call, describe, withQuery } from './api.js';
import { announce, badge, byId, confirmAction, el, number, replace, show, tableHead, time, titledSection } from './dom.js';

/** Characters of a payload preview shown at most (the API caps what it sends too). */
const PREVIEW_CHARACTERS_MAX = 16 * 1024;
const REFRESH_MS = 2000;
const WAITING = new Set(['pending', 'delivering', 'retrying']);

let context = { canWrite: false };
let eventId = null;
let timer = null;
let following = false;

export async function enter(entered) {
  context = entered;
  eventId = entered.argument;
  following = false;
  replace(byId('event-title'), `Event ${eventId}`);
  replace(byId('event-body'), el('p', {}, 'Loading…'));
  await load();
}

export function leave() {
  clearTimeout(timer);
  timer = null;
  following = false;
  eventId = null;
}

async function load() {
  clearTimeout(timer);
  const id = eventId;
  if (!id) return;
  const base = `/admin/events/${encodeURIComponent(id)}`;
  let event;
  try {
    event = await call('GET', base);
  } catch (error) {
    replace(byId('event-body'), el('p', { class: 'error', role: 'alert' }, `Could not read the event: ${describe(error)}`));
    return;
  }
  const [payload, proof] = await Promise.allSettled([call('GET', `${base}/payload`), call('GET', `${base}/proof`)]);
  if (id !== eventId) return;
  replace(
    byId('event-body'),
    summary(event),
    event.deliveries ? deliveries(event) : attemptsSection(event.attempts, event.last_response_excerpt),
    payloadSection(payload),
    proofSection(proof),
  );
  if (following && WAITING.has(event.status)) {
    timer = setTimeout(load, REFRESH_MS);
  } else if (following) {
    following = false;
    announce(`Event ${id} is now ${event.status}.`, event.status === 'delivered' ? 'success' : 'info');
  }
}

function summary(event) {
  const rows = [
    ['Status', badge(event.status)],
    ['Type', show(event.type)],
    ['Channel', show(event.channel)],
    ['Endpoint', event.endpoint_id ? show(event.endpoint_id) : `published to ${number(event.endpoints)} endpoints`],
    ['Received', time(event.received_at)],
    ['Updated', time(event.updated_at)],
    // Only answers from the index carry these two.
    ['Delivered', 'delivered_at' in event ? time(event.delivered_at) : undefined],
    ['Attempts', number(event.attempt_count)],
    ['Next attempt', time(event.next_attempt_at)],
    ['Waiting because', show(event.waiting_reason)],
    ['Idempotency key', show(event.idempotency_key)],
    ['Payload size', `${number(event.payload_bytes)} bytes`],
    ['Trace id', 'trace_id' in event ? show(event.trace_id) : undefined],
  ].filter(([, value]) => value !== undefined);
  const list = el('dl', { class: 'facts', id: 'event-facts' });
  for (const [term, value] of rows) list.append(el('dt', {}, term), el('dd', {}, value));
  const section = titledSection('event-summary-title', 'Summary', list);
  if (context.canWrite && !event.deliveries) {
    section.append(el('button', { type: 'button', id: 'redrive', 'data-action': 'redrive', onclick: () => redrive(event, null) }, 'Redrive event'));
  }
  return section;
}

/** Characters of an attempt's response shown before it folds into a disclosure. */
const RESPONSE_INLINE_MAX = 80;

/** An attempt's response excerpt (memory keeps only the last failed one's; the index every one). */
function response(text) {
  if (text === null || text === undefined || text === '') return '—';
  if (text.length <= RESPONSE_INLINE_MAX) return el('code', { class: 'response' }, text);
  return el('details', {}, el('summary', {}, el('code', {}, `${text.slice(0, RESPONSE_INLINE_MAX)}…`)), el('pre', { class: 'excerpt' }, text));
}

function attemptTable(attempts, label) {
  if (!attempts?.length) return el('p', { class: 'empty' }, 'No attempt yet.');
  const withResponses = attempts.some((attempt) => 'response_excerpt' in attempt);
  const headings = ['#', 'At', 'HTTP status', 'Latency (ms)', 'Error'];
  if (withResponses) headings.push('Response');
  const head = tableHead(headings);
  const body = el('tbody');
  for (const attempt of attempts) {
    body.append(
      el(
        'tr',
        { 'data-attempt': attempt.n },
        el('td', { class: 'number' }, number(attempt.n)),
        el('td', {}, time(attempt.at)),
        el('td', { class: 'number' }, show(attempt.status_code)),
        el('td', { class: 'number' }, number(attempt.latency_ms)),
        el('td', {}, show(attempt.error_code)),
        withResponses ? el('td', { class: 'response' }, response(attempt.response_excerpt)) : null,
      ),
    );
  }
  return el('div', { class: 'table-wrap' }, el('table', { class: 'data attempts' }, el('caption', { class: 'visually-hidden' }, label), head, body));
}

function excerpt(text) {
  if (!text) return el('p', { class: 'empty' }, 'No response kept (only a failed attempt’s is).');
  return el('pre', { class: 'excerpt', tabindex: '0', 'aria-label': 'Last response excerpt' }, text);
}

function attemptsSection(attempts, lastResponse) {
  return el(
    'section',
    { 'aria-labelledby': 'event-attempts-title' },
    el('h2', { id: 'event-attempts-title' }, 'Attempts'),
    attemptTable(attempts, 'Attempts'),
    el('h3', {}, 'Last response'),
    excerpt(lastResponse),
  );
}

function deliveries(event) {
  const section = titledSection('event-deliveries-title', 'Deliveries');
  if (event.deliveries.length === 0) section.append(el('p', { class: 'empty' }, 'No endpoint subscribed.'));
  for (const delivery of event.deliveries) {
    const heading = el('h3', {}, 'To ', el('span', { class: 'id' }, show(delivery.endpoint_id)), ' ', badge(delivery.status));
    const part = el('div', { class: 'delivery', 'data-endpoint': delivery.endpoint_id }, heading);
    part.append(
      el('p', {}, 'Next attempt: ', time(delivery.next_attempt_at), '. Waiting because: ', show(delivery.waiting_reason), '.'),
      attemptTable(delivery.attempts, `Attempts to ${delivery.endpoint_id}`),
      el('h4', {}, 'Last response'),
      excerpt(delivery.last_response_excerpt),
    );
    if (context.canWrite) {
      part.append(
        el(
          'button',
          { type: 'button', 'data-action': 'redrive', onclick: () => redrive(event, delivery.endpoint_id) },
          `Redrive to ${delivery.endpoint_id}`,
        ),
      );
    }
    section.append(part);
  }
  return section;
}

function payloadSection(settled) {
  const section = titledSection('event-payload-title', 'Payload');
  if (settled.status === 'rejected') {
    const error = settled.reason;
    const missing = error instanceof ApiError && error.status === 404;
    section.append(el('p', { class: 'empty' }, missing ? 'The payload is no longer kept (or this Kapsel cannot show it).' : `Could not read the payload: ${describe(error)}`));
    return section;
  }
  const payload = settled.value ?? {};
  let preview = String(payload.preview ?? '');
  let cut = Boolean(payload.truncated);
  if (preview.length > PREVIEW_CHARACTERS_MAX) {
    preview = preview.slice(0, PREVIEW_CHARACTERS_MAX);
    cut = true;
  }
  const encoding = payload.encoding === 'base64' ? 'base64 (not UTF-8 text)' : 'UTF-8 text';
  section.append(
    el('p', {}, `${show(payload.content_type)}, ${number(payload.payload_bytes)} bytes, shown as ${encoding}${cut ? ', cut short' : ''}.`),
    el('pre', { class: 'payload', id: 'payload-preview', tabindex: '0', 'aria-label': 'Payload preview' }, preview),
  );
  return section;
}

function proofSection(settled) {
  const section = titledSection('event-proof-title', 'Merkle proof');
  if (settled.status === 'rejected') {
    const error = settled.reason;
    const unsealed = error instanceof ApiError && error.status === 404;
    section.append(el('p', { id: 'proof-state' }, unsealed ? 'Not sealed yet: the segment holding this event is still being written.' : `Could not read the proof: ${describe(error)}`));
    return section;
  }
  const proof = settled.value ?? {};
  const list = el('dl', { class: 'facts', id: 'proof-facts' });
  const rows = [
    ['Shard', show(proof.shard)],
    ['Segment', show(proof.segment_id)],
    ['Record LSN', show(proof.lsn)],
    ['Leaf', `${show(proof.leaf_index)} of ${show(proof.tree_size)}`],
    ['Leaf hash', el('code', {}, show(proof.leaf_hash))],
    ['Root', el('code', {}, show(proof.root))],
    ['Chain', el('code', {}, show(proof.chain))],
    ['Algorithm', show(proof.algorithm)],
  ];
  for (const [term, value] of rows) list.append(el('dt', {}, term), el('dd', {}, value));
  const path = el('ol', { class: 'hashes' }, (proof.audit_path ?? []).map((hash) => el('li', {}, el('code', {}, show(hash)))));
  section.append(el('p', { id: 'proof-state' }, 'Sealed: the record is in its segment’s Merkle tree.'), list, el('details', {}, el('summary', {}, `Audit path (${number(proof.audit_path?.length ?? 0)} hashes)`), path));
  return section;
}

async function redrive(event, endpointId) {
  const target = endpointId ? ` to ${endpointId}` : '';
  const confirmed = await confirmAction('Redrive?', `Deliver ${event.event_id}${target} again, with a fresh retry budget?`, 'Redrive');
  if (!confirmed) return;
  const path = withQuery(`/admin/events/${encodeURIComponent(event.event_id)}/retry`, { endpoint_id: endpointId });
  try {
    await call('POST', path);
    announce(`Redrive of ${event.event_id}${target} accepted; following it.`, 'success');
    following = true;
  } catch (error) {
    announce(`Could not redrive ${event.event_id}: ${describe(error)}`, 'error');
  }
  await load();
}
