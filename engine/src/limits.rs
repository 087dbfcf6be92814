//! Named limits of the engine. Every table and queue a shard keeps is bounded by one of these
//! (or by a configured value that defaults to one of these).

/// Commands waiting in a shard's inbox (requests hopped from other shards). A full inbox answers
/// 503 E3002 on the sending shard rather than queueing without bound. Each slot holds a request
/// with its body, so the bound times the payload limit is the worst-case memory.
pub const INBOX_COMMANDS_MAX: usize = 4096;

/// Default bound on waiting events a shard tracks in memory (each about 100 bytes plus its
/// idempotency key, its payload waiting in the log; `cargo bench -p kapsel-engine --bench
/// state_memory`). This is the bound on pending work: at it, ingest answers 503 E3002.
pub const EVENTS_IN_MEMORY_DEFAULT: usize = 2_000_000;

/// Default `KAPSEL_RETENTION`: sealed segments older than this may be removed (7 days).
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;

/// Terminal (delivered or failed) events kept in memory for lookups, most recent first; older
/// ones are answered by the Postgres index when it runs. About 200 bytes each with one attempt.
pub const TERMINAL_EVENTS_IN_MEMORY_MAX: usize = 200_000;

/// Default bound on payload bytes a shard holds in memory (cached for waiting events whose turn
/// is near, being read back, in flight). Beyond it payloads wait in the log (each waiting event
/// keeps about 100 bytes of metadata) and are read back ahead of their turn, so a dead or
/// disabled endpoint cannot fill memory.
pub const PAYLOAD_MEMORY_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Failed events of an endpoint read back and redriven in one step by `retry-failed`.
pub const REDRIVE_CHUNK_EVENTS_MAX: usize = 256;

/// Threads resolving destination names for all shards (system resolver calls block).
pub const RESOLVER_THREADS: usize = 2;

/// Longest the delivery scheduler sleeps without being woken (it then checks for shutdown).
pub const SCHEDULER_IDLE_MS: u64 = 1000;

/// Attempts of one event kept in memory (the log keeps all of them).
pub const ATTEMPTS_IN_MEMORY_MAX: usize = 32;

/// Default bound on idempotency keys a shard remembers (each about 100 bytes plus the key).
/// Beyond it the oldest keys are forgotten before their window ends, and a warning is logged.
pub const IDEMPOTENCY_KEYS_DEFAULT: usize = 1_000_000;

/// Default idempotency window: a repeated key within it is answered as a duplicate.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;

/// Longest idempotency key accepted (visible ASCII only).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Longest endpoint id accepted.
pub const ENDPOINT_ID_BYTES_MAX: usize = 64;

/// Endpoints a shard holds; a create beyond it answers 503 E3002.
pub const ENDPOINTS_PER_SHARD_MAX: usize = 100_000;

/// Longest destination URL accepted.
pub const URL_BYTES_MAX: usize = 2048;

/// Largest admin request body (endpoint JSON).
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

/// Inbound signatures older or newer than this are refused (Standard Webhooks: 5 minutes).
pub const SIGNATURE_TOLERANCE_MS: u64 = 5 * 60 * 1000;

/// Signatures examined in one `webhook-signature` header; more is refused, bounding the HMAC work
/// an unauthenticated sender can cause.
pub const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// Most shards supported (event ids carry the shard in 16 bits; this keeps it far smaller).
pub const SHARDS_MAX: usize = 256;

const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX < 1024);
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);

/// First pause before a shard whose log failed tries to reopen it; doubled after each failed
/// try up to [`LOG_REOPEN_BACKOFF_MAX_MS`].
pub const LOG_REOPEN_BACKOFF_MIN_MS: u64 = 200;

/// Longest pause between tries to reopen a failed log: space that came back is used within
/// this long.
pub const LOG_REOPEN_BACKOFF_MAX_MS: u64 = 5_000;
