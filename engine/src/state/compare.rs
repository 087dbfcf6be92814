//! The durable part of a shard's state in a form that compares: what replaying the log must
//! rebuild exactly. The simulation takes this view of the live state and of a state replayed
//! from the same log, and asserts they are equal after every step.

use std::collections::{BTreeMap, BTreeSet};

use kapsel_wal::Position;

use super::{Detail, EventStatus, ShardState};
use crate::model::endpoint::Endpoint;
use crate::model::ids::EventId;
use crate::state::breaker::BreakerSnapshot;
use crate::state::idempotency::Remembered;

/// An endpoint's durable state.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView {
    /// Its configuration.
    pub endpoint: Endpoint,
    /// Its breaker.
    pub breaker: BreakerSnapshot,
    /// Pending events in queue order.
    pub ready: Vec<EventId>,
    /// Retrying events by due time.
    pub retries: Vec<(u64, EventId)>,
    /// Events not yet delivered or failed.
    pub waiting: usize,
}

/// An event's durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecordView {
    /// Its endpoint.
    pub endpoint: String,
    /// Its current record.
    pub lsn: u64,
    /// Where that record lies.
    pub position: Position,
    /// Its queue place while pending.
    pub queued_lsn: u64,
    /// Pending, retrying, delivered or failed.
    pub status: EventStatus,
    /// Number of the last attempt made.
    pub attempts: u32,
    /// Attempts counted against the retry budget.
    pub budget_used: u32,
    /// Due time while retrying.
    pub next_attempt_at_ms: u64,
    /// Payload size.
    pub payload_bytes: u32,
    /// Key, attempts, excerpt.
    pub detail: Option<Detail>,
    /// A delivery of a published event.
    pub delivery: bool,
    /// Its type, when kept.
    pub event_type: Option<String>,
    /// Its channel, for a delivery.
    pub channel: Option<String>,
}

/// The durable part of a shard's state.
#[derive(Clone, Debug, PartialEq)]
pub struct DurableView {
    /// Endpoints by id.
    pub endpoints: BTreeMap<String, EndpointView>,
    /// Every waiting event.
    pub waiting: BTreeMap<EventId, EventRecordView>,
    /// Terminal events whose record is at or after the first LSN still in the log (the lookup
    /// window may hold more or fewer of them; compare the ones both sides hold).
    pub terminal: BTreeMap<EventId, EventRecordView>,
    /// Idempotency keys within their window whose record is still in the log.
    pub keys: BTreeMap<(String, String), Remembered>,
    /// Events not yet delivered or failed.
    pub waiting_count: usize,
    /// Published events whose deliveries other shards have not all adopted, with those shards.
    pub handoffs: BTreeMap<EventId, Vec<u16>>,
    /// The highest published id adopted from each channel's shard.
    pub adopted: BTreeMap<u16, EventId>,
}

impl ShardState {
    /// The durable view at `now_ms`: records below `first_lsn` are gone from the log (retention),
    /// and events in `in_flight` are left out of the queues (they are in flight on the live side,
    /// queued on the replayed side).
    pub fn durable_view(&self, first_lsn: u64, in_flight: &BTreeSet<EventId>, now_ms: u64) -> DurableView {
        let endpoints = self
            .endpoints
            .values()
            .map(|entry| {
                let view = EndpointView {
                    endpoint: entry.endpoint.clone(),
                    breaker: entry.breaker.to_snapshot(),
                    ready: entry.ready.iter().filter(|event_id| !in_flight.contains(event_id)).copied().collect(),
                    retries: entry
                        .retries
                        .iter()
                        .filter(|(_, event_id)| !in_flight.contains(event_id))
                        .copied()
                        .collect(),
                    waiting: entry.waiting,
                };
                (entry.id.to_string(), view)
            })
            .collect();
        let mut waiting = BTreeMap::new();
        let mut terminal = BTreeMap::new();
        for (event_id, event) in self.events.iter() {
            let view = EventRecordView {
                endpoint: self.endpoint_of(event).to_string(),
                lsn: event.lsn,
                position: event.position,
                queued_lsn: if event.status == EventStatus::Pending { event.queued_lsn } else { 0 },
                status: event.status,
                attempts: event.attempts,
                budget_used: event.budget_used,
                next_attempt_at_ms: event.next_attempt_at_ms(),
                payload_bytes: event.payload_bytes,
                detail: event.detail.as_deref().cloned(),
                delivery: event.delivery,
                event_type: self.names.get(event.event_type).map(str::to_string),
                channel: self.names.get(event.channel).map(str::to_string),
            };
            if event.is_waiting() {
                waiting.insert(*event_id, view);
            } else if event.lsn >= first_lsn {
                terminal.insert(*event_id, view);
            }
        }
        let window_ms = self.limits.idempotency_window_ms;
        let keys = self
            .idempotency
            .entries()
            .filter(|(_, _, remembered, at_ms)| remembered.lsn >= first_lsn && at_ms.saturating_add(window_ms) > now_ms)
            .map(|(endpoint, key, remembered, _)| ((endpoint.to_string(), key.to_string()), remembered))
            .collect();
        let handoffs = self
            .publications
            .pending()
            .map(|(event_id, publication)| (event_id, publication.handoffs.iter().map(|(shard, _)| *shard).collect()))
            .collect();
        DurableView {
            endpoints,
            waiting,
            terminal,
            keys,
            waiting_count: self.waiting,
            handoffs,
            adopted: self.adopted.clone(),
        }
    }
}

impl DurableView {
    /// The first difference from `other`, described; terminal events are compared where both
    /// sides hold them.
    pub fn difference(&self, other: &Self) -> Option<String> {
        if self.endpoints != other.endpoints {
            let ids: BTreeSet<&String> = self.endpoints.keys().chain(other.endpoints.keys()).collect();
            for id in ids {
                let (mine, theirs) = (self.endpoints.get(id), other.endpoints.get(id));
                if mine != theirs {
                    return Some(format!("endpoint {id}: {mine:?}\n  against {theirs:?}"));
                }
            }
        }
        if self.waiting != other.waiting {
            let ids: BTreeSet<&EventId> = self.waiting.keys().chain(other.waiting.keys()).collect();
            for id in ids {
                let (mine, theirs) = (self.waiting.get(id), other.waiting.get(id));
                if mine != theirs {
                    return Some(format!("waiting event {id}: {mine:?}\n  against {theirs:?}"));
                }
            }
        }
        for (id, mine) in &self.terminal {
            if let Some(theirs) = other.terminal.get(id) {
                if mine != theirs {
                    return Some(format!("terminal event {id}: {mine:?}\n  against {theirs:?}"));
                }
            }
        }
        if self.keys != other.keys {
            return Some(format!("idempotency keys: {:?}\n  against {:?}", self.keys, other.keys));
        }
        if self.adopted != other.adopted {
            return Some(format!("adopted up to: {:?}\n  against {:?}", self.adopted, other.adopted));
        }
        if self.handoffs != other.handoffs {
            return Some(format!("pending handoffs: {:?}\n  against {:?}", self.handoffs, other.handoffs));
        }
        if self.waiting_count != other.waiting_count {
            return Some(format!("waiting count {} against {}", self.waiting_count, other.waiting_count));
        }
        None
    }
}
