//! Header fields: which ones the parser interprets, the small owned set it keeps for the
//! application, and the rules (RFC 9110, RFC 9112) that turn them into framing, persistence and
//! expectations. Field names compare case-insensitively (RFC 9110 §5.1).
//!
//! # Framing: one Content-Length, one value
//!
//! RFC 9112 §6.3 item 5: "If a message is received without Transfer-Encoding and with an
//! invalid Content-Length header field, then the message framing is invalid and the recipient
//! MUST treat it as an unrecoverable error, unless the field value can be successfully parsed as
//! a comma-separated list (Section 5.6.1 of [HTTP]), all values in the list are valid, and all
//! values in the list are the same (in which case, the message is processed with that single
//! value used as the Content-Length field value). If the unrecoverable error is in a request
//! message, the server MUST respond with a 400 (Bad Request) status code and then close the
//! connection."
//!
//! We take no part of that "unless": a Content-Length is exactly `1*DIGIT` on exactly one field
//! line. A list (`1000,1000`, even of identical values) and a repeated field line are 400 E1005
//! and the connection is closed ([`ParseError::MultipleContentLengths`]). RFC 9110 §8.6 lets a
//! recipient "either reject the message as invalid or replace that invalid field value with a
//! single instance"; the accepting reading is how a front proxy and this server come to
//! disagree about where a request ends (request smuggling), and no honest client sends a list.

use std::fmt;

use super::error::ParseError;
use super::request::{BodyFraming, Version};
use crate::limits::Limits;

/// A header field the application reads, kept as raw bytes in [`ApplicationHeaders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    /// `content-type`: forwarded with the payload to the destination.
    ContentType,
    /// `authorization`: the admin bearer token.
    Authorization,
    /// `x-idempotency-key`: deduplicates ingests per endpoint.
    IdempotencyKey,
    /// `webhook-id`: Standard Webhooks message id (signed ingest).
    WebhookId,
    /// `webhook-timestamp`: Standard Webhooks timestamp (signed ingest).
    WebhookTimestamp,
    /// `webhook-signature`: Standard Webhooks signatures (signed ingest).
    WebhookSignature,
    /// `traceparent`: W3C trace context, propagated to deliveries. May be sent on several field
    /// lines; every one is kept (see [`ApplicationHeaders::get_all`]).
    Traceparent,
    /// `tracestate`: W3C trace context vendor entries, a list that may be split over several
    /// field lines; every one is kept (see [`ApplicationHeaders::get_all`]).
    Tracestate,
    /// `x-event-type`: the event's type, which subscriptions route on.
    EventType,
}

impl HeaderName {
    /// Every variant, in a fixed order.
    pub const ALL: [HeaderName; 9] = [
        Self::ContentType,
        Self::Authorization,
        Self::IdempotencyKey,
        Self::WebhookId,
        Self::WebhookTimestamp,
        Self::WebhookSignature,
        Self::Traceparent,
        Self::Tracestate,
        Self::EventType,
    ];

    /// The field name in lowercase.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentType => "content-type",
            Self::Authorization => "authorization",
            Self::IdempotencyKey => "x-idempotency-key",
            Self::WebhookId => "webhook-id",
            Self::WebhookTimestamp => "webhook-timestamp",
            Self::WebhookSignature => "webhook-signature",
            Self::Traceparent => "traceparent",
            Self::Tracestate => "tracestate",
            Self::EventType => "x-event-type",
        }
    }

    /// Whether the field may be sent on several field lines, each of which is kept. Only the
    /// trace context fields are: RFC 9110 §5.3 lets a list such as `tracestate` be split over
    /// lines, and a repeated `traceparent` is for the application to judge (the W3C processing
    /// model starts a new trace), not a reason to refuse the request. Every other kept field
    /// is a singleton.
    #[must_use]
    pub fn repeatable(self) -> bool {
        matches!(self, Self::Traceparent | Self::Tracestate)
    }
}

