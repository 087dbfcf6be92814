//! Kapsel's engine: `KAPSEL_SHARDS` threads, each with its own monoio runtime, SO_REUSEPORT
//! listener and write-ahead log, owning the endpoints whose id hashes to it.
//!
//! Invariants:
//! - No request is answered as done before the fsync covering its record (see [`shard`]).
//! - A shard's state changes only on its own thread; other shards reach it through its
//!   [`inbox`], never through a lock.
//! - The state machines ([`state`], [`idempotency`], [`rate`], [`route`]) take time as an argument;
//!   only [`clock`] reads the clock.
//! - Every table and queue is bounded ([`limits`]); a full one answers 503 E3002.

pub mod audit;
pub mod breaker;
pub mod clock;
pub mod delivery;
pub mod endpoint;
pub mod error;
pub mod idempotency;
pub mod ids;
pub mod inbox;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod query;
pub mod rate;
pub mod readback;
pub mod records;
pub mod retention;
pub mod retry;
pub mod route;
mod runtime;
pub mod service;
pub mod shard;
pub mod signature;
pub mod snapshot;
pub mod state;
pub mod trace;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use error::EngineError;
pub use runtime::{Engine, EngineConfig, IoDriver, StartError};

/// What all shards share: read-mostly, lock-free.
pub struct Shared {
    /// Number of shards.
    pub shards: usize,
    /// Bearer token for `/admin/*`.
    pub admin_token: String,
    /// Every shard's inbox, by shard index.
    pub inboxes: Vec<inbox::Inbox>,
    /// The data directory (the audit endpoints read the chain files).
    pub data_directory: std::path::PathBuf,
    /// Which destinations deliveries may reach (endpoint URLs with a refused literal IP are
    /// rejected when created).
    pub destinations: kapsel_http::DestinationPolicy,
    /// DNS resolution off the shards, shared by every shard's client.
    pub resolver: kapsel_http::Resolver,
    /// The Postgres index, when `DATABASE_URL` is set.
    pub index: Option<index::IndexHandle>,
    ready_shards: AtomicUsize,
    serving_shards: AtomicUsize,
    shutting_down: AtomicBool,
}

impl Shared {
    fn new(
        shards: usize,
        admin_token: String,
        inboxes: Vec<inbox::Inbox>,
        data_directory: std::path::PathBuf,
        destinations: kapsel_http::DestinationPolicy,
        index: Option<index::IndexHandle>,
    ) -> Self {
        Self {
            shards,
            admin_token,
            inboxes,
            data_directory,
            destinations,
            resolver: kapsel_http::Resolver::new(limits::RESOLVER_THREADS),
            index,
            ready_shards: AtomicUsize::new(0),
            serving_shards: AtomicUsize::new(shards),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// `Ok` while every shard has recovered and none is shutting down; otherwise E3004.
    pub fn check_serving(&self) -> Result<(), EngineError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable("shutting down".into()));
        }
        if self.ready_shards.load(Ordering::Acquire) < self.shards {
            return Err(EngineError::Unavailable("recovering the write-ahead log".into()));
        }
        Ok(())
    }

    /// True once every shard has replayed its log.
    pub fn is_ready(&self) -> bool {
        self.ready_shards.load(Ordering::Acquire) >= self.shards
    }

    /// Starts a graceful shutdown: every shard stops accepting, finishes in-flight requests,
    /// flushes its log and exits.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wake_all();
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn wake_all(&self) {
        for inbox in &self.inboxes {
            inbox.wake();
        }
    }
}
