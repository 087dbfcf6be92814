//! The endpoints a shard owns: a slot table (events name their endpoint by a 4-byte slot, not
//! by its id) with a map from id to slot, and each endpoint's delivery queues.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use crate::model::endpoint::Endpoint;
use crate::model::ids::EventId;
use crate::model::signature::Secret;
use crate::state::breaker::Breaker;
use crate::state::rate::TokenBucket;

/// An endpoint with what the shard derives from it and its delivery queues.
#[derive(Debug)]
pub struct EndpointEntry {
    /// The stored configuration.
    pub endpoint: Endpoint,
    /// Interned id.
    pub id: Rc<str>,
    /// Ingest rate limiter.
    pub bucket: Option<TokenBucket>,
    /// The parsed destination (`None` when the URL cannot be delivered to).
    pub target: Option<Rc<kapsel_http::Target>>,
    /// Decoded signing secrets with the time each signs until: the current one, and the
    /// replaced one during its rotation window.
    pub signing: Vec<(Secret, u64)>,
    /// The circuit breaker (rebuilt by replay: it moves only on recorded outcomes).
    pub breaker: Breaker,
    /// Pending events, in log order: the next attempts come from the front.
    pub(crate) ready: VecDeque<EventId>,
    /// Retrying events by due time.
    pub(crate) retries: BTreeSet<(u64, EventId)>,
    /// Events not yet delivered or failed (ready, retrying and in flight).
    pub(crate) waiting: usize,
    /// Live only: attempts in flight: sent, not yet answered (bounded by `max_in_flight`).
    pub in_flight: u32,
    /// Live only: attempts answered whose outcome is being recorded.
    pub(crate) recording: u32,
    /// Live only: the half-open probe is in flight.
    pub(crate) probing: bool,
    /// Live only: how many events at the front of `ready` have their payload in the cache.
    pub(crate) resident: usize,
    /// Live only: payload bytes this endpoint holds (cached, being read back, in flight).
    pub(crate) held_bytes: usize,
    /// Live only: a read-back for this endpoint is outstanding.
    pub(crate) reading: bool,
    /// Live only: read-backs that failed in a row (retried with backoff).
    pub(crate) read_failures: u32,
    /// Live only: the endpoint's one timer (breaker cool-down, next retry, read retry).
    pub(crate) wake_at: Option<u64>,
    /// Live only: which creation of this id this is (a slot and an id may be reused after a
    /// deletion; attempts and read-backs of the old one must not touch the new one).
    pub(crate) incarnation: u64,
}

impl EndpointEntry {
    /// A new entry with empty queues and a closed breaker.
    pub fn new(endpoint: Endpoint, incarnation: u64) -> Self {
        let id: Rc<str> = Rc::from(endpoint.id.as_str());
        let breaker = Breaker::new(&endpoint.circuit);
        let mut entry = Self {
            bucket: None,
            target: None,
            signing: Vec::new(),
            id,
            breaker,
            endpoint,
            ready: VecDeque::new(),
            retries: BTreeSet::new(),
            waiting: 0,
            in_flight: 0,
            recording: 0,
            probing: false,
            resident: 0,
            held_bytes: 0,
            reading: false,
            read_failures: 0,
            wake_at: None,
            incarnation,
        };
        entry.derive();
        entry
    }

    /// Recomputes what is derived from the configuration.
    pub fn derive(&mut self) {
        let endpoint = &self.endpoint;
        self.bucket = endpoint.rate_limit_per_s.map(|rate| TokenBucket::new(rate, endpoint.updated_at_ms));
        self.target = kapsel_http::Target::parse(&endpoint.url).ok().map(Rc::new);
        let current = Secret::parse(&endpoint.secret).map(|secret| (secret, u64::MAX));
        let previous = endpoint
            .previous_secret
            .as_ref()
            .and_then(|(secret, until_ms)| Secret::parse(secret).map(|secret| (secret, *until_ms)));
        self.signing = current.into_iter().chain(previous).collect();
    }

    /// Events waiting for an attempt now or later.
    pub fn queue_depth(&self) -> usize {
        self.ready.len() + self.retries.len()
    }

    /// Events not yet delivered or failed.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Pending events in the order their attempts will start.
    pub fn ready(&self) -> impl Iterator<Item = &EventId> {
        self.ready.iter()
    }

    /// Retrying events with their due times, soonest first.
    pub fn retries(&self) -> impl Iterator<Item = &(u64, EventId)> {
        self.retries.iter()
    }
}

/// The endpoints a shard owns.
#[derive(Debug, Default)]
pub struct Endpoints {
    slots: Vec<Option<EndpointEntry>>,
    by_id: HashMap<Rc<str>, u32>,
    free: Vec<u32>,
}

impl Endpoints {
    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The slot of an endpoint.
    pub fn slot(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// An endpoint by id.
    pub fn get(&self, id: &str) -> Option<&EndpointEntry> {
        self.slot(id).and_then(|slot| self.at(slot))
    }

    /// An endpoint by id, to change it.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut EndpointEntry> {
        let slot = self.slot(id)?;
        self.at_mut(slot)
    }

    /// True when an endpoint of this id exists.
    pub fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The endpoint in a slot.
    pub fn at(&self, slot: u32) -> Option<&EndpointEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The endpoint in a slot, to change it.
    pub fn at_mut(&mut self, slot: u32) -> Option<&mut EndpointEntry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The endpoint of a tracked event. Every tracked event's endpoint exists (deleting an
    /// endpoint forgets its events in the same step), so a missing one is a bookkeeping bug:
    /// an assertion in debug builds, `None` (the step does nothing) in release.
    pub fn owner(&self, slot: u32) -> Option<&EndpointEntry> {
        let entry = self.at(slot);
        debug_assert!(entry.is_some(), "a tracked event's endpoint (slot {slot}) is gone");
        entry
    }

    /// [`Endpoints::owner`], to change it.
    pub fn owner_mut(&mut self, slot: u32) -> Option<&mut EndpointEntry> {
        let entry = self.at_mut(slot);
        debug_assert!(entry.is_some(), "a tracked event's endpoint (slot {slot}) is gone");
        entry
    }

    /// Adds an endpoint; its slot.
    pub fn insert(&mut self, entry: EndpointEntry) -> u32 {
        let id = Rc::clone(&entry.id);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    /// Removes an endpoint; its slot and entry.
    pub fn remove(&mut self, id: &str) -> Option<(u32, EndpointEntry)> {
        let slot = self.by_id.remove(id)?;
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some((slot, entry))
    }

    /// Every endpoint with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &EndpointEntry)> {
        self.slots.iter().enumerate().filter_map(|(slot, entry)| Some((slot as u32, entry.as_ref()?)))
    }

    /// Every endpoint, in slot order.
    pub fn values(&self) -> impl Iterator<Item = &EndpointEntry> {
        self.slots.iter().filter_map(Option::as_ref)
    }

    /// Every endpoint, to change them.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut EndpointEntry> {
        self.slots.iter_mut().filter_map(Option::as_mut)
    }
}
