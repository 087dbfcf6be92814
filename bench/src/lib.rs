//! Kapsel's load tests: ingest against two reference servers, delivery end to end, the
//! Postgres index under ingest load, Kapsel's footprint (idle memory, start-up time), and
//! cluster mode on NATS JetStream.
//!
//! `cargo bench -p kapsel-bench` runs all five. `benches/ingest.rs` calls [`suite::main`]: it
//! builds the release binaries, then for every scenario spawns a fresh server process on
//! loopback and drives it from one monoio thread with the client in this crate:
//!
//! - closed loop ([`closed`]): N keep-alive connections, each with one request outstanding,
//!   for a fixed time; throughput and service-time percentiles;
//! - open loop ([`open`]): a fixed schedule of requests per second; each request's latency runs
//!   from its *intended* send time, so a stalled server shows up as latency instead of as a
//!   politely slower client (no coordinated omission).
//!
//! The servers: Kapsel itself, and two references on the same HTTP stack (kapsel-http's
//! `serve`, one monoio runtime and `SO_REUSEPORT` listener per thread) in
//! [`reference`](mod@reference): `reference-noop` (parse, answer 202) and `reference-durable`
//! (parse, append to a per-thread file, answer 202 once a group-commit fdatasync covers the
//! body).
//!
//! `benches/delivery.rs` calls [`delivery::main`]: Kapsel delivering to the [`sink`] (a
//! receiver on the same stack that answers 200 at once and records ingest-to-delivery latency
//! from the send time stamped into each body), under a closed loop and fixed-rate open loops;
//! then a paused endpoint's backlog far beyond the payload budget drained, a burst into one
//! endpoint, a graceful restart after a million deliveries that must send nothing again, and
//! one endpoint's rate beside misbehaving destinations ([`hostile`]) on its shard.
//!
//! `benches/index.rs` calls [`index::main`]: Kapsel indexing into a private, durable
//! PostgreSQL ([`postgres`]) under the ingest bench's loops, its progress sampled from
//! `GET /readyz` ([`progress`]): indexed rows per second, index lag, catch-up time, and a
//! count of the indexed events against the accepted ones.
//!
//! `benches/footprint.rs` calls [`footprint::main`]: Kapsel's resident memory idle, with 1,000
//! endpoints and after a restart, then its time from spawn to ready on a log of a million
//! records written by a count-bounded closed loop ([`fill`]), with the page cache warm and cold.
//!
//! `benches/cluster.rs` calls [`cluster::main`]: one node of a three-node cluster on a private
//! NATS JetStream cluster ([`nats`]) against Kapsel alone under the same loops, the CPU per
//! event of every Kapsel and `nats-server` process, the fail-over time after `kill -9` of a
//! partition's owner, and an estimate of throughput per node on three real machines.
//!
//! The benches share their set-up ([`setup`]), client, loops and CPU meters.
//!
//! The write-ahead log's own micro-benchmark lives in `wal/benches/`.

#![warn(missing_docs)]

pub mod client;
pub mod closed;
pub mod cluster;
pub mod delivery;
pub mod fill;
pub mod footprint;
pub mod hostile;
pub mod index;
pub mod limits;
pub mod machine;
pub mod nats;
pub mod open;
pub mod payload;
pub mod postgres;
pub mod process;
pub mod progress;
pub mod reference;
pub mod report;
pub mod runtime;
pub mod setup;
pub mod sink;
pub mod stats;
pub mod suite;
