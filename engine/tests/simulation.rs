//! The deterministic simulation of a shard, in the manner of TigerBeetle's VOPR: one seed drives
//! the real state machine and its real log (a temporary directory, real files and fsyncs) through
//! random ingests, attempt outcomes, clock jumps, operator redrives, endpoint changes, retention
//! passes, tiny payload budgets, crashes at random points (between append and fsync included,
//! with torn tails) and storage failures (a write or fsync failing at a random point, after
//! which the shard reopens its log in place), and after every step checks it against a plain
//! model:
//!
//! - no acknowledged event vanishes: each is delivered, failed, or waiting in a queue;
//! - no event has two attempts in flight, and attempts are numbered without gaps;
//! - FIFO per endpoint while `max_in_flight` is 1: first attempts start in ingest order;
//! - a delivered or failed event is attempted again only after a redrive; after a crash only
//!   attempts that were in flight are made again (an attempt number is never repeated once its
//!   outcome was recorded);
//! - a repeated idempotency key within its window answers the first event, across crashes;
//! - an ingest or outcome a storage failure refused is not kept: after the reopen the event is
//!   unknown (the ingest) or waits for the same attempt again (the outcome);
//! - replaying the log gives exactly the live state (the durable view of both compared);
//! - the state's own invariants hold: every queued event waits in exactly one place, every
//!   endpoint with queued events has a wake-up, payload bytes stay within the budget.
//!
//! `KAPSEL_SIM_SEEDS=n` runs n seeds (default 24), `KAPSEL_SIM_SEED=s` replays one,
//! `KAPSEL_SIM_STEPS` sets steps per seed (default 400). A failure names its seed and step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::{env_number, poll_once, response, Random};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kapsel_engine::delivery::complete_attempt;
use kapsel_engine::ids::EventId;
use kapsel_engine::records::{Record, OUTCOME_DELIVERED, OUTCOME_FAILED};
use kapsel_engine::shard::{Accepted, Ingest, Shard};
use kapsel_engine::state::{ReadRequest, ShardState, Start, StateLimits};
use kapsel_engine::EngineError;
use kapsel_http::{OutboundResponse, SendError};
use kapsel_wal::{Clock, IoBackend, IoFaults, Options};

/// What one seed runs with.
#[derive(Clone, Debug)]
struct Params {
    endpoints: Vec<String>,
    limits: StateLimits,
    payload_bytes_max: usize,
    segment_bytes: u64,
    retention_ms: u64,
}

impl Params {
    fn new(random: &mut Random) -> Self {
        let count = 2 + random.below(3) as usize;
        let budgets = [300, 2_000, 20_000, 1 << 20];
        Self {
            endpoints: (0..count).map(|index| format!("ep{index}")).collect(),
            limits: StateLimits {
                events_max: 1_000_000,
                idempotency_keys_max: 1_000_000,
                idempotency_window_ms: 60_000,
                payload_memory_bytes_max: budgets[random.below(4) as usize],
                terminal_events_max: if random.chance(0.3) { 4 } else { 100_000 },
            },
            payload_bytes_max: [40, 400, 1500][random.below(3) as usize],
            segment_bytes: kapsel_wal::limits::SEGMENT_BYTES_MIN,
            retention_ms: 60_000,
        }
    }
}

/// How a destination behaves in this seed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mood {
    Healthy,
    Flaky,
    Dead,
}

#[derive(Debug)]
struct ModelEvent {
    endpoint: String,
    terminal: bool,
    /// Attempts whose outcome is durable.
    recorded: u32,
    /// Redriven while terminal: may be attempted again.
    redriven: bool,
    /// First attempts only start in ingest order while this is true.
    fifo: bool,
}

#[derive(Debug)]
struct ModelEndpoint {
    exists: bool,
    /// `max_in_flight` has been 1 since it was created.
    fifo: bool,
    last_first_attempt: Option<EventId>,
    mood: Mood,
    /// Outcomes recorded while its breaker was closed (since it was created or last closed).
    outcomes_while_closed: u32,
}

#[derive(Debug, Default)]
struct Model {
    events: BTreeMap<EventId, ModelEvent>,
    keys: HashMap<(String, String), (EventId, u64)>,
    endpoints: BTreeMap<String, ModelEndpoint>,
}

/// A seed's run: the directory, the clock, the model and what is in flight.
struct Sim {
    random: Random,
    params: Params,
    directory: PathBuf,
    clock: Arc<AtomicU64>,
    now: u64,
    step: usize,
    steps: usize,
    model: Model,
    in_flight: Vec<(Start, u64)>,
    reads: Vec<ReadRequest>,
    /// Records durable before the crash: a torn tail may cut only what follows them.
    durable_lsn: u64,
    /// An ingest or outcome appended but not awaited when the crash came.
    unacknowledged: Option<Unacknowledged>,
    /// The last phase: every destination answers 200.
    finishing: bool,
    /// Faults injected into the log's file layer.
    faults: Arc<IoFaults>,
    /// True while a storage fault is armed: appends may be refused with E3003.
    faulting: bool,
    log: Vec<String>,
}

