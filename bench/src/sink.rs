//! The delivery bench's destination: a webhook receiver on Kapsel's own HTTP stack that
//! answers 200 at once (keep-alive), counts deliveries and records each one's
//! ingest-to-delivery latency.
//!
//! The load generator writes its send time into every body it ingests (`"sent_us"`, Unix
//! microseconds, see [`crate::payload::stamped_json_body`]); Kapsel delivers the body as it
//! was; the sink reads the field back and records *now − sent_us* in an HdrHistogram. Both
//! read the same clock of the same machine.
//!
//! Routes: `POST /hook` (a delivery), `GET /stats` ([`SinkStats`] as JSON), `POST /reset`
//! (clears the counters and the histogram of the measured period; `deliveries_total` is never
//! cleared), `GET /readyz`.

use std::cell::RefCell;
use std::time::Duration;

use kapsel_http::{Handler, Method, Request, Response};

use crate::payload::{unix_micros_now, SENT_US_FIELD};
use crate::stats::Latencies;

/// The path deliveries are POSTed to.
pub const HOOK_PATH: &str = "/hook";

/// Most digits a number in [`json_u64_field`] may have (`u64::MAX` has 20).
const NUMBER_DIGITS_MAX: usize = 20;

/// What the sink has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Deliveries since the last reset.
    pub deliveries: u64,
    /// Deliveries since the sink started; never reset.
    pub deliveries_total: u64,
    /// Deliveries since the last reset whose body held no send time (not in the latencies).
    pub unstamped: u64,
    /// Ingest-to-delivery latency percentiles since the last reset, in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// The largest.
    pub max_us: u64,
}

impl SinkStats {
    /// `{"deliveries":…,"deliveries_total":…,…,"max_us":…}`.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"deliveries":{},"deliveries_total":{},"unstamped":{},"p50_us":{},"p99_us":{},"p999_us":{},"max_us":{}}}"#,
            self.deliveries, self.deliveries_total, self.unstamped, self.p50_us, self.p99_us, self.p999_us, self.max_us
        )
    }

    /// Reads what [`SinkStats::to_json`] wrote; `None` when a field is missing.
    pub fn parse(json: &[u8]) -> Option<Self> {
        let field = |name| json_u64_field(json, name);
        Some(Self {
            deliveries: field("deliveries")?,
            deliveries_total: field("deliveries_total")?,
            unstamped: field("unstamped")?,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            p999_us: field("p999_us")?,
            max_us: field("max_us")?,
        })
    }
}

