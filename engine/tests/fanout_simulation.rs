//! The deterministic simulation of publish and fan-out across shards (ADR 13), in the manner of
//! `simulation.rs`: one seed drives two shards (three in some seeds), each with its own real log
//! in its own directory, on one monoio runtime, through publishes to channels, the handoff of
//! deliveries from a channel's shard to the others, delivery attempts and read-backs, endpoint
//! creations, changes and deletions, repeated idempotency keys, redrives of one delivery,
//! retention passes, clock jumps and crashes of the whole process. The handoff is driven as
//! `admin::publish::hand_over` drives it, each of its parts a step of its own (the pending list,
//! the read-back of the publish records, the adoption, the `HandedOff` records, their fsync), so
//! that a crash can fall between any two. A crash stops every shard at once, sometimes with a
//! publish, an adoption, an attempt's outcome or a `HandedOff` appended but not acknowledged,
//! and may tear each log's tail after its last durable record. After every step it checks the
//! shards against a plain model:
//!
//! - an acknowledged publish has, for each endpoint it matched that still exists, exactly one
//!   delivery (its id in the published event's block, numbered in endpoint order) on that
//!   endpoint's shard, or a pending handoff to that shard naming the endpoint; never two, never
//!   on another shard, never one to an endpoint it did not match;
//! - a publish the crash left unacknowledged is found afterwards whole (its own shard's
//!   deliveries and its handoffs) or not at all, and its key answers accordingly;
//! - a repeated key within its window answers the first publish's id, across crashes, and adds
//!   no delivery; deleting an endpoint removes its deliveries, and an adoption for a deleted
//!   endpoint adds nothing (a handoff racing the deletion included);
//! - every attempt carries the published event's id as `webhook-id` and its payload; a delivered
//!   or failed delivery is attempted again only after a redrive; attempt numbers never repeat or
//!   skip; no destination answers 2xx for one delivery more than once, plus once per crash that
//!   cut the record of such an answer and once per redrive;
//! - replaying each shard's log gives exactly its live state (the durable views, pending
//!   handoffs included), and each state's own invariants hold;
//! - at the end (every destination answering 200, handoffs run to completion) no handoff is
//!   pending and every delivery ended delivered or failed; redriven once, every failed one is
//!   delivered, but those its shard can no longer redrive (gone from its lookup window, or their
//!   payload with retention).
//!
//! A remote delivery whose endpoint is deleted and created again before its handoff is recorded
//! goes to the new endpoint (the adoption finds an endpoint of that id); the model accepts that
//! as a new delivery.
//!
//! Endpoints `a…` live on shard 0, `b…` on shard 1, `c…` on shard 2; channels `orders` and
//! `billing` on shard 0, `audit` on shard 1. `KAPSEL_SIM_SEEDS=n` runs n seeds (default 24),
//! `KAPSEL_SIM_SEED=s` replays one, `KAPSEL_SIM_STEPS` sets steps per seed (default 300). A
//! failure names its seed and step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::{env_number, poll_once, response, Random};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use kapsel_engine::delivery::complete_attempt;
use kapsel_engine::event_type::patterns_match;
use kapsel_engine::ids::EventId;
use kapsel_engine::records::{Published, Record, OUTCOME_DELIVERED, OUTCOME_FAILED};
use kapsel_engine::shard::publish::{Publish, PublishOutcome};
use kapsel_engine::shard::{Accepted, Shard};
use kapsel_engine::state::{EventStatus, ReadRequest, ShardState, Start, StateLimits};
use kapsel_engine::EngineError;
use kapsel_http::{OutboundResponse, SendError};
use kapsel_wal::{Clock, IoBackend, Options, Position, Wal};

/// Channels with the shard that owns each (the simulation's choice, as FNV-1a is the server's).
const CHANNELS: [(&str, usize); 3] = [("orders", 0), ("billing", 0), ("audit", 1)];
/// Event types publishes carry.
const EVENT_TYPES: [&str; 4] = ["order.created", "order.paid", "invoice.paid", "ping"];
/// Patterns endpoints subscribe with.
const PATTERNS: [&str; 5] = ["order.*", "order.created", "invoice.paid", "*", "ping"];

/// What one seed runs with.
#[derive(Clone, Debug)]
struct Params {
    shards: usize,
    /// Endpoint ids with their shards.
    endpoints: Vec<(String, usize)>,
    limits: StateLimits,
    payload_bytes_max: usize,
    retention_ms: u64,
}

