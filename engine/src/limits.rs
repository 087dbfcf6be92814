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

/// Most of a payload `GET /admin/events/{id}/payload` shows (its preview): enough to read an
/// event, small enough that a page of them stays light in a browser.
pub const PAYLOAD_PREVIEW_BYTES_MAX: usize = 16 * 1024;

/// Inbound signatures older or newer than this are refused (Standard Webhooks: 5 minutes).
pub const SIGNATURE_TOLERANCE_MS: u64 = 5 * 60 * 1000;

/// Signatures examined in one `webhook-signature` header; more is refused, bounding the HMAC work
/// an unauthenticated sender can cause.
pub const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// Longest event type (`X-Event-Type`, a JSON body's `type` or `event`): 1 to this many of
/// `A-Z a-z 0-9 . _ : -`.
pub const EVENT_TYPE_BYTES_MAX: usize = 128;

/// Longest channel name: 1 to this many of `a-z 0-9 _ -`.
pub const CHANNEL_NAME_BYTES_MAX: usize = 64;

/// Channels one endpoint subscribes to, at most (each costs an index entry per channel).
pub const ENDPOINT_CHANNELS_MAX: usize = 64;

/// Event type patterns one endpoint lists, at most (each costs an index entry per channel).
pub const ENDPOINT_EVENT_TYPES_MAX: usize = 64;

/// Bytes of a JSON body examined for its top-level `type` or `event` field: beyond them the body
/// is not searched (the type falls back to `event`), so finding the type of a large body costs
/// no more than of a small one.
pub const EVENT_TYPE_SCAN_BYTES_MAX: usize = 64 * 1024;

/// Endpoints one published event is delivered to, at most (the publish record lists them).
pub const PUBLISH_ENDPOINTS_MAX: usize = 10_000;

/// Longest tenant id: 1 to this many of `A-Z a-z 0-9 _ -`.
pub const TENANT_ID_BYTES_MAX: usize = 64;

/// Longest tenant display name.
pub const TENANT_NAME_BYTES_MAX: usize = 256;

/// Tenants kept, at most (each is a few hundred bytes on every shard's lookup table).
pub const TENANTS_MAX: usize = 10_000;

/// Keys kept, at most, over all tenants (each ~150 bytes, on every shard).
pub const KEYS_MAX: usize = 100_000;

/// Longest bearer token looked up as a key (a key is 47 bytes).
pub const KEY_BYTES_MAX: usize = 128;

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

// The Postgres index's timeouts. Every wait on Postgres is bounded by one of these, so a database
// that is down, locked, or behind a network that silently drops packets costs the index time and
// never hangs it: the writer gives up, drops the connection, reconnects with backoff and reads
// what it missed back from the logs; a query that needs the index answers 503 E3001. Ingest and
// delivery never wait on any of them.

/// Longest opening an index connection may take: TCP connect, start-up, authentication and the
/// session settings. tokio-postgres bounds only the TCP connect; a server (or a proxy, or a
/// network) that accepts and then stays silent would hold the rest forever. Cost of a lower
/// value: a Postgres slower than this to let a client in counts as down.
pub const INDEX_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Longest the writer's transaction of one batch (at most 4096 rows; a few milliseconds when
/// Postgres is healthy) may take from `BEGIN` to the answer to `COMMIT`. Past it the writer drops
/// the connection (its state is unknown), reconnects, and reads the batch back from the logs.
/// Cost of a lower value: a database this slow is treated as unavailable and the index lags;
/// of a higher one: a silent network holds the writer (not ingest) this long before it notices.
pub const INDEX_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// The writer session's `statement_timeout`, enforced by the server: a statement waiting on a
/// lock (an operator's `LOCK TABLE`) ends as an error on the server before the writer's own
/// bound, so the server rolls the batch back and queues nothing behind it.
pub const INDEX_WRITER_STATEMENT_TIMEOUT_MS: u64 = 9_000;

/// The writer session's `idle_in_transaction_session_timeout`: a batch whose client went silent
/// (the network lost in the middle of it) is ended by the server after this long, releasing its
/// locks on the checkpoint rows the writer's next transaction takes first.
pub const INDEX_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = INDEX_TRANSACTION_TIMEOUT_MS;