/// The unsigned integer value of the first `"name":` in a JSON text, whitespace allowed
/// after the colon; `None` when absent, not a plain integer, or beyond `u64`. Enough for the
/// flat objects this crate writes itself (a stamped body, the stats); not a JSON parser: a
/// string value that happens to contain `"name":` would be found too.
pub fn json_u64_field(json: &[u8], name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let start = json.windows(key.len()).position(|window| window == key.as_bytes())? + key.len();
    let rest = json.get(start..)?;
    let rest = &rest[rest.iter().take_while(|byte| byte.is_ascii_whitespace()).count()..];
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if digits == 0 || digits > NUMBER_DIGITS_MAX {
        return None;
    }
    rest[..digits].iter().try_fold(0u64, |value, digit| value.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

/// The counters and the histogram. Pure: the time comes in as an argument.
#[derive(Clone, Debug)]
pub struct SinkState {
    deliveries: u64,
    deliveries_total: u64,
    unstamped: u64,
    latencies: Latencies,
}

impl SinkState {
    /// Nothing seen yet.
    ///
    /// # Errors
    ///
    /// The histogram could not be created.
    pub fn new() -> Result<Self, String> {
        Ok(Self { deliveries: 0, deliveries_total: 0, unstamped: 0, latencies: Latencies::new()? })
    }

    /// One delivery of `body` at `now_us` (Unix microseconds).
    pub fn record(&mut self, body: &[u8], now_us: u64) {
        self.deliveries += 1;
        self.deliveries_total += 1;
        match json_u64_field(body, SENT_US_FIELD) {
            // Zero is the placeholder of a body that was never stamped.
            Some(sent_us) if sent_us > 0 => {
                self.latencies.record(Duration::from_micros(now_us.saturating_sub(sent_us)));
            }
            _ => self.unstamped += 1,
        }
    }

    /// Starts a new measured period: everything but `deliveries_total` is cleared.
    ///
    /// # Errors
    ///
    /// The histogram could not be created.
    pub fn reset(&mut self) -> Result<(), String> {
        *self = Self { deliveries_total: self.deliveries_total, ..Self::new()? };
        Ok(())
    }

    /// The counters and percentiles now.
    pub fn stats(&self) -> SinkStats {
        let micros = |latency: Duration| u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        SinkStats {
            deliveries: self.deliveries,
            deliveries_total: self.deliveries_total,
            unstamped: self.unstamped,
            p50_us: micros(self.latencies.at(50.0)),
            p99_us: micros(self.latencies.at(99.0)),
            p999_us: micros(self.latencies.at(99.9)),
            max_us: micros(self.latencies.max()),
        }
    }
}

/// The sink's [`Handler`]: one per thread, and the sink runs one thread, so its state is the
/// whole sink's.
pub struct SinkHandler {
    state: RefCell<SinkState>,
}

impl SinkHandler {
    /// A sink that has seen nothing.
    ///
    /// # Errors
    ///
    /// The histogram could not be created.
    pub fn new() -> Result<Self, String> {
        Ok(Self { state: RefCell::new(SinkState::new()?) })
    }
}

impl Handler for SinkHandler {
    async fn handle(&self, request: Request) -> Response {
        match (request.head.method, request.head.path.as_str()) {
            (Method::Post, HOOK_PATH) => {
                self.state.borrow_mut().record(&request.body, unix_micros_now());
                Response::empty(200)
            }
            (Method::Get, "/stats") => Response::json(200, self.state.borrow().stats().to_json().into_bytes()),
            (Method::Post, "/reset") => match self.state.borrow_mut().reset() {
                Ok(()) => Response::empty(200),
                Err(error) => Response::error(500, "E9999", &error),
            },
            (Method::Get, "/readyz") => Response::empty(200),
            _ => Response::error(404, "E1004", "the sink serves POST /hook, GET /stats, POST /reset"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::payload::{stamped_json_body, SendTimeStamp};

    // The latency the bench reports is read out of the delivered body: the field must be
    // found exactly, and anything that is not a plain integer refused rather than guessed.
    #[test]
    fn reads_the_send_time_from_a_body() {
        let (mut body, digits_at) = stamped_json_body(1024).unwrap();
        assert_eq!(json_u64_field(&body, SENT_US_FIELD), Some(0));
        assert!(SendTimeStamp::of_body(&body, digits_at).write(&mut body, 1_732_860_000_123_456));
        assert_eq!(json_u64_field(&body, SENT_US_FIELD), Some(1_732_860_000_123_456));
        assert_eq!(json_u64_field(br#"{"a":1, "sent_us": 17}"#, "sent_us"), Some(17));
        for refused in [
            &br#"{"sent_us":-1}"#[..],
            br#"{"sent_us":"12"}"#,
            br#"{"sent_us":}"#,
            br#"{"sent_us":99999999999999999999999}"#,
            br#"{"sent":12}"#,
            b"",
        ] {
            assert_eq!(json_u64_field(refused, SENT_US_FIELD), None, "{}", String::from_utf8_lossy(refused));
        }
    }

    // The bench polls these stats to know when every accepted event has arrived and to report
    // latency: what the sink writes must read back the same, and a reset must keep the total.
    #[test]
    fn stats_round_trip_and_reset_keeps_the_total() {
        let mut state = SinkState::new().unwrap();
        let now_us = 1_732_860_000_000_000;
        for delay_us in 1..=1000u64 {
            state.record(format!(r#"{{"sent_us":{}}}"#, now_us - delay_us * 10).as_bytes(), now_us);
        }
        state.record(br#"{"no":"stamp"}"#, now_us);
        let stats = state.stats();
        assert_eq!((stats.deliveries, stats.deliveries_total, stats.unstamped), (1001, 1001, 1));
        assert!((4_990..=5_010).contains(&stats.p50_us), "p50 {}", stats.p50_us);
        assert!((9_890..=9_910).contains(&stats.p99_us), "p99 {}", stats.p99_us);
        assert!((9_990..=10_010).contains(&stats.max_us), "max {}", stats.max_us);
        let json = stats.to_json();
        assert!(json.starts_with(r#"{"deliveries":1001,"deliveries_total":1001,"unstamped":1,"p50_us":"#), "{json}");
        assert_eq!(SinkStats::parse(json.as_bytes()), Some(stats));
        assert_eq!(SinkStats::parse(br#"{"deliveries":1}"#), None);
        state.reset().unwrap();
        assert_eq!(state.stats(), SinkStats { deliveries_total: 1001, ..SinkStats::default() });
    }
}
