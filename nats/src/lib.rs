//! Kapsel's NATS thread (ADR 17, step 4): async-nats 0.52 on one dedicated thread with a tokio
//! current-thread runtime, and [`Link`], a cheap `Clone + Send + Sync` handle for the shards'
//! monoio threads. No call blocks: each queues one command on a bounded tokio channel with
//! `try_send` (full: `Busy`, E3002 at the edge) and returns a future of its answer carried on a
//! `futures_channel::oneshot`, which any runtime can await. Streams of messages come on bounded
//! `futures_channel::mpsc` channels whose sending task waits for room: backpressure, no
//! unbounded buffer anywhere.
//!
//! Layers, bottom up: `limits`, `errors`, `model`, `names` and `retry` are plain data and pure
//! functions; `thread` runs the runtime and the command loop; `jetstream`, `bucket` and `rpc`
//! are the operations run on it; `handle` is the surface other threads use.
//!
//! Invariants: a publish is retried only with the headers and message id of its first attempt;
//! reads whose answer could be stale (the last message on a subject, a key's entry) come from
//! the stream's leader; every queue is bounded.
#![warn(missing_docs)]

mod bucket;
mod errors;
mod handle;
mod jetstream;
pub mod limits;
mod model;
mod names;
mod retry;
mod rpc;
mod thread;

pub use errors::{KvError, LinkError, PublishError};
pub use handle::{Feed, Link, Reply, Request, Requests};
pub use model::{Ack, Ensured, Entry, LinkCounters, LinkOptions, Message, Publish, Storage, StreamSpec, StreamState};
