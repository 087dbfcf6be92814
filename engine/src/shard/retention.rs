//! WAL retention: each shard removes its sealed segments once nothing needs them.
//!
//! A sealed segment may go when it was sealed longer ago than `KAPSEL_RETENTION` (and than the
//! idempotency window, so a key is never forgotten early across a restart), every event it
//! received is terminal, and — when the index runs — the index holds all of it.
//!
//! Events still waiting (a paused endpoint, an open breaker, a long retry schedule) would pin
//! their segment, and every later one, for as long as they wait. Retention therefore carries
//! them forward: it writes each again at the end of the log with its delivery progress
//! (`Record::EventCarried`), after which the old segment holds nothing needed. Before removing,
//! it writes the shard's endpoint snapshot ([`crate::shard::snapshot`]), so a restart still knows the
//! endpoints whose records went. Seals stay in the audit chain, so `kapsel audit verify` still
//! passes.

use std::rc::Rc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::model::records::Record;
use crate::shard::Shard;

/// When and what retention may remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Minimum age of a segment's seal (`KAPSEL_RETENTION`).
    pub age_ms: u64,
    /// Pause between passes.
    pub interval: Duration,
}

impl RetentionPolicy {
    /// The policy for `KAPSEL_RETENTION`: a pass every minute, more often for short retention
    /// (as in tests), never more than ten times a second.
    pub fn new(age_ms: u64) -> Self {
        let interval = Duration::from_millis((age_ms / 2).clamp(100, 60_000));
        Self { age_ms, interval }
    }
}

/// Waiting events carried forward per pass, at most (their records are read back first).
pub const CARRIED_PER_PASS_MAX: usize = 1024;

/// The first LSN that age and the index let go of: sealed long enough ago, and indexed.
fn aged_bound(shard: &Shard, age_ms: u64, now_ms: u64) -> u64 {
    let cutoff = now_ms.saturating_sub(age_ms);
    let mut bound = 0;
    let Some(wal) = shard.wal() else {
        return 0;
    };
    for seal in wal.sealed_segments() {
        if seal.sealed_at_ms > cutoff {
            break;
        }
        bound = seal.last_lsn + 1;
    }
    bound.min(index_bound(shard))
}

/// The first LSN (or stream sequence) the index has not committed yet, when the index runs:
/// nothing from it on may be removed.
fn index_bound(shard: &Shard) -> u64 {
    shard.index_handle().map_or(u64::MAX, |index| {
        index.status().shards().get(shard.index).map_or(0, crate::index::ShardProgress::indexed) + 1
    })
}

/// Waiting events, not in flight, whose record lies in segments old enough to go: what the
/// next pass will carry forward (at most [`CARRIED_PER_PASS_MAX`] of them).
pub fn to_carry(shard: &Shard, age_ms: u64, now_ms: u64) -> usize {
    shard.state().borrow().pinning_below(aged_bound(shard, age_ms, now_ms), usize::MAX).len()
}

/// The first LSN retention must keep: everything below it may be removed.
pub fn keep_from(shard: &Shard, age_ms: u64, now_ms: u64) -> u64 {
    let bound = aged_bound(shard, age_ms, now_ms);
    shard.state().borrow().oldest_waiting_lsn().map_or(bound, |waiting| bound.min(waiting))
}

/// Writes waiting events whose records lie below `bound` again at the end of the log, at most
/// [`CARRIED_PER_PASS_MAX`] per pass. Their records are read back by position; each carried
/// record is built from the event's progress in the same step that appends it, and the state
/// learns the new position when it applies the record. A full log queue ends the pass early
/// (the next pass goes on); nothing is left half-done.
async fn carry_forward(shard: &Shard, bound: u64, now_ms: u64) -> Result<usize, crate::EngineError> {
    let pinning = shard.state().borrow().pinning_below(bound, CARRIED_PER_PASS_MAX);
    if pinning.is_empty() {
        return Ok(0);
    }
    let loaded = shard.read_events(pinning).await;
    let mut submitted = Vec::new();
    let mut carried = 0;
    for (event_id, result) in loaded {
        let event = match result {
            Ok(event) => event,
            Err(reason) => {
                tracing::warn!(shard = shard.index, %event_id, %reason, "retention could not read a waiting event back; it stays where it is");
                continue;
            }
        };
        let Some(record) = shard.state().borrow().carry(event_id, event) else {
            continue;
        };
        match shard.submit(Record::EventCarried(record), now_ms) {
            Ok(lsn) => submitted.push(lsn),
            Err(crate::EngineError::QueueFull(_)) => break,
            Err(error) => return Err(error),
        }
        carried += 1;
    }
    shard.durable_all(&submitted).await?;
    Ok(carried)
}

