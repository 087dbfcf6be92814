//! The Postgres index's progress as Kapsel reports it in `GET /readyz`
//! (`"index":{"state","lag_records","lag_seconds","rows_indexed"}`), sampled every
//! [`limits::INDEX_SAMPLE_MS`] by a thread of its own with plain blocking sockets (so the
//! sampling neither waits behind nor slows the load generator's runtime), and what the samples
//! say about a measured period.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::limits;
use crate::setup;

/// One reading of `/readyz`'s `index` object.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexReading {
    /// `state` is `connected` (else `unavailable`).
    pub connected: bool,
    /// Rows committed to the index since Kapsel started.
    pub rows_indexed: u64,
    /// Records durable in the write-ahead logs but not yet in the index.
    pub lag_records: u64,
    /// How long the index has been behind (0 when caught up).
    pub lag_seconds: f64,
}

impl IndexReading {
    /// The `index` object of a `/readyz` body; `None` when absent (Kapsel runs without an
    /// index) or malformed.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let index = value.get("index")?;
        Some(Self {
            connected: index.get("state")?.as_str()? == "connected",
            rows_indexed: index.get("rows_indexed")?.as_u64()?,
            lag_records: index.get("lag_records")?.as_u64()?,
            lag_seconds: index.get("lag_seconds")?.as_f64()?,
        })
    }
}

/// `GET /readyz` on a new blocking connection, bounded by [`limits::INDEX_SAMPLE_TIMEOUT_MS`];
/// the index's reading.
///
/// # Errors
///
/// The request failed or timed out, the answer was not a 200, or it has no `index` object.
pub fn read_index(address: SocketAddr) -> Result<IndexReading, String> {
    let timeout = Duration::from_millis(limits::INDEX_SAMPLE_TIMEOUT_MS);
    let (status, body) = setup::get_blocking(address, "/readyz", timeout)?;
    let text = || String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(format!("GET /readyz answered {status}: {}", text()));
    }
    IndexReading::parse(&body).ok_or_else(|| format!("GET /readyz has no index: {}", text()))
}

/// Polls [`read_index`] until the index is connected, at most
/// [`limits::SERVER_START_TIMEOUT_MS`].
///
/// # Errors
///
/// Not connected in time, with the last reading or error.
pub fn wait_until_connected(address: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(limits::SERVER_START_TIMEOUT_MS);
    loop {
        let last = match read_index(address) {
            Ok(reading) if reading.connected => return Ok(()),
            Ok(reading) => format!("{reading:?}"),
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            return Err(format!("the index did not connect to PostgreSQL in time; last reading: {last}"));
        }
        std::thread::sleep(Duration::from_millis(limits::INDEX_SAMPLE_MS));
    }
}

/// One sample: when it was taken (since the sampler's origin), what it read, if anything, and
/// the CPU time PostgreSQL had used by then.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Since the origin given to [`Sampler::start`].
    pub at: Duration,
    /// `None` when the request failed or timed out.
    pub reading: Option<IndexReading>,
    /// What the `postgres_cpu` function given to [`Sampler::start`] returned.
    pub postgres_cpu: Duration,
}

