//! The Postgres index: derived from the write-ahead logs, updated asynchronously by one index
//! thread running a tokio current-thread runtime with tokio-postgres, never on the ingest or
//! delivery path.
//!
//! Shards hand each record's [`Change`] to the index over a bounded crossbeam channel at append
//! time and never wait: when the channel is full the change is dropped and counted. The index
//! applies changes per shard in LSN order and only up to the shard's durable LSN
//! (`Wal::durable_watermark`), so it never indexes a record a crash could still take back. Any
//! gap — a dropped change, a Postgres outage, a restart — is filled by reading the shard's log
//! from the index's checkpoint ([`kapsel_wal::tail::Reader`]). Each batch is written in one
//! transaction together with the shards' new checkpoints, so the index holds exactly the log's
//! records: none missing, none twice.
//!
//! Every wait on Postgres is bounded (`crate::limits`, `INDEX_*`): opening a connection, each
//! batch's transaction, each query, and TCP keepalive under them, so a database that is down,
//! locked or behind a network that silently drops packets costs the index time, never a hang. A
//! connection an operation gave up on is dropped, never reused: its state is unknown.
//!
//! In cluster mode (ADR 17) the same writer indexes the partitions this node owns: a
//! partition's shard registers while it owns it ([`IndexHandle::register`], released when it
//! stops), feeds the records its applier brings from the stream — an owner record the epoch
//! fence ignores as [`Row::Nothing`] — and the writer fills gaps by reading the stream
//! ([`Logs::Streams`]) through the same fence from the partition's checkpoint (a stream sequence
//! and the fence's epoch there, in `partition_checkpoints`). When a partition moves, its new
//! owner reads the checkpoint the old one left and goes on from there; a batch written against a
//! checkpoint another node moved is refused by its check and the partition's checkpoint read
//! again, so two owners for a moment still index each record once.
//!
//! Invariants:
//! - A shard never blocks on the index; the index never holds a lock a shard takes.
//! - The checkpoint of a shard is the LSN of the last record whose rows are committed.
//! - Queries that need Postgres while it is unreachable answer 503 E3001 within
//!   `INDEX_QUERY_TIMEOUT_MS` of being asked; nothing else does.
//! - [`Index::stop`] returns within `INDEX_DRAIN_AT_STOP_MS` (and a little), Postgres reachable or
//!   not.

pub mod query;
pub mod rows;
pub mod schema;
mod session;
pub mod streams;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
pub use rows::{Change, Ledger, Row};
pub use streams::{Logs, StreamSource};

/// Changes waiting for the index thread, across shards.
pub const FEED_CHANGES_MAX: usize = 65_536;
/// Queries waiting for a connection.
pub const QUERIES_WAITING_MAX: usize = 256;

/// Where the index lives (`DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`).
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// A libpq-style URL or key=value string (`postgres://user@host:port/db`).
    pub url: String,
    /// Connections in all: one writes, the others serve queries.
    pub max_connections: usize,
}

/// True when `url` parses as a connection string (checked at start, before the thread runs).
pub fn valid_url(url: &str) -> bool {
    url.parse::<tokio_postgres::Config>().is_ok()
}

/// One shard's indexing progress (in cluster mode, one partition's), readable by any thread.
#[derive(Debug, Default)]
pub struct ShardProgress {
    /// The log's durable LSN (a partition's applied sequence) while its shard is registered.
    durable: Mutex<Option<Arc<AtomicU64>>>,
    /// Counts registrations: a partition registered again (owned again, by this node, after
    /// another may have indexed it) has its checkpoint read again before it is indexed.
    generation: AtomicU64,
    indexed: AtomicU64,
    dropped: AtomicU64,
    behind_since_ms: AtomicU64,
}

impl ShardProgress {
    /// The shard's durable LSN (0 until its log is open, and while a partition is not owned).
    pub fn durable(&self) -> u64 {
        self.watermark().map_or(0, |durable| durable.load(Ordering::Acquire))
    }

