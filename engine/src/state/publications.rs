//! The channel's shard's memory of the events published to its channels: what a lookup of the
//! published event shows besides its deliveries, and which deliveries still have to be handed
//! to other shards. A publication with a handoff pending keeps its record in the log
//! (retention) until every shard it names adopted its deliveries.

use std::collections::{BTreeMap, BTreeSet};

use kapsel_wal::Position;

use crate::model::ids::EventId;

/// One published event, as its channel's shard keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Its record.
    pub lsn: u64,
    /// Where its record lies (read back to hand deliveries over).
    pub position: Position,
    /// Channel name number (`Names`).
    pub channel: u16,
    /// Event type number (`Names`).
    pub event_type: u16,
    /// Its tenant's number (`Names`).
    pub tenant: u16,
    /// Endpoints it was published to.
    pub endpoints: u32,
    /// Payload size.
    pub payload_bytes: u32,
    /// The sender's idempotency key.
    pub idempotency_key: Option<Box<str>>,
    /// Shards that have not adopted their deliveries yet, with those deliveries' endpoints
    /// (shown as pending until adopted).
    pub handoffs: Vec<(u16, Vec<Box<str>>)>,
}

/// Published events by id, the most recent `publications_max` of those fully handed over plus
/// every one with a handoff pending.
#[derive(Debug, Default)]
pub struct Publications {
    map: BTreeMap<EventId, Publication>,
    /// The published events with a handoff pending (so finding them costs no scan of `map`).
    pending: BTreeSet<EventId>,
}

impl Publications {
    /// Keeps a published event; then forgets the oldest fully handed-over ones beyond
    /// `publications_max`.
    pub fn insert(&mut self, event_id: EventId, publication: Publication, publications_max: usize) {
        if publication.handoffs.is_empty() {
            self.pending.remove(&event_id);
        } else {
            self.pending.insert(event_id);
        }
        let replaced = self.map.insert(event_id, publication);
        debug_assert!(replaced.is_none(), "publication {event_id} applied twice");
        while self.map.len() > publications_max.saturating_add(self.pending.len()) {
            let oldest = self.map.iter().find(|(_, publication)| publication.handoffs.is_empty()).map(|(id, _)| *id);
            match oldest {
                Some(oldest) => self.map.remove(&oldest),
                None => break,
            };
        }
    }

    /// A published event.
    pub fn get(&self, event_id: &EventId) -> Option<&Publication> {
        self.map.get(event_id)
    }

    /// Notes that `shard` adopted its deliveries of `event_id`.
    pub fn handed_off(&mut self, event_id: EventId, shard: u16) {
        let Some(publication) = self.map.get_mut(&event_id) else {
            return;
        };
        publication.handoffs.retain(|(pending, _)| *pending != shard);
        if publication.handoffs.is_empty() {
            self.pending.remove(&event_id);
        }
    }

    /// Published events with a handoff pending, oldest first, with their records' places.
    pub fn pending(&self) -> impl Iterator<Item = (EventId, &Publication)> {
        self.pending.iter().filter_map(|event_id| Some((*event_id, self.map.get(event_id)?)))
    }

    /// Number of published events with a handoff pending.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The LSN of the oldest record a pending handoff still needs.
    pub fn oldest_pending_lsn(&self) -> Option<u64> {
        self.pending().map(|(_, publication)| publication.lsn).min()
    }

    /// Every published event kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&EventId, &Publication)> {
        self.map.iter()
    }

    /// Published events kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
