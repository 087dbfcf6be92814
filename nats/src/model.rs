//! What the link's calls take and give: plain data, no I/O.

use std::time::Duration;

use crate::limits;

/// How to connect and how long to wait.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Server URLs (`nats://host:port`); the client connects to one and fails over to the others
    /// (and to servers the cluster announces).
    pub urls: Vec<String>,
    /// The connection's name, as the servers show it (and the link thread's name).
    pub name: String,
    /// Commands that may wait for the link thread; more are refused with `Busy`.
    pub command_capacity: usize,
    /// Commands the link thread runs at once; past it the command queue fills.
    pub in_flight_max: usize,
    /// Wait for one publish attempt's acknowledgement, and for one JetStream API request.
    pub publish_timeout: Duration,
    /// How long a publish or read is retried after timeouts and missing responders.
    pub retry_deadline: Duration,
    /// Wait for the first connection.
    pub connect_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            urls: vec!["nats://127.0.0.1:4222".to_string()],
            name: "kapsel".to_string(),
            command_capacity: limits::COMMAND_CAPACITY_DEFAULT,
            in_flight_max: limits::IN_FLIGHT_MAX_DEFAULT,
            publish_timeout: Duration::from_millis(limits::PUBLISH_TIMEOUT_MS_DEFAULT),
            retry_deadline: Duration::from_millis(limits::RETRY_DEADLINE_MS_DEFAULT),
            connect_timeout: Duration::from_millis(limits::CONNECT_TIMEOUT_MS_DEFAULT),
        }
    }
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (every Kapsel stream).
    #[default]
    File,
    /// In memory (tests).
    Memory,
}

/// The parts of a stream's configuration Kapsel decides; the rest keeps the server's defaults
/// (limits retention, discard old).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// The stream's name (`KAPSEL_P<n>`).
    pub name: String,
    /// Its subjects (`kapsel.p.<n>.>`).
    pub subjects: Vec<String>,
    /// Replicas (1 to 5, at most the servers).
    pub replicas: usize,
    /// `Nats-Msg-Id` de-duplication window; zero keeps the server's default (2 minutes).
    pub duplicate_window: Duration,
    /// Messages kept per subject; `None` for no limit.
    pub max_msgs_per_subject: Option<i64>,
    /// Oldest message kept; zero for no limit.
    pub max_age: Duration,
    /// Whether any replica answers direct gets (`$JS.API.DIRECT.GET`).
    pub allow_direct: bool,
    /// Whether a `Nats-Rollup` header may replace a subject's messages.
    pub allow_rollup: bool,
    /// File or memory.
    pub storage: Storage,
}

impl StreamSpec {
    /// A file stream of `replicas` replicas on `subjects`, with the server's defaults otherwise
    /// and direct gets allowed.
    pub fn new(name: impl Into<String>, subjects: Vec<String>, replicas: usize) -> StreamSpec {
        StreamSpec {
            name: name.into(),
            subjects,
            replicas,
            duplicate_window: Duration::ZERO,
            max_msgs_per_subject: None,
            max_age: Duration::ZERO,
            allow_direct: true,
            allow_rollup: false,
            storage: Storage::File,
        }
    }
}

/// What `ensure_stream` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The stream did not exist and was created.
    Created,
    /// It existed with other settings, which were changed to the spec's.
    Updated,
    /// It existed as specified.
    Unchanged,
}

/// One message to publish to a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The subject; a stream must capture it.
    pub subject: String,
    /// The message body.
    pub payload: Vec<u8>,
    /// `Nats-Msg-Id`: within the stream's duplicate window a second publish with the same id is
    /// acknowledged as a duplicate of the first (same sequence) and not stored. Retries of this
    /// publish carry it, so give one whenever a publish must not be stored twice.
    pub msg_id: Option<String>,
    /// `Nats-Expected-Last-Subject-Sequence`: stored only if the subject's last message has this
    /// sequence (0: the subject is empty). Atomic on 2.9.10 only for 0 (ADR 17).
    pub expected_last_subject_sequence: Option<u64>,
    /// `Nats-Expected-Last-Sequence`: stored only if the stream's last message has this sequence.
    pub expected_last_sequence: Option<u64>,
    /// Further headers.
    pub headers: Vec<(String, String)>,
}

impl Publish {
    /// A publish of `payload` to `subject` with no conditions and no id.
    pub fn new(subject: impl Into<String>, payload: Vec<u8>) -> Publish {
        Publish { subject: subject.into(), payload, ..Publish::default() }
    }
}

/// JetStream's acknowledgement: a quorum of the stream's replicas stored the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream (the first one's, for a duplicate).
    pub sequence: u64,
    /// Whether it was a duplicate of an earlier publish with the same message id.
    pub duplicate: bool,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Its headers, each value of a repeated header in order.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub payload: Vec<u8>,
    /// When the stream stored it, in milliseconds since the Unix epoch (the server's clock).
    pub time_ms: i64,
}

impl Message {
    /// The first value of header `name` (exact spelling).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// A stream's extent, as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The first sequence still stored (the next one to be stored when empty).
    pub first_sequence: u64,
    /// The last sequence stored (0 for a stream never written).
    pub last_sequence: u64,
    /// Messages stored.
    pub messages: u64,
    /// The name of the server leading the stream's Raft group, if it has a leader.
    pub leader: Option<String>,
}

/// A key's latest value in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// Its revision: the stream sequence of the write (compare-and-set on it with `kv_update`).
    pub revision: u64,
}

/// The link's counters since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Publishes taken by the link thread.
    pub publishes: u64,
    /// Publishes acknowledged (duplicates included).
    pub acks: u64,
    /// Acknowledgements that said duplicate.
    pub duplicates: u64,
    /// Publish and read attempts repeated after a transient failure.
    pub retries: u64,
    /// Publishes and calls that ended in an error (refusals like a wrong last sequence included).
    pub errors: u64,
    /// Commands refused because the queue was full.
    pub busy: u64,
    /// Connections made after the first (the client reconnected).
    pub reconnects: u64,
    /// Times the connection was lost.
    pub disconnects: u64,
    /// Reads by sequence answered by a replica through direct get.
    pub direct_gets: u64,
    /// Reads answered by a stream's leader (`STREAM.MSG.GET`).
    pub leader_gets: u64,
    /// Failures an ordered consumer reported and went on from (it recreates itself).
    pub consumer_errors: u64,
    /// Served requests refused because their `Requests` queue was full.
    pub requests_refused: u64,
}
