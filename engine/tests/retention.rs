//! Retention over a real write-ahead log: only sealed segments that are old enough, fully
//! terminal and indexed go; endpoints stored in them survive a restart; the audit chain still
//! verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kapsel_engine::ids::EventId;
use kapsel_engine::records::{Attempt, Record, OUTCOME_DELIVERED, OUTCOME_RETRYING};
use kapsel_engine::retention;
use kapsel_engine::shard::{Accepted, Ingest, Shard};
use kapsel_engine::state::{EventStatus, ShardState, StateLimits};
use kapsel_wal::{IoBackend, Options, Wal};

const LIMITS: StateLimits = StateLimits {
    events_max: 1000,
    idempotency_keys_max: 1000,
    idempotency_window_ms: 0,
    payload_memory_bytes_max: 1 << 20,
    terminal_events_max: 1000,
};

fn options() -> Options {
    Options { backend: IoBackend::Thread, segment_bytes: kapsel_wal::limits::SEGMENT_BYTES_MIN, ..Options::default() }
}

async fn ingest(shard: &Shard, n: usize) -> EventId {
    let ingest = Ingest {
        endpoint_id: "orders".into(),
        idempotency_key: None,
        content_type: None,
        traceparent: None,
        tracestate: None,
        event_type: "event".into(),
        headers: Default::default(),
        bearer: kapsel_engine::shard::IngestBearer::Operator,
        payload: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(300)).into_bytes(),
    };
    match shard.ingest(ingest, kapsel_engine::clock::now_ms()).await.unwrap() {
        Accepted::Received(id) | Accepted::Duplicate(id) => id,
    }
}

/// Records an attempt's outcome: delivered, or retrying at `retry_at` (the event leaves its
/// queue when the record is applied, as at replay).
async fn attempt(shard: &Shard, event_id: EventId, retry_at: Option<u64>) {
    let attempt = Attempt {
        event_id: event_id.0,
        n: 1,
        at_ms: kapsel_engine::clock::now_ms(),
        status_code: Some(if retry_at.is_some() { 503 } else { 200 }),
        latency_ms: 1,
        error_code: retry_at.map(|_| "E2003".to_string()),
        response_excerpt: Vec::new(),
        outcome: if retry_at.is_some() { OUTCOME_RETRYING } else { OUTCOME_DELIVERED },
        next_attempt_at_ms: retry_at,
    };
    shard.append(Record::Attempt(attempt), kapsel_engine::clock::now_ms()).await.unwrap();
}

fn segment_ids(directory: &std::path::Path) -> Vec<u64> {
    kapsel_wal::scan::list_segments(directory).unwrap().into_iter().map(|(id, _)| id).collect()
}

// A steady log of delivered events shrinks to what is still needed; the waiting events, the
// endpoint and the chain survive a restart.
#[test]
fn retention_removes_only_what_it_may() {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(async {
        let directory = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(directory.path(), options(), |_| {}).await.unwrap();
        let shard = Shard::new(0, wal, ShardState::new(0, LIMITS)).unwrap();
        shard
            .put_endpoint(
                "orders",
                br#"{"url":"https://example.com/h"}"#,
                &kapsel_http::DestinationPolicy::default(),
                kapsel_engine::clock::now_ms(),
            )
            .await
            .unwrap();
        let mut ids = Vec::new();
        for n in 0..60 {
            ids.push(ingest(&shard, n).await);
        }
        for id in &ids[..40] {
            attempt(&shard, *id, None).await;
        }
        // One waiting event is between retries, far in the future.
        let retry_at = kapsel_engine::clock::now_ms() + 3_600_000;
        attempt(&shard, ids[45], Some(retry_at)).await;
        shard.wal().unwrap().seal().await.unwrap();
        let before = segment_ids(directory.path());
        assert!(before.len() > 4, "the test needs several segments: {before:?}");

        // Too young: nothing goes.
        let now = kapsel_engine::clock::now_ms();
        assert!(retention::pass(&shard, 3_600_000, now).await.unwrap().is_empty());
        assert_eq!(segment_ids(directory.path()), before);

        let removed = retention::pass(&shard, 0, now + 1).await.unwrap();
        assert!(!removed.is_empty());
        let after = segment_ids(directory.path());
        assert!(
            after.iter().all(|id| !before[..before.len() - 1].contains(id)),
            "waiting events were carried forward, so every sealed segment could go: {before:?} → {after:?}"
        );
        // The waiting events' records now live where they can still be read.
        let positions: Vec<_> = ids[40..].iter().map(|id| (*id, shard.state().borrow().events[id].position)).collect();
        let kept = kapsel_engine::readback::load(directory.path(), &positions);
        assert!(kept.iter().all(|(_, event)| event.is_ok()), "every waiting event is readable at its new place");
        // A delivered event whose segment went cannot be redelivered, and says why.
        let expired = shard.retry_event(ids[0], kapsel_engine::clock::now_ms()).await.unwrap_err();
        assert_eq!(expired.code(), "E1004", "{expired}");

        kapsel_wal::audit::verify(directory.path(), &mut |_| {}).unwrap();
        shard.into_wal().unwrap().close().await.unwrap();

        let mut state = ShardState::new(0, LIMITS);
        let now = kapsel_engine::clock::now_ms();
        assert_eq!(kapsel_engine::snapshot::load_into(&mut state, directory.path()).unwrap(), 1);
        let (wal, _) = Wal::open(directory.path(), options(), |record| {
            state.apply(record.lsn, record.position, Record::decode(record.kind, record.body).unwrap(), now)
        })
        .await
        .unwrap();
        assert!(state.endpoints.contains_key("orders"), "the endpoint came back from the snapshot");
        for id in ids[40..].iter().filter(|id| **id != ids[45]) {
            assert_eq!(state.events[id].status, EventStatus::Pending, "waiting events survive");
        }
        let retrying = &state.events[&ids[45]];
        assert_eq!(retrying.status, EventStatus::Retrying, "its progress came along");
        assert_eq!((retrying.next_attempt_at_ms(), retrying.attempts, retrying.budget_used), (retry_at, 1, 1));
        assert_eq!(state.pending_work(), 20);
        assert!(!state.events.contains_key(&ids[0]), "removed events are gone from memory");
        wal.close().await.unwrap();
    });
}

