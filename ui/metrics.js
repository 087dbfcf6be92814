// Reading `GET /metrics` (Prometheus text format 0.0.4) and turning two scrapes into rates and
// quantiles. Pure functions: no DOM, no fetch, so tests/ui/dashboard.mjs checks them in Node.

/** Parses the text into samples `{name, labels, value}`; comments and malformed lines are skipped. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    const labelPattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const [, name, value] of (match[3] ?? '').matchAll(labelPattern)) {
      labels[name] = value.replace(/\\(["\\n])/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    const value = match[4] === '+Inf' ? Infinity : Number(match[4]);
    if (!Number.isNaN(value)) samples.push({ name: match[1], labels, value });
  }
  return samples;
}

/** The sum of a metric's samples whose labels include `where`; null when it has none. */
export function total(samples, name, where = {}) {
  let sum = null;
  for (const sample of samples) {
    if (sample.name !== name) continue;
    if (!Object.entries(where).every(([label, value]) => sample.labels[label] === value)) continue;
    sum = (sum ?? 0) + sample.value;
  }
  return sum;
}

/** A histogram's cumulative buckets summed over its series: `[[le, count], …]` by bound. */
export function buckets(samples, name) {
  const byBound = new Map();
  for (const sample of samples) {
    if (sample.name !== `${name}_bucket`) continue;
    const bound = sample.labels.le === '+Inf' ? Infinity : Number(sample.labels.le);
    byBound.set(bound, (byBound.get(bound) ?? 0) + sample.value);
  }
  return [...byBound.entries()].sort((a, b) => a[0] - b[0]);
}

/** The buckets observed between two scrapes (counts subtracted bound by bound). A counter that
 *  went down means a restart: then the later scrape alone is the window. */
export function bucketDelta(before, after) {
  const earlier = new Map(before);
  const delta = after.map(([bound, count]) => [bound, count - (earlier.get(bound) ?? 0)]);
  return delta.some(([, count]) => count < 0) ? after : delta;
}

/** The q-quantile of cumulative buckets, interpolated linearly within its bucket as Prometheus'
 *  histogram_quantile does; null without observations. Past the last finite bound it answers
 *  that bound (the quantile is at least that). */
export function quantile(q, cumulative) {
  if (cumulative.length === 0) return null;
  const count = cumulative[cumulative.length - 1][1];
  if (!(count > 0)) return null;
  const rank = q * count;
  let previousBound = 0;
  let previousCount = 0;
  for (const [bound, cumulativeCount] of cumulative) {
    if (cumulativeCount >= rank) {
      if (bound === Infinity) return previousBound;
      const inBucket = cumulativeCount - previousCount;
      if (inBucket <= 0) return bound;
      return previousBound + (bound - previousBound) * ((rank - previousCount) / inBucket);
    }
    previousBound = bound;
    previousCount = cumulativeCount;
  }
  return previousBound;
}

/** Per-second rate of a counter between two scrapes `seconds` apart; null when unknown. */
export function rate(before, after, seconds) {
  if (before === null || after === null || !(seconds > 0)) return null;
  const change = after - before;
  return change < 0 ? after / seconds : change / seconds;
}

/** What the overview shows, from the previous scrape (or null) and this one. */
export function summarize(previous, current, seconds) {
  const counters = (samples) => ({
    ingest: total(samples, 'kapsel_ingest_requests_total'),
    ingestAccepted: total(samples, 'kapsel_ingest_requests_total', { code: '' }),
    delivered: total(samples, 'kapsel_deliveries_total', { outcome: 'delivered' }),
    attempts: total(samples, 'kapsel_deliveries_total'),
  });
  const now = counters(current);
  const then = previous ? counters(previous) : null;
  const p99 = (name) => {
    const after = buckets(current, name);
    const window = previous ? bucketDelta(buckets(previous, name), after) : null;
    return { window: window ? quantile(0.99, window) : null, overall: quantile(0.99, after) };
  };
  return {
    ingestPerSecond: then ? rate(then.ingest, now.ingest, seconds) : null,
    acceptedPerSecond: then ? rate(then.ingestAccepted ?? 0, now.ingestAccepted ?? 0, seconds) : null,
    deliveredPerSecond: then ? rate(then.delivered ?? 0, now.delivered ?? 0, seconds) : null,
    attemptsPerSecond: then ? rate(then.attempts ?? 0, now.attempts ?? 0, seconds) : null,
    ingestP99: p99('kapsel_ingest_duration_seconds'),
    attemptP99: p99('kapsel_delivery_attempt_duration_seconds'),
    deliveryP99: p99('kapsel_delivery_latency_seconds'),
    breakersOpen: total(current, 'kapsel_circuit_breakers', { state: 'open' }),
    breakersHalfOpen: total(current, 'kapsel_circuit_breakers', { state: 'half_open' }),
    openEndpoints: current
      .filter((sample) => sample.name === 'kapsel_circuit_open' && sample.value > 0)
      .map((sample) => ({ endpoint: sample.labels.endpoint_id, tenant: sample.labels.tenant_id, state: sample.labels.state })),
    indexUp: total(current, 'kapsel_index_up'),
    indexLagRecords: total(current, 'kapsel_index_lag_records'),
    indexLagSeconds: total(current, 'kapsel_index_lag_seconds'),
    eventsWaiting: total(current, 'kapsel_events_waiting'),
    inFlight: total(current, 'kapsel_deliveries_in_flight'),
    endpoints: total(current, 'kapsel_endpoints'),
  };
}
