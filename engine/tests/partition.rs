//! A shard whose log is a partition's replicated stream (cluster mode, ADR 17), over the
//! in-memory stream: the owner applies what every node writes in the stream's one order, a new
//! owner's `Takeover` fences the old one, and any node replaying the stream gets the same state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use kapsel_engine::delivery::complete_attempt;
use kapsel_engine::ids::EventId;
use kapsel_engine::index::streams::{self, Opening, StreamSource};
use kapsel_engine::index::{Change, Row};
use kapsel_engine::records::{EventReceived, Record, OUTCOME_DELIVERED, OUTCOME_RETRYING};
use kapsel_engine::shard::stream::Feed;
use kapsel_engine::shard::stream::{MemoryStream, Outgoing, PartitionStream};
use kapsel_engine::shard::Shard;
use kapsel_engine::state::{EventStatus, Start, StateLimits, Writer};
use kapsel_engine::EngineError;
use support::response;

const LIMITS: StateLimits = StateLimits {
    events_max: 1000,
    idempotency_keys_max: 1000,
    idempotency_window_ms: 60_000,
    payload_memory_bytes_max: 1 << 20,
    terminal_events_max: 1000,
};
const NOW: u64 = 1_700_000_000_000;

fn on_runtime(test: impl std::future::Future<Output = ()>) {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(test);
}

async fn open(stream: &MemoryStream, epoch: u64, node: &str) -> Result<Shard, EngineError> {
    let shared: Arc<dyn PartitionStream> = Arc::new(stream.clone());
    Shard::open_partition(3, shared, Box::new(stream.feed(1)), stream.last_sequence(), (epoch, node), LIMITS, None, NOW)
        .await
}

/// An event for `orders` as an ingesting node publishes it: from anyone, not fenced.
fn ingest_elsewhere(stream: &MemoryStream, sequence: u64) -> (EventId, u64) {
    let event_id = EventId::new(NOW, 3, sequence);
    let event = EventReceived {
        event_id: event_id.0,
        endpoint_id: "orders".into(),
        received_at_ms: NOW,
        idempotency_key: None,
        content_type: Some("application/json".into()),
        traceparent: None,
        tracestate: None,
        event_type: "order.created".into(),
        publish: None,
        payload: format!("{{\"n\":{sequence}}}").into_bytes(),
    };
    let (kind, body) = Record::EventReceived(event).encode().unwrap();
    (event_id, stream.append(Outgoing { writer: Writer::Anyone, kind, body: body.to_vec() }))
}

/// The in-memory stream as the index thread reads it.
struct Source(MemoryStream);

impl StreamSource for Source {
    fn open(&self, _partition: usize, from: u64) -> Opening {
        let feed: Box<dyn Feed> = Box::new(self.0.feed(from));
        Box::pin(std::future::ready(Ok(feed)))
    }
}

/// Partition 3's changes as the index reads them from its stream after `checkpoint` (where the
/// fence's epoch was `fence`) up to `up_to`, a few at a time, on a tokio runtime as the index
/// thread runs.
fn read_for_index(stream: &MemoryStream, checkpoint: u64, mut fence: u64, up_to: u64) -> Vec<Change> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let source = Source(stream.clone());
    let (mut next, mut slot, mut changes) = (checkpoint + 1, None, Vec::new());
    while next <= up_to {
        let read = runtime.block_on(streams::read(&source, &mut slot, 3, (&mut next, &mut fence), up_to, 2)).unwrap();
        assert!(!read.is_empty(), "the read stalled at {next}");
        changes.extend(read);
    }
    changes
}

/// Starts every attempt the shard's scheduler offers now, reading payloads back first.
async fn starts(shard: &Shard) -> Vec<Start> {
    let mut started = Vec::new();
    for _ in 0..10 {
        let plan = shard.state().borrow_mut().schedule(NOW);
        started.extend(plan.starts);
        if plan.reads.is_empty() {
            break;
        }
        for read in plan.reads {
            shard.read_back(read).await;
        }
    }
    started
}

fn status(shard: &Shard, event_id: EventId) -> (EventStatus, u32) {
    let state = shard.state().borrow();
    let event = &state.events[&event_id];
    (event.status, event.attempts)
}