/// A shard over the log in `directory` with one endpoint, `orders`.
async fn shard_with(directory: &std::path::Path, options: Options) -> Shard {
    let now = kapsel_engine::clock::now_ms();
    let (shard, _) = Shard::open(0, directory, options, LIMITS, now).await.unwrap();
    if !shard.state().borrow().endpoints.contains_key("orders") {
        shard
            .put_endpoint(
                "orders",
                br#"{"url":"https://example.com/h"}"#,
                &kapsel_http::DestinationPolicy::default(),
                now,
            )
            .await
            .unwrap();
    }
    shard
}

// Regression (issue 10, audit 7): carrying waiting events forward appended up to 1,024 records
// without waiting; past the log's queue bound the pass failed before it noted where they went,
// so every later pass carried the same events again and the log grew without bound. A pass now
// stops where the queue is full, the state learns each new place when the record is applied,
// and later passes finish the job.
#[test]
fn carrying_forward_stops_at_a_full_queue_and_resumes() {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(async {
        let directory = tempfile::tempdir().unwrap();
        let small_queue = Options { queue_bytes_max: 8 * 1024, batch_bytes_max: 4 * 1024, ..options() };
        let shard = shard_with(directory.path(), small_queue).await;
        let mut ids = Vec::new();
        for n in 0..60 {
            ids.push(ingest(&shard, n).await);
        }
        shard.wal().unwrap().seal().await.unwrap();
        let before: Vec<u64> = ids.iter().map(|id| shard.state().borrow().events[id].lsn).collect();
        let now = kapsel_engine::clock::now_ms();
        let mut passes = 0;
        while ids.iter().any(|id| shard.state().borrow().events[id].lsn <= *before.iter().max().unwrap()) {
            retention::pass(&shard, 0, now + 1).await.unwrap();
            passes += 1;
            assert!(passes < 20, "carrying forward makes progress");
        }
        assert!(passes > 1, "the queue bound split the work over several passes");
        let positions: Vec<_> = ids.iter().map(|id| (*id, shard.state().borrow().events[id].position)).collect();
        let read = kapsel_engine::readback::load(directory.path(), &positions);
        assert!(read.iter().all(|(_, event)| event.is_ok()), "every waiting event is where the state says");
        let records = kapsel_wal::read::for_each(directory.path(), &mut |_| {}).unwrap();
        assert!(records < 200, "each event was carried once, not again and again: {records} records");
    });
}

// Regression (issue 10, audit 7): a redrive between retention's decision and the removal could
// lose the redriven event at the next start (its only record was in the removed segment). A
// redrive of a delivered or failed event now carries the event itself.
#[test]
fn a_redrive_survives_the_removal_of_its_original_segment() {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(async {
        let directory = tempfile::tempdir().unwrap();
        let event_id = {
            let shard = shard_with(directory.path(), options()).await;
            let event_id = ingest(&shard, 1).await;
            attempt(&shard, event_id, None).await;
            for n in 0..20 {
                let other = ingest(&shard, n).await;
                attempt(&shard, other, None).await;
            }
            shard.wal().unwrap().seal().await.unwrap();
            shard.retry_event(event_id, kapsel_engine::clock::now_ms()).await.unwrap();
            let removed = retention::pass(&shard, 0, kapsel_engine::clock::now_ms() + 1).await.unwrap();
            assert!(!removed.is_empty(), "the segment that first held the event went");
            shard.into_wal().unwrap().close().await.unwrap();
            event_id
        };
        let shard = shard_with(directory.path(), options()).await;
        let state = shard.state().borrow();
        let event = state.events.get(&event_id).expect("the redriven event is still known");
        assert_eq!(event.status, EventStatus::Pending, "and still to be delivered");
        assert_eq!(event.attempts, 1, "with its history");
    });
}
