//! The deterministic simulation of cluster mode's ownership changes (ADR 17): three nodes share
//! one partition's stream (the in-memory `MemoryStream`), and one seed drives the real `Shard`
//! over it (`Shard::open_partition`, its stream applier, `ShardState::apply_fenced`, the
//! scheduler's `schedule`, read-back and `complete_attempt`) through:
//!
//! - takeovers at random steps: a running node opens the partition at the next epoch (replaying
//!   the stream, then writing its `Takeover`), while the previous owner keeps running, is paused
//!   or dies; now and then the `Takeover`'s acknowledgement is lost and the take fails with its
//!   record in the stream;
//! - paused nodes: the node's feed stops (it does not see the takeover and keeps starting
//!   attempts from what it knows) and its publishes are held in transit, landing after other
//!   nodes' records when it resumes (or now and then while still paused): reordered messages;
//! - dead nodes: nothing more is driven there, and what they had in transit lands or is lost;
//! - ingests from any node (an `EventReceived` published by anyone), acknowledged when the
//!   publish resolves; acknowledgements held back for a while, or lost (the record stored, the
//!   sender told it failed);
//! - attempts started by the owners' schedulers (the current one and deposed ones that do not
//!   know it yet), payloads read back from the stream, outcomes (200, 503, timeouts) recorded
//!   through `complete_attempt`; endpoints disabled and enabled, operator redrives, and a clock
//!   that jumps, so retries come due.
//!
//! After every step it checks:
//!
//! - no acknowledged event is lost: each is in the stream's replay and in every owner that has
//!   applied its sequence, waiting, delivered or failed; after the finish (faults off, healthy
//!   destinations, one owner) each is delivered or failed;
//! - the fence: a record written under an epoch below the latest `Takeover` before it never
//!   changes state (the stream replayed through `apply_fenced` gives exactly the durable view of
//!   the stream replayed without those records through plain `apply`, and counts as many
//!   fenced);
//! - live equals replay: an owner that is not deposed and has applied the whole stream (the
//!   current one) has the durable view of a fresh state fed the whole stream through
//!   `apply_fenced` (once per seed a replay from scratch checks the incremental one), and every
//!   owner's state, deposed or not, keeps its own invariants;
//! - admitted attempts of an event are numbered without gaps, and none follows its admitted
//!   terminal outcome except after an operator redrive, or as a repeat of a number already
//!   admitted (an owner whose outcome's acknowledgement was lost makes the attempt again before
//!   the outcome reaches its feed; the repeat changes nothing after a terminal outcome);
//! - an event whose delivery (or failure) was admitted is started again only by an owner that had
//!   not applied that outcome yet: the in-flight exception of at-least-once, counted as repeats;
//! - at most one owner is not deposed once every running owner's feed has caught up, and that
//!   one holds the latest epoch.
//!
//! `KAPSEL_SIM_SEEDS=n` runs n seeds (default 24), `KAPSEL_SIM_SEED=s` replays one,
//! `KAPSEL_SIM_STEPS` sets steps per seed (default 300). A failure names its seed and step (an
//! assertion inside the engine too). The run prints takeovers, fenced records and repeats.
//!
//! What it found in the engine on its first runs: an outcome applied from the feed before its
//! publish was acknowledged left the event in flight and in the retry set (seed 1); an attempt
//! of a deposed owner put back into a cached prefix that no longer reached it (seed 12); a
//! redrive reaching an event in flight at an old owner, which kept it delivered and then took
//! the next delivery as a second terminal outcome (seeds 82, 129); an owner whose outcome's
//! acknowledgement was lost made the attempt again under the same number before the first
//! outcome came back, and applied the second one after the first, terminal one, where a replay
//! ignores it (seed 163: a terminal event now takes no outcome, in flight or not). Admitting owner records of any
//! epoch in `apply_fenced`, on purpose, fails seed 2 at step 41 ("a fenced record changed the
//! state").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::stepping::{bounded, report_panics_with_seed, yield_now, AT, LOG};
use support::{env_number, response, Random};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use kapsel_engine::delivery::complete_attempt;
use kapsel_engine::ids::EventId;
use kapsel_engine::readback::{load_from, Source};
use kapsel_engine::records::{EventReceived, Record, OUTCOME_DELIVERED, OUTCOME_RETRYING};
use kapsel_engine::shard::stream::{position_of, FeedGate, MemoryStream, Outgoing, PartitionStream};
use kapsel_engine::shard::Shard;
use kapsel_engine::state::{DurableView, ReadRequest, ShardState, Start, StateLimits, Writer};
use kapsel_http::{OutboundResponse, SendError};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const PARTITION: usize = 7;
const LIMITS: StateLimits = StateLimits {
    events_max: 1_000_000,
    idempotency_keys_max: 1_000_000,
    idempotency_window_ms: 60_000,
    payload_memory_bytes_max: 2_000,
    terminal_events_max: 1_000_000,
};
/// Yields an operation the simulation waits for inline (a takeover, the finish's changes) may
/// take before it counts as hung.
const ROUNDS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Running,
    /// Its feed is held and its publishes wait in transit; it still starts and ends attempts.
    Paused,
    Dead,
}

/// How a destination behaves in this seed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mood {
    Healthy,
    Flaky,
    Dead,
}

/// One shard a node opened for the partition.
struct Owner {
    node: usize,
    epoch: u64,
    shard: Rc<Shard>,
    gate: FeedGate,
    /// Its node died or opened the partition again: no longer driven or checked.
    retired: bool,
}

