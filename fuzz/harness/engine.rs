//! What the engine's fuzz targets check, shared by the targets (`endpoints_snapshot`,
//! `endpoint_json`, `admin_query` in `fuzz/fuzz_targets/`) and the corpus replay in
//! `engine/tests/fuzz_corpus.rs`. Each function takes one input and panics when a property
//! fails.
//!
//! The properties, beyond "no panic":
//! - Endpoint snapshot: the file as given, and with its checksum fixed (so the fuzzer reaches
//!   the rkyv validation behind it), either fails to read or reads as a snapshot that loads into
//!   a shard's state, writes back, and reads back encoding to the same bytes.
//! - Endpoint JSON: a body that makes an endpoint survives the admin JSON view and back (the
//!   view parsed as a body makes the same endpoint) and the log's encoding and back.
//! - Admin query strings: a query that parses is within its bounds, and the query written out
//!   again, percent-encoded, parses to the same query.

use std::path::Path;

use kapsel_engine::endpoint::{Endpoint, EndpointInput, LiveState};
use kapsel_engine::fuzzing::EventQuery;
use kapsel_engine::ids::{valid_endpoint_id, valid_idempotency_key};
use kapsel_engine::snapshot::{self, Snapshot};
use kapsel_engine::state::{ShardState, StateLimits};

/// The time every target runs at: fixed, so that an input always does the same.
pub const NOW_MS: u64 = 1_767_225_600_000;

/// A scratch directory in memory when the machine has one (writing a snapshot fsyncs).
pub fn scratch_directory() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(directory) = tempfile::Builder::new().prefix("kapsel-fuzz-").tempdir_in(shm) {
            return directory;
        }
    }
    tempfile::Builder::new().prefix("kapsel-fuzz-").tempdir().expect("a scratch directory")
}

fn state_limits() -> StateLimits {
    StateLimits {
        events_max: 1024,
        idempotency_keys_max: 1024,
        idempotency_window_ms: 60_000,
        payload_memory_bytes_max: 1 << 20,
        terminal_events_max: 1024,
    }
}

/// The endpoint snapshot target: `snapshot::read` on the input as the file's bytes, as given and
/// with the checksum in bytes 8..12 fixed to match the body after them.
pub fn endpoints_snapshot(input: &[u8]) {
    let scratch = scratch_directory();
    check_snapshot_file(scratch.path(), input);
    if input.len() >= 12 {
        let mut fixed = input.to_vec();
        let crc = crc32c::crc32c(&fixed[12..]);
        fixed[8..12].copy_from_slice(&crc.to_le_bytes());
        check_snapshot_file(scratch.path(), &fixed);
    }
}

fn check_snapshot_file(directory: &Path, bytes: &[u8]) {
    std::fs::write(snapshot::path(directory), bytes).expect("write the snapshot file");
    let Ok(Some(read)) = snapshot::read(directory) else {
        return;
    };
    let mut state = ShardState::new(0, state_limits());
    let loaded = snapshot::load_into(&mut state, directory).expect("a snapshot that reads also loads");
    assert_eq!(loaded, read.endpoints.len(), "load_into counts what read found");
    let encoded = kapsel_wal::codec::encode(&read).expect("a snapshot that decoded encodes");
    let again = scratch_directory();
    snapshot::write(again.path(), &read).expect("write the snapshot back");
    let reread: Snapshot = snapshot::read(again.path()).expect("read it back").expect("it is there");
    let reencoded = kapsel_wal::codec::encode(&reread).expect("encode it again");
    assert_eq!(encoded.as_slice(), reencoded.as_slice(), "snapshot write then read changed it");
}

