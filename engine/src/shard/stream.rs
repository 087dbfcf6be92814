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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use kapsel_wal::Position;

use crate::state::Writer;

/// A record as it lies in a partition's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// Its sequence in the stream (from 1).
    pub sequence: u64,
    /// Who wrote it, as its header says.
    pub writer: Writer,
    /// The engine's record kind.
    pub kind: u8,
    /// The encoded record.
    pub body: Vec<u8>,
}

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

/// What a shard needs of its partition's stream.
pub trait PartitionStream: Send + Sync {
    /// Publishes a record; resolves once the stream acknowledged it (a quorum stored it).
    fn publish(&self, outgoing: Outgoing) -> Publishing;

    /// Reads records back by sequence, in the order asked, one answer each. Blocks: called on
    /// the shard's reader thread.
    fn read(&self, sequences: &[u64]) -> Vec<Result<StreamRecord, String>>;
}

/// An ordered feed of a partition's records from some sequence on.
pub trait Feed {
    /// The next record, in stream order; `None` once the feed has ended.
    fn poll_record(&mut self, context: &mut Context<'_>) -> Poll<Option<StreamRecord>>;
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
#[derive(Clone, Default)]
pub struct MemoryStream {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Default)]
struct Memory {
    records: Vec<StreamRecord>,
    /// While set, acknowledgements wait in `held` until released.
    holding: bool,
    held: VecDeque<(u64, futures_channel::oneshot::Sender<Result<u64, String>>)>,
    /// Refuses publishes with this reason (the stream unreachable).
    refusing: Option<String>,
    feeds: Vec<Waker>,
}

impl MemoryStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every record, in order.
    pub fn records(&self) -> Vec<StreamRecord> {
        self.memory().records.clone()
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
        for (sequence, sender) in held {
            let _ = sender.send(Ok(sequence));
        }
    }

    /// Refuses publishes with `reason` (`None`: takes them again).
    pub fn refuse(&self, reason: Option<&str>) {
        self.memory().refusing = reason.map(str::to_string);
    }

    /// Appends a record directly, as a writer elsewhere would (a paused owner's late write).
    pub fn append(&self, outgoing: Outgoing) -> u64 {
        let mut memory = self.memory();
        let sequence = memory.records.len() as u64 + 1;
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

    /// A feed of the stream from `sequence` on.
    pub fn feed(&self, sequence: u64) -> MemoryFeed {
        MemoryFeed { stream: self.clone(), next: sequence.max(1) }
    }
}

impl PartitionStream for MemoryStream {
    fn publish(&self, outgoing: Outgoing) -> Publishing {
        if let Some(reason) = self.memory().refusing.clone() {
            return Box::pin(std::future::ready(Err(reason)));
        }
        let sequence = self.append(outgoing);
        let mut memory = self.memory();
        if !memory.holding {
            return Box::pin(std::future::ready(Ok(sequence)));
        }
        let (sender, receiver) = futures_channel::oneshot::channel();
        memory.held.push_back((sequence, sender));
        Box::pin(async move { receiver.await.unwrap_or_else(|_| Err("the acknowledgement was lost".into())) })
    }

    fn read(&self, sequences: &[u64]) -> Vec<Result<StreamRecord, String>> {
        let memory = self.memory();
        sequences
            .iter()
            .map(|sequence| {
                let index = usize::try_from(sequence.saturating_sub(1)).unwrap_or(usize::MAX);
                match memory.records.get(index) {
                    Some(record) if *sequence > 0 => Ok(record.clone()),
                    _ => Err(format!("no record at sequence {sequence}")),
                }
            })
            .collect()
    }
}

/// [`MemoryStream::feed`].
pub struct MemoryFeed {
    stream: MemoryStream,
    next: u64,
}

impl Feed for MemoryFeed {
    fn poll_record(&mut self, context: &mut Context<'_>) -> Poll<Option<StreamRecord>> {
        let mut memory = self.stream.memory();
        let index = usize::try_from(self.next - 1).unwrap_or(usize::MAX);
        match memory.records.get(index) {
            Some(record) => {
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