    fn watermark(&self) -> Option<Arc<AtomicU64>> {
        self.durable.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether a shard is registered (in cluster mode: this node owns the partition).
    pub fn is_registered(&self) -> bool {
        self.durable.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last LSN committed to the index.
    pub fn indexed(&self) -> u64 {
        self.indexed.load(Ordering::Acquire)
    }
}

/// What shards, the index thread and `/readyz` share.
#[derive(Debug)]
pub struct IndexStatus {
    shards: Vec<ShardProgress>,
    connected: AtomicBool,
    diverged: AtomicBool,
    /// Set once by [`Index::stop`]: when the writer must be done.
    stop_deadline: OnceLock<Instant>,
    /// Wakes the index thread's waits when [`Index::stop`] is called.
    stop_signal: tokio::sync::Notify,
    rows_indexed: AtomicU64,
    /// Times the writer looked for work (it writes nothing when diverged, and tests wait for it
    /// to have looked).
    passes: AtomicU64,
}

impl IndexStatus {
    fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| ShardProgress::default()).collect(),
            connected: AtomicBool::new(false),
            diverged: AtomicBool::new(false),
            stop_deadline: OnceLock::new(),
            stop_signal: tokio::sync::Notify::new(),
            rows_indexed: AtomicU64::new(0),
            passes: AtomicU64::new(0),
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop_deadline.get().is_some()
    }

    fn stop_deadline_passed(&self) -> bool {
        self.stop_deadline.get().is_some_and(|deadline| Instant::now() >= *deadline)
    }

    /// Returns once [`Index::stop`] was called.
    async fn stopping(&self) {
        let notified = self.stop_signal.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so a stop between the check and the wait still wakes it.
        notified.as_mut().enable();
        if self.stop_requested() {
            return;
        }
        notified.await;
    }

    /// Returns once the shutdown's deadline has passed.
    async fn past_stop_deadline(&self) {
        self.stopping().await;
        if let Some(deadline) = self.stop_deadline.get() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(*deadline)).await;
        }
    }

    /// Per-shard progress.
    pub fn shards(&self) -> &[ShardProgress] {
        &self.shards
    }

    /// True while the writer's connection works.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// True once the index was found ahead of a log (restored from a different backup, or a
    /// different data directory): it is no longer written until rebuilt.
    pub fn is_diverged(&self) -> bool {
        self.diverged.load(Ordering::Acquire)
    }

    /// Records durable in the logs but not yet in the index (in cluster mode, of the
    /// partitions this node owns).
    pub fn lag_records(&self) -> u64 {
        self.shards.iter().map(|shard| shard.durable().saturating_sub(shard.indexed())).sum()
    }

    /// How long the index has been behind (0 when it is caught up).
    pub fn lag_seconds(&self, now_ms: u64) -> f64 {
        let since = self
            .shards
            .iter()
            .map(|shard| shard.behind_since_ms.load(Ordering::Acquire))
            .filter(|since| *since > 0)
            .min();
        since.map_or(0.0, |since| now_ms.saturating_sub(since) as f64 / 1000.0)
    }

    /// Times the writer looked for work since start.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Rows committed since start.
    pub fn rows_indexed(&self) -> u64 {
        self.rows_indexed.load(Ordering::Relaxed)
    }

    /// Changes shards dropped because the channel was full (read back from the logs later).
    pub fn dropped(&self) -> u64 {
        self.shards.iter().map(|shard| shard.dropped.load(Ordering::Relaxed)).sum()
    }

    /// The `/readyz` details.
    pub fn to_json(&self, now_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "state": match (self.is_diverged(), self.is_connected()) {
                (true, _) => "diverged",
                (false, true) => "connected",
                (false, false) => "unavailable",
            },
            "lag_records": self.lag_records(),
            "lag_seconds": self.lag_seconds(now_ms),
            "rows_indexed": self.rows_indexed(),
        })
    }
}

/// The shards' side of the index: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct IndexHandle {
    feed: Sender<Change>,
    queries: tokio::sync::mpsc::Sender<query::QueryRequest>,
    status: Arc<IndexStatus>,
}

