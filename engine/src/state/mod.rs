//! A shard's state: endpoints with their delivery queues and breakers, the events it tracks,
//! the idempotency table and the event id generator. Plain data and functions; time is passed
//! in.
//!
//! **One way state changes.** Everything durable about the state is what [`ShardState::apply`]
//! makes of the shard's log records, in LSN order: the live shard applies each record once the
//! fsync covering it has returned (see `shard`), and start-up replays the log through the same
//! function, so live and replayed state cannot diverge. The few live-only fields (attempts in
//! flight, the half-open probe, the payload cache, timers) are marked as such; replay leaves them
//! empty, and an attempt in flight at a crash simply finds its event pending again.
//!
//! **The log is the queue.** Each endpoint has a FIFO of pending events (in log order) and a
//! set of retrying events ordered by due time; terminal events are in neither. Attempts start
//! from due retries first, then from the front of the FIFO. An event's metadata remembers where
//! its record lies in the log ([`Event::position`]); its payload is cached only while its turn
//! is near (a prefix of its endpoint's FIFO, read ahead from the log in queue order) within the
//! payload budget, with each endpoint held to a fair share of it.
//!
//! Memory: every tracked event costs its [`Event`] (64 bytes), its id in the table and its queue slot;
//! terminal events are kept for lookups in a window of the most recent `terminal_events_max`.

/// Takes an amount off one of the state's counters. Going below zero is a bookkeeping bug: an
/// assertion in debug builds (the tests and the simulation run them), a floor at zero in
/// release, never a wrap-around that would block admission or scheduling for good.
macro_rules! decrease {
    ($counter:expr, $amount:expr) => {{
        let amount = $amount;
        debug_assert!($counter >= amount, "{} would go below zero", stringify!($counter));
        $counter = $counter.saturating_sub(amount);
    }};
}

mod access;
pub mod breaker;
mod compare;
mod endpoints;
mod event;
pub mod idempotency;
mod names;
mod payloads;
mod publications;
pub mod rate;
pub mod retry;
mod schedule;
mod table;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;

use kapsel_wal::Position;

use crate::model::endpoint::Endpoint;
use crate::model::ids::{EventId, EventIdGenerator};
use crate::model::records::{
    Attempt, EventCarried, EventReceived, Published, Record, Redriven, OUTCOME_DELIVERED, OUTCOME_RETRYING,
};
use crate::state::breaker::Transition;
use crate::state::idempotency::{IdempotencyTable, Remembered};

pub use crate::model::status::EventStatus;
pub use access::{Access, ConfigChange, CHANGES_IN_MEMORY_MAX};
pub use compare::{DurableView, EndpointView, EventRecordView};
pub use endpoints::{EndpointEntry, Endpoints};
pub use event::{delivery_code, is_destination_failure, AttemptSummary, DeliveryCode, Detail, Event};
pub use names::{Names, NAMES_MAX};
pub use payloads::{Payload, PayloadCache};
pub use publications::{Publication, Publications};
pub use schedule::{Plan, ReadRequest, Start};
pub use table::EventTable;
pub use view::event_json;

/// Bounds and windows the state keeps.
#[derive(Clone, Copy, Debug)]
pub struct StateLimits {
    /// Non-terminal events tracked (pending work); ingest answers 503 E3002 at the bound.
    pub events_max: usize,
    /// Idempotency keys remembered.
    pub idempotency_keys_max: usize,
    /// Idempotency window.
    pub idempotency_window_ms: u64,
    /// Payload bytes held in memory (cached, being read back, in flight); beyond it payloads
    /// wait in the log and are read back when their turn approaches.
    pub payload_memory_bytes_max: usize,
    /// Terminal events kept for lookups, most recent first (older ones are in the index only).
    pub terminal_events_max: usize,
}

/// Delivery progress an event is (re)created with.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    attempts: u32,
    budget_used: u32,
    next_attempt_at_ms: Option<u64>,
    /// The queue place of a pending event (0: the record being applied).
    queued_lsn: u64,
}

