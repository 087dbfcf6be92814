//! A shard over a partition's stream (cluster mode, ADR 17): opening a partition as its new
//! owner (snapshot, replay, `Takeover`), publishing records as tickets, and the applier that
//! brings the stream's records, every node's, through the epoch fence in stream order. The
//! stream interface itself is in [`crate::shard::stream`].

use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::readback::{Reader, Source};
use super::stream::{self, Feed, Outgoing, PartitionStream};
use super::{Applying, Core, Log, Shard};
use crate::error::EngineError;
use crate::index::{Change, Row};
use crate::model::records::Record;
use crate::state::ShardState;

/// Where a stream shard's published record stands (cluster mode).
pub(super) enum Ticket {
    /// Waiting for the stream's acknowledgement.
    Publishing,
    /// Stored at this sequence; applied once the feed brings it back.
    Stored(u64),
    /// Not known to be stored, and why.
    Refused(String),
}

/// Records published to a stream and not yet seen applied, at most: a submit beyond it is
/// refused as backpressure (503 E3002).
pub const TICKETS_MAX: usize = 16 * 1024;

/// Refused tickets kept for their waiters, at most (the oldest are forgotten first; a waiter
/// looks at its ticket as soon as it is refused).
const REFUSED_KEPT: usize = 4096;

/// Tickets are numbered from here, above every stream sequence, so a number a stream shard
/// waits on says what it is: a ticket of its own publish, or a sequence of its stream (an
/// idempotency key's record, remembered by the state as the stream gave it).
pub const TICKET_BASE: u64 = 1 << 63;

impl Shard {
    /// An RFC 6962 inclusion proof of an event's record in its partition's sealed range of
    /// sequences (cluster mode; `cluster::seal` explains the leaves and the chain).
    pub async fn prove_in_stream(
        &self,
        event_id: crate::model::ids::EventId,
    ) -> Result<serde_json::Value, EngineError> {
        let Log::Stream { stream, .. } = &self.log else {
            return Err(EngineError::NotFound("not a partition".into()));
        };
        let sequence = {
            let state = self.core.state.borrow();
            let publication = state.publications.get(&event_id).map(|publication| publication.lsn);
            state.events.get(&event_id).map(|event| event.lsn).or(publication)
        };
        let Some(sequence) = sequence else {
            return Err(EngineError::NotFound(format!("event {event_id} not found")));
        };
        match stream.prove(sequence).await {
            Ok(mut proof) => {
                proof["event_id"] = serde_json::Value::String(event_id.to_string());
                Ok(proof)
            }
            Err(stream::ProofError::NotSealed) => Err(EngineError::NotFound(format!(
                "event {event_id} is not in a sealed range yet; a partition seals each complete range of {} sequences",
                crate::limits::PARTITION_SEAL_RANGE
            ))),
            Err(stream::ProofError::Gone(reason)) => {
                Err(EngineError::NotFound(format!("event {event_id} cannot be proven: {reason}")))
            }
            Err(stream::ProofError::Unavailable(reason)) => Err(EngineError::Unavailable(reason)),
        }
    }

    /// Opens partition `partition`'s stream as its new owner at lease `epoch` (cluster mode,
    /// ADR 17): replays the stream through `feed` (a feed of it from sequence 1) up to
    /// `last_sequence`, its last sequence when the lease was taken, then writes the `Takeover`
    /// and returns once it is applied. From then on records written by an owner of a lower
    /// epoch change nothing, and this shard's own count only until a higher `Takeover`. With
    /// `index`, the partition is indexed here while this shard owns it: every record its feed
    /// brings, an ignored one as no row (`crate::index` explains the checkpoints).
    #[allow(clippy::too_many_arguments)]
    pub async fn open_partition(
        partition: usize,
        stream: std::sync::Arc<dyn PartitionStream>,
        feed: Box<dyn Feed>,
        last_sequence: u64,
        lease: (u64, &str),
        limits: crate::state::StateLimits,
        index: Option<crate::index::IndexHandle>,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let (epoch, node) = lease;
        let number = u16::try_from(partition).map_err(|_| EngineError::Invalid("too many partitions".into()))?;
        let mut state = ShardState::new(number, limits);
        state.set_replaying(true);
        // The latest snapshot stands in for what retention purged; the stream must still hold
        // everything after the sequence it covers.
        let snapshot = stream.last_snapshot().await.map_err(|reason| {
            EngineError::Unavailable(format!("partition {partition}'s snapshot cannot be read: {reason}"))
        })?;
        let mut covered = 0;
        if let Some(stored) = snapshot {
            let snapshot = crate::shard::snapshot::decode(&stored.body, &format!("of partition {partition}"))
                .map_err(EngineError::Storage)?;
            covered = snapshot.applied_lsn;
            crate::shard::snapshot::restore(&mut state, snapshot);
            state.restore_owner_epoch(stored.epoch);
        }
        let reader =
            Reader::spawn(Source::Stream(std::sync::Arc::clone(&stream)), &format!("kapsel-read-p{partition}"))
                .map_err(|error| EngineError::Unavailable(format!("cannot start the reader thread: {error}")))?;
        let mut shard = Self::assemble(partition, Log::Stream { stream, epoch, partition }, state, reader, 0);
        let registration = index.map(|index| index.register_partition(partition));
        let indexing = registration.as_ref().map(|registration| Indexing {
            handle: registration.handle().clone(),
            watermark: std::sync::Arc::clone(registration.watermark()),
        });
        shard.indexer = registration.as_ref().map(|registration| registration.handle().clone());
        shard.registration = registration;
        monoio::spawn(run_stream_applier(Rc::clone(&shard.core), feed, epoch, covered + 1, indexing));
        shard.applied(last_sequence).await?;
        {
            let mut state = shard.core.state.borrow_mut();
            state.set_replaying(false);
            state.ids.start_epoch(epoch);
        }
        let takeover = crate::model::records::Takeover { epoch, node: node.to_string(), at_ms: now_ms };
        shard.append(Record::Takeover(takeover), now_ms).await?;
        if shard.core.state.borrow().owner_epoch() != epoch {
            return Err(deposed(partition));
        }
        Ok(shard)
    }

