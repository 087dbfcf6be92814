//! The link's errors, and the pure reading of what the server's error texts say.

/// Why a call on the link failed (other than a publish's own refusals, see [`PublishError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The command queue is full: the link thread is behind. Backpressure (E3002), try later.
    #[error("the NATS link is busy: its command queue is full")]
    Busy,
    /// The link was closed (or its thread ended) before the call was answered.
    #[error("the NATS link is closed")]
    Closed,
    /// No connection could be made to any of the URLs.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The URLs tried, comma-separated.
        urls: String,
        /// What the client said, or that the connect timeout passed.
        reason: String,
    },
    /// No answer within the deadline (after retries where the call retries).
    #[error("{what}: no answer in time ({detail})")]
    Timeout {
        /// The call that timed out.
        what: String,
        /// The last failure seen.
        detail: String,
    },
    /// Nobody serves the subject of a request.
    #[error("no responders on {subject}")]
    NoResponders {
        /// The request's subject.
        subject: String,
    },
    /// The serving node's request queue was full: it refused the request instead of buffering.
    #[error("the node serving {subject} is busy")]
    RemoteBusy {
        /// The request's subject.
        subject: String,
    },
    /// The serving node answered with an error.
    #[error("the node serving {subject} failed the request: {reason}")]
    Remote {
        /// The request's subject.
        subject: String,
        /// What it said.
        reason: String,
    },
    /// A name, subject, key or header the server would refuse (or the client would panic on).
    #[error("invalid {what}: {value:?}")]
    Invalid {
        /// What kind of input.
        what: &'static str,
        /// The input.
        value: String,
    },
    /// Anything else the client or JetStream reported, with its text.
    #[error("{what}: {detail}")]
    Failed {
        /// The call that failed.
        what: String,
        /// The client's or server's text.
        detail: String,
    },
}

/// Why a publish was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// JetStream refused an expected-last-sequence header (error 10071): the subject's (or the
    /// stream's) last sequence is this one. With `expected_last_subject_sequence: Some(0)` it is
    /// the sequence of the message already on the subject.
    #[error("wrong last sequence: {0}")]
    WrongLastSequence(u64),
    /// The command queue is full (see [`LinkError::Busy`]).
    #[error("the NATS link is busy: its command queue is full")]
    Busy,
    /// The link was closed before the publish was acknowledged: its outcome is unknown.
    #[error("the NATS link closed before the publish was acknowledged")]
    Closed,
    /// No acknowledgement within the retry deadline; the outcome is unknown (publish again with
    /// the same message id to learn it without storing twice).
    #[error("no acknowledgement after {attempts} attempts: {last}")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },
    /// Refused for another reason (no stream for the subject, too large, a bad header): its text.
    #[error("publish refused: {0}")]
    Refused(String),
}

/// Why a key-value call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// `kv_create` of a key that exists, at this revision.
    #[error("the key exists (revision {revision})")]
    Exists {
        /// The existing entry's revision.
        revision: u64,
    },
    /// `kv_update` on a revision that is not the key's latest (0 when the key does not exist).
    #[error("wrong revision: the key is at revision {current}")]
    WrongRevision {
        /// The key's latest revision, 0 for none.
        current: u64,
    },
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The two refusals every call's error type can express without the link thread.
pub(crate) trait Refusal {
    /// The command queue was full.
    fn busy() -> Self;
    /// The link was gone before an answer came.
    fn closed() -> Self;
}

impl Refusal for LinkError {
    fn busy() -> Self {
        LinkError::Busy
    }
    fn closed() -> Self {
        LinkError::Closed
    }
}

impl Refusal for PublishError {
    fn busy() -> Self {
        PublishError::Busy
    }
    fn closed() -> Self {
        PublishError::Closed
    }
}

impl Refusal for KvError {
    fn busy() -> Self {
        KvError::Link(LinkError::Busy)
    }
    fn closed() -> Self {
        KvError::Link(LinkError::Closed)
    }
}

impl From<PublishError> for KvError {
    fn from(error: PublishError) -> Self {
        KvError::Link(LinkError::from(error))
    }
}

impl From<PublishError> for LinkError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Busy => LinkError::Busy,
            PublishError::Closed => LinkError::Closed,
            PublishError::Timeout { last, .. } => LinkError::Timeout { what: "publish".into(), detail: last },
            other => LinkError::Failed { what: "publish".into(), detail: other.to_string() },
        }
    }
}

/// The `S` of JetStream's "wrong last sequence: S" (error 10071), anywhere in `text` (async-nats
/// wraps the server's description in its own words: "wrong last sequence: wrong last sequence:
/// 5 (code 400, error code 10071)").
pub(crate) fn wrong_last_sequence(text: &str) -> Option<u64> {
    const MARK: &str = "wrong last sequence: ";
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let digits: &str = &rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())];
        if let Ok(sequence) = digits.parse() {
            return Some(sequence);
        }
    }
    None
}

/// Whether a failure's text (the client's error with its sources) says the request may succeed
/// if sent again: it timed out, nobody answered (a stream or JetStream API between leaders), the
/// connection broke, or JetStream said 503 (temporarily unavailable, no leader yet).
pub(crate) fn transient(text: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "timed out",
        "no responders",
        // async-nats' text for "no responders" on a JetStream API request.
        "requested jetstream resource does not exist",
        "broken pipe",
        "max ack pending",
        "(code 503,",
        "temporarily unavailable",
        "no suitable peers",
    ];
    let text = text.to_ascii_lowercase();
    SIGNS.iter().any(|sign| text.contains(sign))
}

/// An error's text with every source's, the way async-nats words its own (kind: source).
pub(crate) fn full_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // The idempotency check learns the first event's sequence from this text alone (ADR 17), so
    // the parse must find it in async-nats' wording and in the server's own.
    #[test]
    fn wrong_last_sequence_reads_the_sequence_from_the_server_text() {
        let nested = "wrong last sequence: wrong last sequence: 5 (code 400, error code 10071)";
        assert_eq!(wrong_last_sequence(nested), Some(5));
        assert_eq!(wrong_last_sequence("wrong last sequence: 184467"), Some(184_467));
        assert_eq!(wrong_last_sequence("wrong last sequence: 0"), Some(0));
        assert_eq!(wrong_last_sequence("wrong last sequence"), None);
        assert_eq!(wrong_last_sequence("wrong last msg ID: abc"), None);
        assert_eq!(wrong_last_sequence("wrong last sequence: 99999999999999999999999"), None);
    }

    // A retry on a refusal that cannot change (a full stream, a bad header) would only delay the
    // answer by the whole deadline; a retry missing on an election would lose a publish.
    #[test]
    fn transient_failures_are_told_from_final_ones() {
        assert!(transient("timed out: didn't receive ack in time"));
        assert!(transient("request failed: no responders"));
        assert!(transient("request error: requested JetStream resource does not exist"));
        assert!(transient("JetStream system temporarily unavailable (code 503, error code 10008)"));
        assert!(transient("broken pipe"));
        assert!(!transient("wrong last sequence: wrong last sequence: 5 (code 400, error code 10071)"));
        assert!(!transient("maximum messages per subject exceeded (code 400, error code 10077)"));
        assert!(!transient("stream not found (code 404, error code 10059)"));
    }

    #[test]
    fn full_text_joins_sources_once() {
        let inner = std::io::Error::other("connection reset");
        let outer = std::io::Error::other(inner);
        assert_eq!(full_text(&outer), "connection reset");
    }
}
