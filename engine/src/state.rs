//! A shard's in-memory state: endpoints with their delivery queues and breakers, the events it
//! tracks, retry timers, the idempotency table and the event id generator. Plain data and
//! functions; time is passed in. Rebuilt at start by replaying the shard's log through
//! [`ShardState::replay`].
//!
//! Memory bounds: non-terminal events (pending, delivering, retrying) are at most `events_max`
//! (ingest answers 503 E3002 at the bound) and keep their payload; terminal events (delivered,
//! failed) drop their payload and are kept for lookups in a window of the most recent
//! `terminal_events_max`, oldest evicted first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;

use serde_json::{json, Value};

use crate::breaker::{Breaker, Permit};
use crate::clock::rfc3339;
use crate::endpoint::Endpoint;
use crate::idempotency::{IdempotencyTable, Remembered};
use crate::ids::{EventId, EventIdGenerator};
use crate::rate::TokenBucket;
use crate::records::{
    Attempt, EventCarried, EventReceived, Record, OUTCOME_DELIVERED, OUTCOME_FAILED, OUTCOME_RETRYING,
};
use crate::signature::Secret;

/// Delivery status of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// Accepted, waiting for an attempt.
    Pending,
    /// An attempt is in flight.
    Delivering,
    /// Waiting for its next attempt.
    Retrying,
    /// A 2xx was received.
    Delivered,
    /// Given up (the dead-letter state).
    Failed,
}

impl EventStatus {
    /// The contract's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses a status filter.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivering, Self::Retrying, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Delivered or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed)
    }
}

/// What a delivery needs besides the endpoint: kept only while the event is not terminal.
#[derive(Debug)]
pub struct Payload {
    /// The body, as received.
    pub body: Rc<[u8]>,
    /// The sender's `Content-Type`.
    pub content_type: Option<String>,
    /// The sender's `traceparent`.
    pub traceparent: Option<String>,
}

/// An attempt as kept in memory (the log has the full record, excerpt included).
#[derive(Clone, Debug)]
pub struct AttemptSummary {
    /// Attempt number.
    pub n: u32,
    /// Start time.
    pub at_ms: u64,
    /// The destination's status.
    pub status_code: Option<u16>,
    /// Latency.
    pub latency_ms: u32,
    /// E-code of a failure.
    pub error_code: Option<Box<str>>,
}

/// What a shard keeps in memory about an event.
#[derive(Debug)]
pub struct EventSummary {
    /// The endpoint it is for.
    pub endpoint_id: Rc<str>,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// Last state change.
    pub updated_at_ms: u64,
    /// Payload size.
    pub payload_bytes: u32,
    /// The sender's idempotency key.
    pub idempotency_key: Option<Box<str>>,
    /// Delivery status.
    pub status: EventStatus,
    /// LSN of its record in the shard's log (for inclusion proofs and re-reading the payload).
    pub lsn: u64,
    /// Attempts made, oldest first (at most [`crate::limits::ATTEMPTS_IN_MEMORY_MAX`]).
    pub attempts: Vec<AttemptSummary>,
    /// Attempts counted against the retry budget (reset by an operator's retry).
    pub budget_used: u32,
    /// Number of the last attempt made.
    pub last_attempt: u32,
    /// When the next attempt is due.
    pub next_attempt_at_ms: Option<u64>,
    /// Why it is waiting, when the breaker holds it (E2005).
    pub waiting: Option<&'static str>,
    /// The payload, while it may still be delivered.
    pub payload: Option<Rc<Payload>>,
    /// The last response excerpt.
    pub last_excerpt: Option<Box<[u8]>>,
}

