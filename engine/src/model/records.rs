//! What the engine writes to its shard's log. Each record kind has its own rkyv body, validated
//! when read back (`kapsel_wal::codec`).

use kapsel_wal::{codec, WalError};

use crate::model::endpoint::Endpoint;

/// Log kind of [`Record::EndpointPut`].
pub const KIND_ENDPOINT_PUT: u8 = 1;
/// Log kind of [`Record::EndpointDeleted`].
pub const KIND_ENDPOINT_DELETED: u8 = 2;
/// Log kind of [`Record::EventReceived`].
pub const KIND_EVENT_RECEIVED: u8 = 3;
/// Log kind of [`Record::Attempt`].
pub const KIND_ATTEMPT: u8 = 4;
/// Log kind of [`Record::Requeued`].
pub const KIND_REQUEUED: u8 = 5;
/// Log kind of [`Record::EventCarried`] as written before carried events kept their queue place
/// (read as queued at the carried record itself).
pub const KIND_EVENT_CARRIED_V1: u8 = 6;
/// Log kind of [`Record::Redriven`].
pub const KIND_REDRIVEN: u8 = 7;
/// Log kind of [`Record::EventCarried`].
pub const KIND_EVENT_CARRIED: u8 = 8;

/// The outcome of an attempt, as recorded.
pub const OUTCOME_DELIVERED: u8 = 0;
/// Will be retried at `next_attempt_at_ms`.
pub const OUTCOME_RETRYING: u8 = 1;
/// Given up: the event is failed (the dead-letter state).
pub const OUTCOME_FAILED: u8 = 2;

/// One delivery attempt and the state it left the event in.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Attempt {
    /// The event.
    pub event_id: u128,
    /// Attempt number, from 1.
    pub n: u32,
    /// When the attempt started.
    pub at_ms: u64,
    /// The destination's status, when it answered.
    pub status_code: Option<u16>,
    /// Time to the answer (or the failure).
    pub latency_ms: u32,
    /// E2001–E2004 when it was not a success.
    pub error_code: Option<String>,
    /// The first KiB of the response body.
    pub response_excerpt: Vec<u8>,
    /// [`OUTCOME_DELIVERED`], [`OUTCOME_RETRYING`] or [`OUTCOME_FAILED`].
    pub outcome: u8,
    /// When the next attempt is due (retrying only).
    pub next_attempt_at_ms: Option<u64>,
}

/// A waiting event given a fresh retry budget by an operator (`POST /admin/events/{id}/retry`).
/// A delivered or failed event is redriven with [`Redriven`] instead, which carries the event.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Requeued {
    /// The event.
    pub event_id: u128,
    /// When.
    pub at_ms: u64,
}

/// An accepted webhook.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventReceived {
    /// The event id (`EventId`'s 128 bits).
    pub event_id: u128,
    /// The endpoint it is for.
    pub endpoint_id: String,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// The sender's `X-Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The sender's `Content-Type`, forwarded with every delivery.
    pub content_type: Option<String>,
    /// The sender's `traceparent`, if any.
    pub traceparent: Option<String>,
    /// The body, opaque.
    pub payload: Vec<u8>,
}

/// A waiting event written again at the end of the log, with its delivery progress, so that
/// retention can remove the old segment that held it (see `retention`).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventCarried {
    /// The event as it was received.
    pub event: EventReceived,
    /// Number of the last attempt made.
    pub last_attempt: u32,
    /// Attempts counted against the retry budget.
    pub budget_used: u32,
    /// When the next attempt is due, for a retrying event.
    pub next_attempt_at_ms: Option<u64>,
    /// For a pending event, the LSN of the record that queued it (its place in its endpoint's
    /// queue, which replay keeps even when that record is gone); 0 for none known.
    pub queued_lsn: u64,
    /// Its attempts so far, as memory keeps them (their own records may go with the old segment).
    pub history: History,
}

/// An event's delivery history as memory keeps it, written with a carried or redriven event so
/// that replay rebuilds it when the attempts' own records are gone.
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct History {
    /// The attempts kept in memory, oldest first.
    pub attempts: Vec<AttemptRecap>,
    /// The last response excerpt kept.
    pub last_excerpt: Option<Vec<u8>>,
    /// Last state change.
    pub updated_at_ms: u64,
}

/// One attempt in a [`History`].
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AttemptRecap {
    /// Attempt number.
    pub n: u32,
    /// Start time.
    pub at_ms: u64,
    /// The destination's status.
    pub status_code: Option<u16>,
    /// Latency.
    pub latency_ms: u32,
    /// E-code of a failure.
    pub error_code: Option<String>,
}