    /// Publishes a record to the partition's stream: its ticket, resolved by a small task
    /// when the stream acknowledges it.
    pub(super) fn publish_to_stream(
        &self,
        stream: &dyn PartitionStream,
        outgoing: Outgoing,
        partition: usize,
    ) -> Result<u64, EngineError> {
        let ticket = {
            let mut applying = self.core.applying.borrow_mut();
            if applying.deposed_at.is_some() {
                return Err(deposed(partition));
            }
            if applying.tickets.len() - applying.refused.len() >= TICKETS_MAX {
                return Err(EngineError::QueueFull(format!(
                    "partition {partition} has as many records in flight as it may"
                )));
            }
            applying.next_ticket += 1;
            let ticket = TICKET_BASE + applying.next_ticket;
            applying.tickets.insert(ticket, Ticket::Publishing);
            ticket
        };
        let publishing = stream.publish(outgoing);
        let core = Rc::clone(&self.core);
        monoio::spawn(async move {
            let outcome = publishing.await;
            let mut applying = core.applying.borrow_mut();
            if applying.tickets.contains_key(&ticket) {
                match outcome {
                    Ok(sequence) if sequence <= applying.applied_lsn => settle(&mut applying, ticket, sequence),
                    Ok(sequence) => {
                        applying.tickets.insert(ticket, Ticket::Stored(sequence));
                        applying.stored.insert(sequence, ticket);
                    }
                    Err(reason) => refuse(&mut applying, ticket, reason),
                }
            }
            for waker in applying.waiters.drain(..) {
                waker.wake();
            }
        });
        Ok(ticket)
    }
}

/// A ticket whose record is stored at `sequence` and applied: done, unless a later owner's
/// `Takeover` came before it (then it did not count).
fn settle(applying: &mut Applying, ticket: u64, sequence: u64) {
    if applying.deposed_at.is_some_and(|at| sequence > at) {
        refuse(applying, ticket, "moved".into());
    } else {
        applying.tickets.remove(&ticket);
    }
}

/// A ticket whose record is not known to be stored (or did not count): kept for every waiter.
fn refuse(applying: &mut Applying, ticket: u64, reason: String) {
    applying.tickets.insert(ticket, Ticket::Refused(reason));
    applying.refused.push_back(ticket);
    while applying.refused.len() > REFUSED_KEPT {
        if let Some(oldest) = applying.refused.pop_front() {
            applying.tickets.remove(&oldest);
        }
    }
}