/// An endpoint with what the shard derives from it and its delivery queue.
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
    /// Events ready for an attempt, oldest first.
    pub ready: VecDeque<EventId>,
    /// Attempts in flight.
    pub in_flight: u32,
    /// The circuit breaker.
    pub breaker: Breaker,
    /// The parsed destination (`None` when the URL cannot be delivered to).
    pub target: Option<Rc<kapsel_http::Target>>,
    /// Decoded signing secrets with the time each signs until: the current one, and the
    /// replaced one during its rotation window.
    pub signing: Vec<(Secret, u64)>,
}

/// Bounds and windows the state keeps.
#[derive(Clone, Copy, Debug)]
pub struct StateLimits {
    /// Non-terminal events tracked (pending work); ingest answers 503 E3002 at the bound.
    pub events_max: usize,
    /// Idempotency keys remembered.
    pub idempotency_keys_max: usize,
    /// Idempotency window.
    pub idempotency_window_ms: u64,
    /// Payload bytes of non-terminal events kept in memory; beyond it new events keep only
    /// their metadata and their payload is read back from the log when their turn comes.
    pub payload_memory_bytes_max: usize,
    /// Terminal events kept for lookups, most recent first (older ones are in the index only).
    pub terminal_events_max: usize,
}

/// An attempt the scheduler may start now.
#[derive(Clone, Debug)]
pub struct Start {
    /// The event.
    pub event_id: EventId,
    /// Its endpoint.
    pub endpoint_id: Rc<str>,
    /// The attempt's number.
    pub n: u32,
    /// Whether it is the breaker's half-open probe.
    pub probe: bool,
    /// The payload.
    pub payload: Rc<Payload>,
}

/// One shard's state.
#[derive(Debug)]
pub struct ShardState {
    /// Endpoints owned by this shard.
    pub endpoints: HashMap<Rc<str>, EndpointEntry>,
    /// Events tracked, by id (ids are time-ordered, so this is also newest-last).
    pub events: BTreeMap<EventId, EventSummary>,
    /// Idempotency keys.
    pub idempotency: IdempotencyTable,
    /// Event id source.
    pub ids: EventIdGenerator,
    /// Endpoints that have ready events.
    active: HashSet<Rc<str>>,
    /// Due times: retries (`Some(event)`) and breaker wake-ups (`None`), keyed by time and a tiebreak.
    timers: BTreeMap<(u64, u64), Option<EventId>>,
    timer_sequence: u64,
    terminal: VecDeque<EventId>,
    non_terminal: usize,
    limits: StateLimits,
    /// Requeued terminal events met during replay, whose payloads must be read back.
    pub reload_after_replay: Vec<(EventId, u64)>,
    /// Payload bytes held in memory.
    payload_memory_bytes: usize,
    /// Events whose turn came while their payload is on disk only: (event, LSN), for the
    /// scheduler to read back.
    reload_wanted: Vec<(EventId, u64)>,
    reload_marked: HashSet<EventId>,
}

impl ShardState {
    /// Empty state for shard `index`.
    pub fn new(index: u16, limits: StateLimits) -> Self {
        Self {
            endpoints: HashMap::new(),
            events: BTreeMap::new(),
            idempotency: IdempotencyTable::new(limits.idempotency_window_ms, limits.idempotency_keys_max),
            ids: EventIdGenerator::new(index, None),
            active: HashSet::new(),
            timers: BTreeMap::new(),
            timer_sequence: 0,
            terminal: VecDeque::new(),
            non_terminal: 0,
            limits,
            reload_after_replay: Vec::new(),
            payload_memory_bytes: 0,
            reload_wanted: Vec::new(),
            reload_marked: HashSet::new(),
        }
    }

