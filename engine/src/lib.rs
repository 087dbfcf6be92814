//! Kapsel's engine: `KAPSEL_SHARDS` threads, each with its own monoio runtime, SO_REUSEPORT
//! listener and write-ahead log, owning the endpoints whose id hashes to it.
//!
//! Invariants:
//! - No request is answered as done before the fsync covering its record (see [`shard`]).
//! - A shard's state changes only on its own thread; other shards reach it through its
//!   inbox (`admin::inbox`), never through a lock.
//! - The state machines ([`state`], its idempotency table, rate limiter and breaker, and the
//!   admin router) take time as an argument; only [`clock`] reads the clock.
//! - Every table and queue is bounded ([`limits`]); a full one answers 503 E3002.

#![warn(missing_docs)]
// Folders are layers; imports run one way, from the top of this list to the bottom:
// `runtime` (threads, start, stop) → `admin` (HTTP face, inboxes, shared) → `delivery`
// (scheduler, attempts) → `shard` (append → fsync → apply, read-back, retention, snapshot,
// counters) → `state` (the state machine: apply, queues, breaker, retry, idempotency) →
// `model` (endpoints, records, ids, signatures, statuses, views). `index` (the Postgres index)
// sits beside `shard`, which feeds it; it imports only `model`. `limits`, `error` and `clock`
// are leaves everyone may use.
mod admin;
pub mod clock;
pub mod cluster;
pub mod delivery;
pub mod error;
pub mod index;
pub mod limits;
mod model;
mod runtime;
pub mod shard;
pub mod state;

// The public surface. The binary needs `Engine`, its configuration and errors, `clock`,
// `limits` and the index's configuration; the rest is here for the deterministic simulation,
// the benchmarks and the engine's own integration tests, which drive a shard's state machine
// and log directly.
pub use error::EngineError;
pub use model::{endpoint, event_type, ids, lease, records, subscriptions};
pub use runtime::{Engine, EngineConfig, IoDriver, StartError};
pub use shard::{readback, retention, snapshot};
pub use state::breaker;

/// Entry points for the fuzz targets in `fuzz/` and the corpus replay in `tests/fuzz_corpus.rs`;
/// not part of the engine's interface.
#[doc(hidden)]
pub mod fuzzing {
    /// The largest page size that parser accepts.
    pub use crate::model::query::LIMIT_MAX as QUERY_LIMIT_MAX;
    /// The parser of `GET /admin/events` query strings.
    pub use crate::model::query::{Candidate, EventQuery};
}
