//! Where the index reads what the shards' channel did not bring: each shard's write-ahead log
//! (single-node mode) or each partition's stream (cluster mode, ADR 17), and how a stream's
//! records become changes through the epoch fence.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::rows::{Change, Row};
use crate::model::records::Record;
use crate::model::stream::{admits, Feed, StreamRecord, KIND_SNAPSHOT};

/// The logs the index is derived from.
#[derive(Clone)]
pub enum Logs {
    /// Single-node mode: shard `n`'s write-ahead log in `<data>/wal/shard-<n>`.
    Wal(PathBuf),
    /// Cluster mode: partition `n`'s stream.
    Streams(Arc<dyn StreamSource>),
}

/// A feed being opened.
pub type Opening = Pin<Box<dyn Future<Output = Result<Box<dyn Feed>, String>>>>;

/// The partitions' streams, as the index thread reads them.
pub trait StreamSource: Send + Sync {
    /// An ordered feed of `partition`'s stream from `from` on (the first record it gives is
    /// the first still stored at or after `from`).
    fn open(&self, partition: usize, from: u64) -> Opening;
}

/// How long the index waits for a stream's next record while it reads a gap below the
/// partition's applied sequence (stored, so it comes at once unless NATS is in trouble).
const RECORD_WAIT: Duration = Duration::from_secs(2);

/// What the index takes of a stream's record: its row, or [`Row::Nothing`] for a snapshot and
/// for a record the epoch fence ignores, exactly as the owner's applier did. `fence` is the
/// fence's epoch before the record and after it.
pub fn change_of(partition: usize, fence: &mut u64, record: &StreamRecord) -> Result<Change, String> {
    let row = if record.kind == KIND_SNAPSHOT {
        Row::Nothing
    } else {
        let decoded = Record::decode(record.kind, &record.body)
            .map_err(|error| format!("record {} of partition {partition}'s stream: {error}", record.sequence))?;
        if admits(*fence, &decoded, record.writer) {
            if let Record::Takeover(takeover) = &decoded {
                *fence = takeover.epoch;
            }
            Row::from_record(&decoded)
        } else {
            Row::Nothing
        }
    };
    Ok(Change { shard: partition, lsn: record.sequence, row })
}

/// A feed the writer reads a partition's gap from, kept while it follows on.
pub struct StreamGap {
    feed: Box<dyn Feed>,
    /// The sequence the feed gives next, as far as the writer knows.
    next: u64,
}

/// Reads `partition`'s records from `*next` up to `up_to` (at most `room`) through the fence,
/// opening a feed into `slot` unless the one there follows on. Records purged before the index
/// saw them (a cluster that ran without an index for a while) are skipped with a warning.
/// Moves `*next` and `*fence` past what it returns.
pub async fn read(
    source: &dyn StreamSource,
    slot: &mut Option<StreamGap>,
    partition: usize,
    (next, fence): (&mut u64, &mut u64),
    up_to: u64,
    room: usize,
) -> Result<Vec<Change>, String> {
    let gap = match slot {
        Some(gap) if gap.next == *next => gap,
        slot => {
            let feed = source.open(partition, *next).await?;
            slot.insert(StreamGap { feed, next: *next })
        }
    };
    let mut changes = Vec::new();
    while *next <= up_to && changes.len() < room {
        let polled = std::future::poll_fn(|context| gap.feed.poll_record(context));
        let record = match tokio::time::timeout(RECORD_WAIT, polled).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(format!("partition {partition}'s stream feed ended")),
            // Read on in the next round.
            Err(_) => break,
        };
        if record.sequence < *next {
            continue;
        }
        if record.sequence > *next {
            tracing::warn!(
                partition,
                from = *next,
                to = record.sequence - 1,
                "records purged from the partition's stream before they were indexed are left out of the index"
            );
        }
        changes.push(change_of(partition, fence, &record)?);
        *next = record.sequence + 1;
        gap.next = *next;
    }
    Ok(changes)
}
