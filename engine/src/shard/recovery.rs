//! A shard's log after a storage failure (disk full, I/O error): what `/readyz` and `/metrics`
//! say about it, and the task that brings it back without a restart.
//!
//! While the log is poisoned, appends fail at once: ingest answers 503 E3003, the scheduler
//! starts no attempt (an outcome could not be recorded, so the destination would get the event
//! again and again). The task below waits for the failure, then retries [`Shard::recover_log`]
//! with backoff until the log is reopened; the shard then takes events again.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::clock::now_ms;
use crate::limits;
use crate::shard::Shard;

/// Why a shard's log cannot write, as `/readyz` and `/metrics` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The error that poisoned the log (file, operation, the OS error).
    pub reason: String,
    /// `no_space`, `io_error`, `read_only` or `other`.
    pub kind: &'static str,
    /// When it failed (Unix ms).
    pub since_ms: u64,
    /// Reopens tried and failed since.
    pub reopen_attempts: u64,
}

/// A shard's storage health, readable from every thread.
#[derive(Debug, Default)]
pub struct StorageHealth {
    failure: Mutex<Option<Failure>>,
    failures: AtomicU64,
    recoveries: AtomicU64,
}

impl StorageHealth {
    /// The failure in force, if the log cannot write now.
    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Storage failures since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reopens after a failure that succeeded, since start.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    fn set(&self, failure: Option<Failure>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }

    fn update(&self, change: impl FnOnce(&mut Failure)) {
        if let Some(failure) = self.failure.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            change(failure);
        }
    }
}

/// Watches the shard's log and reopens it after each failure, with backoff; runs for the life
/// of the shard (it is dropped with the runtime at shutdown).
pub async fn run(shard: Rc<Shard>) {
    let health = std::sync::Arc::clone(shard.storage());
    let Some(wal) = shard.wal() else {
        // A partition's stream is replicated by NATS; a shard that cannot write to it stops.
        return;
    };
    loop {
        let reason = wal.failed().await;
        let kind = wal.failure().map_or("other", |(_, kind)| kind);
        health.failures.fetch_add(1, Ordering::Relaxed);
        health.set(Some(Failure { reason: reason.clone(), kind, since_ms: now_ms(), reopen_attempts: 0 }));
        tracing::error!(shard = shard.index, kind, %reason, "the write-ahead log cannot write: new events get 503 E3003 and deliveries pause until it is reopened");
        let mut delay_ms = limits::LOG_REOPEN_BACKOFF_MIN_MS;
        loop {
            monoio::time::sleep(Duration::from_millis(delay_ms)).await;
            match shard.recover_log().await {
                Ok(()) => break,
                Err(error) => {
                    health.update(|failure| failure.reopen_attempts += 1);
                    tracing::warn!(shard = shard.index, %error, retry_in_ms = delay_ms, "the write-ahead log cannot be reopened yet");
                    delay_ms = (delay_ms * 2).min(limits::LOG_REOPEN_BACKOFF_MAX_MS);
                }
            }
        }
        health.recoveries.fetch_add(1, Ordering::Relaxed);
        health.set(None);
        tracing::info!(shard = shard.index, "the write-ahead log is reopened: taking events again");
    }
}
