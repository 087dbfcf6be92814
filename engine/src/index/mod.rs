//! The Postgres index (being built): derived from the write-ahead log, updated asynchronously
//! by one index thread running a tokio current-thread runtime with tokio-postgres, never on the
//! ingest or delivery path. This module holds the schema and its migrations so far.

pub mod schema;
