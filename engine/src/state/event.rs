//! What a shard keeps in memory about one event: a fixed, small record (64 bytes) for
//! every event it tracks, and a box of details (idempotency key, attempts, last response
//! excerpt) only for events that have any. The payload is not here: it lives in the log, and
//! in the payload cache ([`super::payloads`]) while its turn is near.

use kapsel_wal::Position;

use crate::model::ids::EventId;
use crate::model::records::{Attempt, AttemptRecap, History};
use crate::model::status::EventStatus;

/// An attempt as kept in memory (the log has the full record, excerpt included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptSummary {
    /// Start time.
    pub at_ms: u64,
    /// Latency.
    pub latency_ms: u32,
    /// Attempt number.
    pub n: u32,
    /// The destination's status.
    pub status_code: Option<u16>,
    /// E-code of a failure.
    pub error_code: Option<DeliveryCode>,
}

/// The E-code of a failed delivery attempt, in one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryCode {
    /// E2001: timed out.
    Timeout,
    /// E2002: connection failed.
    Connection,
    /// E2003: a retryable status.
    Retryable,
    /// E2004: a permanent status.
    Permanent,
    /// E2005: circuit open.
    CircuitOpen,
}

impl DeliveryCode {
    /// The contract's code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "E2001",
            Self::Connection => "E2002",
            Self::Retryable => "E2003",
            Self::Permanent => "E2004",
            Self::CircuitOpen => "E2005",
        }
    }
}

impl AttemptSummary {
    /// The summary of an attempt record.
    pub fn of(attempt: &Attempt) -> Self {
        Self {
            at_ms: attempt.at_ms,
            latency_ms: attempt.latency_ms,
            n: attempt.n,
            status_code: attempt.status_code,
            error_code: attempt.error_code.as_deref().map(delivery_code),
        }
    }
}

impl AttemptSummary {
    /// The summary as a carried or redriven record writes it.
    pub fn recap(&self) -> AttemptRecap {
        AttemptRecap {
            n: self.n,
            at_ms: self.at_ms,
            status_code: self.status_code,
            latency_ms: self.latency_ms,
            error_code: self.error_code.map(|code| code.as_str().to_string()),
        }
    }

    /// The summary a carried or redriven record wrote.
    pub fn of_recap(recap: &AttemptRecap) -> Self {
        Self {
            at_ms: recap.at_ms,
            latency_ms: recap.latency_ms,
            n: recap.n,
            status_code: recap.status_code,
            error_code: recap.error_code.as_deref().map(delivery_code),
        }
    }
}

impl Detail {
    /// The history a carried or redriven record writes.
    pub fn history(&self) -> History {
        History {
            attempts: self.attempts.iter().map(AttemptSummary::recap).collect(),
            last_excerpt: self.last_excerpt.as_deref().map(<[u8]>::to_vec),
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// Takes over the history a carried or redriven record wrote.
    pub fn restore(&mut self, history: &History) {
        self.attempts = history.attempts.iter().map(AttemptSummary::of_recap).collect();
        self.attempts.shrink_to_fit();
        self.last_excerpt = history.last_excerpt.clone().map(Vec::into_boxed_slice);
        self.updated_at_ms = history.updated_at_ms;
    }
}

/// The delivery E-code an attempt record carries, in one byte. An unknown code (a newer
/// release's) shows as E2002.
pub fn delivery_code(code: &str) -> DeliveryCode {
    match code {
        "E2001" => DeliveryCode::Timeout,
        "E2003" => DeliveryCode::Retryable,
        "E2004" => DeliveryCode::Permanent,
        "E2005" => DeliveryCode::CircuitOpen,
        _ => DeliveryCode::Connection,
    }
}

/// True for outcomes that say the destination is unwell (the breaker counts them).
pub fn is_destination_failure(error_code: Option<&str>) -> bool {
    matches!(error_code, Some("E2001" | "E2002" | "E2003"))
}

/// The parts of an event that many events lack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detail {
    /// The sender's idempotency key.
    pub idempotency_key: Option<Box<str>>,
    /// Attempts made, oldest first (at most [`crate::limits::ATTEMPTS_IN_MEMORY_MAX`]), with no
    /// spare capacity: most events have one.
    pub attempts: Vec<AttemptSummary>,
    /// The last response excerpt (kept for failed outcomes; a success's body is not kept).
    pub last_excerpt: Option<Box<[u8]>>,
    /// Last state change, when it differs from the time the event was received.
    pub updated_at_ms: u64,
    /// When the next attempt is due (retrying only; 0 otherwise). A retrying event has been
    /// attempted, so it has details anyway.
    pub next_attempt_at_ms: u64,
}

/// What a shard keeps in memory about one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// LSN of its current record (received, carried forward or redriven).
    pub lsn: u64,
    /// Where that record lies: the payload is read back from there.
    pub position: Position,
    /// While pending: the LSN of the record that queued it. Each endpoint's queue of pending
    /// events is in this order, live and at replay, even after retention carried some forward.
    pub queued_lsn: u64,
    /// Key, attempts, excerpt, when there are any.
    pub detail: Option<Box<Detail>>,
    /// The owning endpoint's slot in the shard's endpoint table.
    pub endpoint: u32,
    /// Number of the last attempt made.
    pub attempts: u32,
    /// Attempts counted against the retry budget (reset by an operator's redrive).
    pub budget_used: u32,
    /// Payload size.
    pub payload_bytes: u32,
    /// Pending, retrying, delivered or failed (never `Delivering`: see `in_flight`).
    pub status: EventStatus,
    /// An attempt is in flight (live only: replay never sets it).
    pub in_flight: bool,
    /// A delivery of a published event (its id is the published event's plus its number).
    pub delivery: bool,
    /// Its type's number in the shard's `Names` (0: not kept).
    pub event_type: u16,
    /// For a delivery, its channel's number in the shard's `Names` (0: none).
    pub channel: u16,
}

impl Event {
    /// The status to show: `delivering` while an attempt is in flight.
    pub fn shown_status(&self) -> EventStatus {
        if self.in_flight {
            EventStatus::Delivering
        } else {
            self.status
        }
    }

    /// The id the outside knows it by: the published event's for a delivery.
    pub fn public_id(&self, event_id: EventId) -> EventId {
        if self.delivery {
            event_id.published()
        } else {
            event_id
        }
    }

    /// Not delivered or failed yet.
    pub fn is_waiting(&self) -> bool {
        !self.status.is_terminal()
    }

    /// The idempotency key, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.detail.as_ref().and_then(|detail| detail.idempotency_key.as_deref())
    }

    /// Last state change (`received_at_ms` when nothing happened since).
    pub fn updated_at_ms(&self, received_at_ms: u64) -> u64 {
        self.detail.as_ref().map_or(received_at_ms, |detail| detail.updated_at_ms.max(received_at_ms))
    }

    /// When the next attempt is due (retrying only; 0 otherwise).
    pub fn next_attempt_at_ms(&self) -> u64 {
        self.detail.as_ref().map_or(0, |detail| detail.next_attempt_at_ms)
    }

    /// Sets when the next attempt is due (0: none).
    pub fn set_next_attempt_at_ms(&mut self, due_ms: u64) {
        if due_ms != 0 || self.detail.is_some() {
            self.detail_mut().next_attempt_at_ms = due_ms;
        }
    }

    /// The details, created on first use.
    pub fn detail_mut(&mut self) -> &mut Detail {
        self.detail.get_or_insert_with(Box::default)
    }
}

const _: () = assert!(std::mem::size_of::<Event>() <= 64);
const _: () = assert!(std::mem::size_of::<AttemptSummary>() <= 24);
