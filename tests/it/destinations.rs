//! Misbehaving destinations, black box: the real binary delivering to hostile servers written
//! in `common::hostile` (silence, stalls, endless and trickling answers, oversized and
//! malformed heads, resets, closes, redirects, interim answers, bad certificates, names that do
//! not resolve, keep-alive connections that die as they are reused). Each attempt must carry
//! the E-code the contract gives its failure, the event must be retried or failed as that code
//! says, and meanwhile a healthy endpoint on the same shard (`KAPSEL_SHARDS=1`) must keep
//! being delivered to. How fast it is delivered to beside them, against alone, is a speed
//! judgement and lives in the delivery bench (`KAPSEL_BENCH_ONLY=hostile`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::hostile::{kapsel_pid, rss_bytes, BadPki, Behaviour, Hostile};
use crate::common::sink::{Reply, Sink};
use crate::common::{self, create, ingest, wait_event, Server, WAIT};

/// Every endpoint here shares the one shard with the healthy endpoint.
const ONE_SHARD: (&str, &str) = ("KAPSEL_SHARDS", "1");

/// Longest pause between two deliveries to the healthy endpoint while it is fed every
/// [`HEALTHY_INTERVAL`]: not a speed judgement (that is the bench's), a stall detector.
const HEALTHY_GAP_MAX: Duration = Duration::from_secs(5);

/// Fewest events the healthy endpoint gets in a test.
const HEALTHY_EVENTS_MIN: usize = 20;

/// How often the healthy endpoint gets an event.
const HEALTHY_INTERVAL: Duration = Duration::from_millis(20);

/// An endpoint for a hostile destination: its timeout, its attempts, a quick fixed retry delay
/// and a breaker that stays closed, so that every attempt reaches the destination.
fn hostile_endpoint(url: &str, timeout_ms: u64, max_attempts: u32) -> String {
    format!(
        r#"{{"url":"{url}","timeout_ms":{timeout_ms},"retry":{{"initial_delay_ms":100,"multiplier":1,"jitter":0,"max_attempts":{max_attempts}}},"circuit":{{"consecutive_failures":1000,"failure_rate":1.0,"window":1000}}}}"#
    )
}

/// Waits until the event is `failed` and checks that it got `attempts` attempts, each failed
/// with `code` and no status; returns the event.
fn failed_with(server: &Server, event_id: &str, attempts: usize, code: &str) -> serde_json::Value {
    let event = wait_event(server, event_id, |event| event["status"] == "failed");
    let made = event["attempts"].as_array().unwrap();
    assert_eq!(made.len(), attempts, "{event}");
    for attempt in made {
        assert_eq!(attempt["error_code"], code, "{event}");
        assert!(attempt["status_code"].is_null(), "{event}");
    }
    event
}

/// The event's last failure as recorded (the error, for an attempt without an answer).
fn last_failure(event: &serde_json::Value) -> String {
    event["last_response_excerpt"].as_str().unwrap_or_default().to_string()
}

/// A healthy endpoint on the shard under test: a sink answering 200, fed one event every
/// [`HEALTHY_INTERVAL`] from a thread until [`Healthy::check`].
struct Healthy {
    sink: Sink,
    stop: Arc<AtomicBool>,
    feeder: JoinHandle<Vec<String>>,
}

