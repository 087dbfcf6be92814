//! `cargo bench -p kapsel-engine --bench replay`: how fast a shard rebuilds its state from its
//! log at start-up (the design's bar: at least 1M records in under 5 s).
//!
//! Writes `KAPSEL_BENCH_RECORDS` (default 1 000 000) event records with 512-byte payloads, spread
//! over 100 endpoints, a quarter with idempotency keys, then times opening the log and replaying
//! every record into a fresh `ShardState`, as the shard does at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use kapsel_engine::endpoint::EndpointInput;
use kapsel_engine::records::{EventReceived, Record};
use kapsel_engine::state::{ShardState, StateLimits};
use kapsel_wal::{Options, Wal};

const LIMITS: StateLimits = StateLimits {
    events_max: 4_000_000,
    idempotency_keys_max: 1_000_000,
    idempotency_window_ms: 86_400_000,
    payload_memory_bytes_max: 64 << 20,
    terminal_events_max: kapsel_engine::limits::TERMINAL_EVENTS_IN_MEMORY_MAX,
};

async fn write(directory: &std::path::Path, records: u64) {
    let (wal, _) = Wal::open(directory, Options::default(), |_| {}).await.unwrap();
    for index in 0..100 {
        let endpoint = EndpointInput::parse(br#"{"url":"https://example.com/hook"}"#)
            .unwrap()
            .into_endpoint(&format!("endpoint-{index}"), None, 1)
            .unwrap();
        let (kind, body) = Record::EndpointPut(endpoint).encode().unwrap();
        wal.append(kind, &body).unwrap().await.unwrap();
    }
    let now = kapsel_engine::clock::now_ms();
    let mut pending = Vec::with_capacity(1024);
    for index in 0..records {
        let event = EventReceived {
            event_id: kapsel_engine::ids::EventId::new(now, 0, index).0,
            endpoint_id: format!("endpoint-{}", index % 100),
            received_at_ms: now,
            idempotency_key: (index % 4 == 0).then(|| format!("key-{index}")),
            content_type: Some("application/json".into()),
            traceparent: None,
            tracestate: None,
            event_type: "event".into(),
            publish: None,
            payload: vec![b'x'; 512],
        };
        let (kind, body) = Record::encode_event(&event).unwrap();
        pending.push(wal.append(kind, &body).unwrap());
        if pending.len() == 1024 {
            for commit in pending.drain(..) {
                commit.await.unwrap();
            }
        }
    }
    for commit in pending {
        commit.await.unwrap();
    }
    wal.close().await.unwrap();
}

fn main() {
    let records: u64 =
        std::env::var("KAPSEL_BENCH_RECORDS").ok().and_then(|text| text.parse().ok()).unwrap_or(1_000_000);
    let base = std::env::current_dir().unwrap();
    let directory = tempfile::Builder::new().prefix("kapsel-replay-bench").tempdir_in(base).unwrap();
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().unwrap();
    let started = Instant::now();
    runtime.block_on(write(directory.path(), records));
    println!("wrote {records} event records in {:.2} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let (events, endpoints) = runtime.block_on(async {
        let mut state = ShardState::new(0, LIMITS);
        let now = kapsel_engine::clock::now_ms();
        let (wal, recovery) = Wal::open(directory.path(), Options::default(), |record| {
            state.apply(record.lsn, record.position, Record::decode(record.kind, record.body).unwrap(), now);
        })
        .await
        .unwrap();
        assert_eq!(recovery.records, records + 100);
        wal.close().await.unwrap();
        (state.events.len(), state.endpoints.len())
    });
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "replayed {} records ({events} events, {endpoints} endpoints) in {seconds:.2} s: {:.0} records/s",
        records + 100,
        (records + 100) as f64 / seconds
    );
}
