//! What a loop records: latencies in an HdrHistogram (microseconds) and failures by kind.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::client::Failure;
use crate::limits;

/// Latencies in microseconds, from 1 µs to [`limits::LATENCY_US_MAX`] with
/// [`limits::HISTOGRAM_SIGNIFICANT_DIGITS`] significant digits.
#[derive(Clone, Debug)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

/// The percentiles every table prints.
pub const PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

impl Latencies {
    /// An empty histogram.
    ///
    /// # Errors
    ///
    /// The bounds are rejected by hdrhistogram (they are constants; it does not happen).
    pub fn new() -> Result<Self, String> {
        Histogram::new_with_bounds(1, limits::LATENCY_US_MAX, limits::HISTOGRAM_SIGNIFICANT_DIGITS)
            .map(|histogram| Self { histogram })
            .map_err(|error| format!("latency histogram: {error:?}"))
    }

    /// Records one latency; values beyond the bounds are clamped to them.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(micros);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `percentile` (0 to 100); zero when empty.
    pub fn at(&self, percentile: f64) -> Duration {
        if self.histogram.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.histogram.value_at_percentile(percentile))
    }

    /// The largest latency recorded; zero when empty.
    pub fn max(&self) -> Duration {
        Duration::from_micros(if self.histogram.is_empty() { 0 } else { self.histogram.max() })
    }

    /// The mean latency; zero when empty.
    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(if self.histogram.is_empty() { 0.0 } else { self.histogram.mean() / 1e6 })
    }
}

/// Failed requests by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    by_kind: BTreeMap<Failure, u64>,
}

impl Failures {
    /// Counts one failure.
    pub fn add(&mut self, failure: Failure) {
        *self.by_kind.entry(failure).or_insert(0) += 1;
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

impl std::fmt::Display for Failures {
    /// `0`, or the kinds with their counts: `HTTP 503 ×12, timeout ×3`.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_kind.is_empty() {
            return formatter.write_str("0");
        }
        for (index, (kind, count)) in self.by_kind.iter().enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            write!(formatter, "{separator}{kind} ×{count}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Percentiles are the headline numbers: they must come back within the histogram's
    // precision, and a stalled request must not be lost by the clamp.
    #[test]
    fn percentiles_within_precision() {
        let mut latencies = Latencies::new().unwrap();
        for micros in 1..=10_000u64 {
            latencies.record(Duration::from_micros(micros));
        }
        let p99 = latencies.at(99.0).as_micros() as f64;
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.002, "p99 {p99}");
        latencies.record(Duration::from_secs(1_000_000));
        assert_eq!(latencies.count(), 10_001);
        assert!(latencies.max() >= Duration::from_secs(3_000));
    }

    #[test]
    fn failures_print_by_kind() {
        let mut failures = Failures::default();
        assert_eq!(failures.to_string(), "0");
        failures.add(Failure::Status(503));
        failures.add(Failure::Timeout);
        failures.add(Failure::Status(503));
        assert_eq!(failures.total(), 3);
        assert_eq!(failures.to_string(), "timeout ×1, HTTP 503 ×2");
    }
}