impl Healthy {
    fn start(server: &Server) -> Healthy {
        let sink = Sink::start(|_, _| Reply::status(200));
        create(server, "healthy", &format!(r#"{{"url":"{}"}}"#, sink.url("/healthy")));
        let stop = Arc::new(AtomicBool::new(false));
        let (address, stop_feeding) = (server.address, Arc::clone(&stop));
        let feeder = std::thread::spawn(move || {
            let mut ids = Vec::new();
            // At least a few events, however quick the hostile part was.
            while ids.len() < HEALTHY_EVENTS_MIN || !stop_feeding.load(Ordering::Relaxed) {
                let body = format!("{{\"n\":{}}}", ids.len());
                let response = common::try_request(address, "POST", "/ingest/healthy", &[], body.as_bytes()).unwrap();
                assert_eq!(response.status, 202, "{response:?}");
                ids.push(response.json()["event_id"].as_str().unwrap().to_string());
                std::thread::sleep(HEALTHY_INTERVAL);
            }
            ids
        });
        Healthy { sink, stop, feeder }
    }

    /// Stops feeding; every event fed arrives, and deliveries never paused for longer than
    /// [`HEALTHY_GAP_MAX`] while the hostile destinations were being tried.
    fn check(self) {
        self.stop.store(true, Ordering::Relaxed);
        let fed = self.feeder.join().unwrap();
        let received = self.sink.wait_for("every healthy event", WAIT, |received| received.len() >= fed.len());
        let mut arrivals: Vec<Instant> = received.iter().map(|request| request.at).collect();
        arrivals.sort();
        let gap = arrivals.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default();
        assert!(gap < HEALTHY_GAP_MAX, "the healthy endpoint got nothing for {gap:?}");
        let ids: std::collections::HashSet<&str> =
            received.iter().filter_map(|request| request.header("webhook-id")).collect();
        assert!(fed.iter().all(|id| ids.contains(id.as_str())), "a healthy event was not delivered");
    }
}

// A destination that accepts and then hangs, stalls after the head, answers a byte a second or
// streams a body forever gives no complete answer: each attempt ends at the endpoint's timeout
// with E2001, and the event is retried (E2001 is retryable) until its attempts are spent. The
// endless bodies (16 at once, the endpoint's max_in_flight) must not grow Kapsel's memory, and
// on neither driver may reading them starve the shard's other work.
#[test]
fn hanging_stalled_trickling_and_endless_answers_time_out_with_e2001() {
    for driver in common::DRIVERS {
        let directory = tempfile::tempdir().unwrap();
        let server = Server::start(directory.path(), driver, &[ONE_SHARD]);
        let pid = kapsel_pid(directory.path());
        let rss_at_start = rss_bytes(pid);
        let healthy = Healthy::start(&server);
        let timeout_ms = 1500;
        let hostiles = [
            ("never-answers", Hostile::start(Behaviour::NeverAnswers), 2),
            ("stalls-the-body", Hostile::start(Behaviour::StallsTheBody), 2),
            ("one-byte-per-second", Hostile::start(Behaviour::OneBytePerSecond), 2),
            ("endless-body", Hostile::start(Behaviour::EndlessBody), 16),
        ];
        let mut events = Vec::new();
        for (name, hostile, count) in &hostiles {
            create(&server, name, &hostile_endpoint(&hostile.url("/hook"), timeout_ms, 2));
            events.extend(
                (0..*count).map(|index| (*name, ingest(&server, name, format!("{{\"n\":{index}}}").as_bytes()))),
            );
        }
        let endless = &hostiles[3].1;
        let mut rss_max = rss_at_start;
        for (name, event_id) in &events {
            wait_event(&server, event_id, |event| {
                rss_max = rss_max.max(rss_bytes(pid));
                event["status"] == "failed"
            });
            let event = failed_with(&server, event_id, 2, "E2001");
            for attempt in event["attempts"].as_array().unwrap() {
                let latency_ms = attempt["latency_ms"].as_u64().unwrap();
                assert!(latency_ms >= timeout_ms - 50, "{driver} {name}: ended before the timeout: {event}");
            }
            assert!(last_failure(&event).contains("timeout"), "{driver} {name}: {event}");
        }
        assert!(endless.endless_bytes() > 1024 * 1024, "{driver}: the endless bodies were not read");
        let grown = rss_max.saturating_sub(rss_at_start);
        assert!(
            grown < 64 * 1024 * 1024,
            "{driver}: memory grew by {grown} bytes while reading endless bodies ({} bytes sent)",
            endless.endless_bytes()
        );
        healthy.check();
    }
}

// A destination whose answer cannot be read — ten thousand header fields, a 1 MiB header line
// (both refused once the 16 KiB head buffer or the 100 header slots are full, not buffered),
// a status line that is not one, HTTP/0.9 bytes, a reset halfway through the head, a close
// before any byte — is a failed connection: E2002, retried (E2002 is retryable).
#[test]
fn unreadable_answers_resets_and_closes_fail_with_e2002_and_are_retried() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[ONE_SHARD]);
    let healthy = Healthy::start(&server);
    let cases = [
        ("ten-thousand-headers", Behaviour::TenThousandHeaders, "more than 100 header fields"),
        ("huge-header-line", Behaviour::HugeHeaderLine, "larger than 16384 bytes"),
        ("invalid-status-line", Behaviour::InvalidStatusLine, "malformed status line"),
        ("http-0-9", Behaviour::Http09, "unsupported HTTP version"),
        ("reset-mid-response", Behaviour::ResetMidResponse, "reset"),
        ("close-before-response", Behaviour::CloseBeforeResponse, "without answering"),
    ];
    let hostiles: Vec<Hostile> = cases.iter().map(|(_, behaviour, _)| Hostile::start(behaviour.clone())).collect();
    let mut events = Vec::new();
    for ((name, _, _), hostile) in cases.iter().zip(&hostiles) {
        create(&server, name, &hostile_endpoint(&hostile.url("/hook"), 5_000, 2));
        events.push(ingest(&server, name, b"{\"hostile\":true}"));
    }
    for (((name, _, reason), hostile), event_id) in cases.iter().zip(&hostiles).zip(&events) {
        let event = failed_with(&server, event_id, 2, "E2002");
        assert!(last_failure(&event).contains(reason), "{name}: {event}");
        assert_eq!(hostile.requests(), 2, "{name}: one request per attempt");
    }
    healthy.check();
}

