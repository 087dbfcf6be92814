//! A shard whose log is a partition's replicated stream (cluster mode, ADR 17) instead of a
//! local write-ahead log: what the shard needs of the stream, and an in-memory stream for the
//! tests and the simulation.
//!
//! The shard publishes its records and learns each one's sequence from the stream's
//! acknowledgement; it applies records only as they come back through its feed (an ordered
//! consumer of the whole partition), its own and every other node's interleaved in the stream's
//! one order, through the epoch fence ([`crate::state::ShardState::apply_fenced`]). So the
//! state is what the stream gives, live and on replay alike, on whichever node replays it.
//!
//! A record in a stream has no segment: its [`Position`] holds the stream sequence in
//! `segment_id` and the record's length in `length` ([`position_of`], [`sequence_of`]), so the
//! state keeps one kind of position and read-back asks the stream by sequence.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use kapsel_wal::Position;

use crate::state::Writer;

pub use crate::model::stream::{Feed, StreamRecord, KIND_SNAPSHOT};

/// A record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Who writes it: an owner stamps its epoch.
    pub writer: Writer,
    /// The engine's record kind.
    pub kind: u8,
    /// The encoded record.
    pub body: Vec<u8>,
}

/// A publish waiting for the stream's acknowledgement: the record's sequence, or why it is not
/// known to be stored.
pub type Publishing = Pin<Box<dyn Future<Output = Result<u64, String>>>>;

/// Any other call's answer, awaited on the shard's runtime.
pub type Answer<T> = Pin<Box<dyn Future<Output = Result<T, String>>>>;

/// Why a partition's stream gave no inclusion proof of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// Its range of sequences is not sealed yet.
    NotSealed,
    /// It, or the rest of its range, is no longer stored (purged), or was never there.
    Gone(String),
    /// The stream or its seals could not be read, or they disagree.
    Unavailable(String),
}

/// A partition's latest snapshot, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Its own sequence.
    pub sequence: u64,
    /// The epoch of the owner that wrote it (the latest `Takeover` it covers).
    pub epoch: u64,
    /// The encoded snapshot.
    pub body: Vec<u8>,
}

/// What a shard needs of its partition's stream.
pub trait PartitionStream: Send + Sync {
    /// Publishes a record; resolves once the stream acknowledged it (a quorum stored it).
    fn publish(&self, outgoing: Outgoing) -> Publishing;

    /// Reads records back by sequence, in the order asked, one answer each. Blocks: called on
    /// the shard's reader thread.
    fn read(&self, sequences: &[u64]) -> Vec<Result<StreamRecord, String>>;

    /// The first and the last sequence stored (the first is the last plus one when empty).
    fn extent(&self) -> Answer<(u64, u64)>;

    /// When the message at `sequence` was stored (Unix ms, the stream's clock); `None` when it
    /// is not there.
    fn stored_at(&self, sequence: u64) -> Answer<Option<u64>>;

    /// Removes every message below `sequence` (retention; only an owner whose lease holds).
    fn purge_below(&self, sequence: u64) -> Answer<u64>;

    /// The latest snapshot, if any.
    fn last_snapshot(&self) -> Answer<Option<StoredSnapshot>>;

    /// Whether this node may write as the partition's owner now (its lease holds by its clock);
    /// the scheduler starts no attempt while it may not, as an attempt's outcome could not be
    /// recorded.
    fn writable(&self) -> bool {
        true
    }

    /// An RFC 6962 inclusion proof of the message at `sequence` in its sealed range.
    fn prove(&self, sequence: u64) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, ProofError>>>>;
}

/// The position the state keeps for a record of a stream: its sequence and length.
pub fn position_of(sequence: u64, length: usize) -> Position {
    Position { segment_id: sequence, offset: 0, length: u32::try_from(length).unwrap_or(u32::MAX) }
}

/// The stream sequence a [`position_of`] position names.
pub fn sequence_of(position: Position) -> u64 {
    position.segment_id
}

/// A partition's stream in memory, shared by the shards of several simulated nodes: appends
/// are stored at once in one order; acknowledgements can be held back (a publish whose
/// acknowledgement is late or never comes) and records written while a writer is paused land
/// whenever the test says.
///
/// For the cluster simulation (`engine/tests/cluster_simulation.rs`) each node publishes
/// through its own handle ([`MemoryStream::from_node`]), and what happens between a node and
/// the stream is decided per node: its publishes can be held in transit and land later, after
/// other nodes' records ([`MemoryStream::hold_landing`], [`MemoryStream::land`]: reordered
/// messages) or never ([`MemoryStream::drop_in_transit`]); its acknowledgements can be held
/// ([`MemoryStream::hold_acks_of`]) or lost, the record stored but the publisher told it failed
/// ([`MemoryStream::lose_acks_of`]). Everything happens in the order the test calls it, so a
/// single-threaded test is deterministic.
#[derive(Clone, Default)]
pub struct MemoryStream {
    inner: Arc<Mutex<Memory>>,
    /// The node this handle publishes for (0 unless made by [`MemoryStream::from_node`]).
    node: usize,
}

