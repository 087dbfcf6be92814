//! Kapsel's write-ahead log: the truth every acknowledgement rests on.
//!
//! One log per shard, in its own directory of append-only segment files. Records are framed
//! (length, CRC32C, kind, LSN; see [`frame`]) and written in group-commit batches: every record
//! appended while a write and fdatasync are in flight goes out in the next single write and
//! fdatasync, and an append's [`Commit`] resolves only after the fsync that covers it.
//!
//! Invariants:
//! - No [`Commit`] resolves `Ok` before the fdatasync covering its record has returned `Ok`.
//! - After a failed write or fsync the log is poisoned: every later append fails until it is
//!   reopened. An fsync is never retried as if it had worked: [`Wal::reopen`] cuts every file back
//!   to its durable length (the failed batch may sit in the page cache without being on disk),
//!   recovers the directory as a start does, and only then takes appends again.
//! - Recovery truncates only a torn tail of the newest segment (its last batch, cut short or
//!   garbled, with no valid batch after it); any other damage is [`WalError::Corrupt`] naming
//!   the segment and offset.
//! - A sealed segment's Merkle root (RFC 6962, see [`merkle`]) covers every record frame in it;
//!   seals form a hash chain kept in `audit.chain`, which outlives segments removed by retention.
//!
//! The log knows nothing of HTTP, endpoints or events: record bodies are opaque bytes (the
//! engine encodes them with rkyv through [`codec`]).

#![warn(missing_docs)]

pub mod audit;
pub mod codec;
mod error;
pub mod frame;
mod io;
pub mod limits;
mod log;
pub mod merkle;
pub mod read;
mod recover;
pub mod scan;
pub mod seal;
pub mod tail;
mod writer;

pub use error::WalError;
pub use io::{
    create_dir_all_durable, Buckets, IoBackend, IoCounters, IoFaults, BATCH_RECORDS_BOUNDS, COMMIT_LATENCY_BOUNDS_US,
};
pub use log::{Clock, Commit, Options, Record, Recovery, Wal};
pub use read::Position;
pub use seal::SealInfo;

/// Entry points for the fuzz targets in `fuzz/` and the corpus replay in `tests/fuzz_corpus.rs`;
/// not part of the log's interface.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::{Record, WalError};

    /// Open-time recovery of the log in `directory`, as [`crate::Wal::open`] runs it (verify,
    /// truncate a torn tail, reconcile the chain, replay in LSN order), without starting the
    /// flusher. Returns the LSN the next append would get.
    pub fn recover(directory: &Path, replay: &mut dyn FnMut(Record<'_>)) -> Result<u64, WalError> {
        crate::recover::recover(directory, replay).map(|recovered| recovered.next_lsn)
    }
}
