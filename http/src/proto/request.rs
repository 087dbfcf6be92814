//! Request head parsing: bytes in, a [`Parsed`] value out, no I/O. A connection keeps a read
//! buffer, calls [`parse_head`] after each read, and acts on the answer: read more on
//! [`Parsed::Partial`], handle the request and advance by `head_length` on
//! [`Parsed::Complete`], answer the error and close on `Err`.

use super::error::ParseError;
use super::headers::{ApplicationHeaders, FieldScan};
use crate::limits::{self, Limits};

/// A request method this server implements. Methods are case-sensitive (RFC 9110 §9.1), so
/// `get` is not `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// `PATCH`
    Patch,
}

impl Method {
    /// Every method, in the order an `Allow` header lists them.
    pub const ALL: [Method; 7] =
        [Self::Get, Self::Head, Self::Post, Self::Put, Self::Delete, Self::Options, Self::Patch];

    /// The method token as sent on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
            Self::Patch => "PATCH",
        }
    }

    fn from_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|method| method.as_str() == token)
    }
}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

/// How the request body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyFraming {
    /// No body: neither Content-Length nor Transfer-Encoding, or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes follow the head; never zero, never above the payload limit.
    Length(u64),
    /// A chunked body follows; decode it with [`crate::ChunkedDecoder`].
    Chunked,
}

/// A parsed request head, owned and small: what routing, authentication and ingest need, with
/// the framing already checked for ambiguity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The path of the request target, starting with `/`, as sent (not percent-decoded).
    pub path: String,
    /// The query after `?`, without it, as sent; `None` when the target has no `?`.
    pub query: Option<String>,
    /// The protocol version.
    pub version: Version,
    /// Whether the connection stays open after the response (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the client waits for `100 Continue` before sending the body. Only ever true for
    /// an HTTP/1.1 request that has a body.
    pub expect_continue: bool,
    /// The header fields the application reads.
    pub headers: ApplicationHeaders,
}

/// The outcome of [`parse_head`] on a buffer that holds no error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet: read more bytes and call again with the grown buffer.
    Partial,
    /// The head is complete.
    Complete {
        /// The parsed head.
        head: RequestHead,
        /// Bytes of the buffer the head took, including leading empty lines and the empty line
        /// that ends it. The body (or the next pipelined request) starts there.
        head_length: usize,
    },
}

/// Parses the request head at the start of `buffer`.
///
/// Oversized input is an error as soon as it is certain, not when the head is complete: a
/// buffer of `header_bytes_max` bytes without the end of the head, or a request line running
/// past `request_line_bytes_max`, fails at once, so a slow or hostile client cannot make the
/// connection hold more than the limits. Bytes after the head (a body, a pipelined request)
/// are not looked at.
///
/// # Errors
///
/// A [`ParseError`] when the head is malformed, ambiguous, oversized or unsupported; its
/// [`ParseError::status`] and [`ParseError::code`] are the answer to send.
pub fn parse_head(buffer: &[u8], limits: &Limits) -> Result<Parsed, ParseError> {
    // httparse never sees more than the head may take, so an oversized buffer costs no more to
    // scan than a maximal head.
    let window = buffer.get(..limits.header_bytes_max).unwrap_or(buffer);
    let mut header_slots = [httparse::EMPTY_HEADER; limits::HEADER_COUNT_MAX];
    let header_count_max = limits.header_count_max.min(limits::HEADER_COUNT_MAX);
    let header_slots = header_slots.get_mut(..header_count_max).unwrap_or_default();
    let mut request = httparse::Request::new(header_slots);
    let status = request.parse(window).map_err(|error| classify_httparse_error(error, window, header_count_max))?;
    check_request_line_length(window, limits.request_line_bytes_max)?;
    match status {
        httparse::Status::Partial if window.len() >= limits.header_bytes_max => {
            // The head needs at least one more byte than the limit allows.
            Err(ParseError::HeadTooLarge { limit_bytes: limits.header_bytes_max })
        }
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(head_length) => {
            let head = interpret(&request, limits)?;
            Ok(Parsed::Complete { head, head_length })
        }
    }
}