/// A publish's acknowledgement, on its way to the publisher.
type Acknowledging = futures_channel::oneshot::Sender<Result<u64, String>>;

#[derive(Default)]
struct Memory {
    records: Vec<StreamRecord>,
    /// When each record was stored, by the engine's clock.
    stored_at: Vec<u64>,
    /// Records below this sequence were purged.
    first: u64,
    /// While set, acknowledgements wait in `held` until released.
    holding: bool,
    held: VecDeque<(Result<u64, String>, Acknowledging)>,
    /// Refuses publishes with this reason (the stream unreachable).
    refusing: Option<String>,
    feeds: Vec<Waker>,
    /// What lies between each node and the stream (only nodes a test set anything for).
    links: BTreeMap<usize, Link>,
}

/// Between one node and the stream.
#[derive(Default)]
struct Link {
    /// While set, the node's publishes stay in `in_transit` until landed or dropped.
    landing_held: bool,
    /// Publishes not landed yet, in the order made, each with whether its acknowledgement will
    /// be lost.
    in_transit: VecDeque<(Outgoing, bool, Acknowledging)>,
    /// While set, the node's acknowledgements wait in `held_acks` until released.
    acks_held: bool,
    held_acks: VecDeque<(Result<u64, String>, Acknowledging)>,
    /// While set, a publish is stored but its publisher is told it failed.
    acks_lost: bool,
}

/// What a publisher whose acknowledgement was lost is told.
const ACK_LOST: &str = "the acknowledgement was lost";

