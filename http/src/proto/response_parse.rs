//! Response parsing for the client, pure like the request parser: [`parse_response_head`] turns
//! the bytes a destination sent into a [`ResponseHead`] (or asks for more), and a
//! [`ResponseBodyReader`] reads the body that follows, keeping its first bytes as the excerpt
//! and discarding the rest, up to a cap on what it will read at all.
//!
//! A destination is untrusted input like a client is: every size is bounded, and ambiguous
//! framing (two different Content-Lengths, Content-Length with Transfer-Encoding) is refused,
//! since reading the wrong number of bytes would hand the rest of one response to the next
//! request on the connection.

use super::chunked::ChunkedDecoder;
use super::error::ParseError;
use super::request::Version;
use crate::limits::{self, Limits};

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFraming {
    /// No body: 1xx, 204 and 304 responses, and `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes follow the head; never zero.
    Length(u64),
    /// A chunked body follows.
    Chunked,
    /// The body runs until the server closes the connection.
    UntilClose,
}

/// A parsed response head: what the delivery records and what the connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code, 100 to 599.
    pub status: u16,
    /// The protocol version of the response.
    pub version: Version,
    /// How the body is delimited.
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this response (RFC 9112 §9.3);
    /// always false for a body delimited by the close.
    pub keep_alive: bool,
    /// The first `Retry-After` value, trimmed, as sent (non-UTF-8 bytes replaced). It is
    /// interpreted by the retry schedule, not here.
    pub retry_after: Option<String>,
}

/// The outcome of [`parse_response_head`] on a buffer that holds no error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    /// The head is not complete yet: read more bytes and call again with the grown buffer.
    Partial,
    /// The head is complete.
    Complete {
        /// The parsed head.
        head: ResponseHead,
        /// Bytes of the buffer the head took; the body starts there.
        head_length: usize,
    },
}

