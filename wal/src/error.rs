//! The log's operating errors. Each carries the context an operator needs: the file, the offset,
//! the operation. Mapping to HTTP status and E-code happens at the edge (kapsel-http), not here.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"read"`, `"write"`, `"fdatasync"`, …).
        operation: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are damaged where a torn write cannot explain it (acknowledged data).
    #[error("corrupt write-ahead log: segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment (or chain) file.
        segment: PathBuf,
        /// Byte offset of the first damaged frame.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier write or fsync failed; the log refuses every append until it is reopened
    /// (E3003 at the edge). An fsync is never retried as if it had worked.
    #[error("write-ahead log is poisoned by an earlier storage failure: {reason}")]
    Poisoned {
        /// The failure that poisoned it.
        reason: String,
    },
    /// Too many bytes are appended but not yet written (E3002 at the edge).
    #[error("write-ahead log queue is full ({queued_bytes} bytes waiting)")]
    Backpressure {
        /// Bytes waiting to be written.
        queued_bytes: usize,
    },
    /// A record body exceeds [`crate::limits::RECORD_BODY_BYTES_MAX`].
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// The body's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A record kind above [`crate::limits::USER_KIND_MAX`] (reserved for the log itself).
    #[error("record kind {0} is reserved")]
    ReservedKind(u8),
    /// An option is out of its documented range.
    #[error("invalid write-ahead log option: {0}")]
    InvalidOption(String),
    /// The log was closed.
    #[error("write-ahead log is closed")]
    Closed,
    /// No sealed segment holds the asked-for record.
    #[error("record {lsn} is not in a sealed segment")]
    NotSealed {
        /// The record's log sequence number.
        lsn: u64,
    },
    /// A record body failed rkyv validation.
    #[error("record body does not decode: {0}")]
    Decode(String),
}

impl WalError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { operation, path: path.into(), source }
    }

    pub(crate) fn corrupt(segment: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Self::Corrupt { segment: segment.into(), offset, reason: reason.into() }
    }

    /// True when the log stopped acknowledging because storage failed (E3003).
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Self::Poisoned { .. } | Self::Io { .. })
    }
}

/// A copyable summary of an error, handed to every appender of a failed batch.
pub(crate) fn poison_reason(error: &WalError) -> String {
    error.to_string()
}

/// A short, stable name for why storage failed, for metrics labels and `/readyz`: `no_space`
/// (ENOSPC, EDQUOT), `io_error` (EIO), `read_only` (EROFS) or `other`.
pub(crate) fn failure_kind(error: &WalError) -> &'static str {
    const EIO: i32 = 5;
    const EROFS: i32 = 30;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let WalError::Io { source, .. } = error else {
        return "other";
    };
    match source.raw_os_error() {
        Some(ENOSPC | EDQUOT) => "no_space",
        Some(EIO) => "io_error",
        Some(EROFS) => "read_only",
        _ if source.kind() == io::ErrorKind::StorageFull => "no_space",
        _ => "other",
    }
}