/// One pass: carries waiting events forward, snapshots the endpoints and removes what may go.
/// Returns the removed segment ids.
pub async fn pass(shard: &Shard, age_ms: u64, now_ms: u64) -> Result<Vec<u64>, crate::EngineError> {
    let Some(wal) = shard.wal() else {
        let purged = stream_pass(shard, age_ms, now_ms).await?;
        if purged > 0 {
            tracing::info!(partition = shard.index, purged, "retention purged the partition's stream");
        }
        return Ok(Vec::new());
    };
    carry_forward(shard, aged_bound(shard, age_ms, now_ms), now_ms).await?;
    let removable = |bound: u64| wal.sealed_segments().iter().any(|seal| seal.last_lsn < bound && wal.holds(seal));
    // The snapshot and the first bound are taken together: an event waiting then keeps its
    // records even if it is delivered while the snapshot is written, so every outcome the
    // snapshot's breakers lack stays in the log with its event.
    let (snapshot, bound_at_snapshot) =
        (crate::shard::snapshot::Snapshot::of(&shard.state().borrow()), keep_from(shard, age_ms, now_ms));
    if !removable(bound_at_snapshot) {
        return Ok(Vec::new());
    }
    let snapshot_lsn = snapshot.applied_lsn;
    let directory = wal.directory().to_path_buf();
    crate::shard::off_shard("kapsel-snapshot", move || crate::shard::snapshot::write(&directory, &snapshot))
        .await?
        .map_err(crate::EngineError::Storage)?;
    // Decided and handed to the log in one step: nothing can start waiting on an old record in
    // between (a redrive of a delivered or failed event carries the event itself). Nothing the
    // snapshot does not reflect is removed.
    let bound = keep_from(shard, age_ms, now_ms).min(bound_at_snapshot).min(snapshot_lsn + 1);
    Ok(wal.remove_sealed_below(bound).await?)
}

/// The first sequence of a partition's stream younger than `cutoff_ms` (or the sequence after
/// `applied` when all are older): found by a binary search on the stream's own timestamps,
/// sequences being stored in time order.
async fn first_younger(
    stream: &dyn crate::shard::stream::PartitionStream,
    first: u64,
    applied: u64,
    cutoff_ms: u64,
) -> Result<u64, crate::EngineError> {
    let unavailable = |reason: String| crate::EngineError::Unavailable(format!("retention: {reason}"));
    let (mut low, mut high) = (first, applied.saturating_add(1));
    while low < high {
        let middle = low + (high - low) / 2;
        // A message gone (purged meanwhile) counts as old.
        let old = stream.stored_at(middle).await.map_err(unavailable)?.is_none_or(|at| at <= cutoff_ms);
        if old {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// One pass over a partition's stream (cluster mode), as its owner: the same rules as for a
/// local log, with the stream's timestamps for the segments' seal times. Carries waiting events
/// out of the aged part, writes a snapshot (endpoints, tenants, keys, the fence's epoch) as a
/// message of the stream, then purges below what anything still needs: the aged bound, the
/// oldest waiting event's record, and the snapshot's sequence. Returns the messages purged. An
/// owner that is no longer writable does nothing.
pub async fn stream_pass(shard: &Shard, age_ms: u64, now_ms: u64) -> Result<u64, crate::EngineError> {
    let Some(stream) = shard.stream().cloned() else {
        return Ok(0);
    };
    let Some((epoch, false)) = shard.ownership() else {
        return Ok(0);
    };
    let unavailable = |reason: String| crate::EngineError::Unavailable(format!("retention: {reason}"));
    let (first, _) = stream.extent().await.map_err(unavailable)?;
    let applied = shard.state().borrow().applied_lsn();
    let aged =
        first_younger(stream.as_ref(), first, applied, now_ms.saturating_sub(age_ms)).await?.min(index_bound(shard));
    if aged <= first {
        return Ok(0);
    }
    carry_forward(shard, aged, now_ms).await?;
    let snapshot = crate::shard::snapshot::Snapshot::of(&shard.state().borrow());
    let covered = snapshot.applied_lsn;
    let keep = |shard: &Shard| shard.state().borrow().oldest_waiting_lsn().map_or(aged, |waiting| aged.min(waiting));
    if keep(shard) <= first || !shard.writable() {
        return Ok(0);
    }
    let body = crate::shard::snapshot::encode(&snapshot).map_err(crate::EngineError::Storage)?;
    let outgoing = crate::shard::stream::Outgoing {
        writer: crate::state::Writer::Owner { epoch: shard.state().borrow().owner_epoch().max(epoch) },
        kind: crate::shard::stream::KIND_SNAPSHOT,
        body,
    };
    stream.publish(outgoing).await.map_err(unavailable)?;
    // Decided after the snapshot is stored: nothing it does not reflect goes, nor anything a
    // waiting event (or one that started waiting meanwhile) still needs.
    let bound = keep(shard).min(covered + 1);
    if bound <= first || !shard.writable() {
        return Ok(0);
    }
    stream.purge_below(bound).await.map_err(unavailable)
}

/// Runs passes until `stop` says so. Shutdown does not wait for it: a pass cut short leaves
/// segments for the next start, and what it appended is flushed with the rest of the log.
pub async fn run(shard: Rc<Shard>, policy: RetentionPolicy, stop: Rc<dyn Fn() -> bool>) {
    let mut last_error = None;
    loop {
        monoio::time::sleep(policy.interval).await;
        if stop() {
            return;
        }
        let outcome = pass(&shard, policy.age_ms, now_ms()).await;
        shard.metrics().retention_pass(outcome.as_ref().map_or(0, Vec::len));
        match outcome {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(shard = shard.index, segments = ?removed, "retention removed sealed segments");
                last_error = None;
            }
            Ok(_) => last_error = None,
            Err(error) => {
                let text = error.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(shard = shard.index, error = %text, "retention pass failed");
                    last_error = Some(text);
                }
            }
        }
    }
}
