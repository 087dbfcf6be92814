//! What a partition's stream holds as the layers below the shards see it (cluster mode, ADR
//! 17): a record with its writer and sequence, an ordered feed of them, and the epoch fence that
//! decides which count. The state applies them (`ShardState::apply_fenced`), the index reads
//! them (its `streams` module); the stream itself is the shard's (`shard::stream`).

use std::task::{Context, Poll};

use crate::model::records::Record;

/// Who wrote a record in a partition's stream (cluster mode, ADR 17): an event or an endpoint
/// change comes from any node; attempts, requeues, carried and redriven events, handoffs and
/// takeovers only from the partition's owner, stamped with its lease's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// Any node (ingest, endpoint changes).
    Anyone,
    /// The owner holding the lease of this epoch.
    Owner {
        /// The lease's epoch.
        epoch: u64,
    },
}

/// The epoch fence (cluster mode, ADR 17): whether a record written by `writer` counts when
/// the latest `Takeover` applied is of `owner_epoch`. A `Takeover` counts only above it; any
/// other owner record only under it; an owner's kind of record claiming to come from anyone
/// never. `ShardState::apply_fenced` and the index's reading of a stream share it.
pub fn admits(owner_epoch: u64, record: &Record, writer: Writer) -> bool {
    match (record, writer) {
        (Record::Takeover(takeover), Writer::Owner { epoch }) => {
            epoch == takeover.epoch && takeover.epoch > owner_epoch
        }
        (_, Writer::Owner { epoch }) => epoch == owner_epoch && epoch > 0,
        (record, Writer::Anyone) => !record.is_owners(),
    }
}

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

/// The kind of a partition's snapshot message (not a record: the shard skips it in its feed).
/// Its body is an endpoint snapshot (`shard::snapshot::encode`); its writer's epoch
/// is the fence's epoch as of the sequence it covers.
pub const KIND_SNAPSHOT: u8 = 0xF0;

/// An ordered feed of a partition's records from some sequence on.
pub trait Feed {
    /// The next record, in stream order; `None` once the feed has ended.
    fn poll_record(&mut self, context: &mut Context<'_>) -> Poll<Option<StreamRecord>>;
}
