//! What the lease driver needs of the cluster's key-value bucket, and an in-memory bucket with
//! the same guarantees for tests.
//!
//! Only what is atomic on nats-server 2.9.10 with replicas is relied upon (ADR 17): `create`
//! (the key must not exist) has one winner; `update` on a revision is written only by a key's
//! one writer, so it is never raced; `put` (no condition) is for keys one node alone writes
//! (its heartbeat).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a bucket write or read failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// `create` of a key that exists: someone else created it first.
    #[error("the key exists")]
    Exists,
    /// `update` on a revision that is not the key's latest.
    #[error("the key's revision is not {0}")]
    WrongRevision(u64),
    /// The bucket could not be reached or answered an error.
    #[error("{0}")]
    Unavailable(String),
}

/// A bucket's answer, awaited on the caller's runtime.
pub type Answer<T> = Pin<Box<dyn Future<Output = Result<T, BucketError>>>>;

/// A key, its value and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// Its revision.
    pub revision: u64,
}

/// The cluster's key-value bucket.
pub trait Bucket {
    /// Creates `key`; [`BucketError::Exists`] when it exists. The new revision.
    fn create(&self, key: &str, value: Vec<u8>) -> Answer<u64>;
    /// Replaces `key`'s value if its latest revision is `revision`. The new revision.
    fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> Answer<u64>;
    /// Writes `key` unconditionally. The new revision.
    fn put(&self, key: &str, value: Vec<u8>) -> Answer<u64>;
    /// Every key under `prefix`, read from the bucket's leader (not a possibly stale replica).
    fn entries(&self, prefix: &str) -> Answer<Vec<KeyValue>>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Answer<()>;
}

/// A bucket in memory with the guarantees above, shared by the nodes of a test.
#[derive(Clone, Default)]
pub struct MemoryBucket {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Default)]
struct Memory {
    keys: BTreeMap<String, (Vec<u8>, u64)>,
    revision: u64,
    refusing: bool,
}

impl MemoryBucket {
    /// An empty bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses every call (the bucket unreachable) until called with `false`.
    pub fn refuse(&self, refusing: bool) {
        self.memory().refusing = refusing;
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, key: &str, value: Vec<u8>, expect: Option<Option<u64>>) -> Result<u64, BucketError> {
        let mut memory = self.memory();
        if memory.refusing {
            return Err(BucketError::Unavailable("the bucket is unreachable".into()));
        }
        let current = memory.keys.get(key).map(|(_, revision)| *revision);
        match (expect, current) {
            (Some(None), Some(_)) => return Err(BucketError::Exists),
            (Some(Some(expected)), current) if current != Some(expected) => {
                return Err(BucketError::WrongRevision(expected))
            }
            _ => {}
        }
        memory.revision += 1;
        let revision = memory.revision;
        memory.keys.insert(key.to_string(), (value, revision));
        Ok(revision)
    }
}

impl Bucket for MemoryBucket {
    fn create(&self, key: &str, value: Vec<u8>) -> Answer<u64> {
        Box::pin(std::future::ready(self.write(key, value, Some(None))))
    }

    fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> Answer<u64> {
        Box::pin(std::future::ready(self.write(key, value, Some(Some(revision)))))
    }

    fn put(&self, key: &str, value: Vec<u8>) -> Answer<u64> {
        Box::pin(std::future::ready(self.write(key, value, None)))
    }

    fn entries(&self, prefix: &str) -> Answer<Vec<KeyValue>> {
        let memory = self.memory();
        let answer = if memory.refusing {
            Err(BucketError::Unavailable("the bucket is unreachable".into()))
        } else {
            Ok(memory
                .keys
                .range(prefix.to_string()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, (value, revision))| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    revision: *revision,
                })
                .collect())
        };
        Box::pin(std::future::ready(answer))
    }

    fn delete(&self, key: &str) -> Answer<()> {
        let mut memory = self.memory();
        let answer = if memory.refusing {
            Err(BucketError::Unavailable("the bucket is unreachable".into()))
        } else {
            memory.keys.remove(key);
            Ok(())
        };
        Box::pin(std::future::ready(answer))
    }
}