    /// Applies a record read back from the log at start-up.
    pub fn replay(&mut self, lsn: u64, record: Record, now_ms: u64) {
        match record {
            Record::EndpointPut(endpoint) => self.put_endpoint(endpoint, now_ms),
            Record::EndpointDeleted(deleted) => self.delete_endpoint(&deleted.id),
            Record::EventReceived(event) => {
                self.replay_received(lsn, event, now_ms);
            }
            Record::EventCarried(carried) => self.replay_carried(lsn, carried, now_ms),
            Record::Attempt(attempt) => self.apply_attempt(&attempt),
            Record::Requeued(requeued) => {
                let event_id = EventId(requeued.event_id);
                if !self.requeue(event_id, requeued.at_ms)
                    && self.events.get(&event_id).is_some_and(|summary| summary.payload.is_none())
                {
                    // Its payload left memory when it became terminal; reloaded after replay.
                    self.reload_after_replay.push((event_id, requeued.at_ms));
                }
            }
        }
    }

    /// A received event at replay; `false` when its endpoint is gone.
    fn replay_received(&mut self, lsn: u64, event: EventReceived, now_ms: u64) -> bool {
        let event_id = EventId(event.event_id);
        self.ids.observe(event_id);
        let Some(endpoint) = self.endpoints.get(event.endpoint_id.as_str()).map(|entry| Rc::clone(&entry.id)) else {
            // The endpoint was deleted later in the log; its events went with it.
            return false;
        };
        if let Some(key) = &event.idempotency_key {
            let remembered = Remembered { event_id, lsn };
            self.idempotency.remember(&endpoint, key, remembered, event.received_at_ms, now_ms);
        }
        self.accept_event(event_id, &endpoint, event, lsn);
        true
    }

    /// A carried event at replay: where the original is still in the log, only its location
    /// moves; where retention removed it, the event comes back with its delivery progress.
    fn replay_carried(&mut self, lsn: u64, carried: EventCarried, now_ms: u64) {
        let event_id = EventId(carried.event.event_id);
        if let Some(summary) = self.events.get_mut(&event_id) {
            summary.lsn = lsn;
            return;
        }
        if !self.replay_received(lsn, carried.event, now_ms) {
            return;
        }
        let Some(summary) = self.events.get_mut(&event_id) else { return };
        summary.last_attempt = carried.last_attempt;
        summary.budget_used = carried.budget_used;
        if let Some(due) = carried.next_attempt_at_ms {
            summary.status = EventStatus::Retrying;
            summary.next_attempt_at_ms = Some(due);
            let endpoint = Rc::clone(&summary.endpoint_id);
            if let Some(entry) = self.endpoints.get_mut(&endpoint) {
                entry.ready.retain(|queued| *queued != event_id);
            }
            self.add_timer(due, Some(event_id));
        }
    }

    /// Stores an endpoint (create or replace), keeping its queue and breaker.
    pub fn put_endpoint(&mut self, endpoint: Endpoint, now_ms: u64) {
        let ingest_secret = endpoint.ingest_secret.as_deref().and_then(Secret::parse);
        let bucket = endpoint.rate_limit_per_s.map(|rate| TokenBucket::new(rate, now_ms));
        let target = kapsel_http::Target::parse(&endpoint.url).ok().map(Rc::new);
        let signing = signing_secrets(&endpoint);
        if let Some(entry) = self.endpoints.get_mut(endpoint.id.as_str()) {
            entry.target = target;
            entry.signing = signing;
            entry.ingest_secret = ingest_secret;
            entry.bucket = bucket;
            entry.endpoint = endpoint;
            let id = Rc::clone(&entry.id);
            if !entry.ready.is_empty() {
                self.active.insert(id);
            }
            return;
        }
        let id: Rc<str> = Rc::from(endpoint.id.as_str());
        let breaker = Breaker::new(&endpoint.circuit);
        let entry = EndpointEntry {
            endpoint,
            id: Rc::clone(&id),
            ingest_secret,
            bucket,
            ready: VecDeque::new(),
            in_flight: 0,
            breaker,
            target,
            signing,
        };
        self.endpoints.insert(id, entry);
    }