/// Longest an admin query that needs the index may take, counted from when the shard hands it to
/// the index thread: the wait for a free connection, connecting and the statements. It then
/// answers 503 E3001. Cost of a lower value: a legitimately slow listing over a large index fails.
pub const INDEX_QUERY_TIMEOUT_MS: u64 = 10_000;

/// The query sessions' `statement_timeout`, enforced by the server, so a listing stuck on a lock
/// is cancelled by the server itself rather than left queued behind it.
pub const INDEX_QUERY_STATEMENT_TIMEOUT_MS: u64 = 9_000;

/// Longest applying the schema migrations may take when the writer connects (they run before the
/// session's `statement_timeout` is set: a future migration may rebuild an index).
pub const INDEX_MIGRATION_TIMEOUT_MS: u64 = 30_000;

/// TCP keepalive on every index connection, client side and (through the session settings) server
/// side: the first probe after this much silence, then one every
/// [`INDEX_KEEPALIVE_INTERVAL_MS`], and [`INDEX_KEEPALIVE_RETRIES`] unanswered probes close the
/// connection (25 s in all). It finds a peer that vanished (host down, network cut) while a
/// connection sits idle — a pooled query connection, the writer between batches — so the next use
/// opens a fresh one instead of waiting out its timeout, and the server ends a Kapsel session that
/// vanished. Cost: three small packets per idle connection every ten seconds.
pub const INDEX_KEEPALIVE_IDLE_MS: u64 = 10_000;

/// Interval between unanswered keepalive probes.
pub const INDEX_KEEPALIVE_INTERVAL_MS: u64 = 5_000;

/// Unanswered keepalive probes before the connection is closed.
pub const INDEX_KEEPALIVE_RETRIES: u32 = 3;

/// `TCP_USER_TIMEOUT` (Linux): data sent to Postgres and not acknowledged for this long closes the
/// connection, which keepalive alone does not cover while data is in flight.
pub const INDEX_TCP_USER_TIMEOUT_MS: u64 = INDEX_TRANSACTION_TIMEOUT_MS;

/// `client_connection_check_interval` (server side, PostgreSQL 14 and later; skipped on older
/// servers): how often a backend running a statement checks that its client is still there, so a
/// statement Kapsel gave up on stops instead of holding a backend until the lock it waits on is
/// released.
pub const INDEX_CLIENT_CHECK_INTERVAL_MS: u64 = 1_000;

/// First pause before the index writer reconnects; doubled after each failure up to
/// [`INDEX_BACKOFF_MAX_MS`].
pub const INDEX_BACKOFF_MIN_MS: u64 = 100;

/// Longest pause between reconnections: a Postgres that came back is used within this long.
pub const INDEX_BACKOFF_MAX_MS: u64 = 5_000;

/// How long a graceful shutdown may spend indexing what is left, every wait on Postgres included.
/// A courtesy only: the checkpoint makes the next start catch up exactly. Bounded so that the
/// shards' drain and this end well within the binary's 8 s shutdown watchdog (SIGTERM stops
/// Kapsel within 10 s, Postgres reachable or not).
pub const INDEX_DRAIN_AT_STOP_MS: u64 = 1_500;

// The server ends a stuck statement before the client gives up on the whole transaction or query.
const _: () = assert!(INDEX_WRITER_STATEMENT_TIMEOUT_MS < INDEX_TRANSACTION_TIMEOUT_MS);
const _: () = assert!(INDEX_QUERY_STATEMENT_TIMEOUT_MS < INDEX_QUERY_TIMEOUT_MS);
// A query that has to connect first still has time for its statements.
const _: () = assert!(INDEX_CONNECT_TIMEOUT_MS < INDEX_QUERY_TIMEOUT_MS);
// The shutdown watchdog in the binary exits at 8 s.
const _: () = assert!(kapsel_http::limits::SHUTDOWN_DRAIN_TIMEOUT_MS + INDEX_DRAIN_AT_STOP_MS < 8_000);

/// Cluster mode: sequences of a partition's stream per audit seal (`cluster::seal`).
pub const PARTITION_SEAL_RANGE: u64 = 4096;

/// Cluster mode: room kept in a NATS message besides an ingest's body (the forwarded request's
/// head, at most `kapsel_http::limits::HEADER_BYTES_MAX`, and the record's other fields and
/// headers).
pub const CLUSTER_MESSAGE_HEADROOM_BYTES: u64 = 32 * 1024;