/// The endpoint a replacement starts from, so that no secret is generated (that would make the
/// target depend on randomness).
fn base_endpoint() -> Endpoint {
    EndpointInput::parse(br#"{"url":"https://example.com/hook","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}"#)
        .and_then(|input| input.into_endpoint("ep_fuzz", None, NOW_MS - 1))
        .expect("the base endpoint is valid")
}

/// The endpoint JSON target: `EndpointInput::parse` and, when it parses, the endpoint it makes
/// as a replacement of a fixed one.
pub fn endpoint_json(input: &[u8]) {
    let Ok(parsed) = EndpointInput::parse(input) else {
        return;
    };
    let base = base_endpoint();
    let Ok(endpoint) = parsed.into_endpoint("ep_fuzz", Some(&base), NOW_MS) else {
        return;
    };
    // The admin view, sent back as a body, replaces the endpoint with itself.
    let view = serde_json::to_vec(&endpoint.to_json(&LiveState::default())).expect("the view serialises");
    let again = EndpointInput::parse(&view)
        .and_then(|input| input.into_endpoint("ep_fuzz", Some(&endpoint), NOW_MS))
        .expect("the admin view of an endpoint is a valid body");
    assert_eq!(again, endpoint, "the admin view, sent back, changed the endpoint");
    // The log's encoding (the body of an `EndpointPut` record) and back.
    let encoded = kapsel_wal::codec::encode(&endpoint).expect("an endpoint encodes");
    let decoded: Endpoint = kapsel_wal::codec::decode(&encoded).expect("an encoded endpoint decodes");
    assert_eq!(decoded, endpoint, "the log's encoding changed the endpoint");
}

/// The admin query target: `EventQuery::parse` on the input as a query string (the request
/// parser hands over only UTF-8 targets).
pub fn admin_query(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(query) = EventQuery::parse(Some(text)) else {
        return;
    };
    assert!((1..=kapsel_engine::fuzzing::QUERY_LIMIT_MAX).contains(&query.limit), "limit {}", query.limit);
    assert!(query.endpoint_id.as_deref().is_none_or(valid_endpoint_id), "invalid endpoint id accepted");
    assert!(
        query.idempotency_key.as_deref().is_none_or(|key| valid_idempotency_key(key.as_bytes())),
        "invalid idempotency key accepted"
    );
    let written = write_query(&query);
    let reparsed = EventQuery::parse(Some(&written)).unwrap_or_else(|error| panic!("{written:?} fails: {error}"));
    assert_eq!(reparsed, query, "{written:?} parses to another query");
    let _ = query.matches(&kapsel_engine::fuzzing::Candidate {
        endpoint_id: "ep_fuzz",
        status: "pending",
        idempotency_key: Some("key"),
        received_at_ms: NOW_MS,
        event_type: Some("order.created"),
        channel: Some("orders"),
    });
}

/// The query written out as a client would, every value percent-encoded.
fn write_query(query: &EventQuery) -> String {
    let mut pairs = Vec::new();
    if let Some(endpoint_id) = &query.endpoint_id {
        pairs.push(format!("endpoint_id={}", percent_encode(endpoint_id)));
    }
    if let Some(status) = &query.status {
        pairs.push(format!("status={}", status.0));
    }
    if let Some(key) = &query.idempotency_key {
        pairs.push(format!("idempotency_key={}", percent_encode(key)));
    }
    if let Some(event_type) = &query.event_type {
        pairs.push(format!("event_type={}", percent_encode(event_type)));
    }
    if let Some(channel) = &query.channel {
        pairs.push(format!("channel={}", percent_encode(channel)));
    }
    if let Some(after) = query.received_after_ms {
        pairs.push(format!("received_after={}", percent_encode(&kapsel_engine::clock::rfc3339(after))));
    }
    if let Some(before) = query.received_before_ms {
        pairs.push(format!("received_before={}", percent_encode(&kapsel_engine::clock::rfc3339(before))));
    }
    pairs.push(format!("limit={}", query.limit));
    if let Some(cursor) = &query.cursor {
        pairs.push(format!("cursor={cursor}"));
    }
    pairs.join("&")
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
