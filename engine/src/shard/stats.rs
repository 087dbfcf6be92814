//! What one shard counts for `GET /metrics`: plain cells touched only on its own thread, no
//! atomics on the hot path, latencies in HdrHistograms. `admin::metrics` gathers and renders.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;

/// A latency histogram in microseconds with its exact sum (HdrHistogram keeps counts only).
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Option<Histogram<u64>>,
    pub(crate) sum_us: u64,
}

impl Latency {
    pub(crate) fn new() -> Self {
        // 1 µs to 1 day at 2 significant digits: a few KiB. Creation cannot fail for these
        // bounds; were it to, the histogram would simply stay empty.
        Self { histogram: Histogram::new_with_bounds(1, 86_400_000_000, 2).ok(), sum_us: 0 }
    }

    pub(crate) fn record(&mut self, micros: u64) {
        if let Some(histogram) = self.histogram.as_mut() {
            histogram.saturating_record(micros.max(1));
        }
        self.sum_us = self.sum_us.saturating_add(micros);
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        match (self.histogram.as_mut(), other.histogram.as_ref()) {
            (Some(mine), Some(theirs)) => {
                let _ = mine.add(theirs);
            }
            (None, Some(theirs)) => self.histogram = Some(theirs.clone()),
            _ => {}
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub(crate) fn count(&self) -> u64 {
        self.histogram.as_ref().map_or(0, Histogram::len)
    }

    pub(crate) fn count_at_most(&self, micros: u64) -> u64 {
        self.histogram.as_ref().map_or(0, |histogram| histogram.count_between(0, micros))
    }
}

/// What one shard counts. Only its own thread touches it.
#[derive(Debug)]
pub struct ShardMetrics {
    pub(crate) ingest: RefCell<BTreeMap<(u16, &'static str), u64>>,
    pub(crate) refused: RefCell<BTreeMap<(u16, &'static str), u64>>,
    pub(crate) deliveries: RefCell<BTreeMap<(&'static str, &'static str), u64>>,
    pub(crate) ingest_latency: RefCell<Latency>,
    pub(crate) attempt_latency: RefCell<Latency>,
    pub(crate) delivery_latency: RefCell<Latency>,
    pub(crate) connections_open: Cell<u64>,
    pub(crate) connections_total: Cell<u64>,
    pub(crate) read_backs: Cell<u64>,
    pub(crate) read_back_events: Cell<u64>,
    pub(crate) read_back_failures: Cell<u64>,
    pub(crate) retention_passes: Cell<u64>,
    pub(crate) segments_removed: Cell<u64>,
    /// Per endpoint of this shard with attempts since the process started; an endpoint's entry
    /// goes when the endpoint is deleted, so there are at most as many as endpoints.
    endpoints: RefCell<HashMap<Box<str>, EndpointStats>>,
    /// When the counting began (Unix ms): the process's start.
    pub(crate) since_ms: u64,
}

/// What an endpoint's attempts came to since the process started (the dashboard's counts; not
/// kept in the log: the log keeps each attempt, this is only their tally).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Events delivered.
    pub delivered: u64,
    /// Events that ended failed.
    pub failed: u64,
    /// Attempts that did not deliver (those retried included).
    pub attempts_failed: u64,
    /// The last attempt that did not deliver: when, its E-code and the destination's status.
    pub last_error: Option<LastError>,
}

/// An attempt that did not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastError {
    /// When it ended (Unix ms).
    pub at_ms: u64,
    /// Its E-code.
    pub error_code: &'static str,
    /// The destination's status, when it answered.
    pub status_code: Option<u16>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self {
            ingest: RefCell::default(),
            refused: RefCell::default(),
            deliveries: RefCell::default(),
            ingest_latency: RefCell::new(Latency::new()),
            attempt_latency: RefCell::new(Latency::new()),
            delivery_latency: RefCell::new(Latency::new()),
            connections_open: Cell::new(0),
            connections_total: Cell::new(0),
            read_backs: Cell::new(0),
            read_back_events: Cell::new(0),
            read_back_failures: Cell::new(0),
            retention_passes: Cell::new(0),
            segments_removed: Cell::new(0),
            endpoints: RefCell::default(),
            since_ms: crate::clock::now_ms(),
        }
    }
}

fn bump<K: Ord>(map: &RefCell<BTreeMap<K, u64>>, key: K) {
    *map.borrow_mut().entry(key).or_insert(0) += 1;
}

impl ShardMetrics {
    /// An ingest request answered with `status` (and `code` when it is an error), after
    /// `micros` in the handler.
    pub fn ingest(&self, status: u16, code: Option<&'static str>, micros: u64) {
        bump(&self.ingest, (status, code.unwrap_or("")));
        self.ingest_latency.borrow_mut().record(micros);
    }

