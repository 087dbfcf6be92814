//! Retention with the real binary: under a steady load the logs stop growing, `kapsel audit
//! verify` still passes, a restart keeps endpoints and waiting events, and nothing the index
//! has not taken is removed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{self, wait_until};

use std::path::Path;
use std::time::Duration;

use common::postgres::Postgres;
use common::sink::{Reply, Sink};
use common::Server;

/// Short retention and tiny segments, so that a test sees many segments sealed and removed.
const FAST: [(&str, &str); 3] =
    [("KAPSEL_RETENTION", "1s"), ("KAPSEL_IDEMPOTENCY_WINDOW", "1s"), ("KAPSEL_WAL_SEGMENT_BYTES", "4096")];

/// A counter of `GET /metrics`, summed over the shards.
fn counter(server: &Server, name: &str) -> u64 {
    let text = String::from_utf8(server.request("GET", "/metrics", &[], b"").body).unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Retention passes run so far, over all shards.
fn retention_passes(server: &Server) -> u64 {
    counter(server, "kapsel_retention_passes_total")
}

/// Sealed segments retention removed so far, over all shards.
fn removed_segments(server: &Server) -> u64 {
    counter(server, "kapsel_retention_segments_removed_total")
}

fn segments(data: &Path) -> usize {
    let mut count = 0;
    for shard in std::fs::read_dir(data.join("wal")).unwrap() {
        let shard = shard.unwrap().path();
        count += kapsel_wal::scan::list_segments(&shard).unwrap().len();
    }
    count
}

fn wal_bytes(data: &Path) -> u64 {
    let mut total = 0;
    for shard in std::fs::read_dir(data.join("wal")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            total += file.unwrap().metadata().unwrap().len();
        }
    }
    total
}

fn ingest(server: &Server, endpoint: &str) -> String {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(400));
    let response = server.request("POST", &format!("/ingest/{endpoint}"), &[], body.as_bytes());
    assert_eq!(response.status, 202, "{response:?}");
    response.json()["event_id"].as_str().unwrap().to_string()
}

fn audit_verify(data: &Path) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .env_clear()
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(output.status.success(), "audit verify: {}", String::from_utf8_lossy(&output.stdout));
}

// Rounds of delivered events: the logs stay small while far more than that is written, the
// chain verifies, and a restart still knows the endpoint and the events still waiting.
#[test]
fn steady_load_keeps_disk_use_flat_and_the_chain_verifiable() {
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "uring", &FAST);
    let body = format!(r#"{{"url":"{}"}}"#, sink.url("/hook"));
    assert!(matches!(server.admin("PUT", "/admin/endpoints/steady", &common::open_ingest(&body)).status, 200 | 201));
    assert!(matches!(
        server
            .admin(
                "PUT",
                "/admin/endpoints/paused",
                &common::open_ingest(r#"{"url":"http://127.0.0.1:9/x","enabled":false}"#)
            )
            .status,
        200 | 201
    ));
    let waiting = ingest(&server, "paused");
    // Let the paused event's segment seal and age, so that later segments can go.
    let mut peak = 0;
    let mut delivered = 0;
    for _round in 0..6 {
        for _ in 0..60 {
            ingest(&server, "steady");
            delivered += 1;
        }
        sink.wait_for("the round's deliveries", Duration::from_secs(20), |received| received.len() >= delivered);
        peak = peak.max(wal_bytes(directory.path()));
    }
    let written_at_least = delivered as u64 * 400;
    wait_until("retention to remove delivered segments", || segments(directory.path()) < 12);
    let settled = wal_bytes(directory.path());
    assert!(settled < written_at_least / 2, "the logs hold {settled} bytes after {written_at_least} were written");
    // The waiting event keeps its own segment: it is not terminal.
    let event = server.admin("GET", &format!("/admin/events/{waiting}"), "").json();
    assert_eq!(event["status"], "pending");
    assert_eq!(server.stop(), 0);
    audit_verify(directory.path());

    let server = Server::start(directory.path(), "legacy", &FAST);
    let endpoint = server.admin("GET", "/admin/endpoints/steady", "");
    assert_eq!(endpoint.status, 200, "the endpoint survives retention and a restart: {endpoint:?}");
    let event = server.admin("GET", &format!("/admin/events/{waiting}"), "").json();
    assert_eq!(event["status"], "pending", "{event}");
    ingest(&server, "steady");
    sink.wait_for("a delivery after the restart", Duration::from_secs(20), |received| received.len() > delivered);
    assert_eq!(server.stop(), 0);
    audit_verify(directory.path());
}

// With an index configured but its database down, nothing is removed: the index still needs
// every record. Once the database is up and the index has caught up, retention goes on.
#[test]
fn segments_the_index_has_not_taken_are_kept() {
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.database("retention");
    postgres.stop_server();
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let mut variables = FAST.to_vec();
    variables.push(("DATABASE_URL", &url));
    let server = Server::start(directory.path(), "uring", &variables);
    let body = format!(r#"{{"url":"{}"}}"#, sink.url("/hook"));
    assert!(matches!(server.admin("PUT", "/admin/endpoints/steady", &common::open_ingest(&body)).status, 200 | 201));
    for _ in 0..120 {
        ingest(&server, "steady");
    }
    sink.wait_for("every delivery", Duration::from_secs(20), |received| received.len() >= 120);
    let before = segments(directory.path());
    assert!(before > 8, "the test needs many segments: {before}");
    // Several retention passes (every 500 ms with 1 s retention) while the index is down: wait
    // for them, then nothing may have been removed (more segments may have been written).
    let passes = retention_passes(&server);
    wait_until("three more retention passes", || retention_passes(&server) >= passes + 3 * 2);
    assert_eq!(removed_segments(&server), 0, "nothing removed while the index lags");
    assert!(segments(directory.path()) >= before);
    postgres.start_server();
    wait_until("the index caught up", || {
        let ready = server.request("GET", "/readyz", &[], b"").json();
        ready["index"]["state"] == "connected" && ready["index"]["lag_records"] == 0
    });
    wait_until("retention after the catch-up", || segments(directory.path()) < before / 2);
    assert_eq!(postgres.psql("retention", "SELECT count(*) FROM events"), "120");
    assert_eq!(server.stop(), 0);
    audit_verify(directory.path());
}