/// The header fields of a request that the application needs, owned. Values are the field
/// values as sent, without surrounding whitespace. Other fields are not kept.
///
/// Each field is kept at most once, except the repeatable ones ([`HeaderName::repeatable`]),
/// which keep every field line in order. Their number is bounded by the parser's header count
/// limit ([`crate::limits::HEADER_COUNT_MAX`]), so repetition adds no unbounded growth.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApplicationHeaders {
    // A handful of entries in practice and never more than the head's field lines: a linear
    // scan beats any map, and there is one allocation per field line kept plus this vector's.
    entries: Vec<(HeaderName, Vec<u8>)>,
    // Every other field line (not framing, not one of the above), packed in one buffer as
    // `[name length][lower-case name][value length: 2 bytes][value]`, for what the application
    // looks up by a name it learns at run time (an endpoint's inbound signature header). One
    // allocation per request at most, bounded by the head's size limit.
    others: Vec<u8>,
}

impl ApplicationHeaders {
    /// The value of `name`, if the request carried it; for a field sent on several lines, the
    /// first one's.
    #[must_use]
    pub fn get(&self, name: HeaderName) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of `name`, one per field line, in the order the request sent them. Empty
    /// when the request did not carry it; at most one value unless the field is
    /// [`HeaderName::repeatable`]. This is how the trace context reads a `tracestate` split
    /// over lines, or notices a `traceparent` sent twice.
    pub fn get_all(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().filter(move |(entry_name, _)| *entry_name == name).map(|(_, value)| value.as_slice())
    }

    /// Every kept field line, in the order the request sent them; a repeatable field appears
    /// once per line.
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName, &[u8])> {
        self.entries.iter().map(|(name, value)| (*name, value.as_slice()))
    }

    /// Whether no kept field was present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first value of a field that is not one of [`HeaderName`]'s, by its name in any case
    /// (names longer than 255 bytes are not kept).
    #[must_use]
    pub fn get_other(&self, name: &str) -> Option<&[u8]> {
        let mut rest = self.others.as_slice();
        while let Some((&name_length, after)) = rest.split_first() {
            let (kept_name, after) = after.split_at_checked(usize::from(name_length))?;
            let (length, after) = after.split_at_checked(2)?;
            let value_length = usize::from(u16::from_le_bytes([length[0], length[1]]));
            let (value, after) = after.split_at_checked(value_length)?;
            if kept_name.eq_ignore_ascii_case(name.as_bytes()) {
                return Some(value);
            }
            rest = after;
        }
        None
    }

    /// Every kept field that is not one of [`HeaderName`]'s, as (lower-case name, value), in
    /// the order the request sent them: what a cluster node forwards to the partition's owner.
    pub fn others(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest = self.others.as_slice();
        std::iter::from_fn(move || {
            let (&name_length, after) = rest.split_first()?;
            let (name, after) = after.split_at_checked(usize::from(name_length))?;
            let (length, after) = after.split_at_checked(2)?;
            let (value, after) = after.split_at_checked(usize::from(u16::from_le_bytes([length[0], length[1]])))?;
            rest = after;
            // Names were kept from a parsed head: ASCII token characters.
            Some((std::str::from_utf8(name).unwrap_or_default(), value))
        })
    }

    fn keep_other(&mut self, name: &str, value: &[u8]) {
        let (Ok(name_length), Ok(value_length)) = (u8::try_from(name.len()), u16::try_from(value.len())) else {
            return;
        };
        self.others.push(name_length);
        self.others.extend(name.bytes().map(|byte| byte.to_ascii_lowercase()));
        self.others.extend_from_slice(&value_length.to_le_bytes());
        self.others.extend_from_slice(value);
    }

    fn insert(&mut self, name: HeaderName, value: &[u8]) -> Result<(), ParseError> {
        // Every other kept field is a singleton: two idempotency keys, event types or
        // Authorization fields are ambiguous, and picking one is how a proxy and a server come
        // to disagree.
        if !name.repeatable() && self.get(name).is_some() {
            return Err(ParseError::DuplicateHeader { name: name.as_str() });
        }
        self.entries.push((name, value.to_vec()));
        Ok(())
    }
}

impl fmt::Debug for ApplicationHeaders {
    // A head is likely to be logged; the admin token must not be.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = formatter.debug_map();
        for (name, value) in self.iter() {
            if name == HeaderName::Authorization {
                map.entry(&name.as_str(), &"<redacted>");
            } else {
                map.entry(&name.as_str(), &String::from_utf8_lossy(value));
            }
        }
        map.finish()
    }
}

