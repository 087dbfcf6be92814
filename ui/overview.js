// The live overview: `/metrics` read every few seconds; rates and p99 come from the difference
// between two scrapes (metrics.js), so the first refresh shows totals only.

import { describe, metricsText } from './api.js';
import { byId, el, number, replace } from './dom.js';
import { parseMetrics, summarize } from './metrics.js';

const REFRESH_MS = 3000;

let timer = null;
let previous = null;
let previousAt = 0;
let active = false;

export async function enter() {
  active = true;
  previous = null;
  await refresh();
}

export function leave() {
  active = false;
  clearTimeout(timer);
  timer = null;
}

function seconds(value) {
  if (value === null || value === undefined) return '—';
  if (value < 0.001) return `${number(value * 1e6)} µs`;
  if (value < 1) return `${number(value * 1000)} ms`;
  return `${number(value)} s`;
}

function perSecond(value) {
  return value === null ? 'measuring…' : `${number(value)} /s`;
}

function p99(pair) {
  if (pair.window !== null) return { value: seconds(pair.window), note: 'last interval' };
  if (pair.overall !== null) return { value: seconds(pair.overall), note: 'since start (idle now)' };
  return { value: '—', note: 'no observations yet' };
}

function card(id, label, value, note) {
  return el('div', { class: 'card', id: `card-${id}` }, el('h2', {}, label), el('p', { class: 'value' }, value), el('p', { class: 'note' }, note ?? ''));
}

async function refresh() {
  clearTimeout(timer);
  if (!active) return;
  try {
    const text = await metricsText();
    const now = performance.now();
    const current = parseMetrics(text);
    const stats = summarize(previous, current, (now - previousAt) / 1000);
    previous = current;
    previousAt = now;
    if (active) render(stats);
  } catch (error) {
    replace(byId('overview-cards'), el('p', { class: 'error', role: 'alert' }, `Could not read /metrics: ${describe(error)}`));
  }
  if (active) timer = setTimeout(refresh, REFRESH_MS);
}

function render(stats) {
  const ingestP99 = p99(stats.ingestP99);
  const attemptP99 = p99(stats.attemptP99);
  const deliveryP99 = p99(stats.deliveryP99);
  const index = stats.indexUp === null
    ? { value: 'no index', note: 'DATABASE_URL is not set' }
    : { value: `${number(stats.indexLagRecords)} records`, note: `${seconds(stats.indexLagSeconds)} behind; ${stats.indexUp ? 'connected' : 'unavailable'}` };
  replace(
    byId('overview-cards'),
    card('ingest', 'Ingest rate', perSecond(stats.ingestPerSecond), stats.acceptedPerSecond === null ? '' : `${number(stats.acceptedPerSecond)} /s accepted`),
    card('delivery', 'Delivery rate', perSecond(stats.deliveredPerSecond), stats.attemptsPerSecond === null ? '' : `${number(stats.attemptsPerSecond)} attempts /s`),
    card('ingest-p99', 'Ingest p99', ingestP99.value, ingestP99.note),
    card('attempt-p99', 'Attempt p99', attemptP99.value, attemptP99.note),
    card('delivery-p99', 'Ingest to delivered p99', deliveryP99.value, deliveryP99.note),
    card('breakers', 'Breakers open', number(stats.breakersOpen ?? 0), `${number(stats.breakersHalfOpen ?? 0)} half open`),
    card('index', 'Index lag', index.value, index.note),
    card('waiting', 'Events waiting', number(stats.eventsWaiting), `${number(stats.inFlight)} attempts in flight`),
    card('endpoints', 'Endpoints', number(stats.endpoints), ''),
  );
  const open = stats.openEndpoints;
  replace(
    byId('overview-breakers'),
    open.length
      ? el('ul', { class: 'breakers' }, open.map((entry) => el('li', {}, el('span', { class: 'id' }, entry.endpoint ?? '—'), ` (${entry.tenant ?? '—'}): ${entry.state ?? '—'}`)))
      : el('p', { class: 'empty' }, 'None you may see.'),
  );
  replace(byId('overview-updated'), `Updated ${new Date().toISOString().slice(11, 19)} UTC.`);
}
