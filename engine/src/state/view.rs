//! The admin JSON of events, from memory or from the index.

use serde_json::Value;

use super::{Event, EventStatus};
use crate::model::ids::EventId;
use crate::model::view::{attempt_json, EventView};

/// The admin JSON view of an event in memory; `waiting_reason` is E2005 while its endpoint's
/// breaker holds it.
pub fn event_json(
    event_id: EventId,
    event: &Event,
    endpoint_id: &str,
    names: (Option<&str>, Option<&str>),
    waiting_reason: Option<&str>,
) -> Value {
    let detail = event.detail.as_deref();
    let excerpt = detail
        .and_then(|detail| detail.last_excerpt.as_deref())
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    let received_at_ms = event_id.unix_ms();
    let attempts = detail.map_or(&[][..], |detail| &detail.attempts[..]);
    let (event_type, channel) = names;
    EventView {
        event_id: &event.public_id(event_id).to_string(),
        endpoint_id,
        status: event.shown_status().as_str(),
        attempts: attempts
            .iter()
            .enumerate()
            .map(|(index, attempt)| {
                let mut json = attempt_json(
                    attempt.n,
                    attempt.at_ms,
                    attempt.status_code,
                    attempt.latency_ms,
                    attempt.error_code.map(super::DeliveryCode::as_str),
                );
                // Memory keeps the last failed attempt's excerpt only: it is the last attempt's
                // when that one failed (the log and the index keep every attempt's).
                let last_failed = index + 1 == attempts.len() && attempt.error_code.is_some();
                json["response_excerpt"] = excerpt.as_deref().filter(|_| last_failed).into();
                json
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
        event_type,
        channel,
    }
    .to_json()
}