    /// Removes an endpoint with its events and idempotency keys.
    pub fn delete_endpoint(&mut self, id: &str) {
        if self.endpoints.remove(id).is_none() {
            return;
        }
        let before = self.events.len();
        let mut removed_non_terminal = 0;
        let mut removed_payload_bytes = 0;
        self.events.retain(|_, summary| {
            let keep = &*summary.endpoint_id != id;
            if !keep && !summary.status.is_terminal() {
                removed_non_terminal += 1;
            }
            if !keep {
                removed_payload_bytes += summary.payload.as_ref().map_or(0, |payload| payload.body.len());
            }
            keep
        });
        self.payload_memory_bytes = self.payload_memory_bytes.saturating_sub(removed_payload_bytes);
        if self.events.len() != before {
            self.terminal.retain(|event_id| self.events.contains_key(event_id));
        }
        self.non_terminal -= removed_non_terminal;
        self.active.remove(id);
        self.idempotency.forget_endpoint(id);
    }

    /// Tracks an accepted event and queues it for delivery.
    pub fn accept_event(&mut self, event_id: EventId, endpoint: &Rc<str>, event: EventReceived, lsn: u64) {
        let payload_bytes = event.payload.len();
        let keep = self.payload_memory_bytes.saturating_add(payload_bytes) <= self.limits.payload_memory_bytes_max;
        let payload = keep.then(|| {
            self.payload_memory_bytes += payload_bytes;
            Rc::new(Payload {
                body: Rc::from(event.payload),
                content_type: event.content_type,
                traceparent: event.traceparent,
            })
        });
        let summary = EventSummary {
            endpoint_id: Rc::clone(endpoint),
            received_at_ms: event.received_at_ms,
            updated_at_ms: event.received_at_ms,
            payload_bytes: u32::try_from(payload_bytes).unwrap_or(u32::MAX),
            idempotency_key: event.idempotency_key.map(String::into_boxed_str),
            status: EventStatus::Pending,
            lsn,
            attempts: Vec::new(),
            budget_used: 0,
            last_attempt: 0,
            next_attempt_at_ms: None,
            waiting: None,
            payload,
            last_excerpt: None,
        };
        self.events.insert(event_id, summary);
        self.non_terminal += 1;
        self.enqueue(endpoint, event_id);
    }

    fn enqueue(&mut self, endpoint: &Rc<str>, event_id: EventId) {
        if let Some(entry) = self.endpoints.get_mut(endpoint) {
            entry.ready.push_back(event_id);
            self.active.insert(Rc::clone(endpoint));
        }
    }

    /// True when the shard holds as much pending work as it may (ingest answers 503 E3002).
    pub fn events_full(&self) -> bool {
        self.non_terminal >= self.limits.events_max
    }

    /// Non-terminal events.
    pub fn pending_work(&self) -> usize {
        self.non_terminal
    }

    fn add_timer(&mut self, at_ms: u64, event: Option<EventId>) {
        self.timer_sequence += 1;
        self.timers.insert((at_ms, self.timer_sequence), event);
    }