/// The sampling thread. It samples until told when the load ended ([`Sampler::finish`]),
/// then until the index has caught up (lag 0) or [`limits::INDEX_CATCH_UP_MS_MAX`] passed.
/// Dropped without `finish` (an error path), it stops at its next sample.
pub struct Sampler {
    load_ended: mpsc::Sender<Duration>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `address`, and PostgreSQL's CPU time so far with `postgres_cpu`; times
    /// are measured from `origin`.
    ///
    /// # Errors
    ///
    /// The thread could not be spawned.
    pub fn start(
        address: SocketAddr,
        origin: Instant,
        postgres_cpu: impl Fn() -> Duration + Send + 'static,
    ) -> Result<Self, String> {
        let (load_ended, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("index-sampler".into())
            .spawn(move || sample(address, origin, &postgres_cpu, &receiver))
            .map_err(|error| format!("starting the sampler thread: {error}"))?;
        Ok(Self { load_ended, thread })
    }

    /// Tells the thread that the load ended at `load_end` (since the origin) and waits for
    /// it: every sample taken. Bounded by the catch-up limit plus one sample's timeout.
    ///
    /// # Errors
    ///
    /// The thread panicked (it does not: it has no unwrap).
    pub fn finish(self, load_end: Duration) -> Result<Vec<Sample>, String> {
        let _ = self.load_ended.send(load_end);
        self.thread.join().map_err(|_| "the sampler thread panicked".to_string())
    }
}

/// The sampler thread's loop.
fn sample(
    address: SocketAddr,
    origin: Instant,
    postgres_cpu: &dyn Fn() -> Duration,
    load_ended: &mpsc::Receiver<Duration>,
) -> Vec<Sample> {
    let period = Duration::from_millis(limits::INDEX_SAMPLE_MS);
    let catch_up_max = Duration::from_millis(limits::INDEX_CATCH_UP_MS_MAX);
    let mut samples = Vec::new();
    let mut load_end: Option<Duration> = None;
    let mut next = Instant::now();
    loop {
        let at = origin.elapsed();
        let reading = read_index(address).ok();
        samples.push(Sample { at, reading, postgres_cpu: postgres_cpu() });
        match load_ended.try_recv() {
            Ok(end) => load_end = Some(end),
            Err(mpsc::TryRecvError::Disconnected) if load_end.is_none() => break,
            Err(_) => {}
        }
        if let Some(end) = load_end {
            let caught_up = at >= end && reading.is_some_and(|reading| reading.lag_records == 0);
            if caught_up || origin.elapsed() >= end + catch_up_max {
                break;
            }
        }
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    samples
}

/// What the samples say about one scenario.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LagSummary {
    /// Rows committed per second over the measured period (between the samples closest to
    /// its bounds, inside it).
    pub indexed_per_s: f64,
    /// `lag_records` over the samples in the measured period: median, 99th percentile, largest.
    pub lag_records_p50: u64,
    /// See `lag_records_p50`.
    pub lag_records_p99: u64,
    /// See `lag_records_p50`.
    pub lag_records_max: u64,
    /// Largest `lag_seconds` in the measured period.
    pub lag_seconds_max: f64,
    /// From the end of the load to the first sample with `lag_records` 0; `None` if none
    /// came within [`limits::INDEX_CATCH_UP_MS_MAX`].
    pub catch_up: Option<Duration>,
    /// Cores' worth of CPU PostgreSQL used over the measured period (between the first and
    /// last samples inside it).
    pub postgres_cores: f64,
    /// Samples in the measured period.
    pub samples: usize,
    /// Of those, failed requests and readings with the index `unavailable`.
    pub failed: usize,
    /// See `failed`.
    pub unavailable: usize,
}

/// The nearest-rank `percentile` (0 to 100) of sorted `values`; 0 when empty.
fn nearest_rank(sorted: &[u64], percentile: f64) -> u64 {
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0)
}

