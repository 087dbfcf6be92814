//! `GET /admin/events?endpoint_id=&status=&idempotency_key=&received_after=&received_before=&limit=&cursor=`:
//! newest first. With an index (`DATABASE_URL`) the answer comes from Postgres and covers the
//! whole history (the index's queries); without one it comes from the engine's memory (every
//! non-terminal event and the most recent terminal ones; see `state`) and says so with
//! `"source": "memory"`. In memory each shard answers for its own events and the asking shard
//! merges by event id (ids are time-ordered).

use crate::error::EngineError;
use crate::model::ids::{valid_endpoint_id, EventId};
use crate::model::status::EventStatus;

/// Default page size.
pub const LIMIT_DEFAULT: usize = 50;
/// Largest page size.
pub const LIMIT_MAX: usize = 1000;

/// A parsed query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this endpoint's events.
    pub endpoint_id: Option<String>,
    /// Only events in this status.
    pub status: Option<EventStatusFilter>,
    /// Only events ingested with this `X-Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events published to this channel.
    pub channel: Option<String>,
    /// Only events of this tenant's endpoints: set for a key's listing, never from the query
    /// string.
    pub tenant_id: Option<String>,
    /// Only events received at or after this instant (Unix ms; RFC 3339 in the query string).
    pub received_after_ms: Option<u64>,
    /// Only events received before this instant (Unix ms; RFC 3339 in the query string).
    pub received_before_ms: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// Only events older than this one (the previous page's `next_cursor`).
    pub cursor: Option<EventId>,
}

/// What a filter looks at of one event (or one delivery of a published event).
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Its endpoint.
    pub endpoint_id: &'a str,
    /// Its status's name.
    pub status: &'a str,
    /// The sender's idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// When it was received.
    pub received_at_ms: u64,
    /// Its type, when known.
    pub event_type: Option<&'a str>,
    /// The channel it was published to.
    pub channel: Option<&'a str>,
}

/// A status filter (a copy of [`EventStatus`] that is `Send`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventStatusFilter(pub &'static str);

impl EventQuery {
    /// Parses the filters, `limit` and `cursor` (values percent-decoded); unknown parameters
    /// are refused.
    pub fn parse(query: Option<&str>) -> Result<Self, EngineError> {
        let mut parsed = Self {
            endpoint_id: None,
            status: None,
            idempotency_key: None,
            event_type: None,
            channel: None,
            tenant_id: None,
            received_after_ms: None,
            received_before_ms: None,
            limit: LIMIT_DEFAULT,
            cursor: None,
        };
        for pair in pairs(query) {
            let (name, decoded) = pair?;
            let value = decoded.as_str();
            match name {
                "endpoint_id" if valid_endpoint_id(value) => parsed.endpoint_id = Some(value.to_string()),
                "status" => {
                    let status = EventStatus::parse(value)
                        .ok_or_else(|| invalid("status must be pending, delivering, retrying, delivered or failed"))?;
                    parsed.status = Some(EventStatusFilter(status.as_str()));
                }
                "limit" => {
                    let limit: usize = value.parse().map_err(|_| invalid("limit must be a number"))?;
                    if !(1..=LIMIT_MAX).contains(&limit) {
                        return Err(invalid("limit must be 1 to 1000"));
                    }
                    parsed.limit = limit;
                }
                "cursor" if value.is_empty() || value == "null" => {}
                "cursor" => {
                    parsed.cursor = Some(EventId::parse(value).ok_or_else(|| invalid("cursor is not an event id"))?)
                }
                "idempotency_key" if crate::model::ids::valid_idempotency_key(value.as_bytes()) => {
                    parsed.idempotency_key = Some(value.to_string())
                }
                "idempotency_key" => return Err(invalid("idempotency_key must be 1 to 255 visible ASCII characters")),
                "event_type" if crate::model::event_type::valid_event_type(value.as_bytes()) => {
                    parsed.event_type = Some(value.to_string())
                }
                "event_type" => return Err(invalid("event_type must be 1 to 128 of A-Z a-z 0-9 . _ : -")),
                "channel" if crate::model::event_type::valid_channel(value) => parsed.channel = Some(value.to_string()),
                "channel" => return Err(invalid("channel must be 1 to 64 of a-z 0-9 _ -")),
                "received_after" | "received_before" => {
                    let at = crate::clock::parse_rfc3339(value)
                        .ok_or_else(|| invalid(&format!("{name} must be an RFC 3339 timestamp")))?;
                    if name == "received_after" {
                        parsed.received_after_ms = Some(at);
                    } else {
                        parsed.received_before_ms = Some(at);
                    }
                }
                "endpoint_id" => return Err(invalid("endpoint_id is not a valid endpoint id")),
                other => return Err(invalid(&format!("unknown query parameter {other}"))),
            }
        }
        Ok(parsed)
    }
}