/// One shard's state.
#[derive(Debug)]
pub struct ShardState {
    /// Endpoints owned by this shard.
    pub endpoints: Endpoints,
    /// Events tracked, by id (ids are time-ordered, so this is also oldest-first).
    pub events: EventTable,
    /// Idempotency keys.
    pub idempotency: IdempotencyTable,
    /// Event id source.
    pub ids: EventIdGenerator,
    /// Event types and channel names the events name by number.
    pub names: Names,
    /// Events published to channels this shard owns.
    pub publications: Publications,
    /// Tenants and keys (shard 0 keeps them; elsewhere only `default`).
    pub access: Access,
    /// The most recent configuration changes in this shard's log, oldest first.
    pub changes: VecDeque<ConfigChange>,
    /// Per channel's shard, the highest published id whose deliveries this shard adopted: a
    /// channel's shard hands deliveries to each shard in id order, so anything at or below it
    /// was adopted already (even once its delivery left memory or its record the log).
    pub adopted: std::collections::BTreeMap<u16, EventId>,
    /// Live only: payloads whose turn is near.
    payloads: PayloadCache,
    /// Live only: each endpoint's one timer, by time.
    wakeups: BTreeSet<(u64, u32)>,
    /// Live only: endpoints the scheduler looks at in its next pass.
    active: BTreeSet<u32>,
    /// Live only: endpoints that need a payload read back but found no room in the budget.
    budget_waiters: BTreeSet<u32>,
    /// Terminal events, oldest first (the lookup window).
    terminal: VecDeque<EventId>,
    /// Events not delivered or failed.
    waiting: usize,
    /// The same, by tenant (a tenant's `events_waiting_max` is checked against every shard's).
    waiting_by_tenant: std::collections::HashMap<String, usize>,
    /// Endpoints with at least one waiting event (the payload budget is shared among them).
    endpoints_waiting: usize,
    limits: StateLimits,
    /// Endpoints created so far (live only: tells one creation of an id from the next).
    incarnations: u64,
    /// True while the log is replayed at start: payloads are not cached then.
    replaying: bool,
    applied_lsn: u64,
    /// Endpoint state (configuration and breakers) up to this LSN came from the endpoint
    /// snapshot: replayed records up to it change events only.
    endpoints_as_of: u64,
    /// Cluster mode: the epoch of the latest `Takeover` applied (0: none). Only the owner of
    /// this epoch changes the state with owner records ([`ShardState::apply_fenced`]).
    owner_epoch: u64,
    /// Cluster mode: records the fence ignored.
    fenced: u64,
}

pub use crate::model::stream::{admits, Writer};

impl ShardState {
    /// Empty state for shard `index`.
    pub fn new(index: u16, limits: StateLimits) -> Self {
        Self {
            endpoints: Endpoints::default(),
            events: EventTable::default(),
            idempotency: IdempotencyTable::new(limits.idempotency_window_ms, limits.idempotency_keys_max),
            ids: EventIdGenerator::new(index, None),
            names: Names::default(),
            publications: Publications::default(),
            adopted: std::collections::BTreeMap::new(),
            access: Access::new(),
            changes: VecDeque::new(),
            payloads: PayloadCache::default(),
            wakeups: BTreeSet::new(),
            active: BTreeSet::new(),
            budget_waiters: BTreeSet::new(),
            terminal: VecDeque::new(),
            waiting: 0,
            waiting_by_tenant: std::collections::HashMap::new(),
            endpoints_waiting: 0,
            limits,
            incarnations: 0,
            replaying: false,
            applied_lsn: 0,
            endpoints_as_of: 0,
            owner_epoch: 0,
            fenced: 0,
        }
    }

    /// Marks the start (`true`) and the end of the replay at start-up.
    pub fn set_replaying(&mut self, replaying: bool) {
        self.replaying = replaying;
    }