/// What can be wrong with a response a destination sent. The message names the rule broken and
/// echoes none of the destination's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The status line is not `HTTP/1.x SP 3DIGIT SP reason`.
    #[error("malformed status line")]
    InvalidStatusLine,
    /// A version other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version in the response")]
    UnsupportedVersion,
    /// A status code outside 100 to 599, or `101 Switching Protocols`, which we never asked for.
    #[error("unexpected status code {status}")]
    UnexpectedStatus {
        /// The status the destination sent.
        status: u16,
    },
    /// A header field line with a bad name or value byte, or obsolete line folding.
    #[error("malformed header field in the response")]
    InvalidHeader,
    /// A CR not followed by LF where a line ends.
    #[error("invalid line ending in the response: CR must be followed by LF")]
    InvalidLineEnding,
    /// The head is larger than the limit.
    #[error("response head is larger than {limit_bytes} bytes")]
    HeadTooLarge {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
    /// More header fields than the limit.
    #[error("response has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A Content-Length that is not decimal digits or does not fit in 64 bits.
    #[error("invalid Content-Length in the response")]
    InvalidContentLength,
    /// Several Content-Length values that differ.
    #[error("conflicting Content-Length values in the response")]
    ConflictingContentLength,
    /// Both Content-Length and Transfer-Encoding.
    #[error("response has both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// A Transfer-Encoding we cannot delimit by: chunked applied twice, or any in HTTP/1.0.
    #[error("invalid Transfer-Encoding in the response: {reason}")]
    InvalidTransferEncoding {
        /// Which rule the field breaks.
        reason: &'static str,
    },
    /// More interim (1xx) responses than [`limits::INTERIM_RESPONSES_MAX`].
    #[error("more than {limit} interim responses")]
    TooManyInterimResponses {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The chunked body is malformed.
    #[error("response body: {0}")]
    Body(ParseError),
    /// The connection closed before the end of a body delimited by length or chunks.
    #[error("the connection closed before the end of the response body")]
    Truncated,
}

/// Parses the response head at the start of `buffer`, as the answer to a POST.
///
/// Like [`crate::parse_head`], a buffer of `head_bytes_max` bytes without the end of the head
/// fails at once, and bytes after the head are not looked at. Header fields beyond
/// [`limits::RESPONSE_HEADER_COUNT_MAX`] fail the parse.
///
/// # Errors
///
/// A [`ResponseError`] when the head is malformed, ambiguous or oversized.
pub fn parse_response_head(buffer: &[u8], head_bytes_max: usize) -> Result<ParsedResponse, ResponseError> {
    let window = buffer.get(..head_bytes_max).unwrap_or(buffer);
    let mut header_slots = [httparse::EMPTY_HEADER; limits::RESPONSE_HEADER_COUNT_MAX];
    let mut response = httparse::Response::new(&mut header_slots);
    let status = response.parse(window).map_err(classify_httparse_error)?;
    match status {
        httparse::Status::Partial if window.len() >= head_bytes_max => {
            Err(ResponseError::HeadTooLarge { limit_bytes: head_bytes_max })
        }
        httparse::Status::Partial => Ok(ParsedResponse::Partial),
        httparse::Status::Complete(head_length) => {
            let head = interpret(&response)?;
            Ok(ParsedResponse::Complete { head, head_length })
        }
    }
}

fn classify_httparse_error(error: httparse::Error) -> ResponseError {
    match error {
        httparse::Error::HeaderName | httparse::Error::HeaderValue => ResponseError::InvalidHeader,
        httparse::Error::NewLine => ResponseError::InvalidLineEnding,
        httparse::Error::TooManyHeaders => ResponseError::TooManyHeaders { limit: limits::RESPONSE_HEADER_COUNT_MAX },
        httparse::Error::Version => ResponseError::UnsupportedVersion,
        httparse::Error::Token | httparse::Error::Status => ResponseError::InvalidStatusLine,
    }
}

fn interpret(response: &httparse::Response<'_, '_>) -> Result<ResponseHead, ResponseError> {
    let (Some(minor_version), Some(status)) = (response.version, response.code) else {
        // httparse fills both before it reports a complete head.
        return Err(ResponseError::InvalidStatusLine);
    };
    let version = match minor_version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(ResponseError::UnsupportedVersion),
    };
    // RFC 9110 §15: status codes are 100 to 599. A 101 would switch protocols on a connection
    // we only ever speak HTTP/1.1 on.
    if !(100..=599).contains(&status) || status == 101 {
        return Err(ResponseError::UnexpectedStatus { status });
    }
    let mut scan = ResponseFieldScan::default();
    for header in response.headers.iter() {
        scan.record(header.name, header.value)?;
    }
    let framing = scan.framing(status, version)?;
    // RFC 9112 §9.3: HTTP/1.1 persists unless "close" is sent; HTTP/1.0 only with
    // "keep-alive". A body delimited by the close ends the connection by definition.
    let persistent = match version {
        Version::Http11 => !scan.connection_close,
        Version::Http10 => scan.connection_keep_alive && !scan.connection_close,
    };
    let keep_alive = persistent && framing != ResponseFraming::UntilClose;
    Ok(ResponseHead { status, version, framing, keep_alive, retry_after: scan.retry_after })
}

/// The header fields of one response that framing, persistence and the retry schedule need.
#[derive(Default)]
struct ResponseFieldScan {
    content_length: Option<u64>,
    transfer_encoding_seen: bool,
    chunked_count: u32,
    last_coding_chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    retry_after: Option<String>,
}