/// Summarises `samples` over the measured period `window` (since the origin), with the load
/// ending at `load_end`.
pub fn summarize(samples: &[Sample], window: (Duration, Duration), load_end: Duration) -> LagSummary {
    let in_window: Vec<&Sample> =
        samples.iter().filter(|sample| sample.at >= window.0 && sample.at <= window.1).collect();
    let readings: Vec<(Duration, IndexReading)> =
        in_window.iter().filter_map(|sample| sample.reading.map(|reading| (sample.at, reading))).collect();
    let mut lags: Vec<u64> = readings.iter().map(|(_, reading)| reading.lag_records).collect();
    lags.sort_unstable();
    let indexed_per_s = match (readings.first(), readings.last()) {
        (Some((first_at, first)), Some((last_at, last))) if last_at > first_at => {
            last.rows_indexed.saturating_sub(first.rows_indexed) as f64 / (*last_at - *first_at).as_secs_f64()
        }
        _ => 0.0,
    };
    let postgres_cores = match (in_window.first(), in_window.last()) {
        (Some(first), Some(last)) if last.at > first.at => {
            last.postgres_cpu.saturating_sub(first.postgres_cpu).as_secs_f64() / (last.at - first.at).as_secs_f64()
        }
        _ => 0.0,
    };
    let catch_up = samples
        .iter()
        .find(|sample| sample.at >= load_end && sample.reading.is_some_and(|reading| reading.lag_records == 0))
        .map(|sample| sample.at - load_end);
    LagSummary {
        indexed_per_s,
        lag_records_p50: nearest_rank(&lags, 50.0),
        lag_records_p99: nearest_rank(&lags, 99.0),
        lag_records_max: lags.last().copied().unwrap_or(0),
        lag_seconds_max: readings.iter().map(|(_, reading)| reading.lag_seconds).fold(0.0, f64::max),
        catch_up,
        postgres_cores,
        samples: in_window.len(),
        failed: in_window.len() - readings.len(),
        unavailable: readings.iter().filter(|(_, reading)| !reading.connected).count(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The bench's figures all come from this object: its fields must be read as Kapsel writes
    // them, and a Kapsel without an index must be told apart from a broken answer.
    #[test]
    fn reads_the_index_object_of_readyz() {
        let body = br#"{"status":"ready","index":{"state":"connected","lag_records":12,"lag_seconds":0.25,"rows_indexed":3400}}"#;
        assert_eq!(
            IndexReading::parse(body),
            Some(IndexReading { connected: true, rows_indexed: 3400, lag_records: 12, lag_seconds: 0.25 })
        );
        let down =
            br#"{"status":"ready","index":{"state":"unavailable","lag_records":0,"lag_seconds":0.0,"rows_indexed":0}}"#;
        assert!(!IndexReading::parse(down).unwrap().connected);
        assert_eq!(IndexReading::parse(br#"{"status":"ready"}"#), None);
        assert_eq!(IndexReading::parse(b"not json"), None);
    }

    fn sample(at_ms: u64, rows_indexed: u64, lag_records: u64) -> Sample {
        let reading =
            IndexReading { connected: true, rows_indexed, lag_records, lag_seconds: lag_records as f64 / 1000.0 };
        // PostgreSQL busy half a core throughout.
        Sample {
            at: Duration::from_millis(at_ms),
            reading: Some(reading),
            postgres_cpu: Duration::from_millis(at_ms / 2),
        }
    }

    // Rates and percentiles only count the measured period; warm-up and catch-up samples must
    // not leak into them, and the catch-up time runs from the end of the load.
    #[test]
    fn summary_keeps_to_the_measured_period() {
        let mut samples = vec![sample(0, 0, 5_000), sample(900, 100, 9_000)];
        for step in 0..=10 {
            samples.push(sample(1_000 + step * 100, 1_000 + step * 1_000, 100 + step));
        }
        samples.push(Sample {
            at: Duration::from_millis(2_050),
            reading: None,
            postgres_cpu: Duration::from_millis(1_025),
        });
        samples.extend([sample(2_100, 12_000, 50), sample(2_300, 12_500, 0), sample(2_400, 12_500, 0)]);
        let window = (Duration::from_secs(1), Duration::from_millis(2_050));
        let summary = summarize(&samples, window, Duration::from_millis(2_080));
        assert!((summary.indexed_per_s - 10_000.0).abs() < 1e-6, "{}", summary.indexed_per_s);
        assert_eq!((summary.lag_records_p50, summary.lag_records_p99, summary.lag_records_max), (105, 110, 110));
        assert!((summary.lag_seconds_max - 0.110).abs() < 1e-9);
        assert_eq!(summary.catch_up, Some(Duration::from_millis(220)));
        assert_eq!((summary.samples, summary.failed, summary.unavailable), (12, 1, 0));
        assert!((summary.postgres_cores - 0.5).abs() < 1e-9, "{}", summary.postgres_cores);
        let never = summarize(&samples[..13], window, Duration::from_millis(2_080));
        assert_eq!(never.catch_up, None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 50.0), 50);
        assert_eq!(nearest_rank(&values, 99.0), 99);
        assert_eq!(nearest_rank(&values, 100.0), 100);
        assert_eq!(nearest_rank(&[], 99.0), 0);
        assert_eq!(nearest_rank(&[7], 1.0), 7);
    }
}