// Redirects are answers, never followed (a destination could otherwise bounce deliveries to an
// address the SSRF guard never saw): 301 and 302 fail at once with E2004, not retried. An
// interim 100 Continue before the real answer is legitimate HTTP: delivered.
#[test]
fn redirects_fail_at_once_with_e2004_and_100_continue_is_skipped() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[ONE_SHARD]);
    let healthy = Healthy::start(&server);
    for status in [301_u16, 302] {
        let hostile = Hostile::start(Behaviour::Redirect(status));
        let name = format!("redirect-{status}");
        create(&server, &name, &hostile_endpoint(&hostile.url("/hook"), 5_000, 5));
        let event_id = ingest(&server, &name, b"{}");
        let event = wait_event(&server, &event_id, |event| event["status"] == "failed");
        let attempts = event["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "a permanent answer is not retried: {event}");
        assert_eq!(
            (attempts[0]["status_code"].as_u64(), attempts[0]["error_code"].as_str()),
            (Some(u64::from(status)), Some("E2004"))
        );
        assert_eq!(hostile.paths(), ["/hook"], "the redirect was followed");
    }
    let continuing = Hostile::start(Behaviour::ContinueThenOk);
    create(&server, "continue", &hostile_endpoint(&continuing.url("/hook"), 5_000, 5));
    let event_id = ingest(&server, "continue", b"{}");
    let event = wait_event(&server, &event_id, |event| event["status"] == "delivered");
    let attempts = event["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{event}");
    assert_eq!((attempts[0]["status_code"].as_u64(), attempts[0]["error_code"].is_null()), (Some(200), true));
    healthy.check();
}