/// How a header field takes part in parsing.
#[derive(Clone, Copy)]
enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Application(HeaderName),
}

const PROTOCOL_FIELDS: [(&str, Field); 5] = [
    ("host", Field::Host),
    ("content-length", Field::ContentLength),
    ("transfer-encoding", Field::TransferEncoding),
    ("connection", Field::Connection),
    ("expect", Field::Expect),
];

fn classify(name: &str) -> Option<Field> {
    // Comparing lengths first makes the miss (the common case) one integer compare per entry.
    let matches = |candidate: &str| name.len() == candidate.len() && name.eq_ignore_ascii_case(candidate);
    PROTOCOL_FIELDS.iter().find(|(candidate, _)| matches(candidate)).map(|(_, field)| *field).or_else(|| {
        HeaderName::ALL.iter().find(|candidate| matches(candidate.as_str())).map(|name| Field::Application(*name))
    })
}

/// What the header fields of a head mean, once all of them are read.
#[derive(Debug)]
pub(super) struct Semantics {
    pub(super) framing: BodyFraming,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    pub(super) headers: ApplicationHeaders,
}

/// Accumulates the header fields of one head, one field line at a time. Fields that may be
/// repeated as several lines (Connection, Transfer-Encoding, Expect) are combined as the list
/// they would form on one line (RFC 9110 §5.3).
#[derive(Default)]
pub(super) struct FieldScan {
    host_count: u32,
    content_length: Option<u64>,
    transfer_encoding_seen: bool,
    transfer_coding_count: u32,
    last_coding_chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
    expect_other: bool,
    headers: ApplicationHeaders,
}