/// [`EventCarried`] as kind 6 stored it, without the queue place.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EventCarriedV1 {
    event: EventReceived,
    last_attempt: u32,
    budget_used: u32,
    next_attempt_at_ms: Option<u64>,
}

/// A delivered or failed event put back in its queue by an operator, written with the event
/// itself: the redriven event then needs no older record, so retention may remove the segment
/// that first held it at any moment without losing the redrive.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Redriven {
    /// The event as it was received.
    pub event: EventReceived,
    /// Number of the last attempt made.
    pub last_attempt: u32,
    /// When it was redriven.
    pub at_ms: u64,
    /// Its attempts so far.
    pub history: History,
}

/// An endpoint removed.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EndpointDeleted {
    /// Its id.
    pub id: String,
    /// When.
    pub at_ms: u64,
}

/// A decoded engine record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// An endpoint created or replaced.
    EndpointPut(Endpoint),
    /// An endpoint removed.
    EndpointDeleted(EndpointDeleted),
    /// A webhook accepted.
    EventReceived(EventReceived),
    /// A delivery attempt.
    Attempt(Attempt),
    /// An event requeued by an operator.
    Requeued(Requeued),
    /// A waiting event moved forward by retention.
    EventCarried(EventCarried),
    /// A terminal event redriven, with the event.
    Redriven(Redriven),
}

impl Record {
    /// The log kind and encoded body.
    pub fn encode(&self) -> Result<(u8, rkyv::util::AlignedVec), WalError> {
        match self {
            Self::EndpointPut(endpoint) => Ok((KIND_ENDPOINT_PUT, codec::encode(endpoint)?)),
            Self::EndpointDeleted(deleted) => Ok((KIND_ENDPOINT_DELETED, codec::encode(deleted)?)),
            Self::EventReceived(event) => Self::encode_event(event),
            Self::Attempt(attempt) => Ok((KIND_ATTEMPT, codec::encode(attempt)?)),
            Self::Requeued(requeued) => Ok((KIND_REQUEUED, codec::encode(requeued)?)),
            Self::EventCarried(carried) => Ok((KIND_EVENT_CARRIED, codec::encode(carried)?)),
            Self::Redriven(redriven) => Ok((KIND_REDRIVEN, codec::encode(redriven)?)),
        }
    }

    /// Encodes an event record without wrapping it (the ingest hot path keeps the event).
    pub fn encode_event(event: &EventReceived) -> Result<(u8, rkyv::util::AlignedVec), WalError> {
        Ok((KIND_EVENT_RECEIVED, codec::encode(event)?))
    }

    /// The event of a received, carried or redriven record (where a payload is read back from).
    pub fn into_event(self) -> Option<EventReceived> {
        match self {
            Self::EventReceived(event) => Some(event),
            Self::EventCarried(carried) => Some(carried.event),
            Self::Redriven(redriven) => Some(redriven.event),
            _ => None,
        }
    }

    /// Decodes and validates a record read back from the log.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, WalError> {
        match kind {
            KIND_ENDPOINT_PUT => codec::decode(body).map(Self::EndpointPut),
            KIND_ENDPOINT_DELETED => codec::decode(body).map(Self::EndpointDeleted),
            KIND_EVENT_RECEIVED => codec::decode(body).map(Self::EventReceived),
            KIND_ATTEMPT => codec::decode(body).map(Self::Attempt),
            KIND_REQUEUED => codec::decode(body).map(Self::Requeued),
            KIND_EVENT_CARRIED => codec::decode(body).map(Self::EventCarried),
            KIND_EVENT_CARRIED_V1 => codec::decode::<EventCarriedV1>(body).map(|old| {
                Self::EventCarried(EventCarried {
                    event: old.event,
                    last_attempt: old.last_attempt,
                    budget_used: old.budget_used,
                    next_attempt_at_ms: old.next_attempt_at_ms,
                    queued_lsn: 0,
                    history: History::default(),
                })
            }),
            KIND_REDRIVEN => codec::decode(body).map(Self::Redriven),
            other => Err(WalError::Decode(format!("unknown engine record kind {other}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Every record must survive the trip through bytes exactly, or replay rebuilds wrong state.
    #[test]
    fn records_round_trip() {
        let event = Record::EventReceived(EventReceived {
            event_id: 42,
            endpoint_id: "ep".into(),
            received_at_ms: 7,
            idempotency_key: Some("k".into()),
            content_type: Some("application/json".into()),
            traceparent: None,
            payload: b"{}".to_vec(),
        });
        let (kind, body) = event.encode().unwrap();
        assert_eq!(Record::decode(kind, &body).unwrap(), event);
        assert!(Record::decode(99, &body).is_err());
        assert!(Record::decode(KIND_ENDPOINT_PUT, &body[..body.len() / 2]).is_err());
    }
}
