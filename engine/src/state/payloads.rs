//! The payload cache: bodies of waiting events whose turn is near, within a byte budget
//! (`KAPSEL_PAYLOAD_MEMORY_BYTES`). Everything else waits in the log and is read back by
//! position, ahead of need, when its turn approaches.
//!
//! Which payloads are cached is decided by the state ([`super::ShardState`]): per endpoint, a
//! prefix of its queue of pending events (so read-ahead extends it in queue order and eviction
//! shrinks it from its end), plus due retries about to start. Each endpoint may hold at most a
//! fair share of the budget while others want room.

use std::collections::HashMap;
use std::rc::Rc;

use crate::model::ids::EventId;
use crate::model::records::EventReceived;

/// What a delivery needs besides the endpoint.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    /// The body, as received.
    pub body: Rc<[u8]>,
    /// The sender's `Content-Type`.
    pub content_type: Option<String>,
    /// The sender's valid `traceparent`.
    pub traceparent: Option<String>,
    /// The sender's valid `tracestate`, forwarded with the child `traceparent`.
    pub tracestate: Option<String>,
    /// What the destination sees as `webhook-id`: the event's id, or the published event's for a
    /// delivery of one.
    pub webhook_id: EventId,
}

impl Payload {
    /// The payload of an event record (its body moved, not copied, where possible).
    pub fn of(event: EventReceived) -> Self {
        Self {
            webhook_id: EventId(event.webhook_id()),
            body: Rc::from(event.payload),
            content_type: event.content_type,
            traceparent: event.traceparent,
            tracestate: event.tracestate,
        }
    }
}

/// Cached payloads and the bytes held against the budget.
#[derive(Debug, Default)]
pub struct PayloadCache {
    map: HashMap<EventId, Rc<Payload>>,
    /// Bytes held: cached, reserved for read-backs in flight, and held by attempts in flight.
    held_bytes: usize,
}

impl PayloadCache {
    /// The cached payload of an event.
    pub fn get(&self, event_id: &EventId) -> Option<&Rc<Payload>> {
        self.map.get(event_id)
    }

    /// True when the event's payload is cached.
    pub fn contains(&self, event_id: &EventId) -> bool {
        self.map.contains_key(event_id)
    }

    /// Caches a payload whose bytes are already held (reserved or just admitted).
    pub fn insert(&mut self, event_id: EventId, payload: Rc<Payload>) {
        self.map.insert(event_id, payload);
    }

    /// Takes a payload out of the cache; its bytes stay held (by the attempt that takes it).
    pub fn take(&mut self, event_id: &EventId) -> Option<Rc<Payload>> {
        self.map.remove(event_id)
    }

    /// Drops a cached payload and releases its bytes; the bytes released.
    pub fn evict(&mut self, event_id: &EventId) -> usize {
        let bytes = self.map.remove(event_id).map_or(0, |payload| payload.body.len());
        self.release(bytes);
        bytes
    }

    /// Holds `bytes` more.
    pub fn hold(&mut self, bytes: usize) {
        self.held_bytes += bytes;
    }

    /// Releases `bytes` held.
    pub fn release(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.held_bytes, "releasing more payload bytes than held");
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
    }

    /// Bytes held in all.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Payloads cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