/// Where a partition's applier hands what it applies to the index.
struct Indexing {
    handle: crate::index::IndexHandle,
    /// The applied sequence, for the index.
    watermark: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A stream shard's wait for its record `ticket` (the stream branch of [`Shard::durable`]):
/// ready once the stream acknowledged it and the feed brought it back applied; an error if the
/// stream did not store it, a later owner's `Takeover` came before it, or the feed failed. A
/// number below [`TICKET_BASE`] is a sequence of the stream: ready once it is applied.
pub(super) fn poll_ticket(
    applying: &mut Applying,
    ticket: u64,
    partition: usize,
    context: &mut Context<'_>,
) -> Poll<Result<(), EngineError>> {
    let failed_at = |sequence: u64| match &applying.failed {
        Some((from, reason)) if sequence >= *from => Some(Err(EngineError::Storage(reason.clone()))),
        _ => None,
    };
    let ready = if ticket < TICKET_BASE {
        if applying.applied_lsn >= ticket {
            Some(Ok(()))
        } else {
            failed_at(ticket)
        }
    } else {
        match applying.tickets.get(&ticket) {
            // Applied (the applier settles a ticket as it applies its record).
            None => Some(Ok(())),
            Some(Ticket::Publishing) => None,
            Some(Ticket::Refused(reason)) if reason == "moved" => Some(Err(deposed(partition))),
            // Kept: a repeat of the same idempotency key may wait on it too.
            Some(Ticket::Refused(reason)) => Some(Err(EngineError::Unavailable(format!(
                "partition {partition}'s stream did not store the record: {reason}"
            )))),
            Some(Ticket::Stored(sequence)) if applying.deposed_at.is_some_and(|at| *sequence > at) => {
                Some(Err(deposed(partition)))
            }
            Some(Ticket::Stored(sequence)) => failed_at(*sequence),
        }
    };
    if let Some(outcome) = ready {
        return Poll::Ready(outcome);
    }
    applying.waiters.push(context.waker().clone());
    Poll::Pending
}

/// Applies a partition's records as its feed brings them, in stream order, through the epoch
/// fence, then wakes whoever waits for them and the scheduler; notes the `Takeover` of a later
/// owner (this one is deposed from then on). A record that does not decode stops the shard: the
/// state could not follow the stream past it. So does a gap: the first record must come at or
/// before `first_expected` (the sequence after the snapshot's), every later one right after the
/// one before — a stream purged under a replaying shard (by an owner that did not know it was
/// deposed) is reopened from the newer snapshot, never followed with a hole.
async fn run_stream_applier(
    core: Rc<Core>,
    mut feed: Box<dyn Feed>,
    epoch: u64,
    first_expected: u64,
    indexing: Option<Indexing>,
) {
    let mut expected: Option<u64> = None;
    poll_fn(|context| {
        let mut advanced = false;
        while core.applying.borrow().failed.is_none() {
            let record = match feed.poll_record(context) {
                Poll::Pending => break,
                Poll::Ready(Some(record)) => record,
                Poll::Ready(None) => {
                    let next = core.applying.borrow().applied_lsn + 1;
                    core.applying.borrow_mut().failed = Some((next, "the partition's feed ended".into()));
                    advanced = true;
                    break;
                }
            };
            advanced = true;
            let sequence = record.sequence;
            let in_order = match expected {
                None => sequence <= first_expected,
                Some(next) => sequence == next,
            };
            if !in_order {
                let reason = format!(
                    "the partition's stream skips to {sequence} (expected {}): purged under this shard",
                    expected.unwrap_or(first_expected)
                );
                tracing::warn!(shard = core.index, %reason, "cannot apply the partition's stream");
                core.applying.borrow_mut().failed = Some((sequence, reason));
                break;
            }
            expected = Some(sequence + 1);
            if record.kind == stream::KIND_SNAPSHOT {
                // Not a record: what a new owner starts from.
                let mut applying = core.applying.borrow_mut();
                applying.applied_lsn = applying.applied_lsn.max(sequence);
                if let Some(indexing) = &indexing {
                    indexing.handle.feed(Change { shard: core.index, lsn: sequence, row: Row::Nothing });
                }
                continue;
            }
            let decoded = match Record::decode(record.kind, &record.body) {
                Ok(decoded) => decoded,
                Err(error) => {
                    let reason = format!("record {sequence} of the partition's stream: {error}");
                    tracing::error!(shard = core.index, %reason, "cannot apply the partition's stream");
                    core.applying.borrow_mut().failed = Some((sequence, reason));
                    break;
                }
            };
            let taken_over = matches!(&decoded, Record::Takeover(takeover) if takeover.epoch > epoch);
            let position = stream::position_of(sequence, record.body.len());
            let row = indexing.as_ref().map(|_| Row::from_record(&decoded));
            let applied = core.state.borrow_mut().apply_fenced(
                sequence,
                position,
                record.writer,
                decoded,
                crate::clock::now_ms(),
            );
            if let (Some(indexing), Some(row)) = (&indexing, row) {
                let row = if applied { row } else { Row::Nothing };
                indexing.handle.feed(Change { shard: core.index, lsn: sequence, row });
            }
            let mut applying = core.applying.borrow_mut();
            applying.applied_lsn = applying.applied_lsn.max(sequence);
            if applied && taken_over {
                applying.deposed_at.get_or_insert(sequence);
            }
            if let Some(ticket) = applying.stored.remove(&sequence) {
                settle(&mut applying, ticket, sequence);
            }
        }
        if advanced {
            if let Some(indexing) = &indexing {
                let applied = core.applying.borrow().applied_lsn;
                indexing.watermark.store(applied, std::sync::atomic::Ordering::Release);
            }
            core.records_applied();
        }
        Poll::<()>::Pending
    })
    .await;
}

pub(super) fn deposed(partition: usize) -> EngineError {
    EngineError::Unavailable(format!("partition {partition} moved to another node"))
}