impl MemoryStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on the same stream that publishes as `node`, so that its links can be held,
    /// delayed or lossy on their own.
    pub fn from_node(&self, node: usize) -> Self {
        Self { inner: Arc::clone(&self.inner), node }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every record, in order.
    pub fn records(&self) -> Vec<StreamRecord> {
        self.memory().records.clone()
    }

    /// The records from sequence `from` on (from 1), in order.
    pub fn records_from(&self, from: u64) -> Vec<StreamRecord> {
        let memory = self.memory();
        let skip = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        memory.records.iter().skip(skip).cloned().collect()
    }

    /// The last sequence stored (0: empty).
    pub fn last_sequence(&self) -> u64 {
        self.memory().records.len() as u64
    }

    /// Holds acknowledgements back from now on (`true`) or sends them at once again.
    pub fn hold_acks(&self, holding: bool) {
        self.memory().holding = holding;
    }

    /// Sends the held acknowledgements.
    pub fn release_acks(&self) {
        let held: Vec<_> = self.memory().held.drain(..).collect();
        for (answer, sender) in held {
            let _ = sender.send(answer);
        }
    }

    /// Refuses publishes with `reason` (`None`: takes them again).
    pub fn refuse(&self, reason: Option<&str>) {
        self.memory().refusing = reason.map(str::to_string);
    }

    /// Holds `node`'s publishes in transit from now on (`true`: a paused or partitioned node's
    /// writes on their way), or lets new ones land at once again (those held stay held until
    /// [`MemoryStream::land`]).
    pub fn hold_landing(&self, node: usize, holding: bool) {
        self.memory().links.entry(node).or_default().landing_held = holding;
    }

    /// Lands `node`'s publishes held in transit, in the order they were made, after everything
    /// stored so far; each is acknowledged (or its acknowledgement held or lost) as it lands.
    /// Returns how many landed.
    pub fn land(&self, node: usize) -> usize {
        let mut memory = self.memory();
        let in_transit: Vec<_> = memory.links.entry(node).or_default().in_transit.drain(..).collect();
        let count = in_transit.len();
        let mut answers = Vec::new();
        for (outgoing, lost, sender) in in_transit {
            let sequence = Self::store(&mut memory, outgoing);
            let answer = if lost { Err(ACK_LOST.to_string()) } else { Ok(sequence) };
            if let Some(ready) = Self::acknowledge(&mut memory, node, answer, sender) {
                answers.push(ready);
            }
        }
        drop(memory);
        for (answer, sender) in answers {
            let _ = sender.send(answer);
        }
        count
    }

    /// Drops `node`'s publishes held in transit: they are never stored, and their publishers
    /// are told so (a dead node's writes that never arrived). Returns how many were dropped.
    pub fn drop_in_transit(&self, node: usize) -> usize {
        let in_transit: Vec<_> = self.memory().links.entry(node).or_default().in_transit.drain(..).collect();
        let count = in_transit.len();
        for (_, _, sender) in in_transit {
            let _ = sender.send(Err("the publish never reached the stream".into()));
        }
        count
    }

    /// Publishes of `node` held in transit.
    pub fn in_transit(&self, node: usize) -> usize {
        self.memory().links.get(&node).map_or(0, |link| link.in_transit.len())
    }

    /// Holds `node`'s acknowledgements from now on (`true`), or sends new ones at once again.
    pub fn hold_acks_of(&self, node: usize, holding: bool) {
        self.memory().links.entry(node).or_default().acks_held = holding;
    }

    /// Sends `node`'s held acknowledgements, in order.
    pub fn release_acks_of(&self, node: usize) {
        let held: Vec<_> = self.memory().links.entry(node).or_default().held_acks.drain(..).collect();
        for (answer, sender) in held {
            let _ = sender.send(answer);
        }
    }

    /// Loses `node`'s acknowledgements from now on (`true`): its publishes are stored, but it is
    /// told they failed, as when an acknowledgement times out. Decided as each publish is made.
    pub fn lose_acks_of(&self, node: usize, losing: bool) {
        self.memory().links.entry(node).or_default().acks_lost = losing;
    }

    /// Appends a record directly, as a writer elsewhere would (a paused owner's late write).
    pub fn append(&self, outgoing: Outgoing) -> u64 {
        Self::store(&mut self.memory(), outgoing)
    }

    /// Stores a record at the next sequence and wakes the feeds.
    fn store(memory: &mut Memory, outgoing: Outgoing) -> u64 {
        let sequence = memory.records.len() as u64 + 1;
        memory.stored_at.push(crate::clock::now_ms());
        memory.records.push(StreamRecord {
            sequence,
            writer: outgoing.writer,
            kind: outgoing.kind,
            body: outgoing.body,
        });
        for waker in memory.feeds.drain(..) {
            waker.wake();
        }
        sequence
    }

    /// Holds an acknowledgement if the stream or `node`'s link holds them; else hands it back to
    /// be sent (after the lock is released).
    fn acknowledge(
        memory: &mut Memory,
        node: usize,
        answer: Result<u64, String>,
        sender: Acknowledging,
    ) -> Option<(Result<u64, String>, Acknowledging)> {
        if memory.holding {
            memory.held.push_back((answer, sender));
            return None;
        }
        match memory.links.get_mut(&node) {
            Some(link) if link.acks_held => {
                link.held_acks.push_back((answer, sender));
                None
            }
            _ => Some((answer, sender)),
        }
    }

    /// A feed of the stream from `sequence` on.
    pub fn feed(&self, sequence: u64) -> MemoryFeed {
        MemoryFeed { stream: self.clone(), next: sequence.max(1), gate: FeedGate::default() }
    }
}

impl PartitionStream for MemoryStream {
    fn publish(&self, outgoing: Outgoing) -> Publishing {
        let mut memory = self.memory();
        if let Some(reason) = memory.refusing.clone() {
            return Box::pin(std::future::ready(Err(reason)));
        }
        let (landing_held, lost) =
            memory.links.get(&self.node).map_or((false, false), |link| (link.landing_held, link.acks_lost));
        let (sender, receiver) = futures_channel::oneshot::channel();
        let answering = Box::pin(async move { receiver.await.unwrap_or_else(|_| Err(ACK_LOST.into())) });
        if landing_held {
            memory.links.entry(self.node).or_default().in_transit.push_back((outgoing, lost, sender));
            return answering;
        }
        let sequence = Self::store(&mut memory, outgoing);
        let answer = if lost { Err(ACK_LOST.to_string()) } else { Ok(sequence) };
        match Self::acknowledge(&mut memory, self.node, answer, sender) {
            // Answered at once: no channel to wait on.
            Some((answer, _)) => Box::pin(std::future::ready(answer)),
            None => answering,
        }
    }

    fn read(&self, sequences: &[u64]) -> Vec<Result<StreamRecord, String>> {
        let memory = self.memory();
        sequences
            .iter()
            .map(|sequence| {
                let index = usize::try_from(sequence.saturating_sub(1)).unwrap_or(usize::MAX);
                match memory.records.get(index) {
                    Some(record) if *sequence > 0 && *sequence >= memory.first => Ok(record.clone()),
                    _ => Err(format!("no record at sequence {sequence}")),
                }
            })
            .collect()
    }

