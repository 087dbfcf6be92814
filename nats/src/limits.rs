//! Named limits of the NATS link. Every queue the link keeps is bounded by one of these, and
//! every wait has a deadline; [`crate::LinkOptions`] may change the defaults.

/// Default bound on commands waiting for the link thread (`LinkOptions::command_capacity`). A
/// full queue refuses the next command with `Busy` (E3002 at the edge) instead of blocking a
/// shard. A waiting command costs its payload and about 200 bytes.
pub const COMMAND_CAPACITY_DEFAULT: usize = 4096;

/// Default bound on commands the link thread runs at once (`LinkOptions::in_flight_max`), each
/// a task waiting on the server (a publish acknowledgement, a read). Past it the thread takes no
/// more commands and the command queue fills: backpressure, not growth.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1024;

/// Default wait for one publish attempt or one JetStream API request
/// (`LinkOptions::publish_timeout`). A replicated publish takes about 2 ms here at worst (p99).
pub const PUBLISH_TIMEOUT_MS_DEFAULT: u64 = 2_000;

/// Default time a publish or a read is retried after timeouts and missing responders
/// (`LinkOptions::retry_deadline`): above the 4 to 9 s nats-server 2.9 takes to elect a stream
/// leader after its leader's server died (ADR 17), with room for the client to reconnect.
pub const RETRY_DEADLINE_MS_DEFAULT: u64 = 20_000;

/// Default wait for a first connection in `Link::connect` (`LinkOptions::connect_timeout`).
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// The first pause between two attempts; it doubles up to [`RETRY_DELAY_MS_MAX`].
pub const RETRY_DELAY_MS_MIN: u64 = 25;

/// The longest pause between two attempts: short beside an election, so a retried publish goes
/// through within this of the new leader's arrival.
pub const RETRY_DELAY_MS_MAX: u64 = 500;

/// Messages the client buffers per subscription (a served subject, a consumer's inbox). A
/// consumer's pulls hold at most [`CONSUMER_BATCH`] there; a served subject is drained at once
/// into its bounded `Requests`.
pub const SUBSCRIPTION_CAPACITY: usize = 8192;

/// Commands the client itself queues towards its connection.
pub const CLIENT_CAPACITY: usize = 4096;

/// Time the link thread gives the client to write out what it queued when the link closes.
pub const FLUSH_ON_CLOSE_MS_MAX: u64 = 1_000;

/// Keys one `kv_entries` answers: the answer is held in memory and costs one read per key.
pub const KV_ENTRIES_MAX: usize = 100_000;

/// The de-duplication window of a bucket's stream: longer than a write's retries, so a retried
/// write (it carries the same message id) is never stored twice.
pub const BUCKET_DUPLICATE_WINDOW_MS: u64 = 120_000;

/// How often the server shows a pull consumer alive while it has nothing to send; one missed
/// heartbeat recreates the consumer.
pub const CONSUMER_HEARTBEAT_MS: u64 = 1_000;

/// How long one pull request stays open on the server.
pub const CONSUMER_PULL_EXPIRES_MS: u64 = 10_000;

/// Messages asked for in one pull: a feed holds at most this in the client's subscription.
pub const CONSUMER_BATCH: usize = 256;

/// How long the server keeps a consumer nobody pulls from (a feed's consumer after its link died).
pub const CONSUMER_INACTIVE_MS: u64 = 60_000;

const _: () = assert!(RETRY_DELAY_MS_MIN > 0 && RETRY_DELAY_MS_MIN <= RETRY_DELAY_MS_MAX);
const _: () = assert!(RETRY_DELAY_MS_MAX < RETRY_DEADLINE_MS_DEFAULT);
const _: () = assert!(PUBLISH_TIMEOUT_MS_DEFAULT < RETRY_DEADLINE_MS_DEFAULT);
const _: () = assert!(BUCKET_DUPLICATE_WINDOW_MS > RETRY_DEADLINE_MS_DEFAULT);
const _: () = assert!(IN_FLIGHT_MAX_DEFAULT > 0 && COMMAND_CAPACITY_DEFAULT > 0);
const _: () = assert!(CONSUMER_HEARTBEAT_MS * 2 < CONSUMER_PULL_EXPIRES_MS);
