//! What an operator watches: `GET /metrics` present and moving under load, and logs that carry
//! event id, endpoint id and trace id but never a payload or a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{self, wait_until};

use std::collections::BTreeMap;
use std::time::Duration;

use common::sink::{Reply, Sink};
use common::Server;

/// Every sample of a scrape: `name{labels}` → value.
fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let response = server.request("GET", "/metrics", &[], b"");
    assert_eq!(response.status, 200);
    assert!(response.header("Content-Type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(response.body.clone()).unwrap();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        samples.insert(series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")));
    }
    samples
}

fn sum(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples.iter().filter(|(series, _)| series.starts_with(prefix)).map(|(_, value)| value).sum()
}

fn ingest(server: &Server, endpoint: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    server.request("POST", &format!("/ingest/{endpoint}"), headers, body).status
}

// Counters, gauges and histograms appear with the documented names and labels, and move with
// the load: ingest by status and E-code, refusals by the HTTP layer, deliveries by outcome, the
// log's appends and commit latency, connections and memory.
#[test]
fn metrics_are_present_and_move_under_load() {
    let sink = Sink::start(|_, request| if request.path == "/fail" { Reply::status(400) } else { Reply::status(200) });
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &[]);
    let body = format!(r#"{{"url":"{}"}}"#, sink.url("/ok"));
    assert!(matches!(server.admin("PUT", "/admin/endpoints/ok", &common::open_ingest(&body)).status, 200 | 201));
    let body = format!(r#"{{"url":"{}"}}"#, sink.url("/fail"));
    assert!(matches!(server.admin("PUT", "/admin/endpoints/fail", &common::open_ingest(&body)).status, 200 | 201));
    let before = scrape(&server);
    assert_eq!(sum(&before, "kapsel_ingest_requests_total"), 0.0);
    for _ in 0..20 {
        assert_eq!(ingest(&server, "ok", &[], b"{}"), 202);
    }
    assert_eq!(ingest(&server, "fail", &[], b"{}"), 202);
    assert_eq!(ingest(&server, "nobody", &[], b"{}"), 404);
    let garbage = common::raw(server.address, b"NOT HTTP\r\n\r\n").unwrap();
    assert_eq!(garbage.status, 400);
    wait_until("the deliveries counted", || {
        let samples = scrape(&server);
        samples.get("kapsel_deliveries_total{outcome=\"delivered\",code=\"\"}") == Some(&20.0)
            && samples.get("kapsel_deliveries_total{outcome=\"failed\",code=\"E2004\"}") == Some(&1.0)
    });
    let after = scrape(&server);
    assert_eq!(after["kapsel_ingest_requests_total{status=\"202\",code=\"\"}"], 21.0);
    assert_eq!(after["kapsel_ingest_requests_total{status=\"404\",code=\"E1004\"}"], 1.0);
    assert_eq!(after["kapsel_ingest_duration_seconds_count"], 22.0);
    assert_eq!(after["kapsel_ingest_duration_seconds_bucket{le=\"+Inf\"}"], 22.0);
    assert!(after["kapsel_ingest_duration_seconds_sum"] > 0.0);
    assert_eq!(after["kapsel_delivery_latency_seconds_count"], 20.0);
    assert_eq!(after["kapsel_delivery_attempt_duration_seconds_count"], 21.0);
    assert!(sum(&after, "kapsel_http_refused_total{status=\"400\"") >= 1.0, "{after:?}");
    // 2 endpoints + 21 events + 21 attempts, made durable in the shards' logs.
    assert!(sum(&after, "kapsel_wal_appends_total") >= 44.0);
    assert!(sum(&after, "kapsel_wal_appends_total") > sum(&before, "kapsel_wal_appends_total"));
    assert!(sum(&after, "kapsel_wal_commit_duration_seconds_count") > 0.0);
    assert!(sum(&after, "kapsel_wal_fsyncs_total") > 0.0);
    assert!(sum(&after, "kapsel_connections_total") >= 25.0);
    assert_eq!(sum(&after, "kapsel_endpoints"), 2.0);
    assert_eq!(sum(&after, "kapsel_events_waiting"), 0.0);
    assert_eq!(after["kapsel_circuit_breakers{state=\"closed\"}"], 2.0);
    assert!(after["process_resident_memory_bytes"] > 1_000_000.0);
    assert!(!after.keys().any(|series| series.starts_with("kapsel_index_")), "no index configured");
    assert_eq!(server.stop(), 0);
}

// One span per ingest and per attempt carries the event id, the endpoint id and the trace id of
// the sender's traceparent; payloads and secrets never reach the log.
#[test]
fn logs_carry_ids_and_trace_but_never_payloads_or_secrets() {
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("kapsel.log");
    let server = Server::start_logging_to(
        &directory.path().join("data"),
        "legacy",
        &[("RUST_LOG", "info,kapsel_engine=debug"), ("KAPSEL_LOG_FORMAT", "json")],
        &log,
    );
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body = format!(r#"{{"url":"{}","secret":"{secret}"}}"#, sink.url("/hook"));
    assert!(matches!(server.admin("PUT", "/admin/endpoints/traced", &common::open_ingest(&body)).status, 200 | 201));
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let marker = "PAYLOAD-MARKER-7c1e";
    let response = server.request(
        "POST",
        "/ingest/traced",
        &[("traceparent", traceparent), ("Content-Type", "application/json")],
        format!(r#"{{"secret_field":"{marker}"}}"#).as_bytes(),
    );
    assert_eq!(response.status, 202);
    let event_id = response.json()["event_id"].as_str().unwrap().to_string();
    let delivered = sink.wait_for("the delivery", Duration::from_secs(20), |received| !received.is_empty());
    assert_eq!(&delivered[0].header("traceparent").unwrap()[..35], &traceparent[..35]);
    // The attempt's line is logged once its outcome is recorded, a moment after the sink answered.
    common::wait_event(&server, &event_id, |event| event["status"] == "delivered");
    assert_eq!(server.stop(), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let trace_id = &traceparent[3..35];
    let lines_with = |needle: &str| text.lines().filter(|line| line.contains(needle)).count();
    assert!(
        text.lines().any(|line| line.contains("\"ingest\"") && line.contains(&event_id) && line.contains(trace_id)),
        "an ingest log line with event id and trace id:\n{text}"
    );
    assert!(
        text.lines().any(|line| line.contains("\"delivery\"")
            && line.contains(&event_id)
            && line.contains("traced")
            && line.contains(trace_id)),
        "a delivery log line with event id, endpoint id and trace id:\n{text}"
    );
    assert_eq!(lines_with(marker), 0, "payloads never appear in logs");
    assert_eq!(lines_with(secret), 0, "secrets never appear in logs");
    assert_eq!(lines_with(common::TOKEN), 0, "the admin token never appears in logs");
}

// Two processes on one data directory would interleave their logs: the second is refused at
// start, naming the directory, and the first keeps serving.
#[test]
fn a_second_process_on_the_same_data_directory_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .env_clear()
        .env("SERVER_ADDR", "127.0.0.1:0")
        .env("KAPSEL_DATA_DIR", directory.path())
        .env("KAPSEL_ADMIN_TOKEN", common::TOKEN)
        .env("KAPSEL_SHARDS", "2")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another Kapsel process"), "{stderr}");
    assert_eq!(server.request("GET", "/readyz", &[], b"").status, 200);
    assert_eq!(server.stop(), 0);
}

// Listeners share their port with SO_REUSEPORT, which any process of the same user may join: a
// second Kapsel (another data directory) started on a port in use would silently take a share of
// the first one's connections. It is refused at start, naming the address, and the first keeps
// every connection (found by the OpenAPI tests, which saw another process's answers).
#[test]
fn a_second_process_on_a_port_in_use_is_refused() {
    let first = tempfile::tempdir().unwrap();
    let server = Server::start(first.path(), "uring", &[]);
    let second = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .env_clear()
        .env("SERVER_ADDR", server.address.to_string())
        .env("KAPSEL_DATA_DIR", second.path())
        .env("KAPSEL_ADMIN_TOKEN", "another-token-entirely")
        .env("KAPSEL_SHARDS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A refused start ends at once; one that serves would run until killed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second Kapsel started on {} in use", server.address);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(&format!("cannot listen on {}", server.address)), "{stderr}");
    // Every connection still reaches the first process (the second one's token would be refused).
    for _ in 0..32 {
        assert_eq!(server.admin("GET", "/admin/session", "").status, 200);
    }
    assert_eq!(server.stop(), 0);
}