/// An attempt on its way to the destination.
struct Flight {
    owner: usize,
    start: Start,
    started: u64,
}

/// What the stream's admitted records say of one event.
#[derive(Debug, Default)]
struct ModelEvent {
    /// Number of the last admitted attempt.
    attempts: u32,
    /// The sequence of its admitted terminal outcome (none since a redrive).
    terminal_at: Option<u64>,
    /// That outcome was a delivery.
    delivered: bool,
    /// 200s the destination answered since the last redrive.
    answered: u32,
}

/// The stream replayed as it grows, twice: through the fence, and without the records the
/// fencing rule removes (plain `apply`); and the model the admitted records build.
struct Truth {
    /// The next sequence to take in.
    next: u64,
    fenced: ShardState,
    filtered: ShardState,
    /// The latest admitted `Takeover`'s epoch.
    latest: u64,
    /// Records the rule removed.
    removed: u64,
    /// Admitted attempts that repeat an attempt number already admitted.
    repeated: u64,
    events: BTreeMap<EventId, ModelEvent>,
    /// Records taken in since the last comparison of the two replays.
    changed: bool,
}

impl Truth {
    fn new() -> Self {
        let number = PARTITION as u16;
        let mut fenced = ShardState::new(number, LIMITS);
        let mut filtered = ShardState::new(number, LIMITS);
        fenced.set_replaying(true);
        filtered.set_replaying(true);
        Self { next: 1, fenced, filtered, latest: 0, removed: 0, repeated: 0, events: BTreeMap::new(), changed: false }
    }

    /// The fencing rule, stated plainly: a record written under an epoch below the latest
    /// `Takeover` before it is removed, and so is a `Takeover` not above it.
    fn admits(&mut self, writer: Writer, record: &Record) -> Result<bool, String> {
        match (writer, record) {
            (Writer::Anyone, record) => Ok(!record.is_owners()),
            (Writer::Owner { epoch }, Record::Takeover(takeover)) => {
                let admitted = epoch == takeover.epoch && epoch > self.latest;
                if admitted {
                    self.latest = epoch;
                }
                Ok(admitted)
            }
            (Writer::Owner { epoch }, _) if epoch > self.latest => {
                Err(format!("an owner of epoch {epoch} wrote before its Takeover (latest {})", self.latest))
            }
            (Writer::Owner { epoch }, _) => Ok(epoch == self.latest),
        }
    }

