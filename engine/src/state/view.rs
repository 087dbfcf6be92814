//! The admin JSON of events, from memory or from the index.

use serde_json::{json, Value};

use super::{Event, EventStatus};
use crate::clock::rfc3339;
use crate::ids::EventId;

/// The admin JSON view of an event in memory; `waiting_reason` is E2005 while its endpoint's
/// breaker holds it.
pub fn event_json(event_id: EventId, event: &Event, endpoint_id: &str, waiting_reason: Option<&str>) -> Value {
    let detail = event.detail.as_deref();
    let excerpt = detail
        .and_then(|detail| detail.last_excerpt.as_deref())
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    let received_at_ms = event_id.unix_ms();
    let attempts = detail.map_or(&[][..], |detail| &detail.attempts[..]);
    EventView {
        event_id: &event_id.to_string(),
        endpoint_id,
        status: event.shown_status().as_str(),
        attempts: attempts
            .iter()
            .map(|attempt| {
                attempt_json(
                    attempt.n,
                    attempt.at_ms,
                    attempt.status_code,
                    attempt.latency_ms,
                    attempt.error_code.map(super::DeliveryCode::as_str),
                )
            })
            .collect(),
        attempt_count: event.attempts,
        next_attempt_at_ms: (event.status == EventStatus::Retrying && !event.in_flight)
            .then_some(event.next_attempt_at_ms()),
        waiting_reason,
        last_response_excerpt: excerpt.as_deref(),
        received_at_ms,
        updated_at_ms: event.updated_at_ms(received_at_ms),
        payload_bytes: event.payload_bytes,
        idempotency_key: event.idempotency_key(),
    }
    .to_json()
}

/// What `GET /admin/events/{id}` shows of an event, from memory or from the index.
#[derive(Debug)]
pub struct EventView<'a> {
    /// `evt_…`.
    pub event_id: &'a str,
    /// Its endpoint.
    pub endpoint_id: &'a str,
    /// `pending`, `delivering`, `retrying`, `delivered` or `failed`.
    pub status: &'a str,
    /// Each attempt's JSON ([`attempt_json`]).
    pub attempts: Vec<Value>,
    /// Number of the last attempt.
    pub attempt_count: u32,
    /// When the next attempt is due.
    pub next_attempt_at_ms: Option<u64>,
    /// Why it waits (E2005 while its breaker holds it).
    pub waiting_reason: Option<&'a str>,
    /// The start of the last response's body.
    pub last_response_excerpt: Option<&'a str>,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// Last state change.
    pub updated_at_ms: u64,
    /// Payload size.
    pub payload_bytes: u32,
    /// The sender's idempotency key.
    pub idempotency_key: Option<&'a str>,
}

impl EventView<'_> {
    /// The JSON of the external contract.
    pub fn to_json(&self) -> Value {
        json!({
            "event_id": self.event_id,
            "endpoint_id": self.endpoint_id,
            "status": self.status,
            "attempts": self.attempts,
            "attempt_count": self.attempt_count,
            "next_attempt_at": self.next_attempt_at_ms.map(rfc3339),
            "waiting_reason": self.waiting_reason,
            "last_response_excerpt": self.last_response_excerpt,
            "received_at": rfc3339(self.received_at_ms),
            "created_at": rfc3339(self.received_at_ms),
            "updated_at": rfc3339(self.updated_at_ms),
            "payload_bytes": self.payload_bytes,
            "idempotency_key": self.idempotency_key,
        })
    }
}

/// One attempt in an event's JSON.
pub fn attempt_json(n: u32, at_ms: u64, status_code: Option<u16>, latency_ms: u32, error_code: Option<&str>) -> Value {
    json!({
        "n": n,
        "at": rfc3339(at_ms),
        "status_code": status_code,
        "latency_ms": latency_ms,
        "error_code": error_code,
    })
}