    /// The bounds in force.
    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }

    /// The LSN of the last record applied.
    pub fn applied_lsn(&self) -> u64 {
        self.applied_lsn
    }

    /// Cluster mode: the epoch of the latest `Takeover` applied (0: none yet).
    pub fn owner_epoch(&self) -> u64 {
        self.owner_epoch
    }

    /// Cluster mode: the fence's epoch as a partition's snapshot recorded it (the `Takeover`s it
    /// covers may have been purged from the stream).
    pub fn restore_owner_epoch(&mut self, epoch: u64) {
        self.owner_epoch = self.owner_epoch.max(epoch);
    }

    /// Cluster mode: how many records the fence ignored.
    pub fn fenced(&self) -> u64 {
        self.fenced
    }

    /// Applies a record from a partition's stream through the fence (cluster mode, ADR 17), live
    /// or at replay alike, so every node replaying the stream agrees. A `Takeover` counts only
    /// above the latest one; any other owner record only under the latest `Takeover`'s epoch, so
    /// a deposed owner that wakes past its lease and still lands a write changes nothing; an
    /// owner's kind of record claiming to come from anyone is ignored too. Returns whether the
    /// record was applied; an ignored one still counts as applied at `lsn`.
    pub fn apply_fenced(&mut self, lsn: u64, position: Position, writer: Writer, record: Record, now_ms: u64) -> bool {
        if !admits(self.owner_epoch, &record, writer) {
            debug_assert!(lsn > self.applied_lsn, "records are applied in LSN order, once");
            self.applied_lsn = self.applied_lsn.max(lsn);
            self.fenced += 1;
            return false;
        }
        self.apply(lsn, position, record, now_ms);
        true
    }

    /// Applies one durable record, live or at replay: the only way the state's durable part
    /// changes. `position` is where the record lies; `now_ms` only decides which idempotency
    /// keys are already too old to remember.
    pub fn apply(&mut self, lsn: u64, position: Position, record: Record, now_ms: u64) {
        debug_assert!(lsn > self.applied_lsn, "records are applied in LSN order, once");
        self.applied_lsn = self.applied_lsn.max(lsn);
        if let Some(change) = ConfigChange::of(lsn, &record) {
            if self.changes.len() >= CHANGES_IN_MEMORY_MAX {
                self.changes.pop_front();
            }
            self.changes.push_back(change);
        }
        match record {
            // The snapshot already holds the endpoint as it was after this record.
            Record::EndpointPut(_) if lsn <= self.endpoints_as_of => {}
            Record::EndpointPut(endpoint) => self.put_endpoint(endpoint),
            Record::EndpointDeleted(deleted) if lsn <= self.endpoints_as_of => self.drop_events_of(&deleted.id),
            Record::EndpointDeleted(deleted) => self.delete_endpoint(&deleted.id),
            Record::EventReceived(event) => self.receive(lsn, position, event, Progress::default(), now_ms),
            Record::EventCarried(carried) => self.carry_in(lsn, position, carried, now_ms),
            Record::Redriven(redriven) => self.redriven(lsn, position, redriven, now_ms),
            Record::Attempt(attempt) => self.apply_attempt(lsn, &attempt),
            Record::Requeued(requeued) => self.requeue(lsn, EventId(requeued.event_id), requeued.at_ms),
            Record::Published(published) => self.publish(lsn, position, published, now_ms),
            Record::Adopted(adopted) => {
                let event_id = EventId(adopted.event_id);
                self.note_adopted(event_id.shard(), event_id);
                self.receive_deliveries(lsn, position, &adopted, now_ms);
            }
            Record::TenantPut(put) => self.access.put_tenant(put),
            Record::TenantDeleted(deleted) => self.access.delete_tenant(&deleted),
            Record::KeyCreated(created) => self.access.create_key(created),
            Record::KeyRevoked(revoked) => self.access.revoke_key(&revoked),
            Record::HandedOff(handed_off) => {
                self.publications.handed_off(EventId(handed_off.event_id), handed_off.shard);
            }
            Record::Takeover(takeover) => self.owner_epoch = self.owner_epoch.max(takeover.epoch),
        }
        self.assert_bounds();
    }

    /// What must hold after every step and costs nothing to check; [`ShardState::check`] is the
    /// full, linear-time version the simulation runs.
    fn assert_bounds(&self) {
        debug_assert!(self.waiting <= self.events.len(), "{} waiting of {} events", self.waiting, self.events.len());
        debug_assert!(self.endpoints_waiting <= self.endpoints.len(), "more endpoints waiting than endpoints");
        debug_assert!((self.endpoints_waiting == 0) == (self.waiting == 0), "waiting events without endpoints");
        debug_assert!(
            self.terminal.len() <= self.limits.terminal_events_max
                || self.terminal.iter().any(|id| self.events.get(id).is_some_and(|event| event.in_flight)),
            "terminal window over its bound"
        );
        debug_assert!(self.terminal.len() + self.waiting <= self.events.len(), "an event both terminal and waiting");
    }

    /// Loads an endpoint with its breaker from the endpoint snapshot before replay, as it was
    /// once record `as_of` was applied: replayed records up to that LSN then change only events
    /// (an endpoint deleted and created again before it loses its earlier events, its
    /// configuration and breaker stay the snapshot's).
    pub fn restore_endpoint(&mut self, endpoint: Endpoint, breaker: crate::state::breaker::Breaker, as_of: u64) {
        let id = endpoint.id.clone();
        self.put_endpoint(endpoint);
        if let Some(entry) = self.endpoints.get_mut(&id) {
            entry.breaker = breaker;
        }
        self.endpoints_as_of = self.endpoints_as_of.max(as_of);
    }

    /// Stores an endpoint (create or replace), keeping its queues and breaker.
    fn put_endpoint(&mut self, endpoint: Endpoint) {
        let Some(slot) = self.endpoints.slot(&endpoint.id) else {
            self.incarnations += 1;
            self.endpoints.insert(EndpointEntry::new(endpoint, self.incarnations));
            return;
        };
        let Some(entry) = self.endpoints.at_mut(slot) else {
            debug_assert!(false, "endpoint {} has a slot but no entry", endpoint.id);
            return;
        };
        let disabled = entry.endpoint.enabled && !endpoint.enabled;
        entry.endpoint = endpoint;
        entry.derive();
        if disabled {
            // Its events wait on disk; the cache is for endpoints that deliver.
            self.evict_endpoint(slot);
        }
        self.activate(slot);
    }

    /// Removes the events and idempotency keys an endpoint had, keeping the endpoint (a deletion
    /// replayed below the snapshot, which already holds the endpoint's later life).
    fn drop_events_of(&mut self, id: &str) {
        let Some(slot) = self.endpoints.slot(id) else {
            return;
        };
        let doomed: Vec<EventId> =
            self.events.iter().filter(|(_, event)| event.endpoint == slot).map(|(event_id, _)| *event_id).collect();
        for event_id in doomed {
            self.forget_event(event_id);
        }
        self.idempotency.forget_endpoint(id);
    }

    /// Forgets one event of a live endpoint entirely.
    fn forget_event(&mut self, event_id: EventId) {
        let Some(event) = self.events.get(&event_id) else {
            return;
        };
        let (slot, status, due, in_flight) =
            (event.endpoint, event.status, event.next_attempt_at_ms(), event.in_flight);
        if event.is_waiting() {
            if !in_flight {
                self.unqueue(slot, event_id, status, due);
            }
            self.count_waiting(slot, false);
        }
        self.events.remove(&event_id);
        self.terminal.retain(|terminal| *terminal != event_id);
    }

    /// Removes an endpoint with its events and idempotency keys.
    fn delete_endpoint(&mut self, id: &str) {
        let Some((slot, entry)) = self.endpoints.remove(id) else {
            return;
        };
        let mut removed_waiting = 0;
        let payloads = &mut self.payloads;
        self.events.retain(|event_id, event| {
            if event.endpoint != slot {
                return true;
            }
            removed_waiting += usize::from(event.is_waiting());
            payloads.take(event_id);
            false
        });
        // Everything it held (cached, being read, in flight) is released here; late read-backs
        // and attempt outcomes find the endpoint gone and release nothing again.
        self.payloads.release(entry.held_bytes);
        decrease!(self.waiting, removed_waiting);
        if let Some(count) = self.waiting_by_tenant.get_mut(entry.endpoint.tenant_id()) {
            decrease!(*count, removed_waiting);
        }
        if entry.waiting > 0 {
            decrease!(self.endpoints_waiting, 1);
        }
        let events = &self.events;
        self.terminal.retain(|event_id| events.contains_key(event_id));
        if let Some(at) = entry.wake_at {
            self.wakeups.remove(&(at, slot));
        }
        self.active.remove(&slot);
        self.budget_waiters.remove(&slot);
        self.idempotency.forget_endpoint(id);
        self.wake_budget_waiters();
    }

    /// An event published to one of this shard's channels: its idempotency key (scoped to the
    /// channel), what a lookup shows, the handoffs to other shards, and this shard's deliveries.
    fn publish(&mut self, lsn: u64, position: Position, published: Published, now_ms: u64) {
        let event_id = EventId(published.event_id);
        self.ids.observe(event_id.last_delivery());
        if let Some(key) = &published.idempotency_key {
            let scope = publish_scope(&published.tenant, &published.channel);
            let remembered = Remembered { event_id, lsn };
            self.idempotency.remember(&scope, key, remembered, published.received_at_ms, now_ms);
        }
        let handed: usize = published.handoffs.iter().map(|handoff| handoff.deliveries.len()).sum();
        let publication = Publication {
            lsn,
            position,
            channel: self.names.intern(&published.channel),
            event_type: self.names.intern(&published.event_type),
            tenant: self.names.intern(&published.tenant),
            endpoints: u32::try_from(published.deliveries.len() + handed).unwrap_or(u32::MAX),
            payload_bytes: u32::try_from(published.payload.len()).unwrap_or(u32::MAX),
            idempotency_key: published.idempotency_key.as_deref().map(Box::from),
            handoffs: published
                .handoffs
                .iter()
                .map(|handoff| {
                    let endpoints = handoff.deliveries.iter().map(|delivery| Box::from(delivery.endpoint_id.as_str()));
                    (handoff.shard, endpoints.collect())
                })
                .collect(),
        };
        self.publications.insert(event_id, publication, self.limits.terminal_events_max);
        self.receive_deliveries(lsn, position, &published, now_ms);
    }

    /// Notes that the deliveries of `event_id`, published on `shard`'s channel, were adopted.
    pub fn note_adopted(&mut self, shard: u16, event_id: EventId) {
        let highest = self.adopted.entry(shard).or_insert(event_id);
        *highest = (*highest).max(event_id);
    }

    /// Whether the deliveries of published event `event_id` were adopted here already.
    pub fn was_adopted(&self, event_id: EventId) -> bool {
        self.adopted.get(&event_id.shard()).is_some_and(|highest| event_id <= *highest)
    }

    /// The deliveries a published or adopted record gives this shard: each an event of its
    /// endpoint, queued at the record.
    fn receive_deliveries(&mut self, lsn: u64, position: Position, published: &Published, now_ms: u64) {
        for delivery in &published.deliveries {
            self.receive(lsn, position, published.delivery_event(delivery), Progress::default(), now_ms);
        }
    }

    /// A received event (or one recreated from a carried or redriven record).
    fn receive(&mut self, lsn: u64, position: Position, event: EventReceived, progress: Progress, now_ms: u64) {
        let event_id = EventId(event.event_id);
        // A delivery's id lies in its published event's block, which new ids must skip whole.
        self.ids.observe(if event.publish.is_some() { event_id.last_delivery() } else { event_id });
        let Some(slot) = self.endpoints.slot(&event.endpoint_id) else {
            // Its endpoint was deleted before the record was applied: nothing to deliver to.
            return;
        };
        if self.events.contains_key(&event_id) {
            return;
        }
        if let (Some(key), Some(entry)) = (&event.idempotency_key, self.endpoints.at(slot)) {
            let remembered = Remembered { event_id, lsn };
            self.idempotency.remember(&entry.id, key, remembered, event.received_at_ms, now_ms);
        }
        let detail = event
            .idempotency_key
            .as_deref()
            .map(|key| Box::new(Detail { idempotency_key: Some(Box::from(key)), ..Detail::default() }));
        let status = if progress.next_attempt_at_ms.is_some() { EventStatus::Retrying } else { EventStatus::Pending };
        let payload_bytes = u32::try_from(event.payload.len()).unwrap_or(u32::MAX);
        let event_type = self.names.intern(&event.event_type);
        let channel = event.publish.as_ref().map_or(0, |publish| self.names.intern(&publish.channel));
        let queued_lsn = if progress.queued_lsn == 0 { lsn } else { progress.queued_lsn };
        // A carried event keeps the place of a record written before the one carrying it.
        debug_assert!(queued_lsn <= lsn, "{event_id} queued at {queued_lsn}, after its record {lsn}");
        self.events.insert(
            event_id,
            Event {
                lsn,
                position,
                queued_lsn,
                detail,
                endpoint: slot,
                attempts: progress.attempts,
                budget_used: progress.budget_used,
                payload_bytes,
                status,
                in_flight: false,
                delivery: event.publish.is_some(),
                event_type,
                channel,
            },
        );
        if let (Some(due), Some(event)) = (progress.next_attempt_at_ms, self.events.get_mut(&event_id)) {
            event.set_next_attempt_at_ms(due);
        }
        self.count_waiting(slot, true);
        let Some(entry) = self.endpoints.owner_mut(slot) else {
            return;
        };
        match progress.next_attempt_at_ms {
            Some(due) => {
                entry.retries.insert((due, event_id));
            }
            None => {
                let at_end = self.enqueue(slot, event_id, queued_lsn);
                let Some(entry) = self.endpoints.owner(slot) else {
                    return;
                };
                // Cached only if every event ahead of it is (the cache holds a prefix), and not
                // while replaying: most replayed events are delivered a few records later, and
                // read-ahead fetches the rest once the shard serves.
                if !self.replaying
                    && at_end
                    && entry.resident + 1 == entry.ready.len()
                    && self.admit(slot, event.payload.len(), false)
                {
                    self.payloads.insert(event_id, std::rc::Rc::new(Payload::of(event)));
                    if let Some(entry) = self.endpoints.at_mut(slot) {
                        entry.resident += 1;
                    }
                }
            }
        }
        self.activate(slot);
    }

    /// Puts a pending event in its endpoint's queue at its place (`queued_lsn` order: at the end,
    /// unless it is a carried event coming back at replay). `true` when it went at the end.
    fn enqueue(&mut self, slot: u32, event_id: EventId, queued_lsn: u64) -> bool {
        let events = &self.events;
        let Some(entry) = self.endpoints.owner_mut(slot) else {
            return false;
        };
        debug_assert!(!entry.ready.contains(&event_id), "{event_id} queued twice");
        let place = |queued: &EventId| events.get(queued).map_or(0, |event| event.queued_lsn);
        if entry.ready.back().is_none_or(|last| place(last) <= queued_lsn) {
            entry.ready.push_back(event_id);
            return true;
        }
        let index = queue_place(events, &entry.ready, queued_lsn);
        entry.ready.insert(index, event_id);
        if index < entry.resident {
            // The cached prefix now ends before it.
            let evicted: Vec<EventId> = entry.ready.range(index + 1..=entry.resident).copied().collect();
            entry.resident = index;
            for event_id in evicted {
                decrease!(entry.held_bytes, self.payloads.evict(&event_id));
            }
        }
        false
    }

    /// A waiting event written again by retention: known events only move; one whose original
    /// record retention removed comes back with its progress.
    fn carry_in(&mut self, lsn: u64, position: Position, carried: EventCarried, now_ms: u64) {
        let event_id = EventId(carried.event.event_id);
        if let Some(event) = self.events.get_mut(&event_id) {
            event.lsn = lsn;
            event.position = position;
            return;
        }
        let progress = Progress {
            attempts: carried.last_attempt,
            budget_used: carried.budget_used,
            next_attempt_at_ms: carried.next_attempt_at_ms,
            queued_lsn: carried.queued_lsn,
        };
        self.receive(lsn, position, carried.event, progress, now_ms);
        self.restore_history(event_id, &carried.history);
    }

    fn restore_history(&mut self, event_id: EventId, history: &crate::model::records::History) {
        if history == &crate::model::records::History::default() {
            return;
        }
        if let Some(event) = self.events.get_mut(&event_id) {
            event.detail_mut().restore(history);
        }
    }

    /// A redrive written with the event itself, so it needs no older record.
    fn redriven(&mut self, lsn: u64, position: Position, redriven: Redriven, now_ms: u64) {
        let event_id = EventId(redriven.event.event_id);
        if let Some(event) = self.events.get_mut(&event_id) {
            event.lsn = lsn;
            event.position = position;
            self.requeue(lsn, event_id, redriven.at_ms);
            return;
        }
        let progress = Progress { attempts: redriven.last_attempt, ..Progress::default() };
        self.receive(lsn, position, redriven.event, progress, now_ms);
        self.restore_history(event_id, &redriven.history);
        if let Some(event) = self.events.get_mut(&event_id) {
            event.detail_mut().updated_at_ms = redriven.at_ms;
        }
    }

    /// Counts an event becoming waiting (`true`) or terminal (`false`) for its endpoint.
    fn count_waiting(&mut self, slot: u32, waiting: bool) {
        let Some(entry) = self.endpoints.owner_mut(slot) else {
            return;
        };
        if waiting {
            self.waiting += 1;
            entry.waiting += 1;
            if entry.waiting == 1 {
                self.endpoints_waiting += 1;
            }
        } else {
            decrease!(self.waiting, 1);
            decrease!(entry.waiting, 1);
            if entry.waiting == 0 {
                decrease!(self.endpoints_waiting, 1);
            }
        }
        let tenant = entry.endpoint.tenant_id();
        match (self.waiting_by_tenant.get_mut(tenant), waiting) {
            (Some(count), true) => *count += 1,
            (Some(count), false) => decrease!(*count, 1),
            (None, true) => {
                self.waiting_by_tenant.insert(tenant.to_string(), 1);
            }
            (None, false) => debug_assert!(false, "tenant {tenant} had no waiting events to count down"),
        }
    }

    /// Events of `tenant`'s endpoints on this shard not yet delivered or failed.
    pub fn tenant_waiting(&self, tenant: &str) -> usize {
        self.waiting_by_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// An attempt's outcome: the event's history, its next state, and the breaker.
    fn apply_attempt(&mut self, lsn: u64, attempt: &Attempt) {
        let event_id = EventId(attempt.event_id);
        let Some(event) = self.events.get_mut(&event_id) else {
            return;
        };
        if event.status.is_terminal() {
            // A terminal event has no outcome to come, live or at replay alike, even while an
            // attempt of it is in flight: from a partition's stream an owner whose outcome's
            // acknowledgement was lost puts the event back and may make the attempt again under
            // the same number before the first outcome comes back through its feed; the first
            // one counts, on every node (found by the cluster simulation, seed 163: the
            // second outcome was applied live and not on replay).
            return;
        }
        let slot = event.endpoint;
        let detail = event.detail_mut();
        if detail.attempts.len() >= crate::limits::ATTEMPTS_IN_MEMORY_MAX {
            detail.attempts.remove(0);
        }
        // Exact growth: most events are attempted once or twice.
        detail.attempts.reserve_exact(1);
        detail.attempts.push(AttemptSummary::of(attempt));
        let finished_ms = attempt.at_ms.saturating_add(u64::from(attempt.latency_ms));
        detail.updated_at_ms = finished_ms;
        detail.last_excerpt =
            (attempt.outcome != OUTCOME_DELIVERED).then(|| attempt.response_excerpt.clone().into_boxed_slice());
        event.attempts = event.attempts.max(attempt.n);
        event.budget_used = event.budget_used.saturating_add(1);
        if !event.in_flight {
            // At replay the event is still queued: the start of an attempt is not recorded.
            let (status, due) = (event.status, event.next_attempt_at_ms());
            self.unqueue(slot, event_id, status, due);
        }
        match (attempt.outcome, attempt.next_attempt_at_ms) {
            (OUTCOME_RETRYING, due) => {
                let due = due.unwrap_or(finished_ms);
                let mut in_flight = false;
                if let Some(event) = self.events.get_mut(&event_id) {
                    event.status = EventStatus::Retrying;
                    event.set_next_attempt_at_ms(due);
                    in_flight = event.in_flight;
                }
                // An event in flight is in no queue: it joins the retry set when its attempt
                // finishes (`finish_live`). From a partition's stream an outcome can be applied
                // long before the attempt finishes (the feed brings the record back before the
                // publish is acknowledged, or it is another owner's record), and meanwhile the
                // scheduler would find the event due while it is still in flight (found by the
                // cluster simulation, seed 1).
                if let (false, Some(entry)) = (in_flight, self.endpoints.at_mut(slot)) {
                    entry.retries.insert((due, event_id));
                }
            }
            (OUTCOME_DELIVERED, _) => self.make_terminal(event_id, EventStatus::Delivered),
            _ => self.make_terminal(event_id, EventStatus::Failed),
        }
        if lsn > self.endpoints_as_of {
            self.feed_breaker(slot, is_destination_failure(attempt.error_code.as_deref()), finished_ms);
        }
        self.activate(slot);
    }

    fn feed_breaker(&mut self, slot: u32, failure: bool, at_ms: u64) {
        let Some(entry) = self.endpoints.owner_mut(slot) else {
            return;
        };
        let policy = entry.endpoint.circuit.clone();
        if let Transition::Opened { .. } = entry.breaker.record(&policy, failure, at_ms) {
            // While it is open nothing is delivered: its payloads wait on disk.
            self.evict_endpoint(slot);
        }
    }

    /// Takes a waiting event out of its endpoint's queue (replay of an attempt's outcome, or a
    /// retrying event redriven).
    fn unqueue(&mut self, slot: u32, event_id: EventId, status: EventStatus, due: u64) {
        let Some(entry) = self.endpoints.owner_mut(slot) else {
            return;
        };
        match status {
            EventStatus::Pending => {
                // The event whose outcome is replayed started from near the front. A pending
                // event not in flight is always in its queue.
                let index = entry.ready.iter().position(|queued| *queued == event_id);
                debug_assert!(index.is_some(), "pending event {event_id} missing from its queue");
                if let Some(index) = index {
                    entry.ready.remove(index);
                    if index < entry.resident {
                        decrease!(entry.resident, 1);
                        let bytes = self.payloads.evict(&event_id);
                        decrease!(entry.held_bytes, bytes);
                    }
                }
            }
            EventStatus::Retrying => {
                let removed = entry.retries.remove(&(due, event_id));
                debug_assert!(removed, "retrying event {event_id} missing from its retry set");
                if self.payloads.contains(&event_id) {
                    let bytes = self.payloads.evict(&event_id);
                    decrease!(entry.held_bytes, bytes);
                }
            }
            _ => {}
        }
    }

    fn make_terminal(&mut self, event_id: EventId, status: EventStatus) {
        let Some(event) = self.events.get_mut(&event_id) else {
            return;
        };
        debug_assert!(status.is_terminal(), "{event_id} made terminal as {status:?}");
        debug_assert!(event.is_waiting(), "{event_id} made terminal twice");
        let slot = event.endpoint;
        event.status = status;
        event.set_next_attempt_at_ms(0);
        self.count_waiting(slot, false);
        self.terminal.push_back(event_id);
        self.trim_terminal();
    }

    /// Forgets the oldest terminal events beyond the window, but none still in flight (its
    /// outcome applied from a partition's stream before its attempt came back): it is forgotten
    /// once it has (`finish_live` trims again), so the window may hold a few more meanwhile.
    pub(crate) fn trim_terminal(&mut self) {
        let mut index = 0;
        while self.terminal.len() > self.limits.terminal_events_max && index < self.terminal.len() {
            let oldest = self.terminal[index];
            if self.events.get(&oldest).is_some_and(|event| event.in_flight) {
                index += 1;
                continue;
            }
            self.terminal.remove(index);
            self.events.remove(&oldest);
        }
    }

    /// An operator's redrive: a fresh retry budget, and a terminal or retrying event goes back to
    /// the end of its endpoint's queue. An event in flight keeps going; its outcome then counts
    /// against the fresh budget.
    fn requeue(&mut self, lsn: u64, event_id: EventId, at_ms: u64) {
        let Some(event) = self.events.get_mut(&event_id) else {
            return;
        };
        event.budget_used = 0;
        event.detail_mut().updated_at_ms = at_ms;
        let (slot, status, due, in_flight) =
            (event.endpoint, event.status, event.next_attempt_at_ms(), event.in_flight);
        match status {
            EventStatus::Pending | EventStatus::Delivering => return,
            // An event in flight is in no queue.
            EventStatus::Retrying if in_flight => {}
            EventStatus::Retrying => self.unqueue(slot, event_id, status, due),
            EventStatus::Delivered | EventStatus::Failed => {
                self.terminal.retain(|terminal| *terminal != event_id);
                self.count_waiting(slot, true);
            }
        }
        if let Some(event) = self.events.get_mut(&event_id) {
            event.status = EventStatus::Pending;
            event.set_next_attempt_at_ms(0);
            event.queued_lsn = lsn;
        }
        if in_flight {
            // Its status changes as on replay, where nothing is in flight; it joins its queue
            // when its attempt finishes (`finish_live`). From a partition's stream a redrive
            // can reach an event in flight: the new owner's, at an old owner whose attempt is
            // still out (found by the cluster simulation, seeds 82 and 129: the old owner kept
            // the event delivered, then applied its next delivery as a second terminal outcome).
            return;
        }
        self.enqueue(slot, event_id, lsn);
        self.activate(slot);
    }

    /// True when the shard holds as much pending work as it may (ingest answers 503 E3002).
    pub fn events_full(&self) -> bool {
        self.waiting >= self.limits.events_max
    }

    /// Non-terminal events.
    pub fn pending_work(&self) -> usize {
        self.waiting
    }

    /// Payload bytes held in memory (cached, being read back, in flight).
    pub fn payload_bytes_held(&self) -> usize {
        self.payloads.held_bytes()
    }

    /// An event's payload, when it is cached.
    pub fn cached_payload(&self, event_id: &EventId) -> Option<Rc<Payload>> {
        self.payloads.get(event_id).cloned()
    }

    /// Payloads cached.
    pub fn payloads_cached(&self) -> usize {
        self.payloads.len()
    }

    /// The endpoint id of an event.
    pub fn endpoint_of(&self, event: &Event) -> &str {
        self.endpoints.at(event.endpoint).map_or("", |entry| &entry.id)
    }

    /// LSN of the oldest waiting event's record: retention keeps every segment from it on.
    pub fn oldest_waiting_lsn(&self) -> Option<u64> {
        if self.waiting == 0 {
            return self.publications.oldest_pending_lsn();
        }
        // Carried events hold old ids at new LSNs, so every waiting event is looked at.
        let waiting = self.events.values().filter(|event| event.is_waiting()).map(|event| event.lsn).min();
        match (waiting, self.publications.oldest_pending_lsn()) {
            (Some(waiting), Some(pending)) => Some(waiting.min(pending)),
            (waiting, pending) => waiting.or(pending),
        }
    }

    /// Up to `count_max` waiting events not in flight whose record lies below `lsn`, with their
    /// positions: retention carries them forward so that their old segments can go.
    pub fn pinning_below(&self, lsn: u64, count_max: usize) -> Vec<(EventId, Position)> {
        self.events
            .iter()
            .filter(|(_, event)| event.lsn < lsn && event.is_waiting() && !event.in_flight)
            .take(count_max)
            .map(|(event_id, event)| (*event_id, event.position))
            .collect()
    }

    /// The record that carries a waiting event forward, given the event as read back from its
    /// record (`None` when the event is no longer waiting or is in flight).
    pub fn carry(&self, event_id: EventId, received: EventReceived) -> Option<EventCarried> {
        let event = self.events.get(&event_id)?;
        if !event.is_waiting() || event.in_flight || received.event_id != event_id.0 {
            return None;
        }
        Some(EventCarried {
            event: received,
            last_attempt: event.attempts,
            budget_used: event.budget_used,
            next_attempt_at_ms: (event.status == EventStatus::Retrying).then_some(event.next_attempt_at_ms()),
            queued_lsn: if event.status == EventStatus::Pending { event.queued_lsn } else { 0 },
            history: event.detail.as_ref().map(|detail| detail.history()).unwrap_or_default(),
        })
    }

    /// The record that redrives a delivered or failed event, given the event as read back from
    /// its record (`None` when it is no longer delivered or failed).
    pub fn redrive(&self, received: EventReceived, now_ms: u64) -> Option<Redriven> {
        let event = self.events.get(&EventId(received.event_id))?;
        if !event.status.is_terminal() || event.in_flight {
            return None;
        }
        Some(Redriven {
            last_attempt: event.attempts,
            at_ms: now_ms,
            history: event.detail.as_ref().map(|detail| detail.history()).unwrap_or_default(),
            event: received,
        })
    }

    /// The deliveries of published event `event_id` this shard tracks, by id.
    pub fn deliveries_of(&self, event_id: EventId) -> Vec<EventId> {
        let after_block = EventId(event_id.last_delivery().0.saturating_add(1));
        let mut deliveries: Vec<EventId> = self
            .events
            .newest_before(Some(after_block))
            .take_while(|(delivery, _)| **delivery > event_id)
            .filter(|(_, event)| event.delivery)
            .map(|(delivery, _)| *delivery)
            .collect();
        deliveries.reverse();
        deliveries
    }

    /// Failed events of an endpoint, with their positions.
    pub fn failed_events(&self, endpoint: &str) -> Vec<(EventId, Position)> {
        let Some(slot) = self.endpoints.slot(endpoint) else {
            return Vec::new();
        };
        self.events
            .iter()
            .filter(|(_, event)| event.endpoint == slot && event.status == EventStatus::Failed)
            .map(|(event_id, event)| (*event_id, event.position))
            .collect()
    }

    /// Live state of an endpoint for the admin API.
    pub fn live(&self, endpoint: &str, now_ms: u64) -> crate::model::endpoint::LiveState {
        self.endpoints.get(endpoint).map_or_else(crate::model::endpoint::LiveState::default, |entry| {
            crate::model::endpoint::LiveState {
                circuit_state: entry.breaker.state_name(now_ms),
                queue_depth: entry.queue_depth(),
                in_flight: entry.in_flight as usize,
            }
        })
    }

    /// The JSON of an event for the admin API (`waiting_reason` E2005 while its endpoint's
    /// breaker holds it).
    pub fn event_json(&self, event_id: EventId, now_ms: u64) -> Option<serde_json::Value> {
        let event = self.events.get(&event_id)?;
        let entry = self.endpoints.at(event.endpoint);
        let held = event.is_waiting() && !event.in_flight && entry.is_some_and(|entry| entry.breaker.holds(now_ms));
        let names = (self.names.get(event.event_type), self.names.get(event.channel));
        Some(event_json(event_id, event, self.endpoint_of(event), names, held.then_some("E2005")))
    }
}

/// A tenant's channel as one name: `tenant/channel` (neither may contain `/`). Channels belong
/// to a tenant: the subscriptions, the channel's shard and its idempotency keys go by this.
pub fn tenant_channel(tenant: &str, channel: &str) -> String {
    format!("{tenant}/{channel}")
}

/// The idempotency scope of publishes to a tenant's channel: not an endpoint id (those have no
/// `/`), so a channel's keys and an endpoint's never meet.
pub fn publish_scope(tenant: &str, channel: &str) -> Rc<str> {
    Rc::from(format!("/publish/{}", tenant_channel(tenant, channel)))
}

/// Where a pending event goes into its endpoint's queue: after every event queued before it
/// (the queue is in log order of the records that queued them).
fn queue_place(events: &EventTable, ready: &VecDeque<EventId>, queued_lsn: u64) -> usize {
    ready.partition_point(|queued| events.get(queued).map_or(0, |event| event.queued_lsn) <= queued_lsn)
}