/// Turns httparse's view of a complete head into a [`RequestHead`].
fn interpret(request: &httparse::Request<'_, '_>, limits: &Limits) -> Result<RequestHead, ParseError> {
    let (Some(token), Some(target), Some(minor_version)) = (request.method, request.path, request.version) else {
        // httparse fills all three before it reports a complete head.
        return Err(ParseError::InvalidRequestLine);
    };
    let method = Method::from_token(token).ok_or(ParseError::UnsupportedMethod)?;
    let version = match minor_version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(ParseError::UnsupportedVersion),
    };
    let (path, query) = split_target(target)?;
    let mut scan = FieldScan::default();
    for header in request.headers.iter() {
        scan.record(header.name, header.value)?;
    }
    let semantics = scan.finish(version, limits)?;
    Ok(RequestHead {
        method,
        path: path.to_owned(),
        query: query.map(str::to_owned),
        version,
        keep_alive: semantics.keep_alive,
        framing: semantics.framing,
        expect_continue: semantics.expect_continue,
        headers: semantics.headers,
    })
}

/// Splits a request target into path and query. RFC 9112 §3.2: a server accepts the
/// origin-form (`/path?query`) and MUST accept the absolute-form (`http://host/path?query`),
/// whose authority we ignore (routing is by path). The asterisk-form (`OPTIONS *`) and the
/// authority-form (`CONNECT`) serve nothing here and are refused.
fn split_target(target: &str) -> Result<(&str, Option<&str>), ParseError> {
    let origin_form = if target.starts_with('/') { target } else { absolute_form_path(target)? };
    // A fragment is not part of a request-target (RFC 9112 §3.2); a client that sends one is
    // confused about what it is asking for.
    if origin_form.contains('#') {
        return Err(ParseError::InvalidTarget { reason: "a request target has no fragment" });
    }
    Ok(match origin_form.split_once('?') {
        Some(("", query)) => ("/", Some(query)),
        Some((path, query)) => (path, Some(query)),
        None if origin_form.is_empty() => ("/", None),
        None => (origin_form, None),
    })
}

/// The path-and-query part of an absolute-form target, possibly empty.
fn absolute_form_path(target: &str) -> Result<&str, ParseError> {
    let not_a_path = ParseError::InvalidTarget { reason: "the target must be a path starting with /" };
    let (scheme, rest) = target.split_once("://").ok_or(not_a_path.clone())?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(not_a_path);
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if authority_end == 0 {
        return Err(ParseError::InvalidTarget { reason: "an absolute target needs a host" });
    }
    Ok(rest.get(authority_end..).unwrap_or_default())
}

/// Fails once the request line is certain to exceed `limit_bytes` (counting its line ending),
/// whether or not the rest of it has arrived. Leading empty lines, which RFC 9112 §2.2 lets a
/// server skip, are not part of the request line; they still count towards the head's size.
fn check_request_line_length(window: &[u8], limit_bytes: usize) -> Result<(), ParseError> {
    let start = window.iter().position(|byte| *byte != b'\r' && *byte != b'\n').unwrap_or(window.len());
    let line = window.get(start..).unwrap_or_default();
    let searched = line.get(..limit_bytes).unwrap_or(line);
    if searched.contains(&b'\n') || line.len() < limit_bytes {
        Ok(())
    } else {
        Err(ParseError::RequestLineTooLong { limit_bytes })
    }
}

