//! `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Each shard records into its own `ShardMetrics` (`shard::stats`) — plain cells on its own thread, no atomics
//! on the hot path — with latencies in HdrHistograms. A scrape asks every shard for a
//! [`ShardReport`] over its inbox (as event listings do), merges the reports and renders them
//! with the logs' counters ([`kapsel_wal::IoCounters`]), the index's status and the process's
//! resident memory.
//!
//! Cardinality: labels are shard numbers, statuses, E-codes and outcomes — all bounded. The
//! only per-endpoint series is `kapsel_circuit_open`, for endpoints whose breaker is open or
//! half-open, at most [`OPEN_BREAKERS_REPORTED_MAX`] per shard.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::shard::stats::Latency;
use crate::shard::Shard;

/// Per-endpoint `kapsel_circuit_open` series per shard, at most.
pub const OPEN_BREAKERS_REPORTED_MAX: usize = 100;

/// Bucket bounds of the ingest latency histogram, in seconds.
const INGEST_BOUNDS_S: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Bucket bounds of the delivery histograms, in seconds.
const DELIVERY_BOUNDS_S: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// The log's counters as a scrape reads them.
#[derive(Clone, Debug, Default)]
pub struct WalReport {
    records: u64,
    bytes: u64,
    writes: u64,
    syncs: u64,
    commit_latency_us: Vec<(Option<u64>, u64)>,
    commit_latency_sum_us: u64,
    batch_records: Vec<(Option<u64>, u64)>,
    batch_records_sum: u64,
    durable_lsn: u64,
    sealed_segments: usize,
    poisoned: bool,
    /// Why the log cannot write now (`no_space`, `io_error`, …), when it cannot.
    failure_kind: Option<&'static str>,
    failures: u64,
    reopens: u64,
}