    /// A request the HTTP layer refused by itself.
    pub fn refused(&self, status: u16, code: &'static str) {
        bump(&self.refused, (status, code));
    }

    /// A connection opened or closed.
    pub fn connection(&self, open: bool) {
        if open {
            self.connections_open.set(self.connections_open.get() + 1);
            self.connections_total.set(self.connections_total.get() + 1);
        } else {
            self.connections_open.set(self.connections_open.get().saturating_sub(1));
        }
    }

    /// A read-back of `events` payloads from the log, `failures` of which could not be read.
    pub fn read_back(&self, events: usize, failures: usize) {
        self.read_backs.set(self.read_backs.get() + 1);
        self.read_back_events.set(self.read_back_events.get() + events as u64);
        self.read_back_failures.set(self.read_back_failures.get() + failures as u64);
    }

    /// A retention pass ended, having removed `segments` sealed segments.
    pub fn retention_pass(&self, segments: usize) {
        self.retention_passes.set(self.retention_passes.get() + 1);
        self.segments_removed.set(self.segments_removed.get() + segments as u64);
    }

    /// A delivery attempt: its outcome (`delivered`, `retrying`, `failed`), E-code, duration,
    /// and for a delivery the time since the event was received.
    pub fn attempt(
        &self,
        outcome: &'static str,
        code: Option<&'static str>,
        micros: u64,
        since_received_us: Option<u64>,
    ) {
        bump(&self.deliveries, (outcome, code.unwrap_or("")));
        self.attempt_latency.borrow_mut().record(micros);
        if let Some(end_to_end) = since_received_us {
            self.delivery_latency.borrow_mut().record(end_to_end);
        }
    }

    /// An attempt to `endpoint` recorded in the log: counted in its [`EndpointStats`].
    pub fn endpoint_attempt(&self, endpoint: &str, outcome: &'static str, error: Option<LastError>) {
        let mut endpoints = self.endpoints.borrow_mut();
        let stats = match endpoints.get_mut(endpoint) {
            Some(stats) => stats,
            None => endpoints.entry(Box::from(endpoint)).or_default(),
        };
        match outcome {
            "delivered" => stats.delivered += 1,
            "failed" => stats.failed += 1,
            _ => {}
        }
        if error.is_some() {
            stats.attempts_failed += 1;
            stats.last_error = error;
        }
    }

    /// An endpoint's tally (zeros for one without attempts since the start).
    pub fn endpoint(&self, endpoint: &str) -> EndpointStats {
        self.endpoints.borrow().get(endpoint).copied().unwrap_or_default()
    }

    /// Forgets a deleted endpoint's tally.
    pub fn forget_endpoint(&self, endpoint: &str) {
        self.endpoints.borrow_mut().remove(endpoint);
    }
}

impl EndpointStats {
    /// The `stats` member of an endpoint's JSON, counted since `since_ms`.
    pub fn to_json(&self, since_ms: u64) -> serde_json::Value {
        let last_error = self.last_error.map(|error| {
            serde_json::json!({
                "at": crate::clock::rfc3339(error.at_ms),
                "error_code": error.error_code,
                "status_code": error.status_code,
            })
        });
        serde_json::json!({
            "delivered": self.delivered,
            "failed": self.failed,
            "attempts_failed": self.attempts_failed,
            "last_error": last_error,
            "since": crate::clock::rfc3339(since_ms),
        })
    }
}