#[derive(Debug)]
enum Unacknowledged {
    Ingest { endpoint: String, key: Option<String> },
    Attempt { event_id: EventId },
}

/// Why a step failed.
type Failure = String;

fn endpoint_body(random: &mut Random, id: &str, max_in_flight: u32) -> String {
    format!(
        r#"{{"url":"http://sim.invalid/{id}","max_in_flight":{max_in_flight},"retry":{{"initial_delay_ms":{},"multiplier":2,"max_attempts":{},"jitter":0.2,"max_delay_ms":600000}},"circuit":{{"cooldown_ms":1000,"cooldown_max_ms":8000}}}}"#,
        100 + random.below(2000),
        1 + random.below(6)
    )
}

impl Sim {
    fn new(seed: u64, directory: PathBuf, steps: usize) -> Self {
        let mut random = Random(seed);
        let params = Params::new(&mut random);
        let start = 1_700_000_000_000 + random.below(1 << 30);
        let mut model = Model::default();
        for id in &params.endpoints {
            let mood = match random.below(5) {
                0 => Mood::Dead,
                1 | 2 => Mood::Flaky,
                _ => Mood::Healthy,
            };
            model.endpoints.insert(
                id.clone(),
                ModelEndpoint { exists: false, fifo: false, last_first_attempt: None, mood, outcomes_while_closed: 0 },
            );
        }
        Self {
            random,
            params,
            directory,
            clock: Arc::new(AtomicU64::new(start)),
            now: start,
            step: 0,
            steps,
            model,
            in_flight: Vec::new(),
            reads: Vec::new(),
            durable_lsn: 0,
            unacknowledged: None,
            finishing: false,
            faults: Arc::new(IoFaults::default()),
            faulting: false,
            log: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        if self.log.len() >= 40 {
            self.log.remove(0);
        }
        self.log.push(format!("step {}: {what}", self.step));
    }

    fn options(&self) -> Options {
        let clock = Arc::clone(&self.clock);
        Options {
            backend: IoBackend::Thread,
            segment_bytes: self.params.segment_bytes,
            clock: Clock::new(move || clock.load(Ordering::SeqCst)),
            faults: Some(Arc::clone(&self.faults)),
            ..Options::default()
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.clock.store(self.now, Ordering::SeqCst);
    }

    /// One life: from opening the log to the next crash (or the last step).
    async fn life(&mut self) -> Result<(), Failure> {
        let (shard, _) = Shard::open(0, &self.directory, self.options(), self.params.limits, self.now)
            .await
            .map_err(|error| format!("recovery failed: {error}"))?;
        let shard = Rc::new(shard);
        self.after_recovery(&shard)?;
        self.check(&shard)?;
        while self.step < self.steps {
            self.step += 1;
            if self.one_step(&shard).await? {
                // The crash: the log stops without writing what is queued; everything else the
                // life held goes with the runtime.
                let Ok(shard) = Rc::try_unwrap(shard) else {
                    return Err("the shard is still shared at the crash".into());
                };
                shard.into_wal().unwrap().crash().await;
                return Ok(());
            }
            self.check(&shard)?;
        }
        self.finish(&shard).await
    }

    async fn one_step(&mut self, shard: &Rc<Shard>) -> Result<bool, Failure> {
        match self.random.below(100) {
            0..=29 => self.ingest(shard).await?,
            30..=47 => self.schedule(shard)?,
            48..=55 => self.complete_read(shard),
            56..=73 => self.complete_attempt(shard).await?,
            74..=83 => {
                let ms = if self.random.chance(0.1) { self.random.below(3_600_000) } else { self.random.below(3_000) };
                self.advance(ms);
                self.note(format!("clock +{ms} ms"));
            }
            84..=86 => self.retry_event(shard).await?,
            87 => self.retry_failed(shard).await?,
            88..=90 => self.change_endpoint(shard).await?,
            91 if self.random.chance(0.5) => self.delete_endpoint(shard).await?,
            91 => self.ingest_racing_a_deletion(shard).await?,
            92..=94 => self.retention(shard).await?,
            95 => self.storage_fault(shard).await?,
            _ => {
                self.crash(shard).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn existing_endpoint(&mut self) -> Option<String> {
        let existing: Vec<String> =
            self.model.endpoints.iter().filter(|(_, endpoint)| endpoint.exists).map(|(id, _)| id.clone()).collect();
        if existing.is_empty() {
            return None;
        }
        Some(existing[self.random.below(existing.len() as u64) as usize].clone())
    }

    async fn create_endpoint(&mut self, shard: &Shard, id: &str) -> Result<(), Failure> {
        let max_in_flight = [1, 1, 2, 4][self.random.below(4) as usize];
        let body = endpoint_body(&mut self.random, id, max_in_flight);
        match shard.put_endpoint(id, body.as_bytes(), &kapsel_http::DestinationPolicy::default(), self.now).await {
            Ok(_) => {}
            Err(EngineError::Storage(error)) if self.faulting => {
                self.note(format!("create {id} refused by the storage fault: {error}"));
                return Ok(());
            }
            Err(error) => return Err(format!("creating {id}: {error}")),
        }
        let endpoint = self.model.endpoints.get_mut(id).ok_or("unknown endpoint")?;
        endpoint.exists = true;
        endpoint.fifo = max_in_flight == 1;
        endpoint.last_first_attempt = None;
        endpoint.outcomes_while_closed = 0;
        self.note(format!("create {id} max_in_flight {max_in_flight}"));
        Ok(())
    }

    async fn ingest(&mut self, shard: &Shard) -> Result<(), Failure> {
        let id = self.params.endpoints[self.random.below(self.params.endpoints.len() as u64) as usize].clone();
        if !self.model.endpoints[&id].exists && self.random.chance(0.7) {
            return self.create_endpoint(shard, &id).await;
        }
        let key = self.random.chance(0.3).then(|| format!("key-{}", self.random.below(12)));
        let size = 1 + self.random.below(self.params.payload_bytes_max as u64) as usize;
        let payload: Vec<u8> = (0..size).map(|index| b'a' + ((index + self.step) % 26) as u8).collect();
        let ingest = Ingest {
            endpoint_id: id.clone(),
            idempotency_key: key.clone(),
            content_type: Some("application/json".into()),
            traceparent: None,
            tracestate: None,
            event_type: "event".into(),
            headers: Default::default(),
            bearer: kapsel_engine::shard::IngestBearer::Operator,
            payload,
        };
        let outcome = shard.ingest(ingest, self.now).await;
        let exists = self.model.endpoints[&id].exists;
        let remembered = key.as_ref().and_then(|key| {
            self.model
                .keys
                .get(&(id.clone(), key.clone()))
                .filter(|(_, at)| at + self.params.limits.idempotency_window_ms > self.now)
                .map(|(event_id, _)| *event_id)
        });
        self.note(format!("ingest {id} key {key:?} {size} bytes: {outcome:?}"));
        match (outcome, exists, remembered) {
            (Err(EngineError::NotFound(_)), false, _) => Ok(()),
            // Refused: it must not turn up later (checked after the reopen and by every check).
            (Err(EngineError::Storage(_)), _, _) if self.faulting => Ok(()),
            (Ok(Accepted::Duplicate(event_id)), true, Some(first)) if event_id == first => Ok(()),
            (Ok(Accepted::Received(event_id)), true, None) => {
                self.adopt(&id, key, event_id);
                Ok(())
            }
            (outcome, exists, remembered) => {
                Err(format!("ingest to {id} (exists {exists}, key remembered as {remembered:?}) gave {outcome:?}"))
            }
        }
    }

    /// An event the shard accepted joins the model.
    fn adopt(&mut self, endpoint: &str, key: Option<String>, event_id: EventId) {
        let fifo = self.model.endpoints[endpoint].fifo;
        self.model.events.insert(
            event_id,
            ModelEvent { endpoint: endpoint.to_string(), terminal: false, recorded: 0, redriven: false, fifo },
        );
        if let Some(key) = key {
            self.model.keys.insert((endpoint.to_string(), key), (event_id, event_id.unix_ms()));
        }
    }

    fn schedule(&mut self, shard: &Shard) -> Result<(), Failure> {
        let plan = shard.state().borrow_mut().schedule(self.now);
        for start in plan.starts {
            self.check_start(&start)?;
            self.note(format!("start {} attempt {} probe {}", start.event_id, start.n, start.probe));
            self.in_flight.push((start, self.now));
        }
        for read in plan.reads {
            self.note(format!("read {} events for {}", read.events.len(), read.endpoint_id));
            self.reads.push(read);
        }
        Ok(())
    }

    /// The model's rules for an attempt that starts.
    fn check_start(&mut self, start: &Start) -> Result<(), Failure> {
        if self.in_flight.iter().any(|(other, _)| other.event_id == start.event_id) {
            return Err(format!("{} started while an attempt of it is in flight", start.event_id));
        }
        let event =
            self.model.events.get_mut(&start.event_id).ok_or(format!("{} started but unknown", start.event_id))?;
        if event.terminal {
            return Err(format!("{} is delivered or failed and was attempted again without a redrive", start.event_id));
        }
        if start.n != event.recorded + 1 {
            return Err(format!(
                "{} attempt {} started after {} recorded attempts (an attempt made again or skipped)",
                start.event_id, start.n, event.recorded
            ));
        }
        let fifo = event.fifo && start.n == 1;
        event.redriven = false;
        let endpoint = self.model.endpoints.get_mut(&event.endpoint).ok_or("endpoint of an event unknown")?;
        if fifo && endpoint.fifo {
            if endpoint.last_first_attempt.is_some_and(|last| start.event_id < last) {
                return Err(format!(
                    "FIFO broken on {}: {} started after {:?}",
                    event.endpoint, start.event_id, endpoint.last_first_attempt
                ));
            }
            endpoint.last_first_attempt = Some(start.event_id);
        }
        Ok(())
    }

    fn complete_read(&mut self, shard: &Shard) {
        if self.reads.is_empty() {
            return;
        }
        let read = self.reads.remove(self.random.below(self.reads.len() as u64) as usize);
        let mut loaded = kapsel_engine::readback::load(&self.directory, &read.events);
        if self.random.chance(0.05) {
            // A failing disk: the read is retried later.
            for (_, result) in &mut loaded {
                *result = Err("injected read failure".into());
            }
        }
        self.note(format!("read back {} events for {}", loaded.len(), read.endpoint_id));
        shard.complete_read_back(read, loaded, self.now);
    }

    fn outcome(&mut self, endpoint: &str) -> Result<OutboundResponse, SendError> {
        if self.finishing {
            return response(200, None);
        }
        let mood = self.model.endpoints.get(endpoint).map_or(Mood::Healthy, |endpoint| endpoint.mood);
        let roll = self.random.below(100);
        match mood {
            Mood::Dead => Err(SendError::Connect("connection refused".into())),
            // A fifth of attempts fail at random, the rest succeed: noise, not an outage.
            Mood::Flaky if roll < 20 => response(503, None),
            Mood::Flaky => response(200, None),
            Mood::Healthy => match roll {
                0..=69 => response(200, None),
                70..=75 => response(400, None),
                76 => response(410, None),
                77..=84 => response(500, None),
                85..=88 => response(429, Some("2")),
                89..=93 => Err(SendError::Timeout),
                _ => Err(SendError::Connect("reset".into())),
            },
        }
    }

    async fn complete_attempt(&mut self, shard: &Shard) -> Result<(), Failure> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let (start, started) = self.in_flight.remove(self.random.below(self.in_flight.len() as u64) as usize);
        let result = self.outcome(&start.endpoint_id);
        let jitter = self.random.unit_signed();
        let closed_before = self.breaker_closed(shard, &start.endpoint_id);
        let outcome = complete_attempt(shard, &start, &result, started, self.now, jitter).await;
        let recorded = shard.state().borrow().events.get(&start.event_id).is_none_or(|event| event.attempts >= start.n);
        if !recorded {
            // A storage failure refused the outcome: the event waits for the same attempt again.
            if !self.faulting {
                return Err(format!("{} attempt {}'s outcome was not recorded", start.event_id, start.n));
            }
            self.note(format!("{} attempt {}'s outcome refused by the storage fault", start.event_id, start.n));
            return Ok(());
        }
        self.check_breaker(shard, &start.endpoint_id, closed_before)?;
        self.note(format!(
            "{} attempt {} → {:?} → outcome {outcome}",
            start.event_id,
            start.n,
            result.as_ref().map(|r| r.status)
        ));
        if let Some(event) = self.model.events.get_mut(&start.event_id) {
            event.recorded = start.n;
            event.terminal = matches!(outcome, OUTCOME_DELIVERED | OUTCOME_FAILED);
        }
        if matches!(result, Ok(OutboundResponse { status: 410, .. })) {
            self.note(format!("{} disabled by 410", start.endpoint_id));
        }
        Ok(())
    }

    fn breaker_closed(&self, shard: &Shard, endpoint: &str) -> bool {
        let state = shard.state().borrow();
        state
            .endpoints
            .get(endpoint)
            .is_some_and(|entry| entry.breaker.state() == kapsel_engine::breaker::State::Closed)
    }

    /// The breaker's promise: a dead destination opens it within five attempts, and a
    /// destination failing a fifth of attempts at random never opens it once twenty outcomes
    /// have shown what it is like (before that, five failures in a row look like death).
    fn check_breaker(&mut self, shard: &Shard, endpoint: &str, closed_before: bool) -> Result<(), Failure> {
        let closed_after = self.breaker_closed(shard, endpoint);
        let Some(model) = self.model.endpoints.get_mut(endpoint) else {
            return Ok(());
        };
        if !model.exists || !closed_before {
            return Ok(());
        }
        model.outcomes_while_closed += 1;
        match model.mood {
            Mood::Dead if closed_after && model.outcomes_while_closed >= 5 && !self.finishing => Err(format!(
                "{endpoint} is dead and its breaker is still closed after {} failures",
                model.outcomes_while_closed
            )),
            Mood::Flaky if !closed_after && model.outcomes_while_closed > 20 && !self.finishing => Err(format!(
                "{endpoint} fails a fifth of attempts at random and noise opened its breaker after {} outcomes",
                model.outcomes_while_closed
            )),
            _ => {
                if !closed_after {
                    model.outcomes_while_closed = 0;
                }
                Ok(())
            }
        }
    }

    async fn retry_event(&mut self, shard: &Shard) -> Result<(), Failure> {
        let candidates: Vec<EventId> = self.model.events.keys().copied().collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let event_id = candidates[self.random.below(candidates.len() as u64) as usize];
        let in_flight = self.in_flight.iter().any(|(start, _)| start.event_id == event_id);
        let known = shard.state().borrow().events.contains_key(&event_id);
        let outcome = shard.retry_event(event_id, self.now).await;
        self.note(format!("retry {event_id}: {outcome:?}"));
        match outcome {
            Ok(json) if json["status"] == "delivering" && in_flight => {}
            Ok(json) if json["status"] == "pending" && !in_flight => {
                if let Some(event) = self.model.events.get_mut(&event_id) {
                    event.redriven |= event.terminal;
                    event.terminal = false;
                    event.fifo = false;
                }
            }
            // Evicted from the lookup window, or its payload went with retention.
            Err(EngineError::NotFound(_)) if !known || self.model.events[&event_id].terminal => {}
            other => return Err(format!("retry of {event_id} (in flight {in_flight}) gave {other:?}")),
        }
        Ok(())
    }

    async fn retry_failed(&mut self, shard: &Shard) -> Result<(), Failure> {
        let Some(id) = self.existing_endpoint() else {
            return Ok(());
        };
        let failed: Vec<EventId> =
            shard.state().borrow().failed_events(&id).into_iter().map(|(event_id, _)| event_id).collect();
        let outcome = shard.retry_failed(&id, self.now).await.map_err(|error| format!("retry-failed {id}: {error}"))?;
        self.note(format!("retry-failed {id}: {outcome}"));
        let state = shard.state().borrow();
        for event_id in failed {
            if state.events.get(&event_id).is_some_and(|event| event.is_waiting()) {
                if let Some(event) = self.model.events.get_mut(&event_id) {
                    event.redriven = true;
                    event.terminal = false;
                    event.fifo = false;
                }
            }
        }
        Ok(())
    }

    async fn change_endpoint(&mut self, shard: &Shard) -> Result<(), Failure> {
        let Some(id) = self.existing_endpoint() else {
            return Ok(());
        };
        match self.random.below(3) {
            0 => {
                let enabled = self.random.chance(0.6);
                shard.set_enabled(&id, enabled, self.now).await.map_err(|error| format!("enable {id}: {error}"))?;
                self.note(format!("{id} enabled {enabled}"));
            }
            1 => {
                // Secret rotation and a new retry policy; max_in_flight kept.
                let max_in_flight =
                    shard.state().borrow().endpoints.get(&id).map_or(1, |entry| entry.endpoint.max_in_flight);
                let body = endpoint_body(&mut self.random, &id, max_in_flight);
                let body = body.replace(r#""url""#, r#""secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","url""#);
                shard
                    .put_endpoint(&id, body.as_bytes(), &kapsel_http::DestinationPolicy::default(), self.now)
                    .await
                    .map_err(|error| format!("update {id}: {error}"))?;
                self.note(format!("{id} rotated its secret"));
            }
            _ => {
                let max_in_flight = [1, 3][self.random.below(2) as usize];
                let body = endpoint_body(&mut self.random, &id, max_in_flight);
                shard
                    .put_endpoint(&id, body.as_bytes(), &kapsel_http::DestinationPolicy::default(), self.now)
                    .await
                    .map_err(|error| format!("update {id}: {error}"))?;
                if let Some(endpoint) = self.model.endpoints.get_mut(&id) {
                    endpoint.fifo &= max_in_flight == 1;
                }
                self.note(format!("{id} max_in_flight {max_in_flight}"));
            }
        }
        Ok(())
    }

    async fn delete_endpoint(&mut self, shard: &Shard) -> Result<(), Failure> {
        let Some(id) = self.existing_endpoint() else {
            return Ok(());
        };
        self.delete(shard, id).await
    }

    async fn delete(&mut self, shard: &Shard, id: String) -> Result<(), Failure> {
        shard.delete_endpoint(&id, self.now).await.map_err(|error| format!("delete {id}: {error}"))?;
        self.model.events.retain(|_, event| event.endpoint != id);
        self.model.keys.retain(|(endpoint, _), _| *endpoint != id);
        self.in_flight.retain(|(start, _)| *start.endpoint_id != *id);
        if let Some(endpoint) = self.model.endpoints.get_mut(&id) {
            endpoint.exists = false;
        }
        self.note(format!("delete {id}"));
        Ok(())
    }

    /// An ingest whose record is appended, then its endpoint's deletion, before the ingest's
    /// fsync returned: the event must not survive its endpoint, and the sender must not be told
    /// it was accepted.
    async fn ingest_racing_a_deletion(&mut self, shard: &Rc<Shard>) -> Result<(), Failure> {
        let Some(id) = self.existing_endpoint() else {
            return Ok(());
        };
        let ingest = Ingest {
            endpoint_id: id.clone(),
            idempotency_key: None,
            content_type: None,
            traceparent: None,
            tracestate: None,
            event_type: "event".into(),
            headers: Default::default(),
            bearer: kapsel_engine::shard::IngestBearer::Operator,
            payload: b"racing".to_vec(),
        };
        let racing = Rc::clone(shard);
        let now = self.now;
        let ingest = monoio::spawn(async move { racing.ingest(ingest, now).await });
        // Let the ingest append its record before the deletion appends its own.
        monoio::time::sleep(Duration::ZERO).await;
        self.delete(shard, id.clone()).await?;
        let outcome = ingest.await;
        self.note(format!("ingest racing the deletion of {id}: {outcome:?}"));
        // Either the deletion came first in the log (404), or the event did and the deletion
        // removed it with the rest of its endpoint's events; never an event left behind.
        match outcome {
            Err(EngineError::NotFound(_)) => Ok(()),
            Ok(Accepted::Received(event_id)) if !shard.state().borrow().events.contains_key(&event_id) => Ok(()),
            other => Err(format!("an ingest racing its endpoint's deletion gave {other:?}")),
        }
    }

    async fn retention(&mut self, shard: &Shard) -> Result<(), Failure> {
        if self.random.chance(0.3) {
            shard.wal().unwrap().seal().await.map_err(|error| format!("seal: {error}"))?;
        }
        // A seal a full segment triggered may still be under way (it is written after the batch
        // that filled the segment was acknowledged); let it finish, so the bound below is the
        // one the pass sees.
        shard.wal().unwrap().flush().await.map_err(|error| format!("flush: {error}"))?;
        let age = self.params.retention_ms;
        let to_carry = kapsel_engine::retention::to_carry(shard, age, self.now);
        let removed = kapsel_engine::retention::pass(shard, age, self.now)
            .await
            .map_err(|error| format!("retention pass: {error}"))?;
        self.note(format!("retention carried {to_carry} and removed {removed:?}"));
        // Everything a pass could carry (well within its bound and the log's queue) was carried:
        // no waiting event is left on a segment old enough to go.
        let left = kapsel_engine::retention::to_carry(shard, age, self.now);
        if to_carry <= 64 && left > 0 {
            return Err(format!("{left} of {to_carry} waiting events were not carried forward"));
        }
        Ok(())
    }

    /// A storage failure at a random point (a batch's write or fsync, a seal, the chain, a
    /// directory fsync) while ingests and outcomes go on; then the shard reopens its log in
    /// place, as its recovery task does, and the run goes on with the same shard. The checks
    /// after the step compare the live state with a replay of what is on disk.
    async fn storage_fault(&mut self, shard: &Shard) -> Result<(), Failure> {
        let countdown = 1 + self.random.below(4);
        let fsync = self.random.chance(0.5);
        if fsync {
            self.faults.fail_sync_after(countdown);
        } else {
            self.faults.fail_write_after(countdown);
        }
        self.note(format!("storage fault armed: {} number {countdown}", if fsync { "fsync" } else { "write" }));
        self.faulting = true;
        for _ in 0..1 + self.random.below(6) {
            if self.random.chance(0.5) {
                self.ingest(shard).await?;
            } else {
                self.schedule(shard)?;
                self.complete_attempt(shard).await?;
            }
        }
        self.faults.fail_sync_after(0);
        self.faults.fail_write_after(0);
        if shard.wal().unwrap().is_poisoned() {
            if shard.wal().unwrap().append(1, b"refused").is_ok() {
                return Err("a poisoned log accepted an append".into());
            }
            shard.recover_log().await.map_err(|error| format!("reopening the log: {error}"))?;
            self.note("log reopened in place".into());
        }
        self.faulting = false;
        Ok(())
    }

    /// A crash, sometimes with an ingest or an attempt's outcome appended but not answered:
    /// either it never reached the disk, or its batch was written and fsynced but the crash came
    /// before anyone was told (the torn tail may still cut it, as a crash in mid-write would).
    async fn crash(&mut self, shard: &Shard) {
        let durable_before = shard.wal().unwrap().durable_lsn();
        let written = self.random.chance(0.5);
        match self.random.below(3) {
            0 => {
                if let Some(id) = self.existing_endpoint() {
                    let key = self.random.chance(0.5).then(|| format!("key-{}", self.random.below(12)));
                    let ingest = Ingest {
                        endpoint_id: id.clone(),
                        idempotency_key: key.clone(),
                        content_type: None,
                        traceparent: None,
                        tracestate: None,
                        event_type: "event".into(),
                        headers: Default::default(),
                        bearer: kapsel_engine::shard::IngestBearer::Operator,
                        payload: b"unacknowledged".to_vec(),
                    };
                    poll_once(shard.ingest(ingest, self.now));
                    self.unacknowledged = Some(Unacknowledged::Ingest { endpoint: id, key });
                }
            }
            1 if !self.in_flight.is_empty() => {
                let (start, started) = self.in_flight.remove(0);
                let result = self.outcome(&start.endpoint_id);
                poll_once(complete_attempt(shard, &start, &result, started, self.now, 0.0));
                self.unacknowledged = Some(Unacknowledged::Attempt { event_id: start.event_id });
            }
            _ => {}
        }
        if written && self.unacknowledged.is_some() {
            let _ = shard.wal().unwrap().flush().await;
        }
        self.durable_lsn = durable_before;
        self.note(format!("crash ({:?}, written {written})", self.unacknowledged));
        // Attempts in flight are lost; their events are attempted again after recovery.
        self.in_flight.clear();
        self.reads.clear();
    }

    /// After the process is gone: the newest segment may lose anything after its last durable
    /// record (a torn tail).
    fn tear_tail(&mut self) -> Result<(), Failure> {
        let segments = kapsel_wal::scan::list_segments(&self.directory).map_err(|error| error.to_string())?;
        let Some((_, path)) = segments.last() else {
            return Ok(());
        };
        let bytes = std::fs::read(path).map_err(|error| error.to_string())?;
        let Ok(scan) = kapsel_wal::scan::scan_segment(&bytes) else {
            return Ok(());
        };
        let durable_end = scan
            .frames
            .iter()
            .filter(|frame| frame.lsn <= self.durable_lsn)
            .map(|frame| (frame.offset + frame.length) as u64)
            .max()
            .unwrap_or(kapsel_wal::frame::SEGMENT_HEADER_BYTES as u64)
            .max(scan.seal.as_ref().map_or(0, |_| bytes.len() as u64));
        let length = bytes.len() as u64;
        if length > durable_end && self.random.chance(0.5) {
            let cut = durable_end + self.random.below(length - durable_end + 1);
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(cut))
                .map_err(|error| error.to_string())?;
            self.note(format!("torn tail: {} cut at {cut} of {length} (durable up to {durable_end})", path.display()));
        }
        Ok(())
    }

    /// What survived a crash: every acknowledged event; an unacknowledged one may or may not.
    fn after_recovery(&mut self, shard: &Shard) -> Result<(), Failure> {
        let state = shard.state().borrow();
        match self.unacknowledged.take() {
            Some(Unacknowledged::Ingest { endpoint, key }) => {
                let known: BTreeSet<EventId> = self.model.events.keys().copied().collect();
                let new: Vec<EventId> = state
                    .events
                    .keys()
                    .filter(|event_id| {
                        !known.contains(event_id) && state.endpoint_of(&state.events[*event_id]) == endpoint
                    })
                    .copied()
                    .collect();
                drop(state);
                match new.as_slice() {
                    [] => {}
                    [event_id] => self.adopt(&endpoint, key, *event_id),
                    more => return Err(format!("recovery found unknown events {more:?}")),
                }
            }
            Some(Unacknowledged::Attempt { event_id }) => {
                if let (Some(event), Some(model)) = (state.events.get(&event_id), self.model.events.get_mut(&event_id))
                {
                    if event.attempts == model.recorded + 1 {
                        model.recorded = event.attempts;
                        model.terminal = event.status.is_terminal();
                    }
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Every check, after every step.
    fn check(&self, shard: &Shard) -> Result<(), Failure> {
        let state = shard.state().borrow();
        state.check(self.now)?;
        for (event_id, model) in &self.model.events {
            match state.events.get(event_id) {
                None if model.terminal => {}
                None => return Err(format!("acknowledged event {event_id} vanished ({model:?})")),
                Some(event) if event.status.is_terminal() != model.terminal => {
                    return Err(format!("{event_id} is {:?} but the model says {model:?}", event.status))
                }
                Some(event) if event.attempts != model.recorded && !event.in_flight => {
                    return Err(format!("{event_id} has {} attempts, the model {}", event.attempts, model.recorded))
                }
                Some(_) => {}
            }
        }
        for (event_id, event) in state.events.iter() {
            if event.is_waiting() && !self.model.events.contains_key(event_id) {
                return Err(format!("{event_id} waits in the shard but was never acknowledged"));
            }
        }
        self.compare_with_replay(&state, shard.wal().unwrap().directory())
    }

    /// Replays the log as it is on disk into a fresh state and compares the durable views.
    fn compare_with_replay(&self, live: &ShardState, directory: &Path) -> Result<(), Failure> {
        let mut replayed = ShardState::new(0, self.params.limits);
        kapsel_engine::snapshot::load_into(&mut replayed, directory)?;
        let applied = live.applied_lsn();
        let mut error = None;
        kapsel_wal::read::for_each(directory, &mut |record| {
            if record.lsn > applied || error.is_some() {
                return;
            }
            match Record::decode(record.kind, record.body) {
                Ok(decoded) => replayed.apply(record.lsn, record.position, decoded, self.now),
                Err(decode) => error = Some(format!("record {}: {decode}", record.lsn)),
            }
        })
        .map_err(|error| format!("reading the log back: {error}"))?;
        if let Some(error) = error {
            return Err(error);
        }
        let first_lsn =
            kapsel_wal::tail::first_lsn(directory).map_err(|error| error.to_string())?.unwrap_or(applied + 1);
        let in_flight: BTreeSet<EventId> = self.in_flight.iter().map(|(start, _)| start.event_id).collect();
        let mine = live.durable_view(first_lsn, &in_flight, self.now);
        let theirs = replayed.durable_view(first_lsn, &in_flight, self.now);
        match mine.difference(&theirs) {
            Some(difference) => Err(format!("live state and replay differ: {difference}")),
            None => Ok(()),
        }
    }

    /// The end of the run: deliver everything (healthy destinations, clock running) and check
    /// that every acknowledged event ends delivered or failed.
    async fn finish(&mut self, shard: &Shard) -> Result<(), Failure> {
        self.finishing = true;
        let ids: Vec<String> =
            self.model.endpoints.iter().filter(|(_, e)| e.exists).map(|(id, _)| id.clone()).collect();
        for id in ids {
            shard.set_enabled(&id, true, self.now).await.map_err(|error| format!("enable {id}: {error}"))?;
        }
        for round in 0..5_000 {
            self.schedule(shard)?;
            while !self.reads.is_empty() {
                self.complete_read(shard);
            }
            while !self.in_flight.is_empty() {
                self.complete_attempt(shard).await?;
            }
            self.check(shard)?;
            if self.model.events.values().all(|event| event.terminal) {
                return Ok(());
            }
            self.advance(if round % 10 == 9 { 600_000 } else { 1_000 });
        }
        let waiting: Vec<_> = self.model.events.iter().filter(|(_, event)| !event.terminal).take(5).collect();
        let state = shard.state().borrow();
        let endpoints: Vec<String> = self.params.endpoints.iter().map(|id| state.describe_endpoint(id)).collect();
        Err(format!("events never finished at {}: {waiting:?}\n  {}", self.now, endpoints.join("\n  ")))
    }
}

fn run_seed(seed: u64, steps: usize) -> Result<(), String> {
    let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut sim = Sim::new(seed, directory.path().to_path_buf(), steps);
    let mut lives = 0;
    while sim.step < sim.steps || lives == 0 {
        lives += 1;
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map_err(|error| error.to_string())?;
        let outcome = runtime.block_on(sim.life());
        drop(runtime);
        if let Err(failure) = outcome {
            return Err(format!(
                "seed {seed} failed at step {} (replay with KAPSEL_SIM_SEED={seed}): {failure}\nlast steps:\n  {}",
                sim.step,
                sim.log.join("\n  ")
            ));
        }
        if sim.step >= sim.steps {
            break;
        }
        sim.tear_tail()?;
    }
    Ok(())
}

// The simulation itself: many seeds, each a reproducible bug report if it fails.
#[test]
fn simulation() {
    let steps = env_number("KAPSEL_SIM_STEPS").unwrap_or(400) as usize;
    let seeds: Vec<u64> = match env_number("KAPSEL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_number("KAPSEL_SIM_SEEDS").unwrap_or(24)).collect(),
    };
    let started = std::time::Instant::now();
    for seed in &seeds {
        if let Err(failure) = run_seed(*seed, steps) {
            panic!("{failure}");
        }
    }
    // Written to the process's standard output directly, so it shows even though the test
    // harness captures what tests print.
    let line =
        format!("{} seeds, {steps} steps each, passed in {:.1} s\n", seeds.len(), started.elapsed().as_secs_f64());
    let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
}