fn invalid(message: &str) -> EngineError {
    EngineError::Invalid(message.to_string())
}

/// The `name=value` pairs of a query string (every admin path's), values percent-decoded; a
/// value that is not UTF-8 once decoded is 400 E1005.
pub fn pairs(query: Option<&str>) -> impl Iterator<Item = Result<(&str, String), EngineError>> {
    query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value =
            percent_decode(raw).ok_or_else(|| invalid(&format!("{name} is not valid percent-encoded UTF-8")))?;
        Ok((name, value))
    })
}

/// Decodes `%XX` escapes (`percent-encoding`; `+` stays `+`: an RFC 3339 offset or a key may
/// contain it). An escape that is not two hex digits stays as written; bytes that are not
/// UTF-8 once decoded are refused.
fn percent_decode(value: &str) -> Option<String> {
    percent_encoding::percent_decode_str(value).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

impl EventQuery {
    /// True when an event with these fields passes every filter (the cursor aside).
    pub fn matches(&self, event: &Candidate<'_>) -> bool {
        let Candidate { endpoint_id, status, idempotency_key, received_at_ms, event_type, channel } = *event;
        self.endpoint_id.as_deref().is_none_or(|wanted| wanted == endpoint_id)
            && self.event_type.as_deref().is_none_or(|wanted| Some(wanted) == event_type)
            && self.channel.as_deref().is_none_or(|wanted| Some(wanted) == channel)
            && self.status.is_none_or(|wanted| wanted.0 == status)
            && self.idempotency_key.as_deref().is_none_or(|wanted| Some(wanted) == idempotency_key)
            && self.received_after_ms.is_none_or(|after| received_at_ms >= after)
            && self.received_before_ms.is_none_or(|before| received_at_ms < before)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Query strings are untrusted: bad values are refused with E1005, good ones parsed exactly.
    #[test]
    fn parses_and_refuses() {
        let query = EventQuery::parse(Some(
            "endpoint_id=orders&status=failed&limit=10&idempotency_key=a%26b+c&received_after=2022-04-07T21%3A39%3A13Z&received_before=2022-04-07T23:39:14+02:00",
        ))
        .unwrap();
        assert_eq!(query.endpoint_id.as_deref(), Some("orders"));
        assert_eq!(query.idempotency_key.as_deref(), Some("a&b+c"));
        assert_eq!(query.received_after_ms, Some(1_649_367_553_000));
        assert_eq!(query.received_before_ms, Some(1_649_367_554_000));
        assert_eq!(query.status, Some(EventStatusFilter("failed")));
        assert_eq!(query.limit, 10);
        assert_eq!(EventQuery::parse(None).unwrap().limit, LIMIT_DEFAULT);
        // Regression: `%+1` was decoded to the byte 0x01; an escape that is not two hex digits
        // stays as written.
        assert_eq!(EventQuery::parse(Some("idempotency_key=a%+1")).unwrap().idempotency_key.as_deref(), Some("a%+1"));
        for bad in [
            "status=lost",
            "limit=0",
            "limit=5000",
            "limit=x",
            "cursor=nope",
            "colour=red",
            "endpoint_id=a/b",
            "idempotency_key=",
            "idempotency_key=%20",
            "received_after=yesterday",
            "received_before=2022-04-07",
            "status=%zz",
            "idempotency_key=%ff",
        ] {
            assert!(EventQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
