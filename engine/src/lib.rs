//! Kapsel's shards: each a thread with its own monoio runtime that owns a slice of endpoints,
//! their queues, breakers and idempotency table, and its own write-ahead log
//! ([`kapsel_wal::Wal`]). Built out by the ingest issue; the write-ahead log is its foundation.
