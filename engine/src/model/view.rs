//! What the admin API shows of an event, from memory or from the index.

use serde_json::{json, Value};

use crate::clock::rfc3339;

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
    /// Its type, when known.
    pub event_type: Option<&'a str>,
    /// The channel it was published to.
    pub channel: Option<&'a str>,
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
            "type": self.event_type,
            "channel": self.channel,
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

/// How bad a status is, for the status of a published event: the worst of its deliveries'.
pub fn status_severity(status: &str) -> u8 {
    match status {
        "failed" => 4,
        "retrying" => 3,
        "pending" => 2,
        "delivering" => 1,
        _ => 0,
    }
}