    fn extent(&self) -> Answer<(u64, u64)> {
        let memory = self.memory();
        let last = memory.records.len() as u64;
        Box::pin(std::future::ready(Ok((memory.first.max(1), last))))
    }

    fn stored_at(&self, sequence: u64) -> Answer<Option<u64>> {
        let memory = self.memory();
        let index = usize::try_from(sequence.saturating_sub(1)).unwrap_or(usize::MAX);
        let at = memory.stored_at.get(index).copied().filter(|_| sequence > 0 && sequence >= memory.first);
        Box::pin(std::future::ready(Ok(at)))
    }

    fn purge_below(&self, sequence: u64) -> Answer<u64> {
        let mut memory = self.memory();
        let before = memory.first.max(1);
        let first = sequence.min(memory.records.len() as u64 + 1).max(before);
        memory.first = first;
        for record in memory.records.iter_mut().take(usize::try_from(first - 1).unwrap_or(usize::MAX)) {
            record.body = Vec::new();
        }
        Box::pin(std::future::ready(Ok(first - before)))
    }

    fn last_snapshot(&self) -> Answer<Option<StoredSnapshot>> {
        let memory = self.memory();
        let first = memory.first;
        let snapshot = memory.records.iter().rev().take_while(|record| record.sequence >= first).find_map(|record| {
            match (record.kind, record.writer) {
                (KIND_SNAPSHOT, Writer::Owner { epoch }) => {
                    Some(StoredSnapshot { sequence: record.sequence, epoch, body: record.body.clone() })
                }
                _ => None,
            }
        });
        Box::pin(std::future::ready(Ok(snapshot)))
    }

    fn prove(&self, _sequence: u64) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, ProofError>>>> {
        // The memory stream keeps no seals (they live in the cluster's bucket).
        Box::pin(std::future::ready(Err(ProofError::NotSealed)))
    }
}

/// [`MemoryStream::feed`]: brings every record in order, as far as its [`FeedGate`] lets it.
pub struct MemoryFeed {
    stream: MemoryStream,
    next: u64,
    gate: FeedGate,
}

impl MemoryFeed {
    /// The feed's gate, to make it lag behind the stream (a paused node's consumer) and catch
    /// up again; kept by the test while the shard owns the feed.
    pub fn gate(&self) -> FeedGate {
        self.gate.clone()
    }
}

/// How far a [`MemoryFeed`] may go: open (everything, as it is stored) or held at a sequence.
#[derive(Clone, Default)]
pub struct FeedGate {
    inner: Arc<Mutex<Gate>>,
}

#[derive(Default)]
struct Gate {
    /// The last sequence the feed may bring (`None`: no limit).
    limit: Option<u64>,
    /// The last sequence it brought.
    brought: u64,
    /// The feed waiting for the gate to open.
    waker: Option<Waker>,
}

impl FeedGate {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the feed where it is: it brings nothing more until opened or advanced.
    pub fn pause(&self) {
        let mut gate = self.gate();
        gate.limit = Some(gate.brought);
    }

    /// Lets the feed bring up to `count` more records than its limit allowed (none while open).
    pub fn advance(&self, count: u64) {
        let mut gate = self.gate();
        if let Some(limit) = gate.limit {
            gate.limit = Some(limit.saturating_add(count));
            if let Some(waker) = gate.waker.take() {
                waker.wake();
            }
        }
    }

    /// Lets the feed bring everything again.
    pub fn open(&self) {
        let mut gate = self.gate();
        gate.limit = None;
        if let Some(waker) = gate.waker.take() {
            waker.wake();
        }
    }

    /// Whether the feed is held (paused or lagging by a limit).
    pub fn is_held(&self) -> bool {
        self.gate().limit.is_some()
    }

    /// The last sequence the feed brought.
    pub fn brought(&self) -> u64 {
        self.gate().brought
    }
}

impl Feed for MemoryFeed {
    fn poll_record(&mut self, context: &mut Context<'_>) -> Poll<Option<StreamRecord>> {
        let mut gate = self.gate.gate();
        if gate.limit.is_some_and(|limit| self.next > limit) {
            gate.waker = Some(context.waker().clone());
            return Poll::Pending;
        }
        let mut memory = self.stream.memory();
        // A consumer starts at the first message still stored.
        self.next = self.next.max(memory.first);
        let index = usize::try_from(self.next - 1).unwrap_or(usize::MAX);
        match memory.records.get(index) {
            Some(record) => {
                gate.brought = self.next;
                self.next += 1;
                Poll::Ready(Some(record.clone()))
            }
            None => {
                memory.feeds.push(context.waker().clone());
                Poll::Pending
            }
        }
    }
}
