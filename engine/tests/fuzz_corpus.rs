//! Replays the committed fuzz corpora of the engine's targets (`fuzz/corpus/endpoints_snapshot`,
//! `fuzz/corpus/endpoint_json`, `fuzz/corpus/admin_query`) and their crash inputs
//! (`fuzz/artifacts/<target>/`) through the same harness the fuzz targets run
//! (`fuzz/harness/engine.rs`), with no fuzzer. See docs/adr/0011-fuzzing-on-stable.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/harness/engine.rs"]
#[allow(dead_code)]
mod harness;

#[path = "../../fuzz/harness/replay.rs"]
#[allow(dead_code)]
mod replay;

use replay::{fuzz_directory, replay};

use kapsel_engine::breaker::BreakerSnapshot;
use kapsel_engine::endpoint::EndpointInput;
use kapsel_engine::snapshot::{self, Snapshot};

// A damaged or hand-edited snapshot file must be refused or read back exactly, never crash the
// shard at start.
#[test]
fn endpoints_snapshot_corpus_replays() {
    replay("endpoints_snapshot", harness::endpoints_snapshot);
}

// An admin body either makes a valid endpoint that survives its JSON view and the log, or is
// refused with a message.
#[test]
fn endpoint_json_corpus_replays() {
    replay("endpoint_json", harness::endpoint_json);
}

// Listing filters parse within their bounds and mean the same when written out again.
#[test]
fn admin_query_corpus_replays() {
    replay("admin_query", harness::admin_query);
}

// Regression (fuzz/artifacts/endpoint_json/crash-float-drift-through-admin-view): serde_json
// parsed `1.0000000000002002` one ULP off, so every PUT of an endpoint's own admin view moved its
// retry multiplier by another ULP. Floats now parse to the nearest double (`float_roundtrip`).
#[test]
fn an_endpoint_view_sent_back_keeps_its_float_policies_exactly() {
    let body = r#"{"url":"https://e.x/","retry":{"multiplier":1.0000000000002002,"jitter":0.2},"circuit":{"failure_rate":0.1}}"#;
    let first = endpoint("ep_fuzz", body);
    assert_eq!(first.retry.multiplier, 1.000_000_000_000_200_2);
    harness::endpoint_json(body.as_bytes());
}

fn endpoint(id: &str, body: &str) -> kapsel_engine::endpoint::Endpoint {
    EndpointInput::parse(body.as_bytes()).unwrap().into_endpoint(id, None, harness::NOW_MS).unwrap()
}

// Not a test: writes the snapshot seeds (a current snapshot with breakers, and one in the
// older endpoints-only format). Run by hand after a format change, then minimise (fuzz/README.md):
// `cargo test -p kapsel-engine --test fuzz_corpus -- --ignored write_seeds`
#[test]
#[ignore = "writes the fuzz seeds into fuzz/corpus; run by hand"]
fn write_seeds() {
    let corpus = fuzz_directory().join("corpus").join("endpoints_snapshot");
    std::fs::create_dir_all(&corpus).unwrap();
    let plain = endpoint("ep_plain", r#"{"url":"https://example.com/hook"}"#);
    let tuned = endpoint(
        "ep_tuned",
        r#"{"url":"http://10.0.0.7:9000/in?x=1","enabled":false,"timeout_ms":2500,"max_in_flight":4,
            "rate_limit_per_s":50,"ingest_secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "retry":{"max_attempts":7,"initial_delay_ms":100,"multiplier":3.5,"max_delay_ms":60000,"jitter":0.25,"max_age_ms":3600000},
            "circuit":{"consecutive_failures":3,"failure_rate":0.75,"window":20,"cooldown_ms":1000,"cooldown_max_ms":120000}}"#,
    );
    let breaker = BreakerSnapshot {
        open_until_ms: Some(harness::NOW_MS + 30_000),
        cooldown_ms: 30_000,
        window: vec![false, true, true, true],
        run: 3,
    };
    let closed = BreakerSnapshot { open_until_ms: None, cooldown_ms: 1000, window: vec![], run: 0 };
    let scratch = tempfile::tempdir().unwrap();
    let current = Snapshot {
        applied_lsn: 1234,
        endpoints: vec![(plain.clone(), closed), (tuned, breaker)],
        adopted: vec![(1, 1 << 80)],
        tenants: vec![],
        keys: vec![],
    };
    snapshot::write(scratch.path(), &current).unwrap();
    std::fs::copy(snapshot::path(scratch.path()), corpus.join("seed-two-endpoints-with-breakers")).unwrap();
    let empty = Snapshot { applied_lsn: 0, endpoints: vec![], adopted: vec![], tenants: vec![], keys: vec![] };
    snapshot::write(scratch.path(), &empty).unwrap();
    std::fs::copy(snapshot::path(scratch.path()), corpus.join("seed-empty")).unwrap();
    // The older format, `KPSNAP01`: endpoints only, read with fresh breakers.
    let body = kapsel_wal::codec::encode(&vec![plain]).unwrap();
    let mut older = b"KPSNAP01".to_vec();
    older.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    older.extend_from_slice(&body);
    std::fs::write(corpus.join("seed-endpoints-only-format"), older).unwrap();
}
