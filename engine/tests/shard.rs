//! A shard's operations over a real write-ahead log, without HTTP: storage failure mapping and
//! idempotency under concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::rc::Rc;
use std::sync::Arc;

use kapsel_engine::shard::{Accepted, Ingest, Shard};
use kapsel_engine::state::{ShardState, StateLimits};
use kapsel_engine::EngineError;
use kapsel_wal::{IoBackend, IoFaults, Options, Wal};

const LIMITS: StateLimits = StateLimits {
    events_max: 1000,
    idempotency_keys_max: 1000,
    idempotency_window_ms: 60_000,
    payload_memory_bytes_max: 1 << 20,
    terminal_events_max: kapsel_engine::limits::TERMINAL_EVENTS_IN_MEMORY_MAX,
};

fn ingest(key: Option<&str>) -> Ingest {
    Ingest {
        endpoint_id: "orders".into(),
        idempotency_key: key.map(String::from),
        content_type: Some("application/json".into()),
        traceparent: None,
        tracestate: None,
        event_type: "event".into(),
        headers: Default::default(),
        bearer: kapsel_engine::shard::IngestBearer::Operator,
        payload: b"{}".to_vec(),
    }
}

fn now() -> u64 {
    kapsel_engine::clock::now_ms()
}

fn on_runtime(test: impl std::future::Future<Output = ()>) {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(test);
}

async fn shard_with(faults: Arc<IoFaults>, directory: &std::path::Path) -> Shard {
    let options = Options { backend: IoBackend::Thread, faults: Some(faults), ..Options::default() };
    let (wal, _) = Wal::open(directory, options, |_| {}).await.unwrap();
    let shard = Shard::new(0, wal, ShardState::new(0, LIMITS)).unwrap();
    shard
        .put_endpoint(
            "orders",
            br#"{"url":"https://example.com/h"}"#,
            &kapsel_http::DestinationPolicy::default(),
            now(),
        )
        .await
        .unwrap();
    shard
}

// A failed fsync must surface as 503 E3003 and keep refusing: nothing is acknowledged that is
// not durable.
#[test]
fn a_failed_fsync_answers_e3003_and_keeps_refusing() {
    on_runtime(async {
        let directory = tempfile::tempdir().unwrap();
        let faults = Arc::new(IoFaults::default());
        let shard = shard_with(Arc::clone(&faults), directory.path()).await;
        assert!(matches!(shard.ingest(ingest(None), now()).await, Ok(Accepted::Received(_))));
        faults.fail_sync_after(1);
        let failed = shard.ingest(ingest(None), now()).await.unwrap_err();
        assert_eq!((failed.status(), failed.code()), (503, "E3003"));
        let refused = shard.ingest(ingest(None), now()).await.unwrap_err();
        assert!(matches!(refused, EngineError::Storage(_)), "{refused:?}");
        assert_eq!(refused.code(), "E3003");
    });
}

// Two concurrent requests with the same key get the same event, and only one is stored.
#[test]
fn concurrent_repeats_of_a_key_share_one_event() {
    on_runtime(async {
        let directory = tempfile::tempdir().unwrap();
        let shard = Rc::new(shard_with(Arc::new(IoFaults::default()), directory.path()).await);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let shard = Rc::clone(&shard);
                monoio::spawn(async move { shard.ingest(ingest(Some("same")), now()).await.unwrap() })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await);
        }
        let received: Vec<_> = outcomes.iter().filter(|outcome| matches!(outcome, Accepted::Received(_))).collect();
        assert_eq!(received.len(), 1, "{outcomes:?}");
        let Accepted::Received(first) = received[0] else { unreachable!() };
        assert!(outcomes
            .iter()
            .all(|outcome| matches!(outcome, Accepted::Received(id) | Accepted::Duplicate(id) if id == first)));
        // Two records: the endpoint and the one event.
        assert_eq!(shard.wal().unwrap().next_lsn(), 3);
    });
}

// The event bound is backpressure: at the bound, ingest answers 503 E3002.
#[test]
fn the_event_bound_answers_e3002() {
    on_runtime(async {
        let directory = tempfile::tempdir().unwrap();
        let options = Options { backend: IoBackend::Thread, ..Options::default() };
        let (wal, _) = Wal::open(directory.path(), options, |_| {}).await.unwrap();
        let limits = StateLimits { events_max: 3, ..LIMITS };
        let shard = Shard::new(0, wal, ShardState::new(0, limits)).unwrap();
        shard
            .put_endpoint(
                "orders",
                br#"{"url":"https://example.com/h"}"#,
                &kapsel_http::DestinationPolicy::default(),
                now(),
            )
            .await
            .unwrap();
        for _ in 0..3 {
            shard.ingest(ingest(None), now()).await.unwrap();
        }
        let full = shard.ingest(ingest(None), now()).await.unwrap_err();
        assert_eq!((full.status(), full.code()), (503, "E3002"));
        let response = full.into_response();
        assert!(response.headers.iter().any(|(name, _)| *name == "Retry-After"));
    });
}
