//! A shard's in-memory state: endpoints, the events it tracks, the idempotency table and the
//! event id generator. Plain data and functions; time is passed in. Rebuilt at start by
//! replaying the shard's log through [`ShardState::replay`].

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::endpoint::Endpoint;
use crate::idempotency::{IdempotencyTable, Remembered};
use crate::ids::{EventId, EventIdGenerator};
use crate::rate::TokenBucket;
use crate::records::{EventReceived, Record};
use crate::signature::Secret;

/// Delivery status of an event (`pending` until the delivery issue lands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// Accepted, not yet delivered.
    Pending,
}

impl EventStatus {
    /// The contract's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
        }
    }
}

/// What a shard keeps in memory about an event (the payload stays in the log).
#[derive(Clone, Debug)]
pub struct EventSummary {
    /// The endpoint it is for.
    pub endpoint_id: Rc<str>,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// Payload size.
    pub payload_bytes: u32,
    /// The sender's idempotency key.
    pub idempotency_key: Option<Box<str>>,
    /// Delivery status.
    pub status: EventStatus,
    /// LSN of its record in the shard's log (for inclusion proofs).
    pub lsn: u64,
}

/// An endpoint with what the shard derives from it.
#[derive(Debug)]
pub struct EndpointEntry {
    /// The stored configuration.
    pub endpoint: Endpoint,
    /// Interned id shared with events and idempotency keys.
    pub id: Rc<str>,
    /// Parsed ingest secret.
    pub ingest_secret: Option<Secret>,
    /// Ingest rate limiter.
    pub bucket: Option<TokenBucket>,
}

/// Bounds and windows the state keeps.
#[derive(Clone, Copy, Debug)]
pub struct StateLimits {
    /// Events tracked in memory.
    pub events_max: usize,
    /// Idempotency keys remembered.
    pub idempotency_keys_max: usize,
    /// Idempotency window.
    pub idempotency_window_ms: u64,
}

/// One shard's state.
#[derive(Debug)]
pub struct ShardState {
    /// Endpoints owned by this shard.
    pub endpoints: HashMap<Rc<str>, EndpointEntry>,
    /// Events tracked, by id.
    pub events: HashMap<EventId, EventSummary>,
    /// Idempotency keys.
    pub idempotency: IdempotencyTable,
    /// Event id source.
    pub ids: EventIdGenerator,
    limits: StateLimits,
}

impl ShardState {
    /// Empty state for shard `index`.
    pub fn new(index: u16, limits: StateLimits) -> Self {
        Self {
            endpoints: HashMap::new(),
            events: HashMap::new(),
            idempotency: IdempotencyTable::new(limits.idempotency_window_ms, limits.idempotency_keys_max),
            ids: EventIdGenerator::new(index, None),
            limits,
        }
    }

    /// Applies a record read back from the log at start-up (or one just made durable).
    pub fn replay(&mut self, lsn: u64, record: Record, now_ms: u64) {
        match record {
            Record::EndpointPut(endpoint) => self.put_endpoint(endpoint, now_ms),
            Record::EndpointDeleted(deleted) => self.delete_endpoint(&deleted.id),
            Record::EventReceived(event) => {
                let event_id = EventId(event.event_id);
                self.ids.observe(event_id);
                let Some(endpoint) = self.endpoints.get(event.endpoint_id.as_str()).map(|entry| Rc::clone(&entry.id))
                else {
                    // The endpoint was deleted later in the log; its events went with it.
                    return;
                };
                if let Some(key) = &event.idempotency_key {
                    let remembered = Remembered { event_id, lsn };
                    self.idempotency.remember(&endpoint, key, remembered, event.received_at_ms, now_ms);
                }
                self.track_event(event_id, &endpoint, &event, lsn);
            }
        }
    }

    /// Stores an endpoint (create or replace).
    pub fn put_endpoint(&mut self, endpoint: Endpoint, now_ms: u64) {
        let id: Rc<str> = self
            .endpoints
            .get(endpoint.id.as_str())
            .map_or_else(|| Rc::from(endpoint.id.as_str()), |entry| Rc::clone(&entry.id));
        let ingest_secret = endpoint.ingest_secret.as_deref().and_then(Secret::parse);
        let bucket = endpoint.rate_limit_per_s.map(|rate| TokenBucket::new(rate, now_ms));
        self.endpoints.insert(Rc::clone(&id), EndpointEntry { endpoint, id, ingest_secret, bucket });
    }

    /// Removes an endpoint with its events and idempotency keys.
    pub fn delete_endpoint(&mut self, id: &str) {
        if self.endpoints.remove(id).is_some() {
            self.events.retain(|_, summary| &*summary.endpoint_id != id);
            self.idempotency.forget_endpoint(id);
        }
    }

    /// Records an accepted event in memory.
    pub fn track_event(&mut self, event_id: EventId, endpoint: &Rc<str>, event: &EventReceived, lsn: u64) {
        self.events.insert(
            event_id,
            EventSummary {
                endpoint_id: Rc::clone(endpoint),
                received_at_ms: event.received_at_ms,
                payload_bytes: u32::try_from(event.payload.len()).unwrap_or(u32::MAX),
                idempotency_key: event.idempotency_key.as_deref().map(Box::from),
                status: EventStatus::Pending,
                lsn,
            },
        );
    }

    /// True when the shard tracks as many events as it may (ingest answers 503 E3002).
    pub fn events_full(&self) -> bool {
        self.events.len() >= self.limits.events_max
    }
}

/// The admin JSON view of an event.
pub fn event_json(event_id: EventId, summary: &EventSummary) -> Value {
    json!({
        "event_id": event_id.to_string(),
        "endpoint_id": &*summary.endpoint_id,
        "status": summary.status.as_str(),
        "attempts": [],
        "next_attempt_at": Value::Null,
        "received_at": rfc3339(summary.received_at_ms),
        "created_at": rfc3339(summary.received_at_ms),
        "updated_at": rfc3339(summary.received_at_ms),
        "payload_bytes": summary.payload_bytes,
        "idempotency_key": summary.idempotency_key.as_deref(),
    })
}