/// Maps httparse's error kinds to ours. httparse reports invalid UTF-8 in the target as a bad
/// token, so that case is told apart here to give the client a precise message.
fn classify_httparse_error(error: httparse::Error, window: &[u8], header_count_max: usize) -> ParseError {
    match error {
        httparse::Error::HeaderName | httparse::Error::HeaderValue => ParseError::InvalidHeader,
        httparse::Error::NewLine => ParseError::InvalidLineEnding,
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders { limit: header_count_max },
        httparse::Error::Version => ParseError::UnsupportedVersion,
        httparse::Error::Token | httparse::Error::Status if target_is_invalid_utf8(window) => {
            ParseError::InvalidTarget { reason: "the target is not valid UTF-8" }
        }
        httparse::Error::Token | httparse::Error::Status => ParseError::InvalidRequestLine,
    }
}

/// Whether the second space-separated word of the first line is not UTF-8. Called only on the
/// error path.
fn target_is_invalid_utf8(window: &[u8]) -> bool {
    let line = window.split(|byte| *byte == b'\n').find(|line| !line.is_empty() && *line != b"\r").unwrap_or_default();
    let mut words = line.split(|byte| *byte == b' ');
    let target = words.nth(1).unwrap_or_default();
    std::str::from_utf8(target).is_err()
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::proto::headers::HeaderName;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<Parsed, ParseError> {
        parse_head(bytes, &Limits::default())
    }

    fn complete(bytes: &[u8]) -> (RequestHead, usize) {
        match parse(bytes) {
            Ok(Parsed::Complete { head, head_length }) => (head, head_length),
            other => panic!("expected a complete head for {:?}, got {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn padded_header(length: usize) -> Vec<u8> {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        bytes.resize(bytes.len() + length, b'a');
        bytes
    }

    fn many_headers(count: usize) -> Vec<u8> {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for index in 0..count {
            bytes.extend_from_slice(format!("X-Field-{index}: v\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes
    }

    #[test]
    fn malformed_requests_map_to_their_status_and_code() {
        // Every kind of bad input must become a clean 4xx with a code, never a crash or a
        // wrong framing guess; this table pins the mapping the clients see.
        let long_line = [b"GET /".as_slice(), &[b'a'; 9000], b" HTTP/1.1\r\n"].concat();
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("double space in request line", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "E1005"),
            ("HTTP/0.9 request line", b"GET /\r\n\r\n".to_vec(), 400, "E1005"),
            ("request line too long", long_line, 414, "E1005"),
            ("oversized head, still partial", padded_header(17 * 1024), 431, "E1005"),
            ("too many headers", many_headers(64), 431, "E1005"),
            (
                "differing Content-Length lines",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "differing Content-Length list",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "Content-Length with Transfer-Encoding",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "Transfer-Encoding without chunked",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "chunked not final",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "chunked twice",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec(),
                400,
                "E1005",
            ),
            (
                "coding before chunked",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "Transfer-Encoding in HTTP/1.0",
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            ("invalid UTF-8 in the path", b"GET /caf\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "E1005"),
            ("unsupported method", b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, "E1005"),
            ("methods are case-sensitive", b"get / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, "E1005"),
            (
                "Content-Length over the payload limit",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10485761\r\n\r\n".to_vec(),
                413,
                "E1002",
            ),
            (
                "Content-Length overflowing u64",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "Content-Length not digits",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            (
                "Content-Length negative",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400, "E1005"),
            ("bare CR ends a line", b"GET / HTTP/1.1\rHost: x\r\n\r\n".to_vec(), 400, "E1005"),
            ("bare CR inside a value", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n".to_vec(), 400, "E1005"),
            ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n".to_vec(), 400, "E1005"),
            ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), 400, "E1005"),
            ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(), 400, "E1005"),
            ("missing Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400, "E1005"),
            ("two Host fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, "E1005"),
            (
                "unsupported expectation",
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n".to_vec(),
                417,
                "E1005",
            ),
            ("asterisk-form target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "E1005"),
            ("authority-form target", b"GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "E1005"),
            ("fragment in target", b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "E1005"),
            (
                "repeated idempotency key",
                b"POST / HTTP/1.1\r\nHost: x\r\nX-Idempotency-Key: a\r\nx-idempotency-key: a\r\n\r\n".to_vec(),
                400,
                "E1005",
            ),
        ];
        for (name, bytes, status, code) in cases {
            let error = match parse(&bytes) {
                Err(error) => error,
                Ok(parsed) => panic!("{name}: expected an error, got {parsed:?}"),
            };
            assert_eq!((error.status(), error.code()), (status, code), "{name}: {error:?}");
            assert!(error.closes_connection(), "{name}");
        }
    }

    #[test]
    fn errors_name_the_broken_rule() {
        // The variant decides the message the client reads; these are the cases most likely
        // to be misreported by a catch-all mapping.
        assert_eq!(
            parse(b"GET /caf\xc3\x28 HTTP/1.1\r\n"),
            Err(ParseError::InvalidTarget { reason: "the target is not valid UTF-8" })
        );
        assert_eq!(parse(b"PRI * HTTP/2.0\r\n"), Err(ParseError::UnsupportedVersion));
        assert_eq!(parse(&many_headers(65)), Err(ParseError::TooManyHeaders { limit: 64 }));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ParseError::ContentLengthWithTransferEncoding)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10485761\r\n\r\n"),
            Err(ParseError::PayloadTooLarge { limit_bytes: 10_485_760 })
        );
    }

    #[test]
    fn simple_get_parses_with_query_and_defaults() {
        // The common case must yield exactly the fields routing and the admin API rely on.
        let request = b"GET /admin/events?limit=10&status=failed HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let (head, head_length) = complete(request);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/admin/events");
        assert_eq!(head.query.as_deref(), Some("limit=10&status=failed"));
        assert_eq!(head.version, Version::Http11);
        assert!(head.keep_alive);
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(!head.expect_continue);
        assert!(head.headers.is_empty());
        assert_eq!(head_length, request.len());
    }

    #[test]
    fn ingest_post_keeps_application_headers_case_insensitively() {
        // Signature checks, idempotency and content-type forwarding read these fields; a
        // client's capitalisation must not change what the application sees.
        let request = b"POST /ingest/ep_1 HTTP/1.1\r\nhost: x\r\nCONTENT-TYPE: application/json\r\nX-Idempotency-Key:  key-1 \r\n\
webhook-id: msg_1\r\nWebhook-Timestamp: 1649367553\r\nWEBHOOK-SIGNATURE: v1,abc\r\nTraceparent: 00-ab-cd-01\r\n\
Authorization: Bearer token\r\nAccept: */*\r\nContent-Length: 2\r\n\r\n{}";
        let (head, head_length) = complete(request);
        assert_eq!(head.framing, BodyFraming::Length(2));
        assert_eq!(&request[head_length..], b"{}");
        let expected: [(HeaderName, &[u8]); 7] = [
            (HeaderName::ContentType, b"application/json"),
            (HeaderName::IdempotencyKey, b"key-1"),
            (HeaderName::WebhookId, b"msg_1"),
            (HeaderName::WebhookTimestamp, b"1649367553"),
            (HeaderName::WebhookSignature, b"v1,abc"),
            (HeaderName::Traceparent, b"00-ab-cd-01"),
            (HeaderName::Authorization, b"Bearer token"),
        ];
        for (name, value) in expected {
            assert_eq!(head.headers.get(name), Some(value), "{name:?}");
        }
        assert_eq!(head.headers.iter().count(), 7);
    }

    #[test]
    fn keep_alive_follows_version_and_connection_options() {
        // Getting persistence wrong either hangs HTTP/1.0 clients or drops pipelined requests
        // (RFC 9112 §9.3).
        let cases: [(&[u8], bool); 7] = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", true),
        ];
        for (request, keep_alive) in cases {
            assert_eq!(complete(request).0.keep_alive, keep_alive, "{:?}", String::from_utf8_lossy(request));
        }
    }

    #[test]
    fn http_1_0_needs_no_host() {
        // RFC 9112 §3.2 requires Host of HTTP/1.1 only; old health checkers send bare 1.0.
        let (head, _) = complete(b"GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(head.version, Version::Http10);
        assert_eq!(head.path, "/healthz");
    }

    #[test]
    fn expect_continue_is_honoured_only_where_it_means_something() {
        // A client waiting for 100 Continue stalls if we never send it; one that does not wait
        // must not get a stray 100 (RFC 9110 §10.1.1).
        let with_body = complete(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").0;
        assert!(with_body.expect_continue);
        let chunked =
            complete(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n").0;
        assert!(chunked.expect_continue);
        let http_1_0 = complete(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").0;
        assert!(!http_1_0.expect_continue);
        let without_body = complete(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n").0;
        assert!(!without_body.expect_continue);
    }

    #[test]
    fn framing_accepts_chunked_and_single_lengths() {
        // Honest clients send these; refusing them would be a false 400.
        let chunked = complete(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n").0;
        assert_eq!(chunked.framing, BodyFraming::Chunked);
        let single = complete(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n").0;
        assert_eq!(single.framing, BodyFraming::Length(7));
        let zero = complete(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").0;
        assert_eq!(zero.framing, BodyFraming::Empty);
        let at_limit = complete(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n").0;
        assert_eq!(at_limit.framing, BodyFraming::Length(10_485_760));
    }

    #[test]
    fn identical_content_lengths_are_refused_as_a_list_or_as_lines() {
        // RFC 9112 §6.3 allows `1000,1000` to pass as 1000, but a proxy in front may frame the
        // request otherwise (request smuggling); both spellings answer 400 E1005 and close.
        for request in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000,1000\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\ncontent-length: 7, 7\r\n\r\n",
            b"POST / HTTP/1.0\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        ] {
            let error = parse(request);
            assert_eq!(error, Err(ParseError::MultipleContentLengths), "{:?}", String::from_utf8_lossy(request));
            let Err(error) = error else { continue };
            assert_eq!((error.status(), error.code(), error.closes_connection()), (400, "E1005", true));
        }
    }

    #[test]
    fn configured_payload_limit_applies_to_content_length() {
        // KAPSEL_MAX_PAYLOAD_BYTES must take effect at the head, before the body is read.
        let limits = Limits::default().with_payload_bytes_max(100);
        let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(parse_head(request, &limits), Err(ParseError::PayloadTooLarge { limit_bytes: 100 }));
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        // Pipelining clients send the next request before the first answer; the head length
        // is how the connection finds it.
        let buffer =
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /c";
        let (first, first_length) = complete(buffer);
        assert_eq!((first.method, first.path.as_str()), (Method::Get, "/a"));
        let (second, second_length) = complete(&buffer[first_length..]);
        assert_eq!((second.method, second.path.as_str()), (Method::Post, "/b"));
        assert_eq!(second.framing, BodyFraming::Length(2));
        let after_body = first_length + second_length + 2;
        assert_eq!(parse(&buffer[after_body..]), Ok(Parsed::Partial));
    }

    #[test]
    fn bare_line_feeds_are_accepted_as_httparse_does() {
        // RFC 9112 §2.2 lets a recipient accept a bare LF in the start line and fields;
        // httparse does, and pinning it here makes a change in httparse visible.
        let (head, head_length) = complete(b"GET /x HTTP/1.1\nHost: x\n\n");
        assert_eq!(head.path, "/x");
        assert_eq!(head_length, 25);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request
        // line, which some clients send after a body.
        let (head, head_length) = complete(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.path, "/");
        assert_eq!(head_length, 31);
    }

    #[test]
    fn absolute_form_targets_route_by_path() {
        // RFC 9112 §3.2.2: a server MUST accept the absolute-form.
        let (head, _) = complete(b"POST HTTP://kapsel.example/ingest/ep_1?x=1 HTTP/1.1\r\nHost: y\r\n\r\n");
        assert_eq!((head.path.as_str(), head.query.as_deref()), ("/ingest/ep_1", Some("x=1")));
        let (bare, _) = complete(b"GET https://kapsel.example HTTP/1.1\r\nHost: y\r\n\r\n");
        assert_eq!((bare.path.as_str(), bare.query), ("/", None));
        assert!(parse(b"GET http:///a HTTP/1.1\r\nHost: y\r\n\r\n").is_err());
    }

    #[test]
    fn partial_heads_ask_for_more_bytes() {
        // A head split across reads is normal TCP behaviour, not an error.
        assert_eq!(parse(b""), Ok(Parsed::Partial));
        assert_eq!(parse(b"GE"), Ok(Parsed::Partial));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(Parsed::Partial));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), Ok(Parsed::Partial));
    }

    #[test]
    fn oversized_input_fails_before_the_head_completes() {
        // A slowloris client trickling an endless head must be cut off at the limit, not
        // buffered until it finishes.
        let limits = Limits { header_bytes_max: 64, request_line_bytes_max: 32, ..Limits::default() };
        let line = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(line.len(), 32);
        assert_eq!(parse_head(&line[..31], &limits), Ok(Parsed::Partial));
        assert_eq!(parse_head(line, &limits), Err(ParseError::RequestLineTooLong { limit_bytes: 32 }));
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        head.resize(63, b'a');
        assert_eq!(parse_head(&head, &limits), Ok(Parsed::Partial));
        head.push(b'a');
        assert_eq!(parse_head(&head, &limits), Err(ParseError::HeadTooLarge { limit_bytes: 64 }));
    }

    #[test]
    fn heads_exactly_at_the_limits_are_accepted() {
        // Off-by-one limits reject valid requests; the boundary belongs to the client.
        let limits = Limits { header_bytes_max: 64, request_line_bytes_max: 32, ..Limits::default() };
        let mut head = b"GET /aaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        assert_eq!(head.iter().position(|byte| *byte == b'\n'), Some(31));
        head.resize(60, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let Ok(Parsed::Complete { head_length, .. }) = parse_head(&head, &limits) else {
            panic!("a 64-byte head must fit a 64-byte limit");
        };
        assert_eq!(head_length, 64);
        // The bytes after a complete head are not the head's business.
        head.extend_from_slice(&[b'z'; 100]);
        assert!(matches!(parse_head(&head, &limits), Ok(Parsed::Complete { head_length: 64, .. })));
    }

    #[derive(Debug, Clone)]
    struct GeneratedRequest {
        bytes: Vec<u8>,
        method: Method,
        path: String,
        query: Option<String>,
        version: Version,
        framing: BodyFraming,
        headers: Vec<(HeaderName, String)>,
    }

    fn flip_case(name: &str, flips: &[bool]) -> String {
        name.chars()
            .zip(flips.iter().cycle())
            .map(|(character, flip)| if *flip { character.to_ascii_uppercase() } else { character })
            .collect()
    }

    prop_compose! {
        fn generated_request()(
            method in proptest::sample::select(Method::ALL.to_vec()),
            segments in proptest::collection::vec("[a-zA-Z0-9_.~-]{1,12}", 1..4),
            query in proptest::option::of("[a-z0-9=&%]{0,16}"),
            http_1_0 in any::<bool>(),
            kept in proptest::sample::subsequence(HeaderName::ALL.to_vec(), 0..=7),
            values in proptest::collection::vec("[!-~]([ !-~]{0,20}[!-~])?", 7),
            flips in proptest::collection::vec(any::<bool>(), 1..8),
            extra in proptest::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,24}"), 0..4),
            body_length in 0_u64..200,
            chunked in any::<bool>(),
        ) -> GeneratedRequest {
            let version = if http_1_0 { Version::Http10 } else { Version::Http11 };
            let path = format!("/{}", segments.join("/"));
            let mut bytes = format!("{} {path}", method.as_str());
            if let Some(query) = &query {
                bytes.push('?');
                bytes.push_str(query);
            }
            bytes.push_str(if http_1_0 { " HTTP/1.0\r\n" } else { " HTTP/1.1\r\n" });
            bytes.push_str(&format!("{}: kapsel.test\r\n", flip_case("host", &flips)));
            let headers: Vec<(HeaderName, String)> = kept.into_iter().zip(values).collect();
            for (name, value) in &headers {
                bytes.push_str(&format!("{}: {value}\r\n", flip_case(name.as_str(), &flips)));
            }
            for (name, value) in &extra {
                bytes.push_str(&format!("{name}:{value}\r\n"));
            }
            let framing = if chunked && !http_1_0 {
                bytes.push_str("Transfer-Encoding: chunked\r\n");
                BodyFraming::Chunked
            } else if body_length > 0 {
                bytes.push_str(&format!("Content-Length: {body_length}\r\n"));
                BodyFraming::Length(body_length)
            } else {
                BodyFraming::Empty
            };
            bytes.push_str("\r\n");
            // Whatever follows the head (a body, the next request) must not change the result.
            bytes.push_str("0123456789GET / HTTP/1.1\r\n");
            GeneratedRequest { bytes: bytes.into_bytes(), method, path, query, version, framing, headers }
        }
    }

    proptest! {
        #[test]
        fn split_requests_parse_like_whole_ones(request in generated_request()) {
            // TCP may cut a head anywhere; the parser must say Partial until the head is all
            // there and then give exactly the answer it gives for the whole buffer.
            let whole = parse(&request.bytes);
            let Ok(Parsed::Complete { head, head_length }) = whole.clone() else {
                panic!("generated request did not parse: {whole:?}");
            };
            prop_assert_eq!(head.method, request.method);
            prop_assert_eq!(&head.path, &request.path);
            prop_assert_eq!(&head.query, &request.query);
            prop_assert_eq!(head.version, request.version);
            prop_assert_eq!(head.framing, request.framing);
            prop_assert_eq!(head.headers.iter().count(), request.headers.len());
            for (name, value) in &request.headers {
                prop_assert_eq!(head.headers.get(*name), Some(value.as_bytes()));
            }
            for split in 0..=request.bytes.len() {
                let prefix = parse(&request.bytes[..split]);
                if split < head_length {
                    prop_assert_eq!(prefix, Ok(Parsed::Partial), "split at {}", split);
                } else {
                    prop_assert_eq!(&prefix, &whole, "split at {}", split);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            header_bytes_max in 0_usize..600,
            request_line_bytes_max in 0_usize..300,
            header_count_max in 0_usize..80,
        ) {
            // Whatever arrives on the socket, the parser answers with a value; a panic would
            // take down a whole shard.
            let limits = Limits { header_bytes_max, request_line_bytes_max, header_count_max, ..Limits::default() };
            for candidate in [bytes.clone(), [b"POST /ingest/ep_1 HTTP/1.1\r\n".as_slice(), &bytes].concat()] {
                if let Ok(Parsed::Complete { head_length, .. }) = parse_head(&candidate, &limits) {
                    prop_assert!(head_length <= candidate.len());
                    prop_assert!(head_length <= header_bytes_max);
                }
            }
        }

        #[test]
        fn header_soup_never_panics(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "GET ", "POST ", "/", "/a?b", " HTTP/1.1", " HTTP/1.0", "\r\n", "\n", "\r", ":", ": ",
                "Host", "Content-Length", "Transfer-Encoding", "chunked", "gzip", ",", "Connection",
                "close", "keep-alive", "Expect", "100-continue", "0", "42", "18446744073709551616",
                "x-idempotency-key", "authorization", " ", "\t", "\u{e9}", "\0",
            ]), 0..40),
        ) {
            // Random bytes rarely reach the field rules; a soup of meaningful tokens does, and
            // must still only ever produce a value.
            let bytes = pieces.concat().into_bytes();
            let outcome = parse(&bytes);
            if let Err(error) = &outcome {
                prop_assert!(matches!(error.status(), 400 | 405 | 413 | 414 | 417 | 431));
            }
        }
    }
}