/// One shard's numbers, sent to the shard that renders the scrape.
#[derive(Clone, Debug)]
pub struct ShardReport {
    shard: usize,
    /// `shard` for a local shard, `partition` for a cluster partition this node owns.
    label: &'static str,
    ingest: BTreeMap<(u16, &'static str), u64>,
    refused: BTreeMap<(u16, &'static str), u64>,
    deliveries: BTreeMap<(&'static str, &'static str), u64>,
    ingest_latency: Latency,
    attempt_latency: Latency,
    delivery_latency: Latency,
    connections_open: u64,
    connections_total: u64,
    endpoints: usize,
    events_tracked: usize,
    events_waiting: usize,
    ready: usize,
    in_flight: u64,
    idempotency_keys: usize,
    handoffs_pending: usize,
    payload_bytes: usize,
    payloads_cached: usize,
    read_backs: u64,
    read_back_events: u64,
    read_back_failures: u64,
    retention_passes: u64,
    segments_removed: u64,
    breakers: BTreeMap<&'static str, u64>,
    /// Endpoint, its tenant, its breaker's state.
    open_breakers: Vec<(String, String, &'static str)>,
    /// The local log's numbers; none for a partition's stream.
    wal: Option<WalReport>,
}

/// Which endpoints a scrape may see named (`kapsel_circuit_open`): `/metrics` takes no token,
/// so an anonymous scrape sees none, a key its tenant's, the operator token all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointNames {
    /// Every endpoint.
    All,
    /// One tenant's.
    Tenant(String),
    /// None.
    None,
}

impl ShardReport {
    /// Drops the endpoints the scrape may not see named.
    pub fn keep_endpoint_names(&mut self, names: &EndpointNames) {
        match names {
            EndpointNames::All => {}
            EndpointNames::Tenant(tenant) => self.open_breakers.retain(|(_, of, _)| of == tenant),
            EndpointNames::None => self.open_breakers.clear(),
        }
    }
}

/// Reads a shard's numbers (on its own thread).
pub fn report(shard: &Shard, now_ms: u64) -> ShardReport {
    let metrics = shard.metrics();
    let state = shard.state().borrow();
    let mut breakers = BTreeMap::new();
    let mut open_breakers = Vec::new();
    let (mut ready, mut in_flight) = (0, 0u64);
    for entry in state.endpoints.values() {
        let name = entry.breaker.state_name(now_ms);
        *breakers.entry(name).or_insert(0) += 1;
        if name != "closed" && open_breakers.len() < OPEN_BREAKERS_REPORTED_MAX {
            open_breakers.push((entry.endpoint.id.clone(), entry.endpoint.tenant_id().to_string(), name));
        }
        ready += entry.queue_depth();
        in_flight += u64::from(entry.in_flight);
    }
    ShardReport {
        shard: shard.index,
        label: if shard.wal().is_some() { "shard" } else { "partition" },
        ingest: metrics.ingest.borrow().clone(),
        refused: metrics.refused.borrow().clone(),
        deliveries: metrics.deliveries.borrow().clone(),
        ingest_latency: metrics.ingest_latency.borrow().clone(),
        attempt_latency: metrics.attempt_latency.borrow().clone(),
        delivery_latency: metrics.delivery_latency.borrow().clone(),
        connections_open: metrics.connections_open.get(),
        connections_total: metrics.connections_total.get(),
        endpoints: state.endpoints.len(),
        events_tracked: state.events.len(),
        events_waiting: state.pending_work(),
        ready,
        in_flight,
        idempotency_keys: state.idempotency.len(),
        handoffs_pending: state.publications.pending_count(),
        payload_bytes: state.payload_bytes_held(),
        payloads_cached: state.payloads_cached(),
        read_backs: metrics.read_backs.get(),
        read_back_events: metrics.read_back_events.get(),
        read_back_failures: metrics.read_back_failures.get(),
        retention_passes: metrics.retention_passes.get(),
        segments_removed: metrics.segments_removed.get(),
        breakers,
        open_breakers,
        wal: shard.wal().map(|wal| wal_report(shard, wal)),
    }
}

/// The write-ahead log's part of a shard's report (none for a partition's stream).
fn wal_report(shard: &Shard, wal: &kapsel_wal::Wal) -> WalReport {
    let counters = wal.io_counters();
    WalReport {
        records: counters.records(),
        bytes: counters.bytes_written(),
        writes: counters.writes(),
        syncs: counters.syncs(),
        commit_latency_us: counters.commit_latency().buckets(),
        commit_latency_sum_us: counters.commit_latency().sum(),
        batch_records: counters.batch_records().buckets(),
        batch_records_sum: counters.batch_records().sum(),
        durable_lsn: wal.durable_lsn(),
        sealed_segments: wal.sealed_segments().iter().filter(|seal| wal.holds(seal)).count(),
        poisoned: wal.is_poisoned(),
        failure_kind: shard.storage().failure().map(|failure| failure.kind),
        failures: shard.storage().failures(),
        reopens: shard.storage().recoveries(),
    }
}

/// Writes the Prometheus text for every shard's report, the index's status and the process.
pub fn render(mut reports: Vec<ShardReport>, index: Option<&crate::index::IndexStatus>, now_ms: u64) -> String {
    reports.sort_by_key(|report| (report.label, report.shard));
    let mut out = String::with_capacity(16 * 1024);
    let sum_maps = |pick: &dyn Fn(&ShardReport) -> Vec<(String, u64)>| {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for report in &reports {
            for (labels, value) in pick(report) {
                *merged.entry(labels).or_insert(0) += value;
            }
        }
        merged
    };

    let status_code = |(status, code): &(u16, &str)| format!("status=\"{status}\",code=\"{code}\"");
    let counters: [(&str, &str, BTreeMap<String, u64>); 3] = [
        (
            "kapsel_ingest_requests_total",
            "Ingest requests answered, by status and E-code.",
            sum_maps(&|report| report.ingest.iter().map(|(key, n)| (status_code(key), *n)).collect()),
        ),
        (
            "kapsel_http_refused_total",
            "Requests the HTTP layer refused by itself (malformed, too large, too slow, too many connections).",
            sum_maps(&|report| report.refused.iter().map(|(key, n)| (status_code(key), *n)).collect()),
        ),
        (
            "kapsel_deliveries_total",
            "Delivery attempts by outcome (delivered, retrying, failed) and E-code.",
            sum_maps(&|report| {
                report
                    .deliveries
                    .iter()
                    .map(|((outcome, code), n)| (format!("outcome=\"{outcome}\",code=\"{code}\""), *n))
                    .collect()
            }),
        ),
    ];
    for (name, help, series) in &counters {
        header(&mut out, name, "counter", help);
        for (labels, value) in series {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    let merged = |pick: &dyn Fn(&ShardReport) -> &Latency| {
        let mut total = Latency::new();
        for report in &reports {
            total.merge(pick(report));
        }
        total
    };
    histogram(
        &mut out,
        "kapsel_ingest_duration_seconds",
        "Time from a complete ingest request to its answer.",
        &merged(&|report| &report.ingest_latency),
        &INGEST_BOUNDS_S,
    );
    histogram(
        &mut out,
        "kapsel_delivery_attempt_duration_seconds",
        "Time from sending a delivery to its outcome.",
        &merged(&|report| &report.attempt_latency),
        &DELIVERY_BOUNDS_S,
    );
    histogram(
        &mut out,
        "kapsel_delivery_latency_seconds",
        "Time from ingest to successful delivery.",
        &merged(&|report| &report.delivery_latency),
        &DELIVERY_BOUNDS_S,
    );

    let per_shard = |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&ShardReport) -> u64| {
        header(out, name, kind, help);
        for report in &reports {
            let _ = writeln!(out, "{name}{{{}=\"{}\"}} {}", report.label, report.shard, value(report));
        }
    };
    // The local logs' series: partitions (cluster mode) have none.
    let logs: Vec<(usize, &WalReport)> =
        reports.iter().filter_map(|report| report.wal.as_ref().map(|wal| (report.shard, wal))).collect();
    let per_log = |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&WalReport) -> u64| {
        header(out, name, kind, help);
        for (shard, wal) in &logs {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(wal));
        }
    };
    per_shard(&mut out, "kapsel_connections_open", "gauge", "Inbound connections being served.", &|r| {
        r.connections_open
    });
    per_shard(&mut out, "kapsel_connections_total", "counter", "Inbound connections accepted.", &|r| {
        r.connections_total
    });
    per_shard(&mut out, "kapsel_endpoints", "gauge", "Endpoints owned.", &|r| r.endpoints as u64);
    per_shard(
        &mut out,
        "kapsel_events_waiting",
        "gauge",
        "Events not yet delivered or failed (pending, delivering, retrying).",
        &|r| r.events_waiting as u64,
    );
    per_shard(
        &mut out,
        "kapsel_events_in_memory",
        "gauge",
        "Events tracked in memory, terminal ones in the lookup window included.",
        &|r| r.events_tracked as u64,
    );
    per_shard(&mut out, "kapsel_queue_depth", "gauge", "Events ready for an attempt, waiting for a slot.", &|r| {
        r.ready as u64
    });
    per_shard(&mut out, "kapsel_deliveries_in_flight", "gauge", "Delivery attempts in flight.", &|r| r.in_flight);
    per_shard(&mut out, "kapsel_idempotency_keys", "gauge", "Idempotency keys remembered.", &|r| {
        r.idempotency_keys as u64
    });
    per_shard(
        &mut out,
        "kapsel_publish_handoffs_pending",
        "gauge",
        "Published events whose deliveries other shards have not adopted yet.",
        &|r| r.handoffs_pending as u64,
    );
    per_shard(
        &mut out,
        "kapsel_payload_memory_bytes",
        "gauge",
        "Payload bytes held in memory (cached for waiting events, being read back, in flight).",
        &|r| r.payload_bytes as u64,
    );
    per_shard(&mut out, "kapsel_payloads_cached", "gauge", "Waiting events whose payload is in memory.", &|r| {
        r.payloads_cached as u64
    });
    per_shard(
        &mut out,
        "kapsel_read_backs_total",
        "counter",
        "Read-backs of waiting payloads from the write-ahead log.",
        &|r| r.read_backs,
    );
    per_shard(
        &mut out,
        "kapsel_read_back_events_total",
        "counter",
        "Payloads asked for in read-backs from the write-ahead log.",
        &|r| r.read_back_events,
    );
    per_shard(
        &mut out,
        "kapsel_read_back_failures_total",
        "counter",
        "Payloads that could not be read back (retried with backoff).",
        &|r| r.read_back_failures,
    );
    per_shard(&mut out, "kapsel_retention_passes_total", "counter", "Retention passes run.", &|r| r.retention_passes);
    per_shard(
        &mut out,
        "kapsel_retention_segments_removed_total",
        "counter",
        "Sealed segments retention removed.",
        &|r| r.segments_removed,
    );
    per_log(&mut out, "kapsel_wal_appends_total", "counter", "Records made durable in the write-ahead log.", &|r| {
        r.records
    });
    per_log(&mut out, "kapsel_wal_bytes_total", "counter", "Bytes written to the write-ahead log.", &|r| r.bytes);
    per_log(&mut out, "kapsel_wal_writes_total", "counter", "Write calls (one per group commit, plus seals).", &|r| {
        r.writes
    });
    per_log(&mut out, "kapsel_wal_fsyncs_total", "counter", "fdatasync/fsync calls, directories included.", &|r| {
        r.syncs
    });
    per_log(&mut out, "kapsel_wal_durable_lsn", "gauge", "Highest durable log sequence number.", &|r| r.durable_lsn);
    per_log(&mut out, "kapsel_wal_sealed_segments", "gauge", "Sealed segments on disk.", &|r| r.sealed_segments as u64);
    per_log(
        &mut out,
        "kapsel_wal_poisoned",
        "gauge",
        "1 while a storage failure stops the log (E3003), until it is reopened.",
        &|r| u64::from(r.poisoned),
    );
    header(
        &mut out,
        "kapsel_wal_failure",
        "gauge",
        "1 for each shard whose log cannot write now, labelled with why (no_space, io_error, read_only, other).",
    );
    for (shard, wal) in &logs {
        if let Some(kind) = wal.failure_kind {
            let _ = writeln!(out, "kapsel_wal_failure{{shard=\"{shard}\",kind=\"{kind}\"}} 1");
        }
    }
    per_log(&mut out, "kapsel_wal_failures_total", "counter", "Storage failures that stopped the log.", &|r| {
        r.failures
    });
    per_log(&mut out, "kapsel_wal_reopens_total", "counter", "Logs reopened in place after a storage failure.", &|r| {
        r.reopens
    });
    header(&mut out, "kapsel_wal_commit_duration_seconds", "histogram", "Write plus fdatasync of one group commit.");
    for (shard, wal) in &logs {
        let labels = format!("shard=\"{shard}\"");
        buckets(
            &mut out,
            "kapsel_wal_commit_duration_seconds",
            &labels,
            &wal.commit_latency_us,
            1e-6,
            wal.commit_latency_sum_us as f64 * 1e-6,
        );
    }
    header(&mut out, "kapsel_wal_batch_records", "histogram", "Records per group commit.");
    for (shard, wal) in &logs {
        let labels = format!("shard=\"{shard}\"");
        buckets(&mut out, "kapsel_wal_batch_records", &labels, &wal.batch_records, 1.0, wal.batch_records_sum as f64);
    }
    header(&mut out, "kapsel_circuit_breakers", "gauge", "Endpoints by circuit breaker state.");
    let breakers =
        sum_maps(&|report| report.breakers.iter().map(|(state, n)| (format!("state=\"{state}\""), *n)).collect());
    for state in ["closed", "open", "half_open"] {
        let labels = format!("state=\"{state}\"");
        let _ = writeln!(out, "kapsel_circuit_breakers{{{labels}}} {}", breakers.get(&labels).copied().unwrap_or(0));
    }
    header(
        &mut out,
        "kapsel_circuit_open",
        "gauge",
        "Endpoints whose breaker is open or half-open (at most 100 per shard).",
    );
    for report in &reports {
        for (endpoint, tenant, state) in &report.open_breakers {
            let _ = writeln!(
                out,
                "kapsel_circuit_open{{endpoint_id=\"{}\",tenant_id=\"{}\",state=\"{state}\"}} 1",
                escape(endpoint),
                escape(tenant)
            );
        }
    }
    if let Some(index) = index {
        header(&mut out, "kapsel_index_up", "gauge", "1 while the index database is reachable.");
        let _ = writeln!(out, "kapsel_index_up {}", u8::from(index.is_connected()));
        header(&mut out, "kapsel_index_lag_records", "gauge", "Records durable in the logs but not yet in the index.");
        let _ = writeln!(out, "kapsel_index_lag_records {}", index.lag_records());
        header(&mut out, "kapsel_index_lag_seconds", "gauge", "How long the index has been behind the logs.");
        let _ = writeln!(out, "kapsel_index_lag_seconds {}", index.lag_seconds(now_ms));
        header(&mut out, "kapsel_index_rows_total", "counter", "Records written to the index since start.");
        let _ = writeln!(out, "kapsel_index_rows_total {}", index.rows_indexed());
        header(&mut out, "kapsel_index_passes_total", "counter", "Times the index writer looked for work.");
        let _ = writeln!(out, "kapsel_index_passes_total {}", index.passes());
        header(
            &mut out,
            "kapsel_index_dropped_total",
            "counter",
            "Records the shards could not hand to the index at once (read back from the logs).",
        );
        let _ = writeln!(out, "kapsel_index_dropped_total {}", index.dropped());
    }
    if let Some(rss) = resident_bytes() {
        header(&mut out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    out
}

/// A series' `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, latency: &Latency, bounds_s: &[f64]) {
    header(out, name, "histogram", help);
    for bound in bounds_s {
        let micros = (bound * 1e6) as u64;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", latency.count_at_most(micros));
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", latency.count());
    let _ = writeln!(out, "{name}_sum {}", latency.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", latency.count());
}

/// A fixed-bucket histogram from the log (per-bucket counts, made cumulative here).
fn buckets(out: &mut String, name: &str, labels: &str, counts: &[(Option<u64>, u64)], scale: f64, sum: f64) {
    let mut cumulative = 0;
    for (bound, count) in counts {
        cumulative += count;
        match bound {
            Some(bound) => {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", *bound as f64 * scale);
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// A label value escaped per the text format (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Resident set size from `/proc/self/statm` (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::shard::stats::ShardMetrics;

    /// A shard's report with what `metrics` counted and nothing else going on.
    fn report_of(shard: usize, metrics: &ShardMetrics) -> ShardReport {
        ShardReport {
            label: "shard",
            shard,
            ingest: metrics.ingest.borrow().clone(),
            refused: metrics.refused.borrow().clone(),
            deliveries: metrics.deliveries.borrow().clone(),
            ingest_latency: metrics.ingest_latency.borrow().clone(),
            attempt_latency: metrics.attempt_latency.borrow().clone(),
            delivery_latency: metrics.delivery_latency.borrow().clone(),
            connections_open: metrics.connections_open.get(),
            connections_total: metrics.connections_total.get(),
            endpoints: 3,
            events_tracked: 10,
            events_waiting: 4,
            ready: 2,
            in_flight: 1,
            idempotency_keys: 0,
            handoffs_pending: 0,
            payload_bytes: 2048,
            payloads_cached: 2,
            read_backs: metrics.read_backs.get(),
            read_back_events: metrics.read_back_events.get(),
            read_back_failures: metrics.read_back_failures.get(),
            retention_passes: metrics.retention_passes.get(),
            segments_removed: metrics.segments_removed.get(),
            breakers: BTreeMap::from([("closed", 2), ("open", 1)]),
            open_breakers: vec![("ep\"1".to_string(), "default".to_string(), "open")],
            wal: Some(WalReport::default()),
        }
    }

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    }

    // The series that names endpoints shows an anonymous scrape none of them and a key only its
    // tenant's (`/metrics` takes no token).
    #[test]
    fn endpoint_names_follow_the_caller() {
        let metrics = ShardMetrics::default();
        let mut report = report_of(0, &metrics);
        report.open_breakers = vec![("a".into(), "acme".into(), "open"), ("d".into(), "default".into(), "open")];
        let mut keyed = report_of(0, &metrics);
        keyed.open_breakers = report.open_breakers.clone();
        keyed.keep_endpoint_names(&EndpointNames::Tenant("acme".into()));
        assert_eq!(keyed.open_breakers.len(), 1);
        assert_eq!(keyed.open_breakers[0].0, "a");
        report.keep_endpoint_names(&EndpointNames::None);
        assert!(report.open_breakers.is_empty());
    }

    // A scrape must add the shards up where a series is global, keep them apart where it is
    // per shard, make histogram buckets cumulative, and escape label values.
    #[test]
    fn renders_merged_shards_as_prometheus_text() {
        let (first, second) = (ShardMetrics::default(), ShardMetrics::default());
        first.ingest(202, None, 150);
        first.ingest(202, None, 3_000);
        second.ingest(503, Some("E3002"), 40);
        first.attempt("delivered", None, 2_000, Some(5_000));
        second.attempt("retrying", Some("E2003"), 30_000, None);
        first.read_back(10, 1);
        second.retention_pass(2);
        let text = render(vec![report_of(1, &second), report_of(0, &first)], None, 0);
        assert_eq!(sample(&text, r#"kapsel_ingest_requests_total{status="202",code=""}"#), 2.0);
        assert_eq!(sample(&text, r#"kapsel_ingest_requests_total{status="503",code="E3002"}"#), 1.0);
        assert_eq!(sample(&text, r#"kapsel_ingest_duration_seconds_bucket{le="0.00025"}"#), 2.0, "40 µs and 150 µs");
        assert_eq!(sample(&text, r#"kapsel_ingest_duration_seconds_bucket{le="+Inf"}"#), 3.0);
        assert_eq!(sample(&text, "kapsel_ingest_duration_seconds_count"), 3.0);
        assert_eq!(sample(&text, r#"kapsel_deliveries_total{outcome="retrying",code="E2003"}"#), 1.0);
        assert_eq!(sample(&text, r#"kapsel_read_back_failures_total{shard="0"}"#), 1.0);
        assert_eq!(sample(&text, r#"kapsel_retention_segments_removed_total{shard="1"}"#), 2.0);
        assert_eq!(sample(&text, r#"kapsel_payload_memory_bytes{shard="0"}"#), 2048.0);
        assert_eq!(sample(&text, r#"kapsel_circuit_breakers{state="open"}"#), 2.0);
        assert_eq!(sample(&text, r#"kapsel_circuit_breakers{state="half_open"}"#), 0.0);
        assert!(
            text.contains(r#"kapsel_circuit_open{endpoint_id="ep\"1",tenant_id="default",state="open"} 1"#),
            "escaped label"
        );
        let shard_zero = text.find(r#"kapsel_endpoints{shard="0"}"#).unwrap();
        let shard_one = text.find(r#"kapsel_endpoints{shard="1"}"#).unwrap();
        assert!(shard_zero < shard_one, "shards in order");
        assert!(!text.contains("kapsel_index_up"), "no index series without an index");
    }
}