    /// Takes in the stream's new records; checks the attempts' numbering as they are admitted.
    fn catch_up(&mut self, stream: &MemoryStream, now: u64) -> Result<(), String> {
        for record in stream.records_from(self.next) {
            let sequence = record.sequence;
            self.next = sequence + 1;
            self.changed = true;
            let position = position_of(sequence, record.body.len());
            let decoded =
                Record::decode(record.kind, &record.body).map_err(|error| format!("record {sequence}: {error}"))?;
            self.fenced.apply_fenced(sequence, position, record.writer, decoded.clone(), now);
            if !self.admits(record.writer, &decoded)? {
                self.removed += 1;
                continue;
            }
            self.admitted(sequence, &decoded)?;
            self.filtered.apply(sequence, position, decoded.clone(), now);
            match &decoded {
                Record::EventReceived(event) => {
                    let event_id = EventId(event.event_id);
                    if self.filtered.events.contains_key(&event_id) {
                        self.events.entry(event_id).or_default();
                    }
                }
                Record::Requeued(_) | Record::Redriven(_) => {
                    let event_id = EventId(match &decoded {
                        Record::Requeued(requeued) => requeued.event_id,
                        Record::Redriven(redriven) => redriven.event.event_id,
                        _ => 0,
                    });
                    let waiting = self.filtered.events.get(&event_id).is_some_and(|event| event.is_waiting());
                    if let (true, Some(model)) = (waiting, self.events.get_mut(&event_id)) {
                        model.terminal_at = None;
                        model.delivered = false;
                        model.answered = 0;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// An admitted attempt follows the last one and no terminal outcome, unless it repeats an
    /// attempt already admitted: an owner whose outcome's acknowledgement was lost makes the
    /// attempt again under the same number before the first outcome reaches its feed (it had
    /// not applied it: `check_start` holds it to that), and the repeat changes nothing after a
    /// terminal outcome.
    fn admitted(&mut self, sequence: u64, record: &Record) -> Result<(), String> {
        let Record::Attempt(attempt) = record else {
            return Ok(());
        };
        let event_id = EventId(attempt.event_id);
        let Some(model) = self.events.get_mut(&event_id) else {
            return Err(format!("attempt {} of {event_id} admitted at {sequence}, an event never received", attempt.n));
        };
        if attempt.n <= model.attempts && attempt.n > 0 {
            self.repeated += 1;
            if model.terminal_at.is_none() && attempt.outcome != OUTCOME_RETRYING {
                model.terminal_at = Some(sequence);
                model.delivered = attempt.outcome == OUTCOME_DELIVERED;
            }
            return Ok(());
        }
        if let Some(at) = model.terminal_at {
            return Err(format!(
                "attempt {} of {event_id} admitted at {sequence} after its terminal outcome at {at}",
                attempt.n
            ));
        }
        if attempt.n != model.attempts + 1 {
            return Err(format!(
                "attempt {} of {event_id} admitted at {sequence} after attempt {}",
                attempt.n, model.attempts
            ));
        }
        model.attempts = attempt.n;
        if attempt.outcome != OUTCOME_RETRYING {
            model.terminal_at = Some(sequence);
            model.delivered = attempt.outcome == OUTCOME_DELIVERED;
        }
        Ok(())
    }
}

/// What one seed counted.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    takeovers: u64,
    failed_takeovers: u64,
    fenced: u64,
    /// Attempts started of an event whose delivery was admitted, by an owner that had not
    /// applied it yet (the in-flight exception).
    repeats: u64,
    /// 200s a destination answered for an event it had already answered 200 for.
    duplicates: u64,
    /// Admitted attempts repeating a number already admitted (after a lost acknowledgement).
    renumbered: u64,
    acknowledged: u64,
    told_failed: u64,
    landed_late: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.takeovers += other.takeovers;
        self.failed_takeovers += other.failed_takeovers;
        self.fenced += other.fenced;
        self.repeats += other.repeats;
        self.duplicates += other.duplicates;
        self.renumbered += other.renumbered;
        self.acknowledged += other.acknowledged;
        self.told_failed += other.told_failed;
        self.landed_late += other.landed_late;
    }
}

/// A seed's run.
struct Sim {
    seed: u64,
    random: Random,
    stream: MemoryStream,
    /// The stream as read-back sees it.
    source: Source,
    status: [Status; 3],
    owners: Vec<Owner>,
    flights: Vec<Flight>,
    reads: Vec<(usize, ReadRequest)>,
    endpoints: Vec<(String, Mood)>,
    now: u64,
    step: usize,
    steps: usize,
    next_epoch: u64,
    ingested: u64,
    /// Acknowledged events and their sequences.
    acknowledged: BTreeMap<EventId, u64>,
    /// Ingest publishes as they resolve.
    answers: Answers,
    /// Spawned operations that ended (the settling's measure of progress).
    done: Rc<Cell<u64>>,
    truth: Truth,
    finishing: bool,
    counts: Counts,
    log: Vec<String>,
}

type Failure = String;

/// Ingest publishes as they resolve: the event and its sequence, or why the sender was told it
/// failed.
type Answers = Rc<RefCell<Vec<(EventId, Result<u64, String>)>>>;

fn endpoint_body(random: &mut Random, id: &str) -> String {
    let max_in_flight = [1, 1, 2, 4][random.below(4) as usize];
    format!(
        r#"{{"url":"http://sim.invalid/{id}","max_in_flight":{max_in_flight},"retry":{{"initial_delay_ms":{},"multiplier":2,"max_attempts":{},"jitter":0.2,"max_delay_ms":600000}},"circuit":{{"cooldown_ms":1000,"cooldown_max_ms":8000}}}}"#,
        100 + random.below(2000),
        1 + random.below(6)
    )
}

impl Sim {
    fn new(seed: u64, steps: usize) -> Self {
        let mut random = Random(seed);
        let stream = MemoryStream::new();
        let source = Source::Stream(Arc::new(stream.clone()) as Arc<dyn PartitionStream>);
        let count = 2 + random.below(2) as usize;
        let endpoints = (0..count)
            .map(|index| {
                let mood = match random.below(5) {
                    0 => Mood::Dead,
                    1 | 2 => Mood::Flaky,
                    _ => Mood::Healthy,
                };
                (format!("ep{index}"), mood)
            })
            .collect();
        let now = 1_700_000_000_000 + random.below(1 << 30);
        Self {
            seed,
            random,
            stream,
            source,
            status: [Status::Running; 3],
            owners: Vec::new(),
            flights: Vec::new(),
            reads: Vec::new(),
            endpoints,
            now,
            step: 0,
            steps,
            next_epoch: 1,
            ingested: 0,
            acknowledged: BTreeMap::new(),
            answers: Rc::default(),
            done: Rc::default(),
            truth: Truth::new(),
            finishing: false,
            counts: Counts::default(),
            log: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        if self.log.len() >= 80 {
            self.log.remove(0);
        }
        self.log.push(format!("step {}: {what}", self.step));
        let (seed, step) = (self.seed, self.step);
        AT.with(|at| at.set((seed, step)));
        LOG.with(|log| log.borrow_mut().clone_from(&self.log));
    }

    async fn run(&mut self) -> Result<(), Failure> {
        self.take_over(0).await?;
        let owner = self.current().ok_or("the first takeover failed")?;
        let shard = Rc::clone(&self.owners[owner].shard);
        for index in 0..self.endpoints.len() {
            let id = self.endpoints[index].0.clone();
            let body = endpoint_body(&mut self.random, &id);
            let policy = kapsel_http::DestinationPolicy::default();
            let put = shard.put_endpoint(&id, body.as_bytes(), &policy, self.now);
            match bounded(put, ROUNDS_MAX).await {
                Some(Ok(_)) => self.note(format!("create {id}: {body}")),
                other => return Err(format!("creating {id}: {other:?}")),
            }
        }
        self.settle().await;
        self.check()?;
        while self.step < self.steps {
            self.step += 1;
            self.one_step().await?;
            self.settle().await;
            self.check()?;
        }
        self.finish().await
    }

    async fn one_step(&mut self) -> Result<(), Failure> {
        match self.random.below(100) {
            0..=23 => self.ingest(),
            24..=38 => self.schedule()?,
            39..=45 => self.complete_read(),
            46..=62 => self.complete_attempt(),
            63..=69 => {
                let ms = if self.random.chance(0.1) { self.random.below(3_600_000) } else { self.random.below(3_000) };
                self.now += ms;
                self.note(format!("clock +{ms} ms"));
            }
            70..=73 => self.takeover_step().await?,
            74..=77 => self.pause_or_resume(),
            78 => self.kill_or_revive(),
            79..=81 => self.delay_acks(),
            82..=83 => self.lag(),
            84..=86 => self.change_endpoint(),
            87..=89 => self.operator_retry(),
            _ => self.lose_acks().await,
        }
        Ok(())
    }

    /// Lets every spawned task run until nothing moves any more.
    async fn settle(&mut self) {
        let mut last = self.fingerprint();
        let mut still = 0;
        for _ in 0..1000 {
            yield_now().await;
            let now = self.fingerprint();
            if now == last {
                still += 1;
                if still >= 3 {
                    break;
                }
            } else {
                still = 0;
                last = now;
            }
        }
        let answers: Vec<_> = self.answers.borrow_mut().drain(..).collect();
        for (event_id, answer) in answers {
            match answer {
                Ok(sequence) => {
                    self.acknowledged.insert(event_id, sequence);
                    self.counts.acknowledged += 1;
                    self.note(format!("ingest {event_id} acknowledged at {sequence}"));
                }
                Err(reason) => {
                    self.counts.told_failed += 1;
                    self.note(format!("ingest {event_id} told it failed: {reason}"));
                }
            }
        }
    }

    fn fingerprint(&self) -> (u64, u64, u64, usize) {
        let applied = self.owners.iter().map(|owner| owner.shard.state().borrow().applied_lsn()).sum();
        (self.stream.last_sequence(), self.done.get(), applied, self.answers.borrow().len())
    }

    fn alive(&self, owner: usize) -> bool {
        let owner = &self.owners[owner];
        !owner.retired && self.status[owner.node] != Status::Dead
    }

    /// The owner holding the latest admitted `Takeover`'s epoch, if it is alive.
    fn current(&self) -> Option<usize> {
        let latest = self.truth.latest;
        (0..self.owners.len()).find(|index| self.alive(*index) && self.owners[*index].epoch == latest)
    }

    fn nodes_with(&self, status: Status) -> Vec<usize> {
        (0..NODES.len()).filter(|node| self.status[*node] == status).collect()
    }

    fn spawn_counted(&self, task: impl Future<Output = ()> + 'static) {
        let done = Rc::clone(&self.done);
        monoio::spawn(async move {
            task.await;
            done.set(done.get() + 1);
        });
    }

    /// A node takes the partition at the next epoch; the previous owner keeps running, is
    /// paused or dies.
    async fn takeover_step(&mut self) -> Result<(), Failure> {
        let running = self.nodes_with(Status::Running);
        if running.is_empty() {
            return Ok(());
        }
        let node = *self.random.pick(&running);
        if let Some(previous) = self.current() {
            let previous = self.owners[previous].node;
            if previous != node {
                match self.random.below(3) {
                    0 => {}
                    1 => self.pause(previous),
                    _ => self.kill(previous),
                }
            }
        }
        self.take_over(node).await
    }

    async fn take_over(&mut self, node: usize) -> Result<(), Failure> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        // The node's own links are clear for its takeover; its acknowledgement may still be lost.
        self.stream.hold_acks_of(node, false);
        self.stream.release_acks_of(node);
        let lose = !self.finishing && self.step > 0 && self.random.chance(0.04);
        self.stream.lose_acks_of(node, lose);
        let handle: Arc<dyn PartitionStream> = Arc::new(self.stream.from_node(node));
        let feed = self.stream.feed(1);
        let gate = feed.gate();
        let last = self.stream.last_sequence();
        let opening = Shard::open_partition(
            PARTITION,
            handle,
            Box::new(feed),
            last,
            (epoch, NODES[node]),
            LIMITS,
            None,
            self.now,
        );
        let opened = bounded(opening, ROUNDS_MAX).await;
        self.stream.lose_acks_of(node, false);
        self.retire_node(node);
        self.truth.catch_up(&self.stream, self.now)?;
        match opened {
            None => Err(format!("{} taking epoch {epoch} hung", NODES[node])),
            Some(Ok(shard)) => {
                self.owners.push(Owner { node, epoch, shard: Rc::new(shard), gate, retired: false });
                self.counts.takeovers += 1;
                self.note(format!("{} took epoch {epoch} after replaying {last} records", NODES[node]));
                Ok(())
            }
            Some(Err(error)) => {
                gate.pause();
                self.counts.failed_takeovers += 1;
                self.note(format!(
                    "{} taking epoch {epoch} failed (lost acknowledgement {lose}): {error}",
                    NODES[node]
                ));
                Ok(())
            }
        }
    }

    /// The node's shards stop being driven (it opens a new one, or died): their attempts in
    /// flight are lost with them.
    fn retire_node(&mut self, node: usize) {
        let mut retired = Vec::new();
        for (index, owner) in self.owners.iter_mut().enumerate() {
            if owner.node == node && !owner.retired {
                owner.retired = true;
                owner.gate.pause();
                retired.push(index);
            }
        }
        self.flights.retain(|flight| !retired.contains(&flight.owner));
        self.reads.retain(|(owner, _)| !retired.contains(owner));
    }

    fn pause(&mut self, node: usize) {
        if self.status[node] != Status::Running {
            return;
        }
        self.status[node] = Status::Paused;
        self.stream.hold_landing(node, true);
        for owner in self.owners.iter().filter(|owner| owner.node == node && !owner.retired) {
            owner.gate.pause();
        }
        self.note(format!("{} paused", NODES[node]));
    }

    fn resume(&mut self, node: usize) {
        if self.status[node] != Status::Paused {
            return;
        }
        self.status[node] = Status::Running;
        self.stream.hold_landing(node, false);
        let landed = self.stream.land(node);
        self.counts.landed_late += landed as u64;
        for owner in self.owners.iter().filter(|owner| owner.node == node && !owner.retired) {
            owner.gate.open();
        }
        self.note(format!("{} resumed: {landed} held publishes landed", NODES[node]));
    }

    fn kill(&mut self, node: usize) {
        if self.status[node] == Status::Dead {
            return;
        }
        self.status[node] = Status::Dead;
        // What was on its way arrives or not; nothing more leaves the dead process.
        let landed = if self.random.chance(0.5) { self.stream.land(node) } else { 0 };
        let dropped = self.stream.drop_in_transit(node);
        self.counts.landed_late += landed as u64;
        self.stream.hold_landing(node, true);
        self.retire_node(node);
        self.note(format!("{} died: {landed} publishes in transit landed, {dropped} lost", NODES[node]));
    }

    fn revive(&mut self, node: usize) {
        if self.status[node] != Status::Dead {
            return;
        }
        self.stream.drop_in_transit(node);
        self.stream.hold_landing(node, false);
        self.stream.hold_acks_of(node, false);
        self.stream.release_acks_of(node);
        self.status[node] = Status::Running;
        self.note(format!("{} started again (owning nothing)", NODES[node]));
    }

    fn pause_or_resume(&mut self) {
        let paused = self.nodes_with(Status::Paused);
        if !paused.is_empty() && self.random.chance(0.6) {
            let node = *self.random.pick(&paused);
            self.resume(node);
        } else {
            let running = self.nodes_with(Status::Running);
            if running.len() > 1 {
                let node = *self.random.pick(&running);
                self.pause(node);
            }
        }
    }

    fn kill_or_revive(&mut self) {
        let dead = self.nodes_with(Status::Dead);
        if !dead.is_empty() && self.random.chance(0.6) {
            let node = *self.random.pick(&dead);
            self.revive(node);
        } else {
            let alive: Vec<usize> = (0..NODES.len()).filter(|node| self.status[*node] != Status::Dead).collect();
            if alive.len() > 1 {
                let node = *self.random.pick(&alive);
                self.kill(node);
            }
        }
    }

    /// A node's acknowledgements start or stop coming late.
    fn delay_acks(&mut self) {
        let node = self.random.below(NODES.len() as u64) as usize;
        if self.random.chance(0.5) {
            self.stream.hold_acks_of(node, true);
            self.note(format!("{}'s acknowledgements held", NODES[node]));
        } else {
            self.stream.hold_acks_of(node, false);
            self.stream.release_acks_of(node);
            self.note(format!("{}'s acknowledgements released", NODES[node]));
        }
    }

    /// A paused node's feed moves on a little, or what it has in transit lands while it is still
    /// paused.
    fn lag(&mut self) {
        let paused = self.nodes_with(Status::Paused);
        if paused.is_empty() {
            return;
        }
        let node = *self.random.pick(&paused);
        if self.random.chance(0.5) {
            let count = 1 + self.random.below(5);
            for owner in self.owners.iter().filter(|owner| owner.node == node && !owner.retired) {
                owner.gate.advance(count);
            }
            self.note(format!("{}'s feed moves {count} records on", NODES[node]));
        } else {
            let landed = self.stream.land(node);
            self.counts.landed_late += landed as u64;
            self.note(format!("{}'s {landed} held publishes landed while it is paused", NODES[node]));
        }
    }

    /// Some acknowledgements of a node are lost while it ingests or records an outcome.
    async fn lose_acks(&mut self) {
        let node = self.random.below(NODES.len() as u64) as usize;
        if self.status[node] == Status::Dead {
            return;
        }
        self.stream.lose_acks_of(node, true);
        self.note(format!("{}'s acknowledgements are lost", NODES[node]));
        if self.random.chance(0.5) {
            self.ingest_from(node);
        } else if let Some(index) = self.flights.iter().position(|flight| self.owners[flight.owner].node == node) {
            self.complete_flight(index);
        }
        self.settle().await;
        self.stream.lose_acks_of(node, false);
    }

    fn ingest(&mut self) {
        let alive: Vec<usize> = (0..NODES.len()).filter(|node| self.status[*node] != Status::Dead).collect();
        if alive.is_empty() {
            return;
        }
        let node = *self.random.pick(&alive);
        self.ingest_from(node);
    }

    /// An `EventReceived` published by `node` as any node publishes an ingest.
    fn ingest_from(&mut self, node: usize) {
        let endpoint = self.random.pick(&self.endpoints).0.clone();
        self.ingested += 1;
        let event_id = EventId::new(self.now, PARTITION as u16, self.ingested);
        let size = 1 + self.random.below(400) as usize;
        let payload: Vec<u8> = (0..size).map(|index| b'a' + ((index + self.step) % 26) as u8).collect();
        let event = EventReceived {
            event_id: event_id.0,
            endpoint_id: endpoint.clone(),
            received_at_ms: self.now,
            idempotency_key: None,
            content_type: Some("application/json".into()),
            traceparent: None,
            tracestate: None,
            event_type: "event".into(),
            publish: None,
            payload,
        };
        let (kind, body) = Record::EventReceived(event).encode().unwrap();
        let publishing =
            self.stream.from_node(node).publish(Outgoing { writer: Writer::Anyone, kind, body: body.to_vec() });
        let answers = Rc::clone(&self.answers);
        self.spawn_counted(async move {
            let answer = publishing.await;
            answers.borrow_mut().push((event_id, answer));
        });
        self.note(format!("ingest {event_id} to {endpoint} from {} ({size} bytes)", NODES[node]));
    }

    /// An owner that does not know it is deposed starts what its scheduler offers.
    fn schedule(&mut self) -> Result<(), Failure> {
        let writable: Vec<usize> =
            (0..self.owners.len()).filter(|index| self.alive(*index) && self.owners[*index].shard.writable()).collect();
        if writable.is_empty() {
            return Ok(());
        }
        let owner = match self.current() {
            Some(current) if writable.contains(&current) && self.random.chance(0.7) => current,
            _ => *self.random.pick(&writable),
        };
        self.schedule_on(owner)
    }

    fn schedule_on(&mut self, owner: usize) -> Result<(), Failure> {
        self.truth.catch_up(&self.stream, self.now)?;
        let shard = Rc::clone(&self.owners[owner].shard);
        let applied = shard.state().borrow().applied_lsn();
        let plan = shard.state().borrow_mut().schedule(self.now);
        for start in plan.starts {
            self.check_start(owner, &start, applied)?;
            self.note(format!(
                "{} (epoch {}) starts {} attempt {}",
                NODES[self.owners[owner].node], self.owners[owner].epoch, start.event_id, start.n
            ));
            self.flights.push(Flight { owner, start, started: self.now });
        }
        for read in plan.reads {
            self.reads.push((owner, read));
        }
        Ok(())
    }

    /// An attempt of an event whose outcome is admitted starts only at an owner that has not
    /// applied it (the in-flight exception), and never twice at once at one owner.
    fn check_start(&mut self, owner: usize, start: &Start, applied: u64) -> Result<(), Failure> {
        if self.flights.iter().any(|flight| flight.owner == owner && flight.start.event_id == start.event_id) {
            return Err(format!("{} started twice at once by one owner", start.event_id));
        }
        let model = self
            .truth
            .events
            .get(&start.event_id)
            .ok_or(format!("{} started but the stream never admitted it", start.event_id))?;
        if let Some(at) = model.terminal_at {
            if applied >= at {
                return Err(format!(
                    "{} started again by epoch {} though it applied its terminal outcome at {at} (applied {applied})",
                    start.event_id, self.owners[owner].epoch
                ));
            }
            if model.delivered {
                self.counts.repeats += 1;
            }
        }
        Ok(())
    }

    fn complete_read(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let index = self.random.below(self.reads.len() as u64) as usize;
        let (owner, read) = self.reads.swap_remove(index);
        let loaded = load_from(&self.source, &read.events);
        self.owners[owner].shard.complete_read_back(read, loaded, self.now);
    }

    fn complete_attempt(&mut self) {
        if self.flights.is_empty() {
            return;
        }
        let index = self.random.below(self.flights.len() as u64) as usize;
        self.complete_flight(index);
    }

    fn outcome(&mut self, endpoint: &str) -> Result<OutboundResponse, SendError> {
        if self.finishing {
            return response(200, None);
        }
        let mood = self.endpoints.iter().find(|(id, _)| id == endpoint).map_or(Mood::Healthy, |(_, mood)| *mood);
        let roll = self.random.below(100);
        match (mood, roll) {
            (Mood::Healthy, 0..=89) | (Mood::Flaky, 0..=49) => response(200, None),
            (Mood::Healthy, _) | (Mood::Flaky, 50..=64) | (Mood::Dead, 0..=59) => response(503, None),
            (Mood::Flaky, 65..=74) => response(503, Some("1")),
            _ => Err(SendError::Timeout),
        }
    }

    /// The destination answers an attempt; its owner records the outcome (spawned: the record
    /// may wait for its acknowledgement, its landing or the owner's feed).
    fn complete_flight(&mut self, index: usize) {
        let Flight { owner, start, started } = self.flights.swap_remove(index);
        let result = self.outcome(&start.endpoint_id);
        if matches!(&result, Ok(answer) if answer.status == 200) {
            if let Some(model) = self.truth.events.get_mut(&start.event_id) {
                model.answered += 1;
                if model.answered > 1 {
                    self.counts.duplicates += 1;
                }
            }
        }
        let jitter = self.random.unit_signed();
        let (node, epoch) = (self.owners[owner].node, self.owners[owner].epoch);
        let answer = result.as_ref().map(|answer| answer.status).map_err(ToString::to_string);
        self.note(format!("{} (epoch {epoch}) {} attempt {}: {answer:?}", NODES[node], start.event_id, start.n));
        let shard = Rc::clone(&self.owners[owner].shard);
        let finished = self.now;
        self.spawn_counted(async move {
            complete_attempt(&shard, &start, &result, started, finished, jitter).await;
        });
    }

    /// The current owner disables or enables an endpoint.
    fn change_endpoint(&mut self) {
        let Some(owner) = self.current().filter(|owner| self.owners[*owner].shard.writable()) else {
            return;
        };
        let id = self.random.pick(&self.endpoints).0.clone();
        let shard = Rc::clone(&self.owners[owner].shard);
        let enabled = shard.state().borrow().endpoints.get(&id).is_some_and(|entry| entry.endpoint.enabled);
        let now = self.now;
        self.note(format!("{} sets {id} enabled {}", NODES[self.owners[owner].node], !enabled));
        self.spawn_counted(async move {
            let _ = shard.set_enabled(&id, !enabled, now).await;
        });
    }

    /// The current owner redrives an event: a waiting one with `Shard::retry_event`, a
    /// delivered or failed one as `retry_event` does, its record read back directly (for
    /// determinism: the shard's reader thread answers in its own time).
    fn operator_retry(&mut self) {
        let Some(owner) = self.current().filter(|owner| self.owners[*owner].shard.writable()) else {
            return;
        };
        let shard = Rc::clone(&self.owners[owner].shard);
        let (event_id, terminal, position) = {
            let state = shard.state().borrow();
            let count = state.events.len();
            if count == 0 {
                return;
            }
            let index = self.random.below(count as u64) as usize;
            let Some((event_id, event)) = state.events.iter().nth(index) else {
                return;
            };
            if event.in_flight {
                return;
            }
            (*event_id, event.status.is_terminal(), event.position)
        };
        let now = self.now;
        self.note(format!("operator retries {event_id} (terminal {terminal})"));
        if !terminal {
            self.spawn_counted(async move {
                let _ = shard.retry_event(event_id, now).await;
            });
            return;
        }
        let Some((_, Ok(event))) = load_from(&self.source, &[(event_id, position)]).pop() else {
            return;
        };
        let Some(redriven) = shard.state().borrow().redrive(event, now) else {
            return;
        };
        self.spawn_counted(async move {
            let _ = shard.append(Record::Redriven(redriven), now).await;
        });
    }

    /// Every check, after every step.
    fn check(&mut self) -> Result<(), Failure> {
        self.truth.catch_up(&self.stream, self.now)?;
        let last = self.stream.last_sequence();
        if self.truth.changed {
            self.truth.changed = false;
            let everything = BTreeSet::new();
            let fenced = self.truth.fenced.durable_view(1, &everything, self.now);
            let filtered = self.truth.filtered.durable_view(1, &everything, self.now);
            if let Some(difference) = fenced.difference(&filtered) {
                return Err(format!("a fenced record changed the state: {difference}"));
            }
            if self.truth.fenced.fenced() != self.truth.removed {
                return Err(format!(
                    "the fence ignored {} records, the rule removes {}",
                    self.truth.fenced.fenced(),
                    self.truth.removed
                ));
            }
            self.counts.fenced = self.truth.removed;
            self.counts.renumbered = self.truth.repeated;
        }
        for (event_id, sequence) in &self.acknowledged {
            if !self.truth.fenced.events.contains_key(event_id) {
                return Err(format!(
                    "acknowledged event {event_id} (sequence {sequence}) is not in the stream's state"
                ));
            }
        }
        let truth = self.truth.fenced.durable_view(1, &BTreeSet::new(), self.now);
        for index in 0..self.owners.len() {
            if self.alive(index) {
                self.check_owner(index, &truth, last)?;
            }
        }
        self.check_one_owner(last)
    }

    /// An owner's state keeps its invariants, holds every acknowledged event it has applied,
    /// and once it has applied the whole stream equals its replay.
    fn check_owner(&self, index: usize, truth: &DurableView, last: u64) -> Result<(), Failure> {
        let owner = &self.owners[index];
        let name = format!("{} (epoch {})", NODES[owner.node], owner.epoch);
        let state = owner.shard.state().borrow();
        state.check(self.now).map_err(|failure| format!("{name}: {failure}"))?;
        let applied = state.applied_lsn();
        for (event_id, sequence) in &self.acknowledged {
            if *sequence <= applied && !state.events.contains_key(event_id) {
                return Err(format!("{name} applied up to {applied} but lost acknowledged {event_id} ({sequence})"));
            }
        }
        // A deposed owner never writes again, and its state may keep what it made of its own
        // attempts in flight (an event redriven by the new owner while the old one had it in
        // flight keeps its status there): only an owner that is not deposed is held to the
        // replay, once it has applied the whole stream.
        if applied != last || !owner.shard.writable() {
            return Ok(());
        }
        let in_flight: BTreeSet<EventId> =
            state.events.iter().filter(|(_, event)| event.in_flight).map(|(event_id, _)| *event_id).collect();
        let live = state.durable_view(1, &in_flight, self.now);
        let replayed =
            if in_flight.is_empty() { None } else { Some(self.truth.fenced.durable_view(1, &in_flight, self.now)) };
        match live.difference(replayed.as_ref().unwrap_or(truth)) {
            Some(difference) => Err(format!("{name}: live state and replay differ: {difference}")),
            None => Ok(()),
        }
    }

    /// Once every running owner has applied the whole stream, at most one is not deposed, and
    /// it holds the latest epoch.
    fn check_one_owner(&self, last: u64) -> Result<(), Failure> {
        let alive: Vec<&Owner> =
            (0..self.owners.len()).filter(|index| self.alive(*index)).map(|index| &self.owners[index]).collect();
        if alive.iter().any(|owner| owner.shard.state().borrow().applied_lsn() != last) {
            return Ok(());
        }
        let owning: Vec<&&Owner> = alive.iter().filter(|owner| owner.shard.writable()).collect();
        match owning.as_slice() {
            [] => Ok(()),
            [owner] if owner.epoch == self.truth.latest => Ok(()),
            owners => Err(format!(
                "owners not deposed at the latest epoch {}: {:?}",
                self.truth.latest,
                owners.iter().map(|owner| (NODES[owner.node], owner.epoch)).collect::<Vec<_>>()
            )),
        }
    }

    /// The end: faults off, every node running, one owner, healthy destinations; every
    /// acknowledged event ends delivered or failed.
    async fn finish(&mut self) -> Result<(), Failure> {
        self.finishing = true;
        self.note("finish: faults off".into());
        for node in 0..NODES.len() {
            self.resume(node);
            self.revive(node);
            self.stream.lose_acks_of(node, false);
            self.stream.hold_acks_of(node, false);
            self.stream.release_acks_of(node);
        }
        self.settle().await;
        if self.current().is_none_or(|owner| !self.owners[owner].shard.writable()) {
            let node = self.random.below(NODES.len() as u64) as usize;
            self.take_over(node).await?;
        }
        self.settle().await;
        self.check()?;
        let owner = self.current().ok_or("no owner for the finish")?;
        let shard = Rc::clone(&self.owners[owner].shard);
        for index in 0..self.endpoints.len() {
            let id = self.endpoints[index].0.clone();
            match bounded(shard.set_enabled(&id, true, self.now), ROUNDS_MAX).await {
                Some(Ok(_)) => {}
                other => return Err(format!("enabling {id} for the finish: {other:?}")),
            }
        }
        for round in 0..5_000 {
            self.schedule_on(owner)?;
            while !self.reads.is_empty() {
                self.complete_read();
            }
            while !self.flights.is_empty() {
                self.complete_attempt();
            }
            self.settle().await;
            self.check()?;
            let state = shard.state().borrow();
            if self
                .acknowledged
                .keys()
                .all(|event_id| state.events.get(event_id).is_some_and(|event| event.status.is_terminal()))
            {
                drop(state);
                return self.replay_from_scratch(owner);
            }
            drop(state);
            self.now += if round % 10 == 9 { 600_000 } else { 1_000 };
        }
        let state = shard.state().borrow();
        let waiting: Vec<String> = self
            .acknowledged
            .keys()
            .filter(|event_id| !state.events.get(event_id).is_some_and(|event| event.status.is_terminal()))
            .take(5)
            .map(|event_id| format!("{event_id}: {:?}", state.event_json(*event_id, self.now)))
            .collect();
        let endpoints: Vec<String> = self.endpoints.iter().map(|(id, _)| state.describe_endpoint(id)).collect();
        Err(format!("events never finished at {}: {waiting:?}\n  {}", self.now, endpoints.join("\n  ")))
    }

    /// A fresh state fed the whole stream through the fence equals the owner's state (and so
    /// the incremental replay the checks used).
    fn replay_from_scratch(&self, owner: usize) -> Result<(), Failure> {
        let mut replayed = ShardState::new(PARTITION as u16, LIMITS);
        replayed.set_replaying(true);
        for record in self.stream.records() {
            let position = position_of(record.sequence, record.body.len());
            let decoded = Record::decode(record.kind, &record.body).map_err(|error| error.to_string())?;
            replayed.apply_fenced(record.sequence, position, record.writer, decoded, self.now);
        }
        let state = self.owners[owner].shard.state().borrow();
        let live = state.durable_view(1, &BTreeSet::new(), self.now);
        let theirs = replayed.durable_view(1, &BTreeSet::new(), self.now);
        match live.difference(&theirs) {
            Some(difference) => Err(format!("the owner and a replay from scratch differ: {difference}")),
            None => Ok(()),
        }
    }
}

fn run_seed(seed: u64, steps: usize) -> Result<Counts, String> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|error| error.to_string())?;
    let (outcome, step, counts, log) = runtime.block_on(async move {
        let mut sim = Sim::new(seed, steps);
        let outcome = sim.run().await;
        (outcome, sim.step, sim.counts, sim.log)
    });
    outcome.map(|()| counts).map_err(|failure| {
        format!(
            "seed {seed} failed at step {step} (replay with KAPSEL_SIM_SEED={seed}): {failure}\nlast steps:\n  {}",
            log.join("\n  ")
        )
    })
}

// The simulation itself: many seeds, each a reproducible bug report if it fails.
#[test]
fn cluster_simulation() {
    let steps = env_number("KAPSEL_SIM_STEPS").unwrap_or(300) as usize;
    let seeds: Vec<u64> = match env_number("KAPSEL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_number("KAPSEL_SIM_SEEDS").unwrap_or(24)).collect(),
    };
    report_panics_with_seed();
    let started = std::time::Instant::now();
    let mut total = Counts::default();
    for seed in &seeds {
        match run_seed(*seed, steps) {
            Ok(counts) => total.add(counts),
            Err(failure) => {
                AT.with(|at| at.set((u64::MAX, 0)));
                panic!("{failure}")
            }
        }
    }
    // Written to the process's standard output directly, so it shows even though the test
    // harness captures what tests print.
    let line = format!(
        "{} seeds, {steps} steps each, passed in {:.1} s: {} takeovers ({} failed), {} records fenced, {} repeats of delivered events in flight, {} duplicate 200s, {} attempt numbers repeated after a lost acknowledgement, {} ingests acknowledged, {} told failed, {} publishes landed late\n",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total.takeovers,
        total.failed_takeovers,
        total.fenced,
        total.repeats,
        total.duplicates,
        total.renumbered,
        total.acknowledged,
        total.told_failed,
        total.landed_late,
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
}
