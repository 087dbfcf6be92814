//! The HTTP face of the shards: routes, the request handler, the hops between shards, the
//! event listing from memory, the audit JSON and the metrics text, publishing and fan-out; and what all shards share.
//! Above `shard` and `delivery`: it runs their operations, they know nothing of it.

pub mod access;
pub mod assets;
pub mod audit;
pub mod cluster;
pub mod events;
pub mod inbox;
pub mod metrics;
#[cfg(test)]
mod openapi;
pub mod publish;
pub mod route;
pub mod service;
pub mod shared;