    /// Moves every retry due at `now_ms` back into its endpoint's queue (and re-activates
    /// endpoints whose breaker wait ended). Returns the next due time, if any.
    pub fn release_due(&mut self, now_ms: u64) -> Option<u64> {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now_ms {
                return Some(entry.key().0);
            }
            let event = entry.remove();
            match event {
                Some(event_id) => self.release_retry(event_id),
                None => {
                    let waiting: Vec<Rc<str>> = self
                        .endpoints
                        .values()
                        .filter(|entry| !entry.ready.is_empty())
                        .map(|entry| Rc::clone(&entry.id))
                        .collect();
                    self.active.extend(waiting);
                }
            }
        }
        None
    }

    fn release_retry(&mut self, event_id: EventId) {
        let Some(summary) = self.events.get_mut(&event_id) else {
            return;
        };
        if summary.status != EventStatus::Retrying {
            return;
        }
        summary.status = EventStatus::Pending;
        let endpoint = Rc::clone(&summary.endpoint_id);
        self.enqueue(&endpoint, event_id);
    }

    /// The attempts the scheduler may start now, fairly across endpoints: each active endpoint
    /// gets up to its free in-flight slots, as its breaker allows.
    pub fn take_startable(&mut self, now_ms: u64) -> Vec<Start> {
        let mut starts = Vec::new();
        let active: Vec<Rc<str>> = self.active.drain().collect();
        for endpoint in active {
            let Some(entry) = self.endpoints.get_mut(&endpoint) else {
                continue;
            };
            if !entry.endpoint.enabled {
                continue;
            }
            let mut wait_until = None;
            while entry.in_flight < entry.endpoint.max_in_flight && !entry.ready.is_empty() {
                let probe = match entry.breaker.permit(now_ms) {
                    Permit::Attempt => false,
                    Permit::Probe => true,
                    Permit::Wait { until_ms } => {
                        wait_until = Some(until_ms);
                        break;
                    }
                };
                let Some(event_id) = entry.ready.pop_front() else {
                    break;
                };
                let Some(summary) = self.events.get_mut(&event_id) else {
                    continue;
                };
                let Some(payload) = summary.payload.clone() else {
                    // Its payload is on disk only: keep its place and ask for it to be read back.
                    entry.ready.push_front(event_id);
                    if self.reload_marked.insert(event_id) {
                        self.reload_wanted.push((event_id, summary.lsn));
                    }
                    break;
                };
                summary.status = EventStatus::Delivering;
                summary.waiting = None;
                summary.next_attempt_at_ms = None;
                summary.last_attempt += 1;
                entry.in_flight += 1;
                starts.push(Start {
                    event_id,
                    endpoint_id: Rc::clone(&endpoint),
                    n: summary.last_attempt,
                    probe,
                    payload,
                });
                if probe {
                    break;
                }
            }
            if let Some(until_ms) = wait_until {
                // The breaker holds the queue: show it on the waiting events, look again later.
                for event_id in entry.ready.iter().take(crate::limits::WAITING_MARKED_MAX) {
                    if let Some(summary) = self.events.get_mut(event_id) {
                        summary.waiting = Some("E2005");
                    }
                }
                self.add_timer(until_ms, None);
            }
        }
        starts
    }

    /// Applies an attempt's outcome (live or replayed). Live callers also release the in-flight
    /// slot and feed the breaker through [`ShardState::finish_live`].
    pub fn apply_attempt(&mut self, attempt: &Attempt) {
        let event_id = EventId(attempt.event_id);
        let Some(summary) = self.events.get_mut(&event_id) else {
            return;
        };
        if summary.status.is_terminal() && attempt.outcome != OUTCOME_DELIVERED {
            return;
        }
        let was_terminal = summary.status.is_terminal();
        if summary.attempts.len() >= crate::limits::ATTEMPTS_IN_MEMORY_MAX {
            summary.attempts.remove(0);
        }
        summary.attempts.push(AttemptSummary {
            n: attempt.n,
            at_ms: attempt.at_ms,
            status_code: attempt.status_code,
            latency_ms: attempt.latency_ms,
            error_code: attempt.error_code.as_deref().map(Box::from),
        });
        summary.last_attempt = summary.last_attempt.max(attempt.n);
        summary.budget_used += 1;
        summary.updated_at_ms = attempt.at_ms.saturating_add(u64::from(attempt.latency_ms));
        summary.last_excerpt = Some(attempt.response_excerpt.clone().into_boxed_slice());
        match attempt.outcome {
            OUTCOME_RETRYING => {
                summary.status = EventStatus::Retrying;
                summary.next_attempt_at_ms = attempt.next_attempt_at_ms;
                let due = attempt.next_attempt_at_ms.unwrap_or(attempt.at_ms);
                self.add_timer(due, Some(event_id));
            }
            OUTCOME_FAILED => self.make_terminal(event_id, EventStatus::Failed, was_terminal),
            _ => self.make_terminal(event_id, EventStatus::Delivered, was_terminal),
        }
    }

    fn make_terminal(&mut self, event_id: EventId, status: EventStatus, was_terminal: bool) {
        if let Some(summary) = self.events.get_mut(&event_id) {
            summary.status = status;
            summary.next_attempt_at_ms = None;
            summary.waiting = None;
            if let Some(payload) = summary.payload.take() {
                self.payload_memory_bytes = self.payload_memory_bytes.saturating_sub(payload.body.len());
            }
        }
        if !was_terminal {
            self.non_terminal = self.non_terminal.saturating_sub(1);
            self.terminal.push_back(event_id);
        }
        while self.terminal.len() > self.limits.terminal_events_max {
            if let Some(oldest) = self.terminal.pop_front() {
                self.events.remove(&oldest);
            }
        }
    }

    /// After a live attempt: frees its slot, feeds the breaker, re-activates the endpoint.
    pub fn finish_live(&mut self, endpoint: &Rc<str>, success: bool, probe: bool, now_ms: u64) {
        if let Some(entry) = self.endpoints.get_mut(endpoint) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            let policy = entry.endpoint.circuit.clone();
            entry.breaker.record(&policy, success, probe, now_ms);
            if !entry.ready.is_empty() {
                self.active.insert(Rc::clone(endpoint));
            }
        }
    }

    /// Puts an event back in its queue for a fresh round of attempts. `false` when it is unknown,
    /// in flight, or its payload is no longer in memory (the caller reloads it from the log).
    pub fn requeue(&mut self, event_id: EventId, at_ms: u64) -> bool {
        let Some(summary) = self.events.get_mut(&event_id) else {
            return false;
        };
        if summary.status == EventStatus::Delivering || summary.payload.is_none() {
            return false;
        }
        let was_terminal = summary.status.is_terminal();
        summary.status = EventStatus::Pending;
        summary.budget_used = 0;
        summary.next_attempt_at_ms = None;
        summary.updated_at_ms = at_ms;
        let endpoint = Rc::clone(&summary.endpoint_id);
        if was_terminal {
            self.terminal.retain(|id| *id != event_id);
            self.non_terminal += 1;
        }
        self.enqueue(&endpoint, event_id);
        true
    }

    /// LSN of the oldest non-terminal event's record: retention keeps every segment from it on.
    pub fn oldest_pending_lsn(&self) -> Option<u64> {
        if self.non_terminal == 0 {
            return None;
        }
        // Carried events hold old ids at new LSNs, so every waiting event is looked at.
        self.events.values().filter(|summary| !summary.status.is_terminal()).map(|summary| summary.lsn).min()
    }

    /// Up to `count_max` waiting events, not in flight, whose record lies below `lsn`: retention
    /// carries them forward so that their old segments can go.
    pub fn pinning_below(&self, lsn: u64, count_max: usize) -> Vec<(EventId, u64)> {
        self.events
            .iter()
            .filter(|(_, summary)| {
                summary.lsn < lsn && !summary.status.is_terminal() && summary.status != EventStatus::Delivering
            })
            .take(count_max)
            .map(|(event_id, summary)| (*event_id, summary.lsn))
            .collect()
    }

    /// The record that carries an event forward, from memory (`None` without its payload).
    pub fn carry(&self, event_id: EventId) -> Option<EventCarried> {
        let summary = self.events.get(&event_id)?;
        if summary.status.is_terminal() || summary.status == EventStatus::Delivering {
            return None;
        }
        let payload = summary.payload.as_ref()?;
        Some(EventCarried {
            event: EventReceived {
                event_id: event_id.0,
                endpoint_id: summary.endpoint_id.to_string(),
                received_at_ms: summary.received_at_ms,
                idempotency_key: summary.idempotency_key.as_deref().map(str::to_string),
                content_type: payload.content_type.clone(),
                traceparent: payload.traceparent.clone(),
                payload: payload.body.to_vec(),
            },
            last_attempt: summary.last_attempt,
            budget_used: summary.budget_used,
            next_attempt_at_ms: (summary.status == EventStatus::Retrying)
                .then_some(summary.next_attempt_at_ms)
                .flatten(),
        })
    }

    /// The event's record now lives at `lsn`.
    pub fn moved(&mut self, event_id: EventId, lsn: u64) {
        if let Some(summary) = self.events.get_mut(&event_id) {
            summary.lsn = lsn;
        }
    }

    /// Events waiting for their payload to be read back (taken by the scheduler).
    pub fn take_reload_wanted(&mut self, count_max: usize) -> Vec<(EventId, u64)> {
        let count = count_max.min(self.reload_wanted.len());
        self.reload_wanted.drain(..count).collect()
    }

    /// Restores the payload of an event read back from the log (a terminal one to be requeued,
    /// or a pending one whose payload did not fit the memory budget), and re-activates its
    /// endpoint.
    pub fn restore_payload(&mut self, event_id: EventId, event: EventReceived) {
        self.reload_marked.remove(&event_id);
        if let Some(summary) = self.events.get_mut(&event_id) {
            if summary.payload.is_some() {
                return;
            }
            self.payload_memory_bytes += event.payload.len();
            if !summary.status.is_terminal() {
                self.active.insert(Rc::clone(&summary.endpoint_id));
            }
            summary.payload = Some(Rc::new(Payload {
                body: Rc::from(event.payload),
                content_type: event.content_type,
                traceparent: event.traceparent,
            }));
        }
    }

    /// Events of an endpoint in the failed state.
    pub fn failed_events(&self, endpoint: &str) -> Vec<(EventId, u64)> {
        self.events
            .iter()
            .filter(|(_, summary)| &*summary.endpoint_id == endpoint && summary.status == EventStatus::Failed)
            .map(|(event_id, summary)| (*event_id, summary.lsn))
            .collect()
    }

    /// Live state of an endpoint for the admin API.
    pub fn live(&self, endpoint: &str, now_ms: u64) -> crate::endpoint::LiveState {
        self.endpoints.get(endpoint).map_or_else(crate::endpoint::LiveState::default, |entry| {
            crate::endpoint::LiveState {
                circuit_state: entry.breaker.state_name(now_ms),
                queue_depth: entry.ready.len(),
                in_flight: entry.in_flight as usize,
            }
        })
    }
}