impl IndexHandle {
    /// Registers a shard's durable watermark once its log is open (in cluster mode: a
    /// partition's applied sequence, as its new owner opens it).
    pub fn register(&self, shard: usize, durable: Arc<AtomicU64>) {
        if let Some(progress) = self.status.shards.get(shard) {
            *progress.durable.lock().unwrap_or_else(PoisonError::into_inner) = Some(durable);
            progress.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes back [`IndexHandle::register`] (a partition this node stopped owning), unless
    /// another registration replaced it since.
    pub fn release(&self, shard: usize, durable: &Arc<AtomicU64>) {
        if let Some(progress) = self.status.shards.get(shard) {
            let mut registered = progress.durable.lock().unwrap_or_else(PoisonError::into_inner);
            if registered.as_ref().is_some_and(|current| Arc::ptr_eq(current, durable)) {
                *registered = None;
            }
        }
    }

    /// Registers partition `partition` as owned here (cluster mode): the index reads its
    /// checkpoint and indexes it up to the watermark the registration holds, until the
    /// registration is released or dropped.
    pub fn register_partition(&self, partition: usize) -> Registration {
        let watermark = Arc::new(AtomicU64::new(0));
        self.register(partition, Arc::clone(&watermark));
        Registration { handle: self.clone(), partition, watermark }
    }

    /// Offers a change; never blocks. A full channel drops it (the log still has it).
    pub fn feed(&self, change: Change) {
        let shard = change.shard;
        if self.feed.try_send(change).is_err() {
            if let Some(progress) = self.status.shards.get(shard) {
                progress.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Progress, lag and connection state.
    pub fn status(&self) -> &Arc<IndexStatus> {
        &self.status
    }

    /// Runs a query on the index thread; it answers within `INDEX_QUERY_TIMEOUT_MS` (503 E3001
    /// when Postgres could not answer in time).
    pub async fn query(&self, query: query::Query) -> Result<serde_json::Value, crate::EngineError> {
        let (reply, answer) = futures_channel::oneshot::channel();
        let deadline = Instant::now() + Duration::from_millis(crate::limits::INDEX_QUERY_TIMEOUT_MS);
        self.queries.try_send(query::QueryRequest { query, reply, deadline }).map_err(|error| match error {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                crate::EngineError::QueueFull("too many index queries waiting".into())
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                crate::EngineError::IndexUnavailable("the index thread stopped".into())
            }
        })?;
        answer.await.unwrap_or_else(|_| Err(crate::EngineError::IndexUnavailable("the index thread stopped".into())))
    }
}

/// A partition owned here, as the index knows it ([`IndexHandle::register_partition`]).
pub struct Registration {
    handle: IndexHandle,
    partition: usize,
    watermark: Arc<AtomicU64>,
}

impl Registration {
    /// The index's handle.
    pub fn handle(&self) -> &IndexHandle {
        &self.handle
    }

    /// Where the partition's applier keeps its applied sequence for the index.
    pub fn watermark(&self) -> &Arc<AtomicU64> {
        &self.watermark
    }

    /// Stops indexing the partition here (it moved away): its next owner goes on from the
    /// checkpoint.
    pub fn release(&self) {
        self.handle.release(self.partition, &self.watermark);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
    }
}

/// The running index thread.
pub struct Index {
    handle: IndexHandle,
    thread: Option<JoinHandle<()>>,
}

impl Index {
    /// Starts the index thread for `shards` shards (in cluster mode, partitions) whose records
    /// `logs` holds. It connects (and reconnects) by itself; until then queries get E3001 and
    /// changes wait in the logs.
    pub fn start(config: IndexConfig, shards: usize, logs: Logs) -> std::io::Result<Self> {
        let (feed, changes) = crossbeam_channel::bounded(FEED_CHANGES_MAX);
        let (queries, requests) = tokio::sync::mpsc::channel(QUERIES_WAITING_MAX);
        let status = Arc::new(IndexStatus::new(shards));
        let thread_status = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name("kapsel-index".into())
            .spawn(move || run(config, thread_status, changes, requests, logs))?;
        Ok(Self { handle: IndexHandle { feed, queries, status }, thread: Some(thread) })
    }

    /// The shards' handle.
    pub fn handle(&self) -> IndexHandle {
        self.handle.clone()
    }

    /// Indexes what the logs hold for at most `INDEX_DRAIN_AT_STOP_MS` (every wait on Postgres
    /// included) and stops the thread. Call after the shards have stopped.
    pub fn stop(mut self) {
        let deadline = Instant::now() + Duration::from_millis(crate::limits::INDEX_DRAIN_AT_STOP_MS);
        let _ = self.handle.status.stop_deadline.set(deadline);
        self.handle.status.stop_signal.notify_waiters();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the index thread panicked");
            }
        }
    }
}

fn run(
    config: IndexConfig,
    status: Arc<IndexStatus>,
    changes: Receiver<Change>,
    requests: tokio::sync::mpsc::Receiver<query::QueryRequest>,
    logs: Logs,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the index runtime; the index stays unavailable");
            return;
        }
    };
    runtime.block_on(async move {
        let pg_config: tokio_postgres::Config = match config.url.parse() {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::error!(%error, "DATABASE_URL does not parse; the index stays unavailable");
                return;
            }
        };
        let pool = Arc::new(query::Pool::new(pg_config.clone(), config.max_connections.saturating_sub(1).max(1)));
        let serving = tokio::spawn(query::serve(requests, Arc::clone(&pool)));
        writer::Writer::new(pg_config, status, changes, logs).run().await;
        serving.abort();
    });
    // Tasks still running (a connection saying goodbye, a name lookup on a blocking thread) are
    // not waited for: dropping a runtime would wait for its blocking threads without bound.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
}

/// How long the index thread's last tasks get when it stops.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(100);
