//! The policy pieces of an outbound connection that are not HTTP: where a name points
//! ([`Resolver`], on its own threads so that a slow name server never blocks a shard) and
//! which addresses a delivery may connect to at all ([`DestinationPolicy`], the SSRF guard).
//!
//! It imports nothing of `proto/`, `server/` or `client/`; the client asks it before every
//! connection.

mod destination;
mod resolve;

pub use destination::{Cidr, DestinationPolicy};
pub use resolve::Resolver;
