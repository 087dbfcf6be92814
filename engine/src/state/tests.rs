//! The state machine's own tests: the bugs of issue 10's audit, each pinned by the behaviour
//! that was wrong, with time passed in (no clock, no sleeping).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kapsel_wal::Position;

use super::*;
use crate::model::records::{Requeued, OUTCOME_FAILED};

const NOW: u64 = 1_700_000_000_000;

fn limits(payload_memory_bytes_max: usize) -> StateLimits {
    StateLimits {
        events_max: 1_000,
        idempotency_keys_max: 1_000,
        idempotency_window_ms: 60_000,
        payload_memory_bytes_max,
        terminal_events_max: 1_000,
    }
}

/// A state and the next LSN, applying records as the shard would.
struct Log {
    state: ShardState,
    lsn: u64,
}

impl Log {
    fn new(budget: usize) -> Self {
        let mut log = Self { state: ShardState::new(0, limits(budget)), lsn: 0 };
        log.endpoint(r#"{"url":"https://example.com/hook","circuit":{"cooldown_ms":1000}}"#);
        log
    }

    fn apply(&mut self, record: Record) -> u64 {
        self.lsn += 1;
        let position = Position { segment_id: 1, offset: 40 + self.lsn as u32 * 100, length: 100 };
        self.state.apply(self.lsn, position, record, NOW);
        self.lsn
    }

    fn endpoint(&mut self, body: &str) {
        let endpoint = crate::model::endpoint::EndpointInput::parse(body.as_bytes())
            .unwrap()
            .into_endpoint("e", None, NOW)
            .unwrap();
        self.apply(Record::EndpointPut(endpoint));
    }

    fn receive(&mut self, sequence: u64) -> EventId {
        let event_id = EventId::new(NOW, 0, sequence);
        self.apply(Record::EventReceived(received(event_id)));
        event_id
    }

    fn attempt(&mut self, event_id: EventId, n: u32, outcome: u8, at_ms: u64) {
        let failed = outcome != OUTCOME_DELIVERED;
        self.apply(Record::Attempt(Attempt {
            event_id: event_id.0,
            n,
            at_ms,
            status_code: Some(if failed { 503 } else { 200 }),
            latency_ms: 1,
            error_code: failed.then(|| "E2003".to_string()),
            response_excerpt: Vec::new(),
            outcome,
            next_attempt_at_ms: (outcome == OUTCOME_RETRYING).then_some(at_ms + 60_000),
        }));
    }

    fn entry(&self) -> &EndpointEntry {
        self.state.endpoints.get("e").unwrap()
    }
}

/// The record of event `event_id` to endpoint `e`, with 100 bytes of payload.
fn received(event_id: EventId) -> EventReceived {
    EventReceived {
        event_id: event_id.0,
        endpoint_id: "e".into(),
        received_at_ms: NOW,
        idempotency_key: None,
        content_type: None,
        traceparent: None,
        tracestate: None,
        event_type: "event".into(),
        publish: None,
        payload: vec![b'x'; 100],
    }
}

fn loaded(request: &ReadRequest) -> Vec<(EventId, Result<Payload, String>)> {
    request
        .events
        .iter()
        .map(|(event_id, _)| {
            let payload = Payload {
                body: std::rc::Rc::from(vec![b'x'; 100]),
                content_type: None,
                traceparent: None,
                tracestate: None,
                webhook_id: EventId(0),
            };
            (*event_id, Ok(payload))
        })
        .collect()
}

// Audit 1: replay queued every received event, delivered ones too, and a restart sent them
// again. An outcome replayed takes its event out of the queue.
#[test]
fn replayed_outcomes_leave_nothing_queued() {
    let mut log = Log::new(1 << 20);
    let delivered = log.receive(1);
    let failed = log.receive(2);
    let retrying = log.receive(3);
    log.attempt(delivered, 1, OUTCOME_DELIVERED, NOW);
    log.attempt(failed, 1, OUTCOME_FAILED, NOW);
    log.attempt(retrying, 1, OUTCOME_RETRYING, NOW);
    assert_eq!(log.entry().ready().count(), 0);
    assert_eq!(log.entry().retries().count(), 1);
    assert!(log.state.schedule(NOW + 1).starts.is_empty(), "nothing is due");
    let plan = log.state.schedule(NOW + 61_001);
    assert_eq!(plan.reads.len() + plan.starts.len(), 1, "only the retry comes back, when it is due");
    log.state.check(NOW).unwrap();
}

// Audit 2: a redrive was re-applied after replay whatever followed it, so a redriven and then
// delivered event was sent on every restart. A redrive is judged where it is in the log.
#[test]
fn a_redrive_followed_by_a_delivery_is_done() {
    let mut log = Log::new(1 << 20);
    let event_id = log.receive(1);
    log.attempt(event_id, 1, OUTCOME_FAILED, NOW);
    let redriven = log.state.redrive(received(event_id), NOW + 5).unwrap();
    log.apply(Record::Redriven(redriven));
    assert_eq!(log.entry().ready().count(), 1);
    log.attempt(event_id, 2, OUTCOME_DELIVERED, NOW + 10);
    assert_eq!(log.state.events[&event_id].status, EventStatus::Delivered);
    assert_eq!(log.entry().ready().count(), 0, "delivered after its redrive: nothing to do");
    log.state.check(NOW).unwrap();
}

// Audit 3: the half-open probe was marked before an event was picked; when the head's payload
// was on disk no probe ran and the breaker stayed half-open for ever. The probe now starts only
// with its payload in hand, and the payload is read back for it.
#[test]
fn the_half_open_probe_reads_its_payload_back_and_resolves() {
    let mut log = Log::new(1 << 20);
    for sequence in 1..=8 {
        log.receive(sequence);
    }
    // Five live attempts fail: the breaker opens and lets go of the cached payloads.
    let starts = log.state.schedule(NOW).starts;
    assert_eq!(starts.len(), 8);
    for start in &starts[..5] {
        log.state.answered(start);
        log.attempt(start.event_id, start.n, OUTCOME_RETRYING, NOW);
        log.state.finish_live(start, true);
    }
    // Attempts in flight when it opened end later; the breaker ignores them.
    for start in &starts[5..] {
        log.state.answered(start);
        log.attempt(start.event_id, start.n, OUTCOME_RETRYING, NOW + 10);
        log.state.finish_live(start, true);
    }
    assert_eq!(log.entry().breaker.state_name(NOW + 1), "open");
    assert_eq!(log.entry().resident, 0, "an open breaker keeps no payloads cached");
    let reopen = NOW + 61_000;
    let cooling = log.state.schedule(NOW + 1_000);
    assert!(cooling.starts.is_empty() && cooling.reads.is_empty(), "nothing is spent while open");
    let plan = log.state.schedule(reopen);
    assert!(plan.starts.is_empty(), "no payload yet: no probe is marked");
    let request = plan.reads.into_iter().next().expect("the probe's payload is read back");
    let results = loaded(&request);
    log.state.complete_read(request, results, reopen);
    let plan = log.state.schedule(reopen);
    assert_eq!(plan.starts.len(), 1);
    assert!(plan.starts[0].probe);
    let probe = plan.starts[0].clone();
    log.state.answered(&probe);
    log.attempt(probe.event_id, probe.n, OUTCOME_DELIVERED, reopen + 1);
    log.state.finish_live(&probe, true);
    assert_eq!(log.entry().breaker.state_name(reopen + 2), "closed", "the probe resolved it");
    log.state.check(reopen).unwrap();
}

// Audit 5: one failed read-back left its event marked for ever and blocked its endpoint's queue,
// and payloads read back ignored the budget. A failed read is retried after a pause, and what
// is read back stays within the budget.
#[test]
fn a_failed_read_back_is_retried_and_the_budget_holds() {
    let mut log = Log::new(250);
    log.endpoint(r#"{"url":"https://example.com/hook","enabled":false}"#);
    for sequence in 1..=20 {
        log.receive(sequence);
    }
    log.endpoint(r#"{"url":"https://example.com/hook","enabled":true}"#);
    let plan = log.state.schedule(NOW);
    let request = plan.reads.into_iter().next().unwrap();
    assert!(request.reserved_bytes <= 250, "a read-back holds no more than the budget");
    let failed = request.events.iter().map(|(event_id, _)| (*event_id, Err("EIO".to_string()))).collect();
    assert_eq!(log.state.complete_read(request, failed, NOW), 2);
    assert!(log.state.schedule(NOW + 50).reads.is_empty(), "it waits before trying again");
    log.state.check(NOW + 50).unwrap();
    let plan = log.state.schedule(NOW + 100);
    let request = plan.reads.into_iter().next().expect("tried again after the pause");
    let results = loaded(&request);
    log.state.complete_read(request, results, NOW + 100);
    let plan = log.state.schedule(NOW + 100);
    assert!(!plan.starts.is_empty(), "the queue moves again");
    assert!(log.state.payload_bytes_held() <= 250);
    log.state.check(NOW + 100).unwrap();
}

// Audit 6: an open breaker added a timer on every scheduler pass (hundreds of thousands during a
// cool-down, each scanning every endpoint). Each endpoint has one timer.
#[test]
fn an_open_breaker_keeps_one_timer() {
    let mut log = Log::new(1 << 20);
    for sequence in 1..=10 {
        let event_id = log.receive(sequence);
        log.attempt(event_id, 1, OUTCOME_RETRYING, NOW);
    }
    log.receive(11);
    assert_eq!(log.entry().breaker.state_name(NOW + 1), "open");
    for pass in 0..10_000 {
        log.state.schedule(NOW + 1 + pass / 100);
    }
    assert_eq!(log.state.wakeups.len(), 1, "one timer for the endpoint, however many passes");
    log.state.check(NOW).unwrap();
}

// Audit 8: retrying a pending event queued it twice (and could underflow the waiting count).
// A redrive of a pending event only resets its budget.
#[test]
fn redriving_a_pending_event_does_not_queue_it_twice() {
    let mut log = Log::new(1 << 20);
    let event_id = log.receive(1);
    log.apply(Record::Requeued(Requeued { event_id: event_id.0, at_ms: NOW + 1 }));
    log.apply(Record::Requeued(Requeued { event_id: event_id.0, at_ms: NOW + 2 }));
    assert_eq!(log.entry().ready().count(), 1);
    assert_eq!(log.state.pending_work(), 1);
    log.state.check(NOW).unwrap();
}

// Audit 8: deleting an endpoint while an ingest to it was in flight left an orphan event. In log
// order the event comes first and the deletion removes it; the other way round the event finds
// no endpoint and is not kept.
#[test]
fn an_event_and_its_endpoints_deletion_leave_no_orphan() {
    for event_first in [true, false] {
        let mut log = Log::new(1 << 20);
        if event_first {
            log.receive(1);
        }
        log.apply(Record::EndpointDeleted(crate::model::records::EndpointDeleted {
            id: "e".into(),
            at_ms: NOW,
            by: None,
        }));
        if !event_first {
            log.receive(1);
        }
        assert!(log.state.events.is_empty(), "event first: {event_first}");
        assert_eq!(log.state.pending_work(), 0);
        log.state.check(NOW).unwrap();
    }
}

// A failed attempt's event waits for its due time: nothing starts a millisecond before it, and
// it starts (its payload read back first) once due.
#[test]
fn a_retry_starts_when_due_and_not_before() {
    let mut log = Log::new(1 << 20);
    let event_id = log.receive(1);
    let start = log.state.schedule(NOW).starts.into_iter().next().unwrap();
    log.state.answered(&start);
    log.attempt(event_id, 1, OUTCOME_RETRYING, NOW);
    log.state.finish_live(&start, true);
    let due = NOW + 60_000;
    assert_eq!(log.state.events[&event_id].next_attempt_at_ms(), due);
    let early = log.state.schedule(due - 1);
    assert!(early.starts.is_empty() && early.reads.is_empty(), "not before it is due");
    assert_eq!(early.next_wake_ms, Some(due), "the endpoint's timer is the due time");
    let request = log.state.schedule(due).reads.into_iter().next().expect("its payload is read back when due");
    let results = loaded(&request);
    log.state.complete_read(request, results, due);
    let starts = log.state.schedule(due).starts;
    assert_eq!((starts.len(), starts[0].event_id, starts[0].n), (1, event_id, 2));
    log.state.check(due).unwrap();
}

// The assertions guard bookkeeping, so a bookkeeping bug stops a debug build at the step that
// made it. Two are driven here through the state's own functions, as a bug would reach them.
#[cfg(debug_assertions)]
mod assertions {
    use super::*;

    // An attempt's outcome reported for an event that is not in flight (a second report of one
    // attempt, or a report for an event never started).
    #[test]
    #[should_panic(expected = "answered but not in flight")]
    fn answering_an_event_not_in_flight_is_caught() {
        let mut log = Log::new(1 << 20);
        let event_id = log.receive(1);
        let start = log.state.schedule(NOW).starts.pop().unwrap();
        assert_eq!(start.event_id, event_id);
        log.state.answered(&start);
        log.apply(Record::Attempt(Attempt {
            event_id: event_id.0,
            n: 1,
            at_ms: NOW,
            status_code: Some(200),
            latency_ms: 1,
            error_code: None,
            response_excerpt: Vec::new(),
            outcome: OUTCOME_DELIVERED,
            next_attempt_at_ms: None,
        }));
        log.state.finish_live(&start, true);
        log.state.answered(&start);
    }

    // An event made terminal twice would count its endpoint's waiting events down twice.
    #[test]
    #[should_panic(expected = "made terminal twice")]
    fn a_second_terminal_transition_is_caught() {
        let mut log = Log::new(1 << 20);
        let event_id = log.receive(1);
        log.state.make_terminal(event_id, EventStatus::Delivered);
        log.state.make_terminal(event_id, EventStatus::Failed);
    }
}

/// A publish of a 100-byte event to channel `c` with deliveries to `e` here and to `remote` on
/// shard 1.
fn published(event_id: EventId, remote: &[&str]) -> Published {
    use crate::model::records::{Delivery, Handoff};
    let deliveries = vec![Delivery { delivery_id: event_id.delivery(1).0, endpoint_id: "e".into() }];
    let handed: Vec<Delivery> = remote
        .iter()
        .zip(2..)
        .map(|(id, number)| Delivery { delivery_id: event_id.delivery(number).0, endpoint_id: (*id).into() })
        .collect();
    Published {
        event_id: event_id.0,
        channel: "c".into(),
        tenant: "default".into(),
        event_type: "order.created".into(),
        received_at_ms: NOW,
        idempotency_key: Some("k".into()),
        content_type: None,
        traceparent: None,
        tracestate: None,
        payload: vec![b'x'; 100],
        deliveries,
        handoffs: if handed.is_empty() { Vec::new() } else { vec![Handoff { shard: 1, deliveries: handed }] },
    }
}

// A publish record queues this shard's deliveries at once, remembers the channel-scoped key,
// and keeps its record (retention) until the other shard's handoff is recorded.
#[test]
fn a_publish_queues_its_deliveries_and_pins_its_record_until_handed_off() {
    let mut log = Log::new(1 << 20);
    let event_id = log.state.ids.next_published(NOW);
    let lsn = log.apply(Record::Published(published(event_id, &["far"])));
    let deliveries = log.state.deliveries_of(event_id);
    assert_eq!(deliveries, vec![event_id.delivery(1)]);
    let delivery = &log.state.events[&deliveries[0]];
    assert!(delivery.delivery && delivery.is_waiting());
    assert_eq!(delivery.public_id(deliveries[0]), event_id);
    assert_eq!(log.state.names.get(delivery.event_type), Some("order.created"));
    assert_eq!(log.state.names.get(delivery.channel), Some("c"));
    assert_eq!(log.entry().ready().count(), 1);
    let scope = publish_scope("default", "c");
    assert_eq!(log.state.idempotency.lookup(&scope, "k", NOW).map(|remembered| remembered.event_id), Some(event_id));
    assert_eq!(log.state.publications.pending_count(), 1);
    // Delivered here, its record is still needed for the other shard.
    log.attempt(deliveries[0], 1, OUTCOME_DELIVERED, NOW);
    assert_eq!(log.state.oldest_waiting_lsn(), Some(lsn));
    log.apply(Record::HandedOff(crate::model::records::HandedOff { event_id: event_id.0, shard: 1 }));
    assert_eq!(log.state.publications.pending_count(), 0);
    assert_eq!(log.state.oldest_waiting_lsn(), None);
    let next = log.state.ids.next(NOW);
    assert!(next > event_id.last_delivery(), "no later id falls in the publish's block");
}

// Adopting deliveries twice (a handoff made again after a restart) adds nothing, and an
// adoption for an endpoint this shard does not have adds nothing either.
#[test]
fn adopting_twice_adds_nothing() {
    let mut log = Log::new(1 << 20);
    let event_id = EventId::new(NOW, 1, 0);
    let mut adoption = published(event_id, &[]).adoption(Vec::new());
    adoption.deliveries = vec![
        crate::model::records::Delivery { delivery_id: event_id.delivery(3).0, endpoint_id: "e".into() },
        crate::model::records::Delivery { delivery_id: event_id.delivery(4).0, endpoint_id: "gone".into() },
    ];
    log.apply(Record::Adopted(adoption.clone()));
    log.apply(Record::Adopted(adoption));
    assert_eq!(log.state.deliveries_of(event_id), vec![event_id.delivery(3)]);
    assert_eq!(log.entry().ready().count(), 1);
    assert_eq!(log.state.pending_work(), 1);
    assert_eq!(log.state.publications.len(), 0, "an adoption is not a publication here");
    let own = log.state.ids.next(NOW);
    assert_eq!(own.shard(), 0, "another shard's ids leave this shard's sequence alone");
}

// Cluster mode's fence (ADR 17): after a `Takeover` at epoch e, only records stamped e count; a
// deposed owner's late outcome changes nothing, on every node replaying the stream alike.
#[test]
fn the_fence_admits_only_the_latest_owner() {
    let mut log = Log::new(1 << 20);
    let event_id = log.receive(1);
    let takeover = |epoch: u64, node: &str| {
        Record::Takeover(crate::model::records::Takeover { epoch, node: node.into(), at_ms: NOW })
    };
    let outcome = |n: u32, outcome: u8| {
        Record::Attempt(Attempt {
            event_id: event_id.0,
            n,
            at_ms: NOW,
            status_code: Some(503),
            latency_ms: 1,
            error_code: Some("E2003".into()),
            response_excerpt: Vec::new(),
            outcome,
            next_attempt_at_ms: (outcome == OUTCOME_RETRYING).then_some(NOW + 60_000),
        })
    };
    let fenced = |log: &mut Log, writer: Writer, record: Record| {
        log.lsn += 1;
        let position = Position { segment_id: 1, offset: 0, length: 100 };
        log.state.apply_fenced(log.lsn, position, writer, record, NOW)
    };
    // Before any takeover no owner record counts, nor an owner's kind from anyone.
    assert!(!fenced(&mut log, Writer::Owner { epoch: 0 }, outcome(1, OUTCOME_FAILED)));
    assert!(!fenced(&mut log, Writer::Anyone, outcome(1, OUTCOME_FAILED)));
    assert!(!fenced(&mut log, Writer::Anyone, takeover(1, "a")));
    assert!(fenced(&mut log, Writer::Owner { epoch: 1 }, takeover(1, "a")));
    assert!(fenced(&mut log, Writer::Owner { epoch: 1 }, outcome(1, OUTCOME_RETRYING)));
    assert_eq!(log.state.events[&event_id].attempts, 1);
    // Node b takes epoch 2; a's takeover or outcome landing late is ignored, and so is a
    // takeover whose header and body disagree.
    assert!(fenced(&mut log, Writer::Owner { epoch: 2 }, takeover(2, "b")));
    assert!(!fenced(&mut log, Writer::Owner { epoch: 1 }, takeover(1, "a")));
    assert!(!fenced(&mut log, Writer::Owner { epoch: 1 }, outcome(2, OUTCOME_FAILED)));
    assert!(!fenced(&mut log, Writer::Owner { epoch: 3 }, takeover(4, "c")));
    assert_eq!((log.state.events[&event_id].status, log.state.events[&event_id].attempts), (EventStatus::Retrying, 1));
    assert!(fenced(&mut log, Writer::Owner { epoch: 2 }, outcome(2, OUTCOME_DELIVERED)));
    assert_eq!(log.state.events[&event_id].status, EventStatus::Delivered);
    // Events come from anyone, and count whatever the epoch.
    assert!(fenced(&mut log, Writer::Anyone, Record::EventReceived(received(EventId::new(NOW, 0, 2)))));
    assert_eq!((log.state.owner_epoch(), log.state.fenced(), log.state.applied_lsn()), (2, 6, log.lsn));
}