impl Params {
    fn new(random: &mut Random) -> Self {
        let shards = if random.chance(0.3) { 3 } else { 2 };
        let mut endpoints = Vec::new();
        for shard in 0..shards {
            let letter = char::from(b'a' + shard as u8);
            for number in 0..1 + random.below(3) {
                endpoints.push((format!("{letter}{number}"), shard));
            }
        }
        let budgets = [300, 2_000, 20_000, 1 << 20];
        Self {
            shards,
            endpoints,
            limits: StateLimits {
                events_max: 1_000_000,
                idempotency_keys_max: 1_000_000,
                idempotency_window_ms: 60_000,
                payload_memory_bytes_max: *random.pick(&budgets),
                terminal_events_max: if random.chance(0.3) { 4 } else { 100_000 },
            },
            payload_bytes_max: *random.pick(&[40, 400, 1500]),
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
struct ModelEndpoint {
    shard: usize,
    exists: bool,
    channels: Vec<String>,
    patterns: Vec<String>,
    mood: Mood,
}

#[derive(Debug)]
struct ModelPublish {
    channel: String,
    /// The channel's shard.
    owner: usize,
    payload: Vec<u8>,
    /// The endpoints it matched when it was published, in delivery number order.
    endpoints: Vec<(usize, String)>,
}

#[derive(Debug)]
struct ModelDelivery {
    published: EventId,
    endpoint: String,
    /// The endpoint's shard.
    shard: usize,
    /// On another shard than the channel's: it arrives by a handoff.
    remote: bool,
    /// Remote only: its adoption is durable.
    adopted: bool,
    terminal: bool,
    delivered: bool,
    /// Attempts whose outcome is durable.
    recorded: u32,
    /// 2xx answers the destination gave.
    successes: u32,
    /// 2xx answers more that are fine: one per crash that cut the record of one, one per redrive.
    allowance: u32,
}

#[derive(Debug, Default)]
struct Model {
    endpoints: BTreeMap<String, ModelEndpoint>,
    publishes: BTreeMap<EventId, ModelPublish>,
    deliveries: BTreeMap<EventId, ModelDelivery>,
    /// Remote deliveries whose endpoint was deleted: they vanish, but a handoff still pending (or
    /// made again after a crash) gives one to the endpoint if it was created again meanwhile.
    orphans: BTreeMap<EventId, String>,
    /// Publish keys by channel, with the publish and when.
    keys: HashMap<(String, String), (EventId, u64)>,
}

/// Where a shard's handoff pass is, as `hand_over` goes through it.
enum Stage {
    /// `handoffs_pending` answered.
    Listed(Vec<(EventId, Position, Vec<u16>)>),
    /// The publish records were read back: adoption records by target shard, in shard order.
    Loaded(Vec<(usize, Vec<Published>)>),
    /// A target adopted these published events' deliveries.
    Adopted { target: usize, ids: Vec<EventId>, rest: Vec<(usize, Vec<Published>)> },
    /// Their `HandedOff` records were appended, the last at `lsn`.
    Recorded { lsn: u64, rest: Vec<(usize, Vec<Published>)> },
}

#[derive(Debug)]
enum Unacknowledged {
    Publish { publish: ModelPublish, key: Option<String> },
    Attempt { shard: usize, event_id: EventId },
}

/// What the seeds went through, summed: a run that passes says what it passed.
#[derive(Debug, Default)]
struct Coverage {
    published: u64,
    duplicates: u64,
    unacknowledged_kept: u64,
    unacknowledged_lost: u64,
    adopted: u64,
    handed_off: u64,
    crashes: u64,
    crashes_mid_handoff: u64,
    crashes_after_adoption: u64,
    delivered: u64,
    adopted_anew: u64,
    racing_deletions: u64,
    redriven: u64,
    segments_removed: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.published += other.published;
        self.duplicates += other.duplicates;
        self.unacknowledged_kept += other.unacknowledged_kept;
        self.unacknowledged_lost += other.unacknowledged_lost;
        self.adopted += other.adopted;
        self.handed_off += other.handed_off;
        self.crashes += other.crashes;
        self.crashes_mid_handoff += other.crashes_mid_handoff;
        self.crashes_after_adoption += other.crashes_after_adoption;
        self.delivered += other.delivered;
        self.adopted_anew += other.adopted_anew;
        self.racing_deletions += other.racing_deletions;
        self.redriven += other.redriven;
        self.segments_removed += other.segments_removed;
    }

    fn describe(&self) -> String {
        format!(
            "{} publishes ({} repeats answered as duplicates, {} of {} unacknowledged ones kept whole by a crash), \
             {} deliveries adopted, {} handoffs recorded, {} delivered, {} crashes ({} during a handoff, {} of them \
             between an adoption and its HandedOff), \
             {} deletions racing an adoption, {} deliveries adopted anew by an endpoint created again, \
             {} redrives, {} segments removed",
            self.published,
            self.duplicates,
            self.unacknowledged_kept,
            self.unacknowledged_kept + self.unacknowledged_lost,
            self.adopted,
            self.handed_off,
            self.delivered,
            self.crashes,
            self.crashes_mid_handoff,
            self.crashes_after_adoption,
            self.racing_deletions,
            self.adopted_anew,
            self.redriven,
            self.segments_removed
        )
    }
}

/// A seed's run: the directories, the clock, the model and what is in flight.
struct Sim {
    random: Random,
    params: Params,
    directories: Vec<PathBuf>,
    clock: Arc<AtomicU64>,
    now: u64,
    step: usize,
    steps: usize,
    model: Model,
    /// Attempts in flight: shard, start, when it started.
    in_flight: Vec<(usize, Start, u64)>,
    reads: Vec<(usize, ReadRequest)>,
    /// Each shard's handoff pass under way.
    handoffs: Vec<Option<Stage>>,
    /// Per shard, records durable before the crash: a torn tail may cut only what follows them.
    durable_lsn: Vec<u64>,
    /// A publish or outcome appended but not awaited when the crash came.
    unacknowledged: Option<Unacknowledged>,
    /// The last phase: every destination answers 200.
    finishing: bool,
    coverage: Coverage,
    log: Vec<String>,
}

/// Why a step failed.
type Failure = String;

fn endpoint_body(random: &mut Random, id: &str, channels: &[String], patterns: &[String]) -> String {
    let max_in_flight = *random.pick(&[1, 1, 2, 4]);
    format!(
        r#"{{"url":"http://sim.invalid/{id}","max_in_flight":{max_in_flight},"channels":{},"event_types":{},"retry":{{"initial_delay_ms":{},"multiplier":2,"max_attempts":{},"jitter":0.2,"max_delay_ms":600000}},"circuit":{{"cooldown_ms":1000,"cooldown_max_ms":8000}}}}"#,
        serde_json::json!(channels),
        serde_json::json!(patterns),
        100 + random.below(2000),
        1 + random.below(6)
    )
}

/// Event ids as the API writes them.
fn listed<'a>(ids: impl IntoIterator<Item = &'a EventId>) -> String {
    ids.into_iter().map(EventId::to_string).collect::<Vec<_>>().join(", ")
}

/// Stops every log at once, as a process crash does: each is marked crashed before any is
/// waited for, so none goes on writing while another stops.
async fn crash_together(wals: Vec<Wal>) {
    let mut crashes: Vec<Pin<Box<dyn Future<Output = ()>>>> =
        wals.into_iter().map(|wal| Box::pin(wal.crash()) as Pin<Box<dyn Future<Output = ()>>>).collect();
    std::future::poll_fn(|context| {
        crashes.retain_mut(|crash| crash.as_mut().poll(context).is_pending());
        if crashes.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

impl Sim {
    fn new(seed: u64, directory: &Path, steps: usize) -> Self {
        let mut random = Random(seed);
        let params = Params::new(&mut random);
        let start = 1_700_000_000_000 + random.below(1 << 30);
        let mut model = Model::default();
        for (id, shard) in &params.endpoints {
            let mood = match random.below(5) {
                0 => Mood::Dead,
                1 | 2 => Mood::Flaky,
                _ => Mood::Healthy,
            };
            let endpoint =
                ModelEndpoint { shard: *shard, exists: false, channels: Vec::new(), patterns: Vec::new(), mood };
            model.endpoints.insert(id.clone(), endpoint);
        }
        let directories = (0..params.shards).map(|index| directory.join(format!("shard-{index}"))).collect();
        Self {
            directories,
            clock: Arc::new(AtomicU64::new(start)),
            now: start,
            step: 0,
            steps,
            model,
            in_flight: Vec::new(),
            reads: Vec::new(),
            handoffs: (0..params.shards).map(|_| None).collect(),
            durable_lsn: vec![0; params.shards],
            unacknowledged: None,
            finishing: false,
            coverage: Coverage::default(),
            log: Vec::new(),
            random,
            params,
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
            segment_bytes: kapsel_wal::limits::SEGMENT_BYTES_MIN,
            clock: Clock::new(move || clock.load(Ordering::SeqCst)),
            ..Options::default()
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.clock.store(self.now, Ordering::SeqCst);
    }

    /// One life: from opening the logs to the next crash (or the last step).
    async fn life(&mut self) -> Result<(), Failure> {
        let mut shards = Vec::new();
        for index in 0..self.params.shards {
            let (shard, _) = Shard::open(index, &self.directories[index], self.options(), self.params.limits, self.now)
                .await
                .map_err(|error| format!("recovery of shard {index} failed: {error}"))?;
            shards.push(Rc::new(shard));
        }
        self.after_recovery(&shards)?;
        self.check(&shards)?;
        while self.step < self.steps {
            self.step += 1;
            if self.one_step(&shards).await? {
                // The crash: the logs stop without writing what is queued; everything else the
                // life held goes with the runtime.
                let mut wals = Vec::new();
                for (index, shard) in shards.into_iter().enumerate() {
                    let Ok(shard) = Rc::try_unwrap(shard) else {
                        return Err(format!("shard {index} is still shared at the crash"));
                    };
                    wals.push(shard.into_wal().unwrap());
                }
                crash_together(wals).await;
                return Ok(());
            }
            self.check(&shards)?;
        }
        self.finish(&shards).await
    }

    async fn one_step(&mut self, shards: &[Rc<Shard>]) -> Result<bool, Failure> {
        match self.random.below(100) {
            0..=17 => self.publish(shards).await?,
            18..=21 => self.change_endpoint(shards).await?,
            22..=42 | 94..=95 => {
                let source = self.handoff_source(shards);
                self.handoff_step(shards, source).await?;
            }
            43..=56 => {
                let index = self.random.below(shards.len() as u64) as usize;
                self.schedule(shards, index)?;
            }
            57..=62 => self.complete_read(shards),
            63..=77 => self.complete_attempt(shards).await?,
            78..=85 => {
                let ms = if self.random.chance(0.1) { self.random.below(3_600_000) } else { self.random.below(3_000) };
                self.advance(ms);
                self.note(format!("clock +{ms} ms"));
            }
            86..=87 => self.delete_endpoint(shards).await?,
            88..=89 => self.redrive(shards).await?,
            90..=91 => self.retention(shards).await?,
            92..=93 => self.repeat_publish(shards).await?,
            // A crash in 4 % of steps: a handoff pass takes five steps, most get done between.
            _ => {
                self.crash(shards).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    // --- Endpoints ---

    fn endpoints_where(&self, exists: bool) -> Vec<String> {
        self.model
            .endpoints
            .iter()
            .filter(|(_, endpoint)| endpoint.exists == exists)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Creates an endpoint that does not exist, or changes one that does: new subscriptions
    /// (its queues and deliveries stay), enabled again if a 410 had disabled it.
    async fn change_endpoint(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        let (id, _) = self.random.pick(&self.params.endpoints).clone();
        let channels: Vec<String> =
            CHANNELS.iter().filter(|_| self.random.chance(0.6)).map(|(channel, _)| channel.to_string()).collect();
        let mut patterns: Vec<String> =
            PATTERNS.iter().filter(|_| self.random.chance(0.3)).map(|pattern| pattern.to_string()).collect();
        patterns.sort();
        let body = endpoint_body(&mut self.random, &id, &channels, &patterns);
        let endpoint = self.model.endpoints.get_mut(&id).ok_or("unknown endpoint")?;
        shards[endpoint.shard]
            .put_endpoint(&id, body.as_bytes(), &kapsel_http::DestinationPolicy::default(), self.now)
            .await
            .map_err(|error| format!("putting {id}: {error}"))?;
        let created = !endpoint.exists;
        endpoint.exists = true;
        endpoint.channels = channels;
        endpoint.patterns = patterns;
        let what = format!(
            "{} {id}: channels {:?} types {:?}",
            if created { "create" } else { "change" },
            endpoint.channels,
            endpoint.patterns
        );
        self.note(what);
        Ok(())
    }

    async fn delete_endpoint(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        let existing = self.endpoints_where(true);
        if existing.is_empty() {
            return Ok(());
        }
        let id = self.random.pick(&existing).clone();
        self.delete(shards, id).await
    }

    /// Deletes an endpoint: its deliveries go; those that came by a handoff may come again, to
    /// the endpoint created anew, while their handoff is not recorded.
    async fn delete(&mut self, shards: &[Rc<Shard>], id: String) -> Result<(), Failure> {
        let shard = self.model.endpoints[&id].shard;
        shards[shard].delete_endpoint(&id, self.now).await.map_err(|error| format!("delete {id}: {error}"))?;
        let mut orphaned = Vec::new();
        self.model.deliveries.retain(|delivery_id, delivery| {
            if delivery.endpoint != id {
                return true;
            }
            if delivery.remote {
                orphaned.push(*delivery_id);
            }
            false
        });
        for delivery_id in orphaned {
            self.model.orphans.insert(delivery_id, id.clone());
        }
        self.in_flight.retain(|(index, start, _)| !(*index == shard && *start.endpoint_id == *id));
        if let Some(endpoint) = self.model.endpoints.get_mut(&id) {
            endpoint.exists = false;
        }
        self.note(format!("delete {id}"));
        Ok(())
    }

    // --- Publishes ---

    /// The endpoints a publish reaches, as the shared subscription index answers: sorted by id.
    fn matching(&self, channel: &str, event_type: &str) -> Vec<(usize, String)> {
        self.model
            .endpoints
            .iter()
            .filter(|(_, endpoint)| {
                endpoint.exists
                    && endpoint.channels.iter().any(|subscribed| subscribed == channel)
                    && patterns_match(&endpoint.patterns, event_type)
            })
            .map(|(id, endpoint)| (endpoint.shard, id.clone()))
            .collect()
    }

    fn payload(&mut self) -> Vec<u8> {
        let size = 1 + self.random.below(self.params.payload_bytes_max as u64) as usize;
        let salt = self.random.below(26) as usize;
        (0..size).map(|index| b'a' + ((index + salt) % 26) as u8).collect()
    }

    fn request(
        channel: &str,
        key: Option<String>,
        event_type: &str,
        payload: Vec<u8>,
        endpoints: &[(usize, String)],
    ) -> Publish {
        Publish {
            channel: channel.to_string(),
            tenant: "default".into(),
            idempotency_key: key,
            content_type: Some("application/json".into()),
            traceparent: None,
            tracestate: None,
            event_type: event_type.to_string(),
            payload,
            endpoints: endpoints.iter().map(|(shard, id)| (*shard, Arc::from(id.as_str()))).collect(),
        }
    }

    async fn publish(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        let missing = self.endpoints_where(false);
        if !missing.is_empty() && self.random.chance(0.3) {
            return self.change_endpoint(shards).await;
        }
        let (channel, _) = *self.random.pick(&CHANNELS);
        let key = self.random.chance(0.4).then(|| format!("key-{}", self.random.below(8)));
        self.publish_with(shards, channel, key).await
    }

    /// A publish with a key used before (maybe no longer within its window).
    async fn repeat_publish(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        let used: Vec<(String, String)> = self.model.keys.keys().cloned().collect();
        if used.is_empty() {
            return Ok(());
        }
        let (channel, key) = self.random.pick(&used).clone();
        self.publish_with(shards, &channel, Some(key)).await
    }

    fn remembered(&self, channel: &str, key: Option<&String>) -> Option<EventId> {
        let window_ms = self.params.limits.idempotency_window_ms;
        key.and_then(|key| self.model.keys.get(&(channel.to_string(), key.clone())))
            .filter(|(_, at)| at + window_ms > self.now)
            .map(|(event_id, _)| *event_id)
    }

    async fn publish_with(&mut self, shards: &[Rc<Shard>], channel: &str, key: Option<String>) -> Result<(), Failure> {
        let owner = CHANNELS.iter().find(|(name, _)| *name == channel).map(|(_, owner)| *owner).ok_or("channel")?;
        let event_type = *self.random.pick(&EVENT_TYPES);
        let payload = self.payload();
        let endpoints = self.matching(channel, event_type);
        let request = Self::request(channel, key.clone(), event_type, payload.clone(), &endpoints);
        let outcome = shards[owner].publish(request, self.now).await;
        let remembered = self.remembered(channel, key.as_ref());
        self.note(format!("publish {event_type} to {channel} key {key:?} for {endpoints:?}: {outcome:?}"));
        match (outcome, remembered) {
            (Ok(PublishOutcome { accepted: Accepted::Duplicate(event_id), endpoints: count }), Some(first))
                if event_id == first =>
            {
                // The count is the first publish's while its channel's shard still knows it.
                let first_count = self.model.publishes[&first].endpoints.len() as u32;
                if count != first_count && count != 0 {
                    return Err(format!("a repeat of {first} says {count} endpoints, the first had {first_count}"));
                }
                self.coverage.duplicates += 1;
                Ok(())
            }
            (Ok(PublishOutcome { accepted: Accepted::Received(event_id), endpoints: count }), None)
                if count as usize == endpoints.len() =>
            {
                self.coverage.published += 1;
                let publish = ModelPublish { channel: channel.to_string(), owner, payload, endpoints };
                self.learn_publish(event_id, publish, key, self.now)
            }
            (outcome, remembered) => {
                Err(format!("publish to {channel} (key remembered as {remembered:?}) gave {outcome:?}"))
            }
        }
    }

    /// A publish the channel's shard accepted joins the model with its deliveries.
    fn learn_publish(
        &mut self,
        event_id: EventId,
        publish: ModelPublish,
        key: Option<String>,
        at: u64,
    ) -> Result<(), Failure> {
        let owner = publish.owner;
        if event_id != event_id.published() || usize::from(event_id.shard()) != owner {
            return Err(format!("{event_id} is not a published event's id of shard {owner}"));
        }
        if self.model.publishes.contains_key(&event_id) {
            return Err(format!("{event_id} was published twice"));
        }
        for (number, (shard, endpoint)) in (1u32..).zip(&publish.endpoints) {
            let delivery = ModelDelivery {
                published: event_id,
                endpoint: endpoint.clone(),
                shard: *shard,
                remote: *shard != owner,
                adopted: false,
                terminal: false,
                delivered: false,
                recorded: 0,
                successes: 0,
                allowance: 0,
            };
            self.model.deliveries.insert(event_id.delivery(number), delivery);
        }
        if let Some(key) = key {
            self.model.keys.insert((publish.channel.clone(), key), (event_id, at));
        }
        self.model.publishes.insert(event_id, publish);
        Ok(())
    }

    // --- Handoffs ---

    /// The shard whose handoff goes on: mostly one with a pass under way, as each shard's
    /// handoff task runs its pass to the end unless a crash comes.
    fn handoff_source(&mut self, shards: &[Rc<Shard>]) -> usize {
        let busy: Vec<usize> = (0..shards.len()).filter(|source| self.handoffs[*source].is_some()).collect();
        if !busy.is_empty() && self.random.chance(0.7) {
            return *self.random.pick(&busy);
        }
        self.random.below(shards.len() as u64) as usize
    }

    /// One part of `source`'s handoff pass, in `hand_over`'s order.
    async fn handoff_step(&mut self, shards: &[Rc<Shard>], source: usize) -> Result<(), Failure> {
        match self.handoffs[source].take() {
            None => {
                let pending = shards[source].handoffs_pending(1 + self.random.below(3) as usize);
                if !pending.is_empty() {
                    self.note(format!("shard {source}: {} published events to hand over", pending.len()));
                    self.handoffs[source] = Some(Stage::Listed(pending));
                }
            }
            Some(Stage::Listed(pending)) => {
                let by_target = self.read_published(source, &pending)?;
                let targets: Vec<usize> = by_target.iter().map(|(target, _)| *target).collect();
                self.note(format!("shard {source}: publish records read back for shards {targets:?}"));
                self.handoffs[source] = (!by_target.is_empty()).then_some(Stage::Loaded(by_target));
            }
            Some(Stage::Loaded(mut by_target)) => {
                let (target, records) = by_target.remove(0);
                self.adopt(shards, target, &records).await?;
                let ids = records.iter().map(|record| EventId(record.event_id)).collect();
                self.handoffs[source] = Some(Stage::Adopted { target, ids, rest: by_target });
            }
            Some(Stage::Adopted { target, ids, rest }) => {
                let mut lsn = 0;
                for event_id in &ids {
                    lsn = shards[source]
                        .handed_off(*event_id, target as u16, self.now)
                        .map_err(|error| format!("handed off {event_id}: {error}"))?;
                }
                self.note(format!("shard {source}: HandedOff to {target} of {} appended, last at {lsn}", listed(&ids)));
                self.handoffs[source] = Some(Stage::Recorded { lsn, rest });
            }
            Some(Stage::Recorded { lsn, rest }) => {
                self.coverage.handed_off += 1;
                shards[source].durable(lsn).await.map_err(|error| format!("HandedOff at {lsn}: {error}"))?;
                self.note(format!("shard {source}: HandedOff durable up to {lsn}"));
                self.handoffs[source] = (!rest.is_empty()).then_some(Stage::Loaded(rest));
            }
        }
        Ok(())
    }

    /// Reads pending publish records back and builds the adoption records for each target, as
    /// `hand_over` does; checks each record against the model.
    fn read_published(
        &mut self,
        source: usize,
        pending: &[(EventId, Position, Vec<u16>)],
    ) -> Result<Vec<(usize, Vec<Published>)>, Failure> {
        let places: Vec<(EventId, Position)> =
            pending.iter().map(|(event_id, position, _)| (*event_id, *position)).collect();
        let loaded = kapsel_engine::readback::load_published(&self.directories[source], &places);
        let mut by_target: BTreeMap<usize, Vec<Published>> = BTreeMap::new();
        for ((_, _, shards), (event_id, record)) in pending.iter().zip(loaded) {
            let record =
                record.map_err(|reason| format!("the publish record of {event_id} is unreadable: {reason}"))?;
            self.check_record(source, &event_id, &record)?;
            for handoff in record.handoffs.iter().filter(|handoff| shards.contains(&handoff.shard)) {
                let adoption = record.adoption(handoff.deliveries.clone());
                by_target.entry(usize::from(handoff.shard)).or_default().push(adoption);
            }
        }
        Ok(by_target.into_iter().collect())
    }

    /// A publish record read back holds what was published: the payload, this shard's
    /// deliveries and the others' by shard, numbered in endpoint order.
    fn check_record(&self, source: usize, event_id: &EventId, record: &Published) -> Result<(), Failure> {
        let publish = self
            .model
            .publishes
            .get(event_id)
            .ok_or(format!("{event_id} waits to be handed over but was never acknowledged"))?;
        let deliveries = |shard: usize| -> Vec<(u128, String)> {
            (1u32..)
                .zip(&publish.endpoints)
                .filter(|(_, (owner, _))| *owner == shard)
                .map(|(number, (_, endpoint))| (event_id.delivery(number).0, endpoint.clone()))
                .collect()
        };
        let found = |list: &[kapsel_engine::records::Delivery]| -> Vec<(u128, String)> {
            list.iter().map(|delivery| (delivery.delivery_id, delivery.endpoint_id.clone())).collect()
        };
        if record.event_id != event_id.0 || record.payload != publish.payload || record.channel != publish.channel {
            return Err(format!("the publish record of {event_id} read back is not what was published"));
        }
        if found(&record.deliveries) != deliveries(source) {
            return Err(format!("the publish record of {event_id} lists {:?} on its own shard", record.deliveries));
        }
        for handoff in &record.handoffs {
            if found(&handoff.deliveries) != deliveries(usize::from(handoff.shard)) {
                return Err(format!(
                    "the publish record of {event_id} hands {:?} to shard {}",
                    handoff.deliveries, handoff.shard
                ));
            }
        }
        Ok(())
    }

    /// A target adopts its deliveries; sometimes one of their endpoints is deleted while the
    /// adoption waits for its fsync.
    async fn adopt(&mut self, shards: &[Rc<Shard>], target: usize, records: &[Published]) -> Result<(), Failure> {
        let racing = if !self.finishing && self.random.chance(0.15) {
            let endpoints: Vec<String> = records
                .iter()
                .flat_map(|record| record.deliveries.iter().map(|delivery| delivery.endpoint_id.clone()))
                .collect();
            endpoints.into_iter().find(|id| self.model.endpoints.get(id).is_some_and(|endpoint| endpoint.exists))
        } else {
            None
        };
        let ids: Vec<EventId> = records.iter().map(|record| EventId(record.event_id)).collect();
        let outcome = match racing {
            None => shards[target].adopt(records.to_vec(), self.now).await,
            Some(endpoint) => {
                let adopting = Rc::clone(&shards[target]);
                let (records, now) = (records.to_vec(), self.now);
                let adoption = monoio::spawn(async move { adopting.adopt(records, now).await });
                // Let the adoption append its records before the deletion appends its own.
                monoio::time::sleep(Duration::ZERO).await;
                self.delete(shards, endpoint.clone()).await?;
                self.note(format!("shard {target}: {endpoint} deleted while adopting {}", listed(&ids)));
                self.coverage.racing_deletions += 1;
                adoption.await
            }
        };
        self.note(format!("shard {target} adopts deliveries of {}: {outcome:?}", listed(&ids)));
        outcome.map_err(|error| format!("shard {target} refused to adopt {}: {error}", listed(&ids)))?;
        self.adopted(shards, target, records)
    }

    /// Once an adoption is answered its deliveries are on the target (or were there already and
    /// finished), except those whose endpoint is gone.
    fn adopted(&mut self, shards: &[Rc<Shard>], target: usize, records: &[Published]) -> Result<(), Failure> {
        let state = shards[target].state().borrow();
        for delivery in records.iter().flat_map(|record| &record.deliveries) {
            let delivery_id = EventId(delivery.delivery_id);
            match self.model.deliveries.get_mut(&delivery_id) {
                Some(model) => {
                    if !state.events.contains_key(&delivery_id) && !model.terminal {
                        return Err(format!(
                            "shard {target} answered the adoption, but delivery {delivery_id} to {} is not there",
                            model.endpoint
                        ));
                    }
                    self.coverage.adopted += u64::from(!model.adopted);
                    model.adopted = true;
                }
                None if self.model.orphans.contains_key(&delivery_id) => {}
                None => return Err(format!("delivery {delivery_id} was handed over but never published")),
            }
        }
        Ok(())
    }

    // --- Deliveries ---

    fn schedule(&mut self, shards: &[Rc<Shard>], index: usize) -> Result<(), Failure> {
        let plan = shards[index].state().borrow_mut().schedule(self.now);
        for start in plan.starts {
            self.check_start(index, &start)?;
            self.note(format!("shard {index}: start {} attempt {} to {}", start.event_id, start.n, start.endpoint_id));
            self.in_flight.push((index, start, self.now));
        }
        for read in plan.reads {
            self.note(format!("shard {index}: read {} events for {}", read.events.len(), read.endpoint_id));
            self.reads.push((index, read));
        }
        Ok(())
    }

    /// The model's rules for an attempt that starts.
    fn check_start(&mut self, index: usize, start: &Start) -> Result<(), Failure> {
        let event_id = start.event_id;
        if self.in_flight.iter().any(|(_, other, _)| other.event_id == event_id) {
            return Err(format!("{event_id} started while an attempt of it is in flight"));
        }
        let delivery =
            self.model.deliveries.get(&event_id).ok_or(format!("{event_id} started but was never published"))?;
        let publish = &self.model.publishes[&delivery.published];
        if delivery.shard != index || *start.endpoint_id != *delivery.endpoint {
            return Err(format!(
                "{event_id} to {} started on shard {index} for {}",
                delivery.endpoint, start.endpoint_id
            ));
        }
        if delivery.terminal {
            return Err(format!("{event_id} is delivered or failed and was attempted again without a redrive"));
        }
        if start.n != delivery.recorded + 1 {
            return Err(format!(
                "{event_id} attempt {} started after {} recorded attempts (an attempt made again or skipped)",
                start.n, delivery.recorded
            ));
        }
        if start.payload.webhook_id != delivery.published {
            return Err(format!(
                "{event_id} carries webhook-id {}, not {}",
                start.payload.webhook_id, delivery.published
            ));
        }
        if *start.payload.body != *publish.payload {
            return Err(format!("{event_id} carries another payload than {} published", delivery.published));
        }
        Ok(())
    }

    fn complete_read(&mut self, shards: &[Rc<Shard>]) {
        if self.reads.is_empty() {
            return;
        }
        let (index, read) = self.reads.remove(self.random.below(self.reads.len() as u64) as usize);
        let mut loaded = kapsel_engine::readback::load(&self.directories[index], &read.events);
        if !self.finishing && self.random.chance(0.05) {
            // A failing disk: the read is retried later.
            for (_, result) in &mut loaded {
                *result = Err("injected read failure".into());
            }
        }
        self.note(format!("shard {index}: read back {} events for {}", loaded.len(), read.endpoint_id));
        shards[index].complete_read_back(read, loaded, self.now);
    }

    fn outcome(&mut self, endpoint: &str) -> Result<OutboundResponse, SendError> {
        if self.finishing {
            return response(200, None);
        }
        let mood = self.model.endpoints.get(endpoint).map_or(Mood::Healthy, |endpoint| endpoint.mood);
        let roll = self.random.below(100);
        match mood {
            Mood::Dead => Err(SendError::Connect("connection refused".into())),
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

    /// Counts a 2xx the destination gave.
    fn answered(&mut self, event_id: EventId, result: &Result<OutboundResponse, SendError>) {
        if matches!(result, Ok(response) if (200..300).contains(&response.status)) {
            if let Some(delivery) = self.model.deliveries.get_mut(&event_id) {
                delivery.successes += 1;
            }
        }
    }

    async fn complete_attempt(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let (index, start, started) = self.in_flight.remove(self.random.below(self.in_flight.len() as u64) as usize);
        let result = self.outcome(&start.endpoint_id);
        let jitter = self.random.unit_signed();
        self.answered(start.event_id, &result);
        let outcome = complete_attempt(&shards[index], &start, &result, started, self.now, jitter).await;
        let state = shards[index].state().borrow();
        if state.events.get(&start.event_id).is_some_and(|event| event.attempts < start.n) {
            return Err(format!("{} attempt {}'s outcome was not recorded", start.event_id, start.n));
        }
        drop(state);
        self.note(format!(
            "shard {index}: {} attempt {} → {:?} → outcome {outcome}",
            start.event_id,
            start.n,
            result.as_ref().map(|response| response.status)
        ));
        if let Some(delivery) = self.model.deliveries.get_mut(&start.event_id) {
            delivery.recorded = start.n;
            delivery.terminal = matches!(outcome, OUTCOME_DELIVERED | OUTCOME_FAILED);
            delivery.delivered = outcome == OUTCOME_DELIVERED;
            self.coverage.delivered += u64::from(delivery.delivered);
        }
        Ok(())
    }

    /// An operator redrives one delivery of a published event (`retry_deliveries` with its
    /// endpoint, on the endpoint's shard).
    async fn redrive(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        // Mostly one that is delivered or failed: the redrive that matters.
        let finished = self.random.chance(0.7);
        let candidates: Vec<EventId> = self
            .model
            .deliveries
            .iter()
            .filter(|(_, delivery)| (!delivery.remote || delivery.adopted) && (delivery.terminal || !finished))
            .map(|(event_id, _)| *event_id)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let event_id = *self.random.pick(&candidates);
        let (published, endpoint, index, terminal) = {
            let delivery = &self.model.deliveries[&event_id];
            (delivery.published, delivery.endpoint.clone(), delivery.shard, delivery.terminal)
        };
        let known = shards[index].state().borrow().events.contains_key(&event_id);
        let outcome = shards[index].retry_deliveries(published, Some(&endpoint), self.now).await;
        self.note(format!("redrive {published} to {endpoint} ({event_id}): {outcome:?}"));
        match outcome {
            Ok(0) if !known => {}
            Ok(1) if known => {}
            // Its payload went with retention.
            Err(EngineError::NotFound(_)) if terminal => {}
            other => return Err(format!("redrive of {event_id} (known {known}, terminal {terminal}) gave {other:?}")),
        }
        let waiting = shards[index].state().borrow().events.get(&event_id).is_some_and(|event| event.is_waiting());
        let delivery = self.model.deliveries.get_mut(&event_id).ok_or("redriven delivery vanished")?;
        if delivery.terminal && waiting {
            delivery.terminal = false;
            delivery.delivered = false;
            delivery.allowance += 1;
            self.coverage.redriven += 1;
        }
        Ok(())
    }

    async fn retention(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        let index = self.random.below(shards.len() as u64) as usize;
        let shard = &shards[index];
        if self.random.chance(0.3) {
            shard.wal().unwrap().seal().await.map_err(|error| format!("seal: {error}"))?;
        }
        // A seal a full segment triggered may still be under way; let it finish.
        shard.wal().unwrap().flush().await.map_err(|error| format!("flush: {error}"))?;
        let age = self.params.retention_ms;
        let to_carry = kapsel_engine::retention::to_carry(shard, age, self.now);
        let removed = kapsel_engine::retention::pass(shard, age, self.now)
            .await
            .map_err(|error| format!("retention pass on shard {index}: {error}"))?;
        self.note(format!("shard {index}: retention carried {to_carry} and removed {removed:?}"));
        self.coverage.segments_removed += removed.len() as u64;
        let left = kapsel_engine::retention::to_carry(shard, age, self.now);
        if to_carry <= 64 && left > 0 {
            return Err(format!("shard {index}: {left} of {to_carry} waiting events were not carried forward"));
        }
        Ok(())
    }

    // --- Crashes ---

    /// A crash of the process, sometimes with a publish, an attempt's outcome, an adoption or
    /// `HandedOff` records appended but not answered: either they never reached the disk, or
    /// their batch was written and fsynced but the crash came before anyone was told (the torn
    /// tail may still cut them, as a crash in mid-write would).
    async fn crash(&mut self, shards: &[Rc<Shard>]) {
        let durable_before: Vec<u64> = shards.iter().map(|shard| shard.wal().unwrap().durable_lsn()).collect();
        self.coverage.crashes += 1;
        self.coverage.crashes_mid_handoff += u64::from(self.handoffs.iter().any(Option::is_some));
        let after_adoption =
            |stage: &Option<Stage>| matches!(stage, Some(Stage::Adopted { .. } | Stage::Recorded { .. }));
        self.coverage.crashes_after_adoption += u64::from(self.handoffs.iter().any(after_adoption));
        let written = self.random.chance(0.5);
        let what = match self.random.below(4) {
            0 => self.publish_unacknowledged(shards),
            1 if !self.in_flight.is_empty() => {
                let (index, start, started) = self.in_flight.remove(0);
                let result = self.outcome(&start.endpoint_id);
                self.answered(start.event_id, &result);
                if let Some(delivery) = self.model.deliveries.get_mut(&start.event_id) {
                    // If the 2xx's record is cut, the attempt is made again.
                    delivery.allowance += u32::from(matches!(&result, Ok(response) if response.status == 200));
                }
                poll_once(complete_attempt(&shards[index], &start, &result, started, self.now, 0.0));
                self.unacknowledged = Some(Unacknowledged::Attempt { shard: index, event_id: start.event_id });
                format!("outcome of {} attempt {} unacknowledged", start.event_id, start.n)
            }
            2 => self.handoff_unacknowledged(shards),
            _ => String::new(),
        };
        if written {
            for shard in shards {
                let _ = shard.wal().unwrap().flush().await;
            }
        }
        self.durable_lsn = durable_before;
        self.note(format!("crash ({what}, written {written})"));
        // Attempts in flight are lost; their deliveries are attempted again after recovery.
        self.in_flight.clear();
        self.reads.clear();
        for stage in &mut self.handoffs {
            *stage = None;
        }
    }

    fn publish_unacknowledged(&mut self, shards: &[Rc<Shard>]) -> String {
        let (channel, owner) = *self.random.pick(&CHANNELS);
        let key = self.random.chance(0.5).then(|| format!("key-{}", self.random.below(8)));
        let event_type = *self.random.pick(&EVENT_TYPES);
        let payload = self.payload();
        let endpoints = self.matching(channel, event_type);
        let request = Self::request(channel, key.clone(), event_type, payload.clone(), &endpoints);
        poll_once(shards[owner].publish(request, self.now));
        let what = format!("publish to {channel} key {key:?} for {endpoints:?} unacknowledged");
        let publish = ModelPublish { channel: channel.to_string(), owner, payload, endpoints };
        self.unacknowledged = Some(Unacknowledged::Publish { publish, key });
        what
    }

    /// An adoption appended and not answered, or `HandedOff` records appended after an answered
    /// adoption and not waited for.
    fn handoff_unacknowledged(&mut self, shards: &[Rc<Shard>]) -> String {
        for source in 0..shards.len() {
            match &self.handoffs[source] {
                Some(Stage::Loaded(by_target)) => {
                    let Some((target, records)) = by_target.first() else {
                        continue;
                    };
                    poll_once(shards[*target].adopt(records.clone(), self.now));
                    return format!("adoption by shard {target} unacknowledged");
                }
                Some(Stage::Adopted { target, ids, .. }) => {
                    for event_id in ids {
                        let _ = shards[source].handed_off(*event_id, *target as u16, self.now);
                    }
                    return format!("HandedOff of {} to {target} unacknowledged", listed(ids));
                }
                _ => {}
            }
        }
        String::new()
    }

    /// After the process is gone: each log's newest segment may lose anything after its last
    /// durable record (a torn tail).
    fn tear_tails(&mut self) -> Result<(), Failure> {
        for index in 0..self.directories.len() {
            let directory = self.directories[index].clone();
            let segments = kapsel_wal::scan::list_segments(&directory).map_err(|error| error.to_string())?;
            let Some((_, path)) = segments.last() else {
                continue;
            };
            let bytes = std::fs::read(path).map_err(|error| error.to_string())?;
            let Ok(scan) = kapsel_wal::scan::scan_segment(&bytes) else {
                continue;
            };
            let durable_end = scan
                .frames
                .iter()
                .filter(|frame| frame.lsn <= self.durable_lsn[index])
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
                self.note(format!(
                    "torn tail: {} cut at {cut} of {length} (durable up to {durable_end})",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// What survived a crash: every acknowledged publish; an unacknowledged one whole or not at
    /// all; an unacknowledged outcome or not.
    fn after_recovery(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        let mut unknown = BTreeSet::new();
        for shard in shards {
            let state = shard.state().borrow();
            let publications = state.publications.iter().map(|(event_id, _)| *event_id);
            let deliveries = state.events.keys().map(|event_id| event_id.published());
            unknown
                .extend(publications.chain(deliveries).filter(|event_id| !self.model.publishes.contains_key(event_id)));
        }
        match (self.unacknowledged.take(), unknown.iter().collect::<Vec<_>>().as_slice()) {
            (Some(Unacknowledged::Publish { publish, key }), [event_id]) => {
                self.check_whole(shards, **event_id, publish.owner, &publish.endpoints)?;
                self.note(format!("the unacknowledged publish survived as {event_id}"));
                self.coverage.unacknowledged_kept += 1;
                self.learn_publish(**event_id, publish, key, event_id.unix_ms())
            }
            (Some(Unacknowledged::Attempt { shard, event_id }), []) => {
                let state = shards[shard].state().borrow();
                if let (Some(event), Some(model)) =
                    (state.events.get(&event_id), self.model.deliveries.get_mut(&event_id))
                {
                    if event.attempts == model.recorded + 1 {
                        model.recorded = event.attempts;
                        model.terminal = event.status.is_terminal();
                        model.delivered = event.status == EventStatus::Delivered;
                    }
                }
                Ok(())
            }
            (unacknowledged, []) => {
                self.coverage.unacknowledged_lost +=
                    u64::from(matches!(unacknowledged, Some(Unacknowledged::Publish { .. })));
                Ok(())
            }
            (unacknowledged, unknown) => {
                let what = match unacknowledged {
                    Some(Unacknowledged::Publish { publish, .. }) => {
                        format!("a publish to {} for {:?}", publish.channel, publish.endpoints)
                    }
                    Some(Unacknowledged::Attempt { event_id, .. }) => format!("the outcome of {event_id}"),
                    None => "nothing".into(),
                };
                Err(format!(
                    "recovery found publishes nobody acknowledged: {} (unacknowledged at the crash: {what})",
                    listed(unknown.iter().copied())
                ))
            }
        }
    }

    /// A publish that survived a crash unacknowledged is whole: its channel's shard holds all
    /// its own deliveries and a handoff for every other shard's, and no other shard has any yet.
    fn check_whole(
        &self,
        shards: &[Rc<Shard>],
        event_id: EventId,
        owner: usize,
        endpoints: &[(usize, String)],
    ) -> Result<(), Failure> {
        for (index, shard) in shards.iter().enumerate() {
            let state = shard.state().borrow();
            let mut found: Vec<(EventId, String)> = state
                .deliveries_of(event_id)
                .into_iter()
                .filter_map(|delivery| {
                    state.events.get(&delivery).map(|event| (delivery, state.endpoint_of(event).to_string()))
                })
                .collect();
            found.sort();
            let expected: Vec<(EventId, String)> = (1u32..)
                .zip(endpoints)
                .filter(|(_, (shard, _))| *shard == index && index == owner)
                .map(|(number, (_, endpoint))| (event_id.delivery(number), endpoint.clone()))
                .collect();
            if found != expected {
                return Err(format!(
                    "unacknowledged publish {event_id}: shard {index} has deliveries {found:?}, not {expected:?}"
                ));
            }
        }
        let state = shards[owner].state().borrow();
        let publication = state
            .publications
            .get(&event_id)
            .ok_or(format!("unacknowledged publish {event_id} has deliveries but no publication"))?;
        for target in (0..shards.len()).filter(|target| *target != owner) {
            let expected: Vec<&str> =
                endpoints.iter().filter(|(shard, _)| *shard == target).map(|(_, id)| id.as_str()).collect();
            let pending: Vec<&str> = publication
                .handoffs
                .iter()
                .filter(|(shard, _)| usize::from(*shard) == target)
                .flat_map(|(_, ids)| ids.iter().map(|id| &**id))
                .collect();
            if pending != expected {
                return Err(format!(
                    "unacknowledged publish {event_id} hands {pending:?} to shard {target}, not {expected:?}"
                ));
            }
        }
        Ok(())
    }

    // --- Checks ---

    /// Every check, after every step.
    fn check(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        for (index, shard) in shards.iter().enumerate() {
            let state = shard.state().borrow();
            state.check(self.now).map_err(|error| format!("shard {index}: {error}"))?;
            self.compare_with_replay(index, &state, shard.wal().unwrap().directory())?;
        }
        self.check_events(shards)?;
        self.check_deliveries(shards)?;
        self.check_handoffs(shards)
    }

    /// Every event a shard holds is a delivery the model knows, on its endpoint's shard, once
    /// per published event and endpoint, with the status and attempts the model expects.
    fn check_events(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        for (index, shard) in shards.iter().enumerate() {
            let state = shard.state().borrow();
            let mut seen: BTreeMap<(EventId, &str), EventId> = BTreeMap::new();
            for (event_id, event) in state.events.iter() {
                let endpoint = state.endpoint_of(event);
                if !event.delivery {
                    return Err(format!("shard {index} holds {event_id}, which is no delivery of a published event"));
                }
                if let Some(other) = seen.insert((event_id.published(), endpoint), *event_id) {
                    return Err(format!(
                        "shard {index} has two deliveries of {} to {endpoint}: {other} and {event_id}",
                        event_id.published()
                    ));
                }
                if !self.model.deliveries.contains_key(event_id) {
                    self.adopt_orphan(index, *event_id, endpoint, event.is_waiting())?;
                }
                let model = self.model.deliveries.get_mut(event_id).ok_or("delivery")?;
                if model.shard != index || model.endpoint != endpoint {
                    return Err(format!(
                        "{event_id} for {endpoint} is on shard {index}, the model has it for {} on shard {}",
                        model.endpoint, model.shard
                    ));
                }
                // Applied means durable: the adoption happened.
                model.adopted |= model.remote;
                if event.status.is_terminal() && !model.terminal {
                    return Err(format!(
                        "{event_id} to {endpoint} on shard {index} is {:?}, the model {model:?}",
                        event.status
                    ));
                }
                if !event.status.is_terminal() && model.terminal {
                    // Only a redrive may bring a delivery back, and the model follows redrives.
                    let how = if model.remote {
                        "made twice: adopted again after this shard forgot it (retention removed its records, or \
                         it left the lookup window) while its handoff was not recorded yet"
                    } else {
                        "made twice"
                    };
                    return Err(format!(
                        "{event_id} to {endpoint} on shard {index} is {:?} again after it was {} without a redrive, \
                         {how} ({model:?})",
                        event.status,
                        if model.delivered { "delivered" } else { "failed" }
                    ));
                }
                if event.attempts != model.recorded && !event.in_flight {
                    return Err(format!("{event_id} has {} attempts, the model {}", event.attempts, model.recorded));
                }
            }
        }
        Ok(())
    }

    /// A delivery the model does not know may only be one whose endpoint was deleted and
    /// created again while its handoff was still to be recorded: it arrives new.
    fn adopt_orphan(&mut self, index: usize, event_id: EventId, endpoint: &str, waiting: bool) -> Result<(), Failure> {
        let orphan = self.model.orphans.get(&event_id).map(String::as_str);
        let exists = self.model.endpoints.get(endpoint).is_some_and(|model| model.exists && model.shard == index);
        if orphan != Some(endpoint) || !exists || !waiting {
            return Err(format!(
                "shard {index} holds {event_id} for {endpoint}, which no acknowledged publish gave it (orphan of {orphan:?}, endpoint exists {exists})"
            ));
        }
        self.model.orphans.remove(&event_id);
        let published = event_id.published();
        let delivery = ModelDelivery {
            published,
            endpoint: endpoint.to_string(),
            shard: index,
            remote: true,
            adopted: true,
            terminal: false,
            delivered: false,
            recorded: 0,
            successes: 0,
            allowance: 0,
        };
        self.model.deliveries.insert(event_id, delivery);
        self.note(format!("{event_id} adopted again by {endpoint}, deleted and created anew"));
        self.coverage.adopted_anew += 1;
        Ok(())
    }

    /// Every delivery of an acknowledged publish is on its shard, or its handoff is pending.
    fn check_deliveries(&self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        for (event_id, model) in &self.model.deliveries {
            if model.successes > model.allowance + 1 {
                return Err(format!(
                    "{event_id} to {} was answered 2xx {} times ({model:?})",
                    model.endpoint, model.successes
                ));
            }
            if !model.remote || model.adopted {
                // A delivered or failed one may have left the lookup window.
                if !model.terminal && !shards[model.shard].state().borrow().events.contains_key(event_id) {
                    return Err(format!(
                        "acknowledged publish {} lost its delivery {event_id} to {} on shard {}",
                        model.published, model.endpoint, model.shard
                    ));
                }
                continue;
            }
            let owner = self.model.publishes[&model.published].owner;
            let state = shards[owner].state().borrow();
            let pending = state.publications.get(&model.published).is_some_and(|publication| {
                publication.handoffs.iter().any(|(shard, endpoints)| {
                    usize::from(*shard) == model.shard && endpoints.iter().any(|endpoint| **endpoint == *model.endpoint)
                })
            });
            if !pending {
                return Err(format!(
                    "acknowledged publish {}: its delivery {event_id} to {} is neither on shard {} nor waiting to be handed over",
                    model.published, model.endpoint, model.shard
                ));
            }
        }
        Ok(())
    }

    /// Every pending handoff belongs to an acknowledged publish and names the endpoints it matched
    /// on that shard.
    fn check_handoffs(&self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        for (index, shard) in shards.iter().enumerate() {
            let state = shard.state().borrow();
            for (event_id, publication) in state.publications.pending() {
                let publish = self
                    .model
                    .publishes
                    .get(&event_id)
                    .ok_or(format!("{event_id} waits to be handed over but nobody acknowledged it"))?;
                if publish.owner != index {
                    return Err(format!(
                        "{event_id} of shard {} waits to be handed over by shard {index}",
                        publish.owner
                    ));
                }
                for (target, endpoints) in &publication.handoffs {
                    let expected: Vec<&str> = publish
                        .endpoints
                        .iter()
                        .filter(|(shard, _)| *shard == usize::from(*target))
                        .map(|(_, id)| id.as_str())
                        .collect();
                    let pending: Vec<&str> = endpoints.iter().map(|id| &**id).collect();
                    if pending != expected || usize::from(*target) == index {
                        return Err(format!(
                            "{event_id} hands {pending:?} to shard {target}; it matched {expected:?} there"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Replays a shard's log as it is on disk into a fresh state and compares the durable views.
    fn compare_with_replay(&self, index: usize, live: &ShardState, directory: &Path) -> Result<(), Failure> {
        let mut replayed = ShardState::new(index as u16, self.params.limits);
        kapsel_engine::snapshot::load_into(&mut replayed, directory)?;
        let applied = live.applied_lsn();
        let mut error = None;
        for_each_record(directory, |lsn, position, kind, body| {
            if lsn > applied || error.is_some() {
                return;
            }
            match Record::decode(kind, body) {
                Ok(decoded) => replayed.apply(lsn, position, decoded, self.now),
                Err(decode) => error = Some(format!("shard {index}: record {lsn}: {decode}")),
            }
        })
        .map_err(|error| format!("reading shard {index}'s log back: {error}"))?;
        if let Some(error) = error {
            return Err(error);
        }
        let first_lsn =
            kapsel_wal::tail::first_lsn(directory).map_err(|error| error.to_string())?.unwrap_or(applied + 1);
        let in_flight: BTreeSet<EventId> =
            self.in_flight.iter().filter(|(shard, _, _)| *shard == index).map(|(_, start, _)| start.event_id).collect();
        let mine = live.durable_view(first_lsn, &in_flight, self.now);
        let theirs = replayed.durable_view(first_lsn, &in_flight, self.now);
        match mine.difference(&theirs) {
            Some(difference) => Err(format!("shard {index}: live state and replay differ: {difference}")),
            None => Ok(()),
        }
    }

    // --- The end ---

    /// The end of the run: every destination answers 200, handoffs run until none is pending,
    /// and every delivery ends delivered or failed; then the failed ones are redriven once, and
    /// every delivery ends delivered, but those the shard no longer can redrive (gone from its
    /// lookup window, or their payload with retention).
    async fn finish(&mut self, shards: &[Rc<Shard>]) -> Result<(), Failure> {
        self.finishing = true;
        for id in self.endpoints_where(true) {
            let shard = self.model.endpoints[&id].shard;
            shards[shard].set_enabled(&id, true, self.now).await.map_err(|error| format!("enable {id}: {error}"))?;
        }
        let mut beyond_redrive = None;
        for round in 0..5_000 {
            for source in 0..shards.len() {
                self.hand_over_everything(shards, source).await?;
            }
            // Learns of deliveries adopted by endpoints created anew before they start.
            self.check_events(shards)?;
            for index in 0..shards.len() {
                self.schedule(shards, index)?;
            }
            while !self.reads.is_empty() {
                self.complete_read(shards);
            }
            while !self.in_flight.is_empty() {
                self.complete_attempt(shards).await?;
            }
            self.check(shards)?;
            let handed = shards.iter().all(|shard| shard.handoffs_pending(1).is_empty());
            if handed && self.model.deliveries.values().all(|delivery| delivery.terminal) {
                match &beyond_redrive {
                    None => beyond_redrive = Some(self.redrive_failed(shards).await?),
                    Some(beyond) => return self.check_finished(beyond),
                }
            }
            self.advance(if round % 10 == 9 { 600_000 } else { 1_000 });
        }
        let waiting: Vec<_> = self.model.deliveries.iter().filter(|(_, delivery)| !delivery.terminal).take(5).collect();
        Err(format!("deliveries never finished at {}: {waiting:?}", self.now))
    }

    async fn hand_over_everything(&mut self, shards: &[Rc<Shard>], source: usize) -> Result<(), Failure> {
        for _ in 0..10_000 {
            if self.handoffs[source].is_none() && shards[source].handoffs_pending(1).is_empty() {
                return Ok(());
            }
            self.handoff_step(shards, source).await?;
        }
        Err(format!("shard {source}'s handoffs never finished"))
    }

    /// Redrives every failed delivery a shard can still redrive; the others.
    async fn redrive_failed(&mut self, shards: &[Rc<Shard>]) -> Result<BTreeSet<EventId>, Failure> {
        let failed: Vec<EventId> = self
            .model
            .deliveries
            .iter()
            .filter(|(_, delivery)| !delivery.delivered)
            .map(|(event_id, _)| *event_id)
            .collect();
        let mut beyond = BTreeSet::new();
        for event_id in failed {
            let delivery = &self.model.deliveries[&event_id];
            let (published, endpoint, index) = (delivery.published, delivery.endpoint.clone(), delivery.shard);
            let outcome = shards[index].retry_deliveries(published, Some(&endpoint), self.now).await;
            self.note(format!("redrive of failed {event_id} to {endpoint}: {outcome:?}"));
            match outcome {
                Ok(1) => {
                    let delivery = self.model.deliveries.get_mut(&event_id).ok_or("redriven delivery vanished")?;
                    delivery.terminal = false;
                    delivery.allowance += 1;
                }
                Ok(0) | Err(EngineError::NotFound(_)) => {
                    beyond.insert(event_id);
                }
                other => return Err(format!("redrive of failed {event_id} gave {other:?}")),
            }
        }
        Ok(beyond)
    }

    fn check_finished(&self, beyond_redrive: &BTreeSet<EventId>) -> Result<(), Failure> {
        for (event_id, delivery) in &self.model.deliveries {
            if !delivery.delivered && !beyond_redrive.contains(event_id) {
                return Err(format!(
                    "{event_id} to {} ended failed although it was redriven and every destination answers 200",
                    delivery.endpoint
                ));
            }
            if delivery.successes > delivery.allowance + u32::from(delivery.delivered) {
                return Err(format!(
                    "{event_id} to {} was answered 2xx {} times ({delivery:?})",
                    delivery.endpoint, delivery.successes
                ));
            }
            if delivery.delivered && delivery.successes == 0 {
                return Err(format!("{event_id} to {} is delivered without a 2xx", delivery.endpoint));
            }
        }
        Ok(())
    }
}

/// Every record in the log in `directory`, in LSN order, as `kapsel_wal::read::for_each` gives
/// them, except that a newest segment shorter than its header counts as empty, as recovery
/// counts it: the log's writer may be creating it right now (the seal of a full segment and the
/// next segment's creation go on after the batch that filled it was acknowledged, and
/// `HandedOff` records are appended without waiting), and `for_each` calls that corrupt.
fn for_each_record<F>(directory: &Path, mut visit: F) -> Result<(), String>
where
    F: FnMut(u64, Position, u8, &[u8]),
{
    let segments = kapsel_wal::scan::list_segments(directory).map_err(|error| error.to_string())?;
    let newest = segments.len().saturating_sub(1);
    for (number, (segment_id, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
        if number == newest && bytes.len() < kapsel_wal::frame::SEGMENT_HEADER_BYTES {
            break;
        }
        let scanned = kapsel_wal::scan::scan_segment(&bytes)
            .map_err(|(offset, reason)| format!("{} at offset {offset}: {reason}", path.display()))?;
        for frame in &scanned.frames {
            let position =
                Position { segment_id: *segment_id, offset: frame.offset as u32, length: frame.length as u32 };
            visit(frame.lsn, position, frame.kind, frame.body(&bytes));
        }
    }
    Ok(())
}

fn run_seed(seed: u64, steps: usize) -> Result<Coverage, String> {
    let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut sim = Sim::new(seed, directory.path(), steps);
    for shard_directory in &sim.directories {
        std::fs::create_dir_all(shard_directory).map_err(|error| error.to_string())?;
    }
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
                "seed {seed} failed at step {} (replay with KAPSEL_SIM_SEED={seed}): {failure}\n{:?}\nlast steps:\n  {}",
                sim.step,
                sim.params,
                sim.log.join("\n  ")
            ));
        }
        if sim.step >= sim.steps {
            break;
        }
        sim.tear_tails()?;
    }
    Ok(sim.coverage)
}

// Publish and fan-out across shards, crashed at any point: many seeds, each a reproducible bug
// report if it fails.
#[test]
fn fanout_simulation() {
    let steps = env_number("KAPSEL_SIM_STEPS").unwrap_or(300) as usize;
    let seeds: Vec<u64> = match env_number("KAPSEL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_number("KAPSEL_SIM_SEEDS").unwrap_or(24)).collect(),
    };
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut coverage = Coverage::default();
    for seed in &seeds {
        match run_seed(*seed, steps) {
            Ok(seen) => coverage.add(&seen),
            Err(failure) => failures.push((*seed, failure)),
        }
    }
    if let Some((_, first)) = failures.first() {
        let failed: Vec<u64> = failures.iter().map(|(seed, _)| *seed).collect();
        let reasons: Vec<String> =
            failures.iter().map(|(_, failure)| failure.lines().next().unwrap_or_default().to_string()).collect();
        panic!(
            "{} of {} seeds failed: {failed:?}\n  {}\nthe first:\n{first}",
            failed.len(),
            seeds.len(),
            reasons.join("\n  ")
        );
    }
    // Written to the process's standard output directly, so it shows even though the test
    // harness captures what tests print.
    let line = format!(
        "{} seeds, {steps} steps each, passed in {:.1} s: {}\n",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        coverage.describe()
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
}