// The stream is the truth and the queue for every node: an owner delivers events other nodes
// published, a new owner takes over at a higher epoch, the old one learns it from its feed and
// stops writing, and an outcome of the old owner's that lands afterwards anyway (a paused
// process's write on its way) changes nothing, on the new owner and on a third node replaying
// the stream alike.
#[test]
fn a_new_owner_fences_the_old_one_and_every_replay_agrees() {
    on_runtime(async {
        let stream = MemoryStream::new();
        let a = open(&stream, 1, "node-a").await.unwrap();
        assert_eq!(a.ownership(), Some((1, false)));
        a.put_endpoint("orders", br#"{"url":"https://example.com/h","max_in_flight":1}"#, &Default::default(), NOW)
            .await
            .unwrap();
        let (first, _) = ingest_elsewhere(&stream, 1);
        let (second, last) = ingest_elsewhere(&stream, 2);
        a.applied(last).await.unwrap();
        let started = starts(&a).await;
        assert_eq!(started.iter().map(|start| start.event_id).collect::<Vec<_>>(), vec![first]);
        assert_eq!(complete_attempt(&a, &started[0], &response(200, None), NOW, NOW, 0.0).await, OUTCOME_DELIVERED);
        assert_eq!(status(&a, first), (EventStatus::Delivered, 1));
        let in_flight = starts(&a).await;
        assert_eq!(in_flight.iter().map(|start| start.event_id).collect::<Vec<_>>(), vec![second]);

        // Node b takes the partition at epoch 2 while a's attempt of `second` is in flight.
        let b = open(&stream, 2, "node-b").await.unwrap();
        assert_eq!((status(&b, first), status(&b, second)), ((EventStatus::Delivered, 1), (EventStatus::Pending, 0)));
        // a saw b's takeover in its feed: it is deposed and publishes nothing more.
        assert!(!a.writable());
        assert_eq!(a.ownership(), Some((1, true)));
        let published = stream.last_sequence();
        complete_attempt(&a, &in_flight[0], &response(503, None), NOW, NOW, 0.0).await;
        assert_eq!(stream.last_sequence(), published);
        // A write of a's that was on its way (a paused process) lands after the takeover: fenced.
        let (kind, body) = Record::Attempt(kapsel_engine::records::Attempt {
            event_id: second.0,
            n: 1,
            at_ms: NOW,
            status_code: Some(200),
            latency_ms: 1,
            error_code: None,
            response_excerpt: Vec::new(),
            outcome: OUTCOME_DELIVERED,
            next_attempt_at_ms: None,
        })
        .encode()
        .unwrap();
        let late = stream.append(Outgoing { writer: Writer::Owner { epoch: 1 }, kind, body: body.to_vec() });
        b.applied(late).await.unwrap();
        assert_eq!(status(&b, second), (EventStatus::Pending, 0), "a deposed owner's outcome counted");
        assert!(matches!(a.retry_event(first, NOW).await, Err(EngineError::Unavailable(_))));
        // b makes the attempt again (the in-flight exception of at-least-once) and records it.
        let again = starts(&b).await;
        assert_eq!(again.iter().map(|start| start.event_id).collect::<Vec<_>>(), vec![second]);
        assert_eq!(complete_attempt(&b, &again[0], &response(503, None), NOW, NOW, 0.0).await, OUTCOME_RETRYING);
        assert_eq!(status(&b, second), (EventStatus::Retrying, 1));

        // A third node replays the whole stream: the same state as the live owner.
        let last = stream.last_sequence();
        let mut replayed = kapsel_engine::state::ShardState::new(3, LIMITS);
        // What an owner's applier hands the index: each record's row, none for an ignored one.
        let mut fed = Vec::new();
        for record in stream.records() {
            let position = kapsel_engine::shard::stream::position_of(record.sequence, record.body.len());
            let decoded = Record::decode(record.kind, &record.body).unwrap();
            let row = Row::from_record(&decoded);
            let applied = replayed.apply_fenced(record.sequence, position, record.writer, decoded, NOW);
            fed.push(Change { shard: 3, lsn: record.sequence, row: if applied { row } else { Row::Nothing } });
        }
        // The index reading the stream from any checkpoint, with the fence's epoch there, gets
        // exactly those rows: the late outcome of the deposed owner is none.
        let late_row = fed.iter().find(|change| change.lsn == late).map(|change| change.row.clone());
        assert_eq!(late_row, Some(Row::Nothing));
        let fences: Vec<_> = fed.iter().filter(|change| matches!(change.row, Row::Fence { .. })).collect();
        assert_eq!(fences.len(), 2, "both takeovers admitted: {fences:?}");
        for checkpoint in 0..last {
            let fence = fed[..checkpoint as usize].iter().fold(0, |fence, change| match change.row {
                Row::Fence { epoch } => epoch,
                _ => fence,
            });
            assert_eq!(
                read_for_index(&stream, checkpoint, fence, last),
                fed[checkpoint as usize..],
                "from {checkpoint}"
            );
        }
        b.applied(last).await.unwrap();
        let live = b.state().borrow().durable_view(1, &BTreeSet::new(), NOW);
        let theirs = replayed.durable_view(1, &BTreeSet::new(), NOW);
        assert_eq!(live.difference(&theirs), None);
        assert_eq!((replayed.owner_epoch(), replayed.fenced()), (2, 1));
    });
}

// A takeover that finds a higher epoch already in the stream fails: the lease was lost before
// the new owner's first record landed.
#[test]
fn a_takeover_below_the_latest_one_is_refused() {
    on_runtime(async {
        let stream = MemoryStream::new();
        let _b = open(&stream, 5, "node-b").await.unwrap();
        assert!(matches!(open(&stream, 4, "node-a").await, Err(EngineError::Unavailable(_))));
    });
}

// A publish the stream does not acknowledge is not done: the operation fails and nothing is
// applied, and a late acknowledgement is waited for, not guessed.
#[test]
fn an_unacknowledged_publish_is_not_done() {
    on_runtime(async {
        let stream = MemoryStream::new();
        let a = open(&stream, 1, "node-a").await.unwrap();
        stream.refuse(Some("no responders"));
        let refused = a.put_endpoint("orders", br#"{"url":"https://example.com/h"}"#, &Default::default(), NOW).await;
        assert!(matches!(refused, Err(EngineError::Unavailable(reason)) if reason.contains("no responders")));
        assert!(a.state().borrow().endpoints.get("orders").is_none());
        stream.refuse(None);
        stream.hold_acks(true);
        let ticket =
            a.submit(Record::Requeued(kapsel_engine::records::Requeued { event_id: 1, at_ms: NOW }), NOW).unwrap();
        let sequence = stream.last_sequence();
        a.applied(sequence).await.unwrap();
        // Applied from the feed, but its acknowledgement has not come: the waiter still waits.
        let waiting = a.durable(ticket);
        poll_is_ready(waiting, false);
        stream.release_acks();
        a.durable(ticket).await.unwrap();
    });
}

/// Polls a future once and checks whether it was ready.
fn poll_is_ready<F: std::future::Future>(future: F, expect_ready: bool) {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert_eq!(future.as_mut().poll(&mut context).is_ready(), expect_ready);
}

// Retention over a partition's stream: waiting events are carried forward, a snapshot stands in
// for the purged endpoint records, the stream is purged below what anything needs, and a new
// owner starts from the snapshot and the tail and delivers what was waiting.
#[test]
fn retention_purges_a_partition_and_a_new_owner_starts_from_its_snapshot() {
    on_runtime(async {
        let stream = MemoryStream::new();
        let a = open(&stream, 1, "node-a").await.unwrap();
        a.put_endpoint("orders", br#"{"url":"https://example.com/h","max_in_flight":1}"#, &Default::default(), NOW)
            .await
            .unwrap();
        let ids: Vec<EventId> = (1..=5).map(|n| ingest_elsewhere(&stream, n).0).collect();
        a.applied(stream.last_sequence()).await.unwrap();
        for _ in 0..3 {
            let started = starts(&a).await;
            complete_attempt(&a, &started[0], &response(200, None), NOW, NOW, 0.0).await;
        }
        assert_eq!(status(&a, ids[2]).0, EventStatus::Delivered);
        let before = stream.last_sequence();
        let now = kapsel_engine::clock::now_ms();
        let purged = kapsel_engine::retention::stream_pass(&a, 0, now + 1_000).await.unwrap();
        let (first, _) = stream.extent().await.unwrap();
        assert!(purged > 0 && first > 1, "purged {purged}, first {first}");
        // Everything the two waiting events need was carried past the purge.
        assert!(stream.last_sequence() > before);

        let b = open(&stream, 2, "node-b").await.unwrap();
        assert!(b.state().borrow().endpoints.get("orders").is_some(), "the endpoint came from the snapshot");
        assert_eq!((status(&b, ids[3]).0, status(&b, ids[4]).0), (EventStatus::Pending, EventStatus::Pending));
        for id in &ids[3..] {
            let started = starts(&b).await;
            assert_eq!(started[0].event_id, *id);
            assert_eq!(complete_attempt(&b, &started[0], &response(200, None), NOW, NOW, 0.0).await, OUTCOME_DELIVERED);
        }
        assert_eq!(b.state().borrow().owner_epoch(), 2);

        // Purged past the newest snapshot (an owner that did not know it was deposed): a shard
        // opening then refuses to follow the stream with a hole, rather than miss records.
        let (kind, body) =
            Record::Requeued(kapsel_engine::records::Requeued { event_id: 1, at_ms: NOW }).encode().unwrap();
        stream.append(Outgoing { writer: Writer::Owner { epoch: 2 }, kind, body: body.to_vec() });
        stream.purge_below(stream.last_sequence()).await.unwrap();
        assert!(
            matches!(open(&stream, 3, "node-c").await, Err(EngineError::Storage(reason)) if reason.contains("purged"))
        );
    });
}