impl ResponseFieldScan {
    fn record(&mut self, name: &str, value: &[u8]) -> Result<(), ResponseError> {
        if name.eq_ignore_ascii_case("content-length") {
            self.record_content_length(value)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding_seen = true;
            for coding in list_elements(value) {
                // Transfer codings are case-insensitive (RFC 9112 §7).
                self.last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
                self.chunked_count += u32::from(self.last_coding_chunked);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_elements(value) {
                self.connection_close |= option.eq_ignore_ascii_case(b"close");
                self.connection_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("retry-after") && self.retry_after.is_none() {
            let text = String::from_utf8_lossy(value.trim_ascii()).into_owned();
            self.retry_after = (!text.is_empty()).then_some(text);
        }
        Ok(())
    }

    fn record_content_length(&mut self, value: &[u8]) -> Result<(), ResponseError> {
        let mut elements = list_elements(value).peekable();
        if elements.peek().is_none() {
            return Err(ResponseError::InvalidContentLength);
        }
        for element in elements {
            let length = parse_decimal(element).ok_or(ResponseError::InvalidContentLength)?;
            // RFC 9110 §8.6: identical values (a list merged by a proxy) may be taken as one;
            // differing ones are unrecoverable (RFC 9112 §6.3 item 5).
            match self.content_length {
                Some(previous) if previous != length => return Err(ResponseError::ConflictingContentLength),
                _ => self.content_length = Some(length),
            }
        }
        Ok(())
    }

    /// The framing of RFC 9112 §6.3 for a response to a POST, strictest reading.
    fn framing(&self, status: u16, version: Version) -> Result<ResponseFraming, ResponseError> {
        // §6.3 item 1: 1xx, 204 and 304 responses end at the head, whatever the fields say.
        if status < 200 || status == 204 || status == 304 {
            return Ok(ResponseFraming::Empty);
        }
        if self.transfer_encoding_seen {
            // §6.3 item 3: both fields "ought to be handled as an error" (response splitting).
            if self.content_length.is_some() {
                return Err(ResponseError::ContentLengthWithTransferEncoding);
            }
            // §6.1: a recipient of Transfer-Encoding in HTTP/1.0 must treat the framing as faulty.
            if version == Version::Http10 {
                return Err(ResponseError::InvalidTransferEncoding { reason: "not allowed in HTTP/1.0" });
            }
            // §6.1: "A sender MUST NOT apply the chunked transfer coding more than once".
            if self.chunked_count > 1 {
                return Err(ResponseError::InvalidTransferEncoding { reason: "chunked applied more than once" });
            }
            // §6.3 item 4: without a final chunked, the body runs until the close.
            return Ok(if self.last_coding_chunked { ResponseFraming::Chunked } else { ResponseFraming::UntilClose });
        }
        Ok(match self.content_length {
            Some(0) => ResponseFraming::Empty,
            Some(length) => ResponseFraming::Length(length),
            // §6.3 item 8.
            None => ResponseFraming::UntilClose,
        })
    }
}

/// The non-empty elements of a comma-separated field value, without surrounding whitespace.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|byte| *byte == b',').map(<[u8]>::trim_ascii).filter(|element| !element.is_empty())
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0_u64, |value, digit| value.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

/// What one call to [`ResponseBodyReader::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyProgress {
    /// Bytes of the input taken; the caller drops them from its buffer.
    pub consumed_bytes: usize,
    /// Whether the whole body has been read.
    pub complete: bool,
}

/// Reads one response body as it arrives: keeps the first `excerpt_bytes_max` payload bytes,
/// discards the rest, and takes at most `wire_bytes_max` bytes off the connection. Past that
/// cap the body is abandoned ([`Self::is_capped`]) and the connection must be closed.
#[derive(Debug, Clone)]
pub struct ResponseBodyReader {
    state: BodyState,
    excerpt: Vec<u8>,
    excerpt_bytes_max: usize,
    wire_bytes_read: u64,
    wire_bytes_max: u64,
    /// Decoded chunk data between a decode and its copy into the excerpt; at most one input
    /// slice long, and emptied after every call.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone)]
enum BodyState {
    Length { remaining_bytes: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl ResponseBodyReader {
    /// A reader for a body framed as `framing`, with the client's limits.
    #[must_use]
    pub fn new(framing: ResponseFraming) -> Self {
        Self::with_limits(framing, limits::RESPONSE_BODY_EXCERPT_BYTES_MAX, limits::RESPONSE_BODY_BYTES_MAX)
    }

    /// A reader with explicit limits (for tests and tools).
    #[must_use]
    pub fn with_limits(framing: ResponseFraming, excerpt_bytes_max: usize, wire_bytes_max: u64) -> Self {
        let state = match framing {
            ResponseFraming::Empty => BodyState::Done,
            ResponseFraming::Length(length) => BodyState::Length { remaining_bytes: length },
            // The decoded payload can never exceed the wire bytes fed, which stop at the cap,
            // so the decoder's own payload limit is never what ends the body.
            ResponseFraming::Chunked => {
                BodyState::Chunked(ChunkedDecoder::new(&Limits::default().with_payload_bytes_max(wire_bytes_max)))
            }
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        Self { state, excerpt: Vec::new(), excerpt_bytes_max, wire_bytes_read: 0, wire_bytes_max, scratch: Vec::new() }
    }

    /// Whether the whole body has been read.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Whether the reader stopped at its cap before the end of the body.
    #[must_use]
    pub fn is_capped(&self) -> bool {
        !self.is_complete() && self.wire_bytes_read >= self.wire_bytes_max
    }

    /// The first payload bytes of the body, chunk framing removed.
    #[must_use]
    pub fn excerpt(&self) -> &[u8] {
        &self.excerpt
    }

    /// Takes the excerpt, leaving the reader's empty.
    pub fn take_excerpt(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.excerpt)
    }

    /// Reads as much of `input` as belongs to the body and fits under the cap.
    ///
    /// # Errors
    ///
    /// [`ResponseError::Body`] for a malformed chunked body.
    pub fn read(&mut self, input: &[u8]) -> Result<BodyProgress, ResponseError> {
        let room = usize::try_from(self.wire_bytes_max.saturating_sub(self.wire_bytes_read)).unwrap_or(usize::MAX);
        let input = input.get(..room).unwrap_or(input);
        let consumed_bytes = match &mut self.state {
            BodyState::Done => 0,
            BodyState::Length { remaining_bytes } => {
                let taken_bytes = usize::try_from(*remaining_bytes).unwrap_or(usize::MAX).min(input.len());
                *remaining_bytes -= taken_bytes as u64;
                if *remaining_bytes == 0 {
                    self.state = BodyState::Done;
                }
                keep_prefix(&mut self.excerpt, self.excerpt_bytes_max, input.get(..taken_bytes).unwrap_or_default());
                taken_bytes
            }
            BodyState::Chunked(decoder) => {
                let progress = decoder.decode(input, &mut self.scratch).map_err(ResponseError::Body)?;
                if progress.complete {
                    self.state = BodyState::Done;
                }
                keep_prefix(&mut self.excerpt, self.excerpt_bytes_max, &self.scratch);
                self.scratch.clear();
                progress.consumed_bytes
            }
            BodyState::UntilClose => {
                keep_prefix(&mut self.excerpt, self.excerpt_bytes_max, input);
                input.len()
            }
        };
        self.wire_bytes_read += consumed_bytes as u64;
        Ok(BodyProgress { consumed_bytes, complete: self.is_complete() })
    }

    /// Takes the end of the stream into account: it completes a body delimited by the close.
    ///
    /// # Errors
    ///
    /// [`ResponseError::Truncated`] when a body delimited by length or chunks is not complete.
    pub fn end_of_stream(&mut self) -> Result<(), ResponseError> {
        match self.state {
            BodyState::Done => Ok(()),
            BodyState::UntilClose => {
                self.state = BodyState::Done;
                Ok(())
            }
            BodyState::Length { .. } | BodyState::Chunked(_) => Err(ResponseError::Truncated),
        }
    }
}

/// Appends to `excerpt` the part of `data` that fits under `excerpt_bytes_max`.
fn keep_prefix(excerpt: &mut Vec<u8>, excerpt_bytes_max: usize, data: &[u8]) {
    let room = excerpt_bytes_max.saturating_sub(excerpt.len());
    excerpt.extend_from_slice(data.get(..room).unwrap_or(data));
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<ParsedResponse, ResponseError> {
        parse_response_head(bytes, limits::RESPONSE_HEAD_BYTES_MAX)
    }

    fn complete(bytes: &[u8]) -> (ResponseHead, usize) {
        match parse(bytes) {
            Ok(ParsedResponse::Complete { head, head_length }) => (head, head_length),
            other => panic!("expected a complete head for {:?}, got {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn framing_and_persistence_follow_rfc_9112() {
        // Reading the wrong number of body bytes corrupts the next exchange on a kept
        // connection; this table pins each framing rule a destination can trigger.
        use ResponseFraming::{Chunked, Empty, Length, UntilClose};
        let cases: [(&[u8], u16, ResponseFraming, bool); 12] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 200, Length(5), true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, Empty, true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", 200, Length(7), true),
            (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n", 500, Chunked, true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 200, UntilClose, false),
            (b"HTTP/1.1 200 OK\r\n\r\n", 200, UntilClose, false),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", 204, Empty, true),
            (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", 304, Empty, true),
            (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 103, Empty, true),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", 200, Length(1), false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", 200, Length(1), false),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n", 200, Length(1), true),
        ];
        for (bytes, status, framing, keep_alive) in cases {
            let (head, head_length) = complete(bytes);
            let name = String::from_utf8_lossy(bytes);
            assert_eq!((head.status, head.framing, head.keep_alive), (status, framing, keep_alive), "{name}");
            assert_eq!(head_length, bytes.len(), "{name}");
        }
    }

    #[test]
    fn retry_after_is_captured_as_sent() {
        // The retry schedule honours a destination's Retry-After; it must reach it intact.
        let (head, _) = complete(b"HTTP/1.1 429 Too Many\r\nretry-after:  120 \r\nRetry-After: 5\r\n\r\n");
        assert_eq!(head.retry_after.as_deref(), Some("120"));
        let (head, _) = complete(b"HTTP/1.1 503 Busy\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n");
        assert_eq!(head.retry_after.as_deref(), Some("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").0.retry_after, None);
    }

    #[test]
    fn malformed_or_ambiguous_heads_are_errors() {
        // A destination that misframes its answer must fail the attempt, not poison the
        // connection for the next delivery.
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X-A: b\r\n".repeat(limits::RESPONSE_HEADER_COUNT_MAX + 1));
        let cases: Vec<(Vec<u8>, ResponseError)> = vec![
            (b"HTTP/1.1 2000 OK\r\n\r\n".to_vec(), ResponseError::InvalidStatusLine),
            (b"HTTP/2 200\r\n\r\n".to_vec(), ResponseError::UnsupportedVersion),
            (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), ResponseError::UnsupportedVersion),
            (b"HTTP/1.1 099 Low\r\n\r\n".to_vec(), ResponseError::UnexpectedStatus { status: 99 }),
            (b"HTTP/1.1 600 High\r\n\r\n".to_vec(), ResponseError::UnexpectedStatus { status: 600 }),
            (b"HTTP/1.1 101 Switching\r\n\r\n".to_vec(), ResponseError::UnexpectedStatus { status: 101 }),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
                ResponseError::ConflictingContentLength,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1,2\r\n\r\n".to_vec(), ResponseError::ConflictingContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(), ResponseError::InvalidContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n".to_vec(), ResponseError::InvalidContentLength),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n".to_vec(),
                ResponseError::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                ResponseError::ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n".to_vec(),
                ResponseError::InvalidTransferEncoding { reason: "chunked applied more than once" },
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                ResponseError::InvalidTransferEncoding { reason: "not allowed in HTTP/1.0" },
            ),
            (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n".to_vec(), ResponseError::InvalidHeader),
            (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n".to_vec(), ResponseError::InvalidHeader),
            (b"HTTP/1.1 200 OK\rX: a\r\n\r\n".to_vec(), ResponseError::InvalidStatusLine),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n\rZ".to_vec(), ResponseError::InvalidLineEnding),
            (many.into_bytes(), ResponseError::TooManyHeaders { limit: limits::RESPONSE_HEADER_COUNT_MAX }),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse(&bytes), Err(expected), "{:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn oversized_heads_fail_before_they_complete() {
        // A destination streaming an endless head must cost at most the head limit.
        let mut bytes = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        bytes.resize(63, b'a');
        assert_eq!(parse_response_head(&bytes, 64), Ok(ParsedResponse::Partial));
        bytes.push(b'a');
        assert_eq!(parse_response_head(&bytes, 64), Err(ResponseError::HeadTooLarge { limit_bytes: 64 }));
    }

    #[test]
    fn a_status_line_without_reason_is_accepted() {
        // Some servers omit the reason phrase; the status is all a delivery needs.
        let (head, _) = complete(b"HTTP/1.1 202 \r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.status, 202);
        let (head, _) = complete(b"HTTP/1.1 202\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.status, 202);
    }

    fn read_all(reader: &mut ResponseBodyReader, input: &[u8], slice_bytes: usize) -> usize {
        let mut consumed_total = 0;
        while consumed_total < input.len() && !reader.is_complete() && !reader.is_capped() {
            let end = (consumed_total + slice_bytes).min(input.len());
            let progress = reader.read(&input[consumed_total..end]).unwrap();
            consumed_total += progress.consumed_bytes;
            if progress.consumed_bytes == 0 {
                break;
            }
        }
        consumed_total
    }

    #[test]
    fn the_body_reader_keeps_the_excerpt_and_stops_at_the_end() {
        // Only the first KiB is stored with the attempt; what follows the body on the wire
        // belongs to nobody and must be left for the caller to notice.
        let body: Vec<u8> = (0..5000_u32).map(|index| (index % 251) as u8).collect();
        let mut input = body.clone();
        input.extend_from_slice(b"EXTRA");
        let mut reader = ResponseBodyReader::new(ResponseFraming::Length(5000));
        assert_eq!(read_all(&mut reader, &input, 777), 5000);
        assert!(reader.is_complete() && !reader.is_capped());
        assert_eq!(reader.excerpt(), &body[..limits::RESPONSE_BODY_EXCERPT_BYTES_MAX]);

        let mut reader = ResponseBodyReader::new(ResponseFraming::Chunked);
        let chunked = b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        assert_eq!(read_all(&mut reader, chunked, 5), chunked.len() - 4);
        assert!(reader.is_complete());
        assert_eq!(reader.take_excerpt(), b"abcdefg");

        let mut reader = ResponseBodyReader::new(ResponseFraming::UntilClose);
        reader.read(b"partial").unwrap();
        assert!(!reader.is_complete());
        assert_eq!(reader.end_of_stream(), Ok(()));
        assert!(reader.is_complete());

        let mut truncated = ResponseBodyReader::new(ResponseFraming::Length(10));
        truncated.read(b"short").unwrap();
        assert_eq!(truncated.end_of_stream(), Err(ResponseError::Truncated));
        assert!(ResponseBodyReader::new(ResponseFraming::Empty).is_complete());
    }

    #[test]
    fn the_body_reader_stops_at_its_cap() {
        // A destination that streams forever must not hold the attempt: past the cap the
        // reader gives up and the connection is closed.
        let mut reader = ResponseBodyReader::with_limits(ResponseFraming::Length(1000), 10, 100);
        let input = vec![b'x'; 1000];
        assert_eq!(read_all(&mut reader, &input, 64), 100);
        assert!(reader.is_capped() && !reader.is_complete());
        assert_eq!(reader.excerpt().len(), 10);
        assert_eq!(reader.read(&input).unwrap().consumed_bytes, 0);

        let mut chunked = ResponseBodyReader::with_limits(ResponseFraming::Chunked, 4, 20);
        let endless = b"5\r\nhello\r\n".repeat(10);
        assert_eq!(read_all(&mut chunked, &endless, 7), 20);
        assert!(chunked.is_capped());
        assert_eq!(chunked.excerpt(), b"hell");

        let mut broken = ResponseBodyReader::new(ResponseFraming::Chunked);
        assert!(matches!(broken.read(b"zz\r\n"), Err(ResponseError::Body(_))));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), head_bytes_max in 0_usize..600) {
            // A destination can send anything; the parser answers with a value.
            for candidate in [bytes.clone(), [b"HTTP/1.1 200 OK\r\n".as_slice(), &bytes].concat()] {
                if let Ok(ParsedResponse::Complete { head, head_length }) = parse_response_head(&candidate, head_bytes_max) {
                    prop_assert!(head_length <= candidate.len().min(head_bytes_max));
                    prop_assert!((100..=599).contains(&head.status));
                }
            }
        }

        #[test]
        fn split_heads_parse_like_whole_ones(
            status in 100_u16..600,
            fields in proptest::collection::vec(("[a-zA-Z-]{1,12}", "[ -~]{0,20}"), 0..6),
            length in proptest::option::of(0_u64..10_000),
            retry_after in proptest::option::of("[0-9]{1,4}"),
        ) {
            // TCP cuts a head anywhere; every prefix must be Partial and the whole must parse
            // to the same head whatever the cuts.
            let mut text = format!("HTTP/1.1 {status} Reason\r\n");
            for (name, value) in &fields {
                if ["content-length", "transfer-encoding", "connection", "retry-after"].contains(&name.to_ascii_lowercase().as_str()) {
                    continue;
                }
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            if let Some(length) = length {
                text.push_str(&format!("Content-Length: {length}\r\n"));
            }
            if let Some(retry_after) = &retry_after {
                text.push_str(&format!("Retry-After: {retry_after}\r\n"));
            }
            text.push_str("\r\nbody");
            let bytes = text.into_bytes();
            let whole = parse(&bytes);
            if status == 101 {
                prop_assert_eq!(whole, Err(ResponseError::UnexpectedStatus { status }));
                return Ok(());
            }
            let Ok(ParsedResponse::Complete { head, head_length }) = whole.clone() else {
                panic!("generated head did not parse: {whole:?}");
            };
            prop_assert_eq!(head.status, status);
            prop_assert_eq!(head.retry_after, retry_after);
            prop_assert_eq!(head_length, bytes.len() - 4);
            for split in 0..head_length {
                prop_assert_eq!(parse(&bytes[..split]), Ok(ParsedResponse::Partial), "split at {}", split);
            }
        }
    }
}
