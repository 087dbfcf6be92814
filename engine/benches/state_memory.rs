//! `cargo bench -p kapsel-engine --bench state_memory`: the heap a shard's state needs per
//! event, measured exactly with a counting allocator: per waiting event (never attempted, payload
//! on disk), and per delivered event kept in the lookup window. These are the figures the
//! documented sizes (README, `limits`) promise; RSS adds the allocator's own overhead.
//!
//! `KAPSEL_BENCH_EVENTS` events of each kind (default 200 000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kapsel_engine::endpoint::EndpointInput;
use kapsel_engine::ids::EventId;
use kapsel_engine::records::{Attempt, EventReceived, Record, OUTCOME_DELIVERED};
use kapsel_engine::state::{ShardState, StateLimits};
use kapsel_wal::Position;

/// The system allocator, counting the bytes it holds.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments; the counter is only
// arithmetic beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `pointer` came from `alloc` above with this layout.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

fn received(index: u64) -> Record {
    Record::EventReceived(EventReceived {
        event_id: EventId::new(1_700_000_000_000 + index / 16, 0, index % 16).0,
        endpoint_id: format!("endpoint-{}", index % 4),
        received_at_ms: 1_700_000_000_000,
        idempotency_key: None,
        content_type: Some("application/json".into()),
        traceparent: None,
        tracestate: None,
        event_type: "event".into(),
        publish: None,
        payload: vec![b'x'; 1024],
    })
}

/// A state with four endpoints, `endpoint-0` to `endpoint-3`, enabled or paused.
fn with_endpoints(limits: StateLimits, enabled: bool, lsn: &mut u64) -> ShardState {
    let mut state = ShardState::new(0, limits);
    for index in 0..4 {
        let body = format!(r#"{{"url":"https://example.com/hook","enabled":{enabled}}}"#);
        let endpoint = EndpointInput::parse(body.as_bytes())
            .unwrap()
            .into_endpoint(&format!("endpoint-{index}"), None, 1)
            .unwrap();
        *lsn += 1;
        state.apply(*lsn, Position::default(), Record::EndpointPut(endpoint), 1);
    }
    state
}

fn main() {
    let events: u64 = std::env::var("KAPSEL_BENCH_EVENTS").ok().and_then(|text| text.parse().ok()).unwrap_or(200_000);
    let limits = StateLimits {
        events_max: usize::MAX,
        idempotency_keys_max: 1_000,
        idempotency_window_ms: 1_000,
        // No payload in memory: only the metadata is measured.
        payload_memory_bytes_max: 0,
        terminal_events_max: usize::MAX,
    };
    let mut lsn = 0;
    let mut state = with_endpoints(limits, false, &mut lsn);
    let before = held();
    for index in 0..events {
        lsn += 1;
        state.apply(lsn, Position { segment_id: 1, offset: 40, length: 1100 }, received(index), 1);
    }
    let waiting = (held() - before) as f64 / events as f64;
    println!("waiting event (never attempted, payload on disk): {waiting:.0} bytes of heap each ({events} events)");

    let mut state = with_endpoints(limits, true, &mut lsn);
    let before = held();
    for index in 0..events {
        lsn += 1;
        state.apply(lsn, Position { segment_id: 1, offset: 40, length: 1100 }, received(index), 1);
        let attempt = Attempt {
            event_id: EventId::new(1_700_000_000_000 + index / 16, 0, index % 16).0,
            n: 1,
            at_ms: 1_700_000_000_001,
            status_code: Some(200),
            latency_ms: 3,
            error_code: None,
            response_excerpt: b"ok".to_vec(),
            outcome: OUTCOME_DELIVERED,
            next_attempt_at_ms: None,
        };
        lsn += 1;
        state.apply(lsn, Position::default(), Record::Attempt(attempt), 1);
    }
    let terminal = (held() - before) as f64 / events as f64;
    println!("delivered event in the lookup window: {terminal:.0} bytes of heap each ({events} events)");
}