fn signing_secrets(endpoint: &Endpoint) -> Vec<(Secret, u64)> {
    let current = Secret::parse(&endpoint.secret).map(|secret| (secret, u64::MAX));
    let previous = endpoint
        .previous_secret
        .as_ref()
        .and_then(|(secret, until_ms)| Secret::parse(secret).map(|secret| (secret, *until_ms)));
    current.into_iter().chain(previous).collect()
}

/// The admin JSON view of an event in memory.
pub fn event_json(event_id: EventId, summary: &EventSummary) -> Value {
    let excerpt = summary.last_excerpt.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    EventView {
        event_id: &event_id.to_string(),
        endpoint_id: &summary.endpoint_id,
        status: summary.status.as_str(),
        attempts: summary
            .attempts
            .iter()
            .map(|attempt| {
                attempt_json(
                    attempt.n,
                    attempt.at_ms,
                    attempt.status_code,
                    attempt.latency_ms,
                    attempt.error_code.as_deref(),
                )
            })
            .collect(),
        attempt_count: summary.last_attempt,
        next_attempt_at_ms: summary.next_attempt_at_ms,
        waiting_reason: summary.waiting,
        last_response_excerpt: excerpt.as_deref(),
        received_at_ms: summary.received_at_ms,
        updated_at_ms: summary.updated_at_ms,
        payload_bytes: summary.payload_bytes,
        idempotency_key: summary.idempotency_key.as_deref(),
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
