//! Named limits of the write-ahead log. Every buffer and queue the log keeps is bounded by one
//! of these; the runtime [`crate::Options`] may lower or raise the defaults within the minimums
//! and maximums stated here.

/// Default size at which a segment is sealed and the next one begins (`KAPSEL_WAL_SEGMENT_BYTES`).
/// Sealing hashes nothing extra (leaves are hashed as they are written), so the cost of a larger
/// segment is only the time to re-read it for an inclusion proof or a verification.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Smallest segment size accepted. Tests use small segments to seal often; below this the
/// header and seal overhead dominates.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;

/// Largest segment size accepted: a segment is read whole into memory by recovery and by
/// `audit verify`, so this bounds their memory.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Largest body of one record. Ingest payloads are at most 10 MiB by default; the rest is room
/// for the engine's metadata around them.
pub const RECORD_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default upper bound on the bytes one group-commit batch (one write, one fdatasync) carries.
/// A single record larger than this still goes out, alone in its batch.
pub const BATCH_BYTES_DEFAULT: usize = 4 * 1024 * 1024;

/// Smallest batch limit accepted.
pub const BATCH_BYTES_MIN: usize = 4 * 1024;

/// Default bound on bytes appended but not yet written. An append beyond it is refused with
/// [`crate::WalError::Backpressure`] (E3002 at the edge) instead of growing memory.
pub const QUEUE_BYTES_DEFAULT: usize = 128 * 1024 * 1024;

/// Buffers of finished batches kept for reuse, so a steady load allocates nothing per batch.
pub const SPARE_BUFFERS_MAX: usize = 4;

/// Requests waiting for the blocking I/O thread (legacy driver). The flusher has at most one
/// batch in flight, so a handful is plenty; a full queue makes the flusher wait, never grow.
pub const IO_THREAD_QUEUE_MAX: usize = 16;

/// Bytes written (and fsynced, then removed) to a probe file before a log reopens after a
/// storage failure: a disk with less room than this stays failed rather than refusing the next
/// batch again at once.
pub const SPACE_PROBE_BYTES: usize = 256 * 1024;

/// Largest user record kind; kinds above it are reserved for the log itself (seals).
pub const USER_KIND_MAX: u8 = 0xEF;

const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MIN <= BATCH_BYTES_DEFAULT);
const _: () = assert!(BATCH_BYTES_DEFAULT as u64 <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(RECORD_BODY_BYTES_MAX as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_DEFAULT <= QUEUE_BYTES_DEFAULT);