// https destinations whose certificate cannot be trusted — expired, self-signed, issued for
// another name — fail the handshake: E2002 (the contract's "TLS"), retried, and no request is
// ever sent to them. The same CA's good certificate is delivered to, so the failures are the
// certificates' and not the set-up's. A name under .invalid (RFC 6761) never resolves: E2002.
#[test]
fn untrusted_certificates_and_unresolvable_names_fail_with_e2002() {
    let pki_directory = tempfile::tempdir().unwrap();
    let pki = BadPki::write(pki_directory.path());
    let directory = tempfile::tempdir().unwrap();
    let server =
        Server::start(directory.path(), "legacy", &[ONE_SHARD, ("KAPSEL_EXTRA_CA_FILE", pki.ca.to_str().unwrap())]);
    let healthy = Healthy::start(&server);
    let tls = |(certificate, key): &(std::path::PathBuf, std::path::PathBuf)| {
        Hostile::start(Behaviour::Tls { certificate: certificate.clone(), key: key.clone() })
    };
    let good = tls(&pki.good);
    create(
        &server,
        "tls-good",
        &hostile_endpoint(&format!("https://localhost:{}/hook", good.address.port()), 5_000, 2),
    );
    let good_event = ingest(&server, "tls-good", b"{}");
    let cases = [
        ("tls-expired", tls(&pki.expired), "xpired"),
        ("tls-self-signed", tls(&pki.self_signed), "UnknownIssuer"),
        ("tls-wrong-host", tls(&pki.wrong_host), "not valid for name"),
    ];
    let mut events = Vec::new();
    for (name, hostile, _) in &cases {
        create(
            &server,
            name,
            &hostile_endpoint(&format!("https://localhost:{}/hook", hostile.address.port()), 5_000, 2),
        );
        events.push(ingest(&server, name, b"{}"));
    }
    create(&server, "unresolvable", &hostile_endpoint("http://kapsel-no-such-destination.invalid:8080/hook", 5_000, 2));
    let unresolvable = ingest(&server, "unresolvable", b"{}");

    let event = wait_event(&server, &good_event, |event| event["status"] == "delivered");
    assert_eq!(event["attempts"][0]["status_code"], 200, "{event}");
    for ((name, hostile, reason), event_id) in cases.iter().zip(&events) {
        let event = failed_with(&server, event_id, 2, "E2002");
        let failure = last_failure(&event);
        assert!(failure.contains("TLS handshake") && failure.contains(reason), "{name}: {event}");
        assert_eq!(hostile.requests(), 0, "{name}: a request went over an untrusted connection");
        assert_eq!(hostile.connections(), 2, "{name}: one handshake per attempt");
    }
    let event = failed_with(&server, &unresolvable, 2, "E2002");
    assert!(last_failure(&event).contains("kapsel-no-such-destination.invalid"), "{event}");
    healthy.check();
}

// Regression guard for the issue's stale connection: a keep-alive connection the destination
// drops just as it is reused (reset before it reads a byte of the request) means the request
// never reached it. That is no attempt of the destination's: the request goes again at once on
// a fresh connection, and the event shows one successful attempt — never a failed one, no
// retry delay, nothing for the breaker.
#[test]
fn a_pooled_connection_dropped_as_it_is_reused_costs_no_attempt() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[ONE_SHARD]);
    let healthy = Healthy::start(&server);
    let stale = Hostile::start(Behaviour::StaleOnReuse);
    // One attempt at a time, so that each delivery takes the connection the last one pooled.
    let body = format!(
        r#"{{"url":"{}","max_in_flight":1,"retry":{{"initial_delay_ms":60000,"max_attempts":5}}}}"#,
        stale.url("/hook")
    );
    create(&server, "stale", &body);
    let events: Vec<String> =
        (0..5).map(|index| ingest(&server, "stale", format!("{{\"n\":{index}}}").as_bytes())).collect();
    for event_id in &events {
        let event = wait_event(&server, event_id, |event| event["status"] == "delivered");
        let attempts = event["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "a stale connection cost an attempt: {event}");
        assert_eq!((attempts[0]["status_code"].as_u64(), attempts[0]["error_code"].is_null()), (Some(200), true));
    }
    // Every delivery after the first found its pooled connection dead and went on a new one.
    assert_eq!((stale.requests(), stale.resets(), stale.connections()), (5, 4, 5));
    let metrics = String::from_utf8(server.request("GET", "/metrics", &[], b"").body).unwrap();
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("kapsel_deliveries_total{") && !line.contains("outcome=\"delivered\""))
        .filter(|line| !line.ends_with(" 0"))
        .collect();
    assert!(failures.is_empty(), "failed attempts were counted: {failures:?}");
    healthy.check();
}
