//! The delivery status of an event, as the contract names it.

/// Delivery status of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// Accepted, waiting for an attempt.
    Pending,
    /// An attempt is in flight (shown only; the state keeps this as `Event::in_flight`).
    Delivering,
    /// Waiting for its next attempt.
    Retrying,
    /// A 2xx was received.
    Delivered,
    /// Given up (the dead-letter state).
    Failed,
}

impl EventStatus {
    /// The contract's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses a status filter.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivering, Self::Retrying, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Delivered or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed)
    }
}