impl FieldScan {
    /// Takes one field line into account.
    pub(super) fn record(&mut self, name: &str, value: &[u8]) -> Result<(), ParseError> {
        let Some(field) = classify(name) else {
            self.headers.keep_other(name, value);
            return Ok(());
        };
        match field {
            Field::Host => self.host_count = self.host_count.saturating_add(1),
            Field::ContentLength => self.record_content_length(value)?,
            Field::TransferEncoding => {
                self.transfer_encoding_seen = true;
                for coding in list_elements(value) {
                    self.transfer_coding_count = self.transfer_coding_count.saturating_add(1);
                    // Transfer codings are case-insensitive (RFC 9112 §7).
                    self.last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
            Field::Connection => {
                // Connection options are case-insensitive (RFC 9110 §7.6.1).
                for option in list_elements(value) {
                    self.connection_close |= option.eq_ignore_ascii_case(b"close");
                    self.connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            Field::Expect => {
                // "The Expect field value is case-insensitive." (RFC 9110 §10.1.1)
                for expectation in list_elements(value) {
                    if expectation.eq_ignore_ascii_case(b"100-continue") {
                        self.expect_continue = true;
                    } else {
                        self.expect_other = true;
                    }
                }
            }
            Field::Application(name) => self.headers.insert(name, value)?,
        }
        Ok(())
    }

    fn record_content_length(&mut self, value: &[u8]) -> Result<(), ParseError> {
        // A second field line is refused whatever the values, like a list in one line (see the
        // module documentation): the framing must have exactly one reading.
        if self.content_length.is_some() {
            return Err(ParseError::MultipleContentLengths);
        }
        self.content_length = Some(parse_content_length(value)?);
        Ok(())
    }

    /// Resolves framing, persistence and expectations once every field line is recorded.
    pub(super) fn finish(self, version: Version, limits: &Limits) -> Result<Semantics, ParseError> {
        // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
        // HTTP/1.1 request message that lacks a Host header field and to any request message
        // that contains more than one Host header field line".
        if self.host_count > 1 {
            return Err(ParseError::DuplicateHeader { name: "host" });
        }
        if self.host_count == 0 && version == Version::Http11 {
            return Err(ParseError::MissingHost);
        }
        // RFC 9110 §10.1.1: a server MAY answer 417 to an expectation it does not support.
        if self.expect_other {
            return Err(ParseError::ExpectationFailed);
        }
        let framing = self.framing(version, limits)?;
        let keep_alive = match version {
            // RFC 9112 §9.3: HTTP/1.1 connections persist unless "close" is sent; HTTP/1.0
            // ones persist only when "keep-alive" is sent (and "close" wins over it).
            Version::Http11 => !self.connection_close,
            Version::Http10 => self.connection_keep_alive && !self.connection_close,
        };
        // RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an HTTP/1.0
        // request MUST ignore that expectation." Without content there is nothing to wait for
        // either, and a 100 would only cost a write.
        let expect_continue = self.expect_continue && version == Version::Http11 && framing != BodyFraming::Empty;
        Ok(Semantics { framing, keep_alive, expect_continue, headers: self.headers })
    }

    /// The body framing of RFC 9112 §6.3, strictest reading.
    fn framing(&self, version: Version, limits: &Limits) -> Result<BodyFraming, ParseError> {
        if self.transfer_encoding_seen {
            // §6.3 item 3: a request with both "might indicate an attempt to perform request
            // smuggling"; "A server MAY reject" it, and we do.
            if self.content_length.is_some() {
                return Err(ParseError::ContentLengthWithTransferEncoding);
            }
            // §6.1: a Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
            if version == Version::Http10 {
                return Err(ParseError::InvalidTransferEncoding {
                    reason: "HTTP/1.0 requests cannot use transfer codings",
                });
            }
            // §6.3 item 4: if chunked is not the final coding, "the server MUST respond with
            // the 400 (Bad Request) status code and then close the connection".
            if !self.last_coding_chunked {
                return Err(ParseError::InvalidTransferEncoding {
                    reason: "the final transfer coding must be chunked",
                });
            }
            // We decode no other coding, and §7 forbids applying chunked more than once.
            if self.transfer_coding_count != 1 {
                return Err(ParseError::InvalidTransferEncoding {
                    reason: "only a single chunked coding is supported",
                });
            }
            return Ok(BodyFraming::Chunked);
        }
        match self.content_length {
            // §6.3 item 7: a request with neither field has no content.
            None | Some(0) => Ok(BodyFraming::Empty),
            // Refused from the head, before a byte of the body is read.
            Some(length) if length > limits.payload_bytes_max => {
                Err(ParseError::PayloadTooLarge { limit_bytes: limits.payload_bytes_max })
            }
            Some(length) => Ok(BodyFraming::Length(length)),
        }
    }
}

/// Parses a Content-Length field value: `1*DIGIT` (RFC 9110 §8.6) with optional whitespace
/// around it. A comma-separated list, even of identical values, is
/// [`ParseError::MultipleContentLengths`] (see the module documentation); signs, spaces inside
/// the number, any other byte and values over `u64::MAX` are
/// [`ParseError::InvalidContentLength`]. RFC 9112 §6.3 item 5 makes both unrecoverable.
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.contains(&b',') {
        return Err(ParseError::MultipleContentLengths);
    }
    let digits = trim_whitespace(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::InvalidContentLength);
    }
    let length =
        digits.iter().try_fold(0_u64, |length, digit| length.checked_mul(10)?.checked_add(u64::from(digit - b'0')));
    length.ok_or(ParseError::InvalidContentLength)
}

/// The non-empty elements of a comma-separated field value, without optional whitespace.
/// RFC 9110 §5.6.1.2: a recipient MUST parse and ignore empty list elements.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|byte| *byte == b',').map(trim_whitespace).filter(|element| !element.is_empty())
}

/// `value` without leading and trailing optional whitespace (SP and HTAB, RFC 9110 §5.6.3).
fn trim_whitespace(value: &[u8]) -> &[u8] {
    let is_whitespace = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value.iter().position(|byte| !is_whitespace(byte)).unwrap_or(value.len());
    let end = value.iter().rposition(|byte| !is_whitespace(byte)).map_or(start, |last| last + 1);
    value.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::request::{parse_head, Parsed};
    use super::*;

    #[test]
    fn content_length_accepts_one_decimal_value() {
        // The one form every honest client sends; leading zeros and surrounding whitespace are
        // still that form.
        assert_eq!(parse_content_length(b"42"), Ok(42));
        assert_eq!(parse_content_length(b"0042"), Ok(42));
        assert_eq!(parse_content_length(b" 42\t"), Ok(42));
        assert_eq!(parse_content_length(b"18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn content_length_lists_are_refused_even_when_identical() {
        // RFC 9112 §6.3 would let `1000,1000` pass as 1000; a front proxy that reads it
        // otherwise is a request-smuggling desync, so every list is refused.
        for value in [&b"1000,1000"[..], b"42, 42 ,42", b"1, 2", b"0,0", b"1,", b",1", b","] {
            assert_eq!(parse_content_length(value), Err(ParseError::MultipleContentLengths), "{value:?}");
        }
    }

    #[test]
    fn content_length_rejects_everything_else() {
        // Every lenient reading of a length is a way for two parsers to disagree on framing.
        for value in [&b""[..], b" ", b"+1", b"-1", b"1 2", b"0x10", b"1e3", b"4 2", b"1_0", b"\xd9\xa1"] {
            assert_eq!(parse_content_length(value), Err(ParseError::InvalidContentLength), "{value:?}");
        }
        assert_eq!(parse_content_length(b"18446744073709551616"), Err(ParseError::InvalidContentLength));
    }

    #[test]
    fn a_repeated_content_length_line_is_refused_even_when_identical() {
        // Two field lines are a list spelt differently; a proxy may keep either one.
        let mut scan = FieldScan::default();
        assert_eq!(scan.record("Content-Length", b"5"), Ok(()));
        assert_eq!(scan.record("content-length", b"5"), Err(ParseError::MultipleContentLengths));
        let mut scan = FieldScan::default();
        assert_eq!(scan.record("Content-Length", b"5"), Ok(()));
        assert_eq!(scan.record("CONTENT-LENGTH", b"6"), Err(ParseError::MultipleContentLengths));
    }

    #[test]
    fn field_names_match_case_insensitively() {
        // RFC 9110 §5.1 makes field names case-insensitive; a case-sensitive match would let
        // `content-LENGTH` slip past the framing rules.
        assert!(matches!(classify("CoNtEnT-LeNgTh"), Some(Field::ContentLength)));
        assert!(matches!(classify("X-IDEMPOTENCY-KEY"), Some(Field::Application(HeaderName::IdempotencyKey))));
        assert!(classify("content-lengthx").is_none());
        assert!(classify("accept").is_none());
    }

    #[test]
    fn trim_whitespace_handles_blank_values() {
        // Blank values must trim to empty rather than index out of range.
        assert_eq!(trim_whitespace(b" \t "), b"");
        assert_eq!(trim_whitespace(b"\t a b \t"), b"a b");
        assert_eq!(trim_whitespace(b""), b"");
    }

    /// The kept fields of a complete head, or its parse error.
    fn head_headers(fields: &str) -> Result<ApplicationHeaders, ParseError> {
        let request = format!("POST /ingest/ep_1 HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        match parse_head(request.as_bytes(), &Limits::default())? {
            Parsed::Complete { head, .. } => Ok(head.headers),
            Parsed::Partial => Err(ParseError::InvalidHeader),
        }
    }

    // An endpoint's inbound signature header is named by configuration (GitHub's
    // X-Hub-Signature-256, Stripe-Signature, …), so every other field is kept for lookup by
    // name, in any case, the first line winning; framing fields are not among them.
    #[test]
    fn other_fields_are_kept_for_lookup_by_name() {
        let headers = head_headers(
            "X-Hub-Signature-256: sha256=abc\r\nStripe-Signature: t=1,v1=ff\r\nx-hub-signature-256: second\r\nContent-Length: 0\r\n",
        )
        .unwrap_or_default();
        assert_eq!(headers.get_other("x-hub-signature-256"), Some(&b"sha256=abc"[..]));
        assert_eq!(headers.get_other("STRIPE-SIGNATURE"), Some(&b"t=1,v1=ff"[..]));
        assert_eq!(headers.get_other("content-length"), None);
        assert_eq!(headers.get_other("host"), None);
        assert_eq!(headers.get_other("x-missing"), None);
    }

    #[test]
    fn a_repeated_traceparent_is_kept_line_by_line() {
        // The W3C processing model answers a traceparent sent twice with a new trace, so the
        // parser must hand both lines to the application instead of refusing the request.
        let first = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let second = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let headers = head_headers(&format!("traceparent: {first}\r\nTraceParent: {second}\r\n"));
        let headers = headers.unwrap_or_default();
        let values: Vec<&[u8]> = headers.get_all(HeaderName::Traceparent).collect();
        assert_eq!(values, [first.as_bytes(), second.as_bytes()]);
        assert_eq!(headers.get(HeaderName::Traceparent), Some(first.as_bytes()));
        assert_eq!(headers.iter().count(), 2);
    }

    #[test]
    fn a_tracestate_split_over_lines_is_kept_in_order() {
        // tracestate is a list that RFC 9110 §5.3 lets a sender split over field lines; the
        // combined value is the lines joined in order, so their order must survive.
        let fields = "tracestate: rojo=00f067aa0ba902b7\r\nTRACESTATE: congo=t61rcWkgMzE, \r\ntracestate: ,x=1\r\n";
        let headers = head_headers(fields).unwrap_or_default();
        let values: Vec<&[u8]> = headers.get_all(HeaderName::Tracestate).collect();
        assert_eq!(values, [&b"rojo=00f067aa0ba902b7"[..], b"congo=t61rcWkgMzE,", b",x=1"]);
        assert_eq!(headers.get(HeaderName::Tracestate), Some(&b"rojo=00f067aa0ba902b7"[..]));
    }

    #[test]
    fn get_all_is_empty_for_an_absent_field() {
        // Absence and a single line must read the same through both accessors.
        let headers = head_headers("traceparent: a\r\n").unwrap_or_default();
        assert_eq!(headers.get_all(HeaderName::Tracestate).count(), 0);
        assert_eq!(headers.get_all(HeaderName::Traceparent).collect::<Vec<_>>(), [&b"a"[..]]);
    }

    #[test]
    fn a_repeated_singleton_field_is_still_refused() {
        // Two idempotency keys or event types are ambiguous: a proxy may act on one and this
        // server on the other, so the request is refused (400 E1005) rather than guessed at.
        let cases = [
            ("X-Idempotency-Key: a\r\nx-idempotency-key: a\r\n", "x-idempotency-key"),
            ("X-Event-Type: order.created\r\nx-event-type: order.paid\r\n", "x-event-type"),
            ("Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", "authorization"),
        ];
        for (fields, name) in cases {
            let error = head_headers(fields).err();
            assert_eq!(error, Some(ParseError::DuplicateHeader { name }), "{fields:?}");
            assert_eq!(error.as_ref().map(ParseError::status), Some(400));
            assert_eq!(error.as_ref().map(ParseError::code), Some("E1005"));
        }
    }

    #[test]
    fn the_event_type_is_kept() {
        // Subscriptions route on the event type, so the parser must keep it whatever its case.
        let headers = head_headers("X-EVENT-TYPE: order.created\r\n").unwrap_or_default();
        assert_eq!(headers.get(HeaderName::EventType), Some(&b"order.created"[..]));
        assert!(matches!(classify("x-event-type"), Some(Field::Application(HeaderName::EventType))));
        assert!(matches!(classify("TraceState"), Some(Field::Application(HeaderName::Tracestate))));
    }

    #[test]
    fn only_the_trace_context_fields_are_repeatable() {
        // Widening the repeatable set silently would turn an ambiguous request into a guess.
        let repeatable: Vec<HeaderName> = HeaderName::ALL.into_iter().filter(|name| name.repeatable()).collect();
        assert_eq!(repeatable, [HeaderName::Traceparent, HeaderName::Tracestate]);
    }

    #[test]
    fn debug_output_redacts_authorization() {
        // Heads end up in logs; a bearer token in a log is a leaked admin credential.
        let mut headers = ApplicationHeaders::default();
        assert_eq!(headers.insert(HeaderName::Authorization, b"Bearer secret"), Ok(()));
        assert!(!format!("{headers:?}").contains("secret"));
    }
}
