//! The model: what an endpoint, an event id, a record of the log, a signature, a trace context,
//! a status and an event's admin view are. Plain data and pure functions; imports nothing of the
//! engine but `limits`, `error` and `clock`.

pub mod endpoint;
pub mod event_type;
pub mod ids;
pub mod ingest_auth;
pub mod json_scan;
pub mod lease;
pub mod query;
pub mod records;
pub mod signature;
pub mod status;
pub mod stream;
pub mod subscriptions;
pub mod tenant;
pub mod trace;
pub mod view;
pub mod whole_number;
