//! The load generator's HTTP/1.1 client: one keep-alive TCP connection, one request at a time.
//!
//! Deliberately small: it sends prebuilt request bytes and reads responses framed by
//! `Content-Length`, which is all the servers under test send. Anything else is a
//! [`Failure::Malformed`], never a guess.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::limits;
use crate::payload::{unix_micros_now, SendTimeStamp};

/// Why a request did not get a 2xx answer. Ordered so that tallies print stably.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The TCP connect failed or timed out.
    Connect,
    /// The request took longer than [`limits::REQUEST_TIMEOUT_MS`] (or ran past the loop's end).
    Timeout,
    /// A read or write failed (reset, broken pipe).
    Io,
    /// The server closed the connection before the whole response arrived.
    Closed,
    /// The response did not parse, or is framed in a way this client does not read.
    Malformed,
    /// The loop ended with the request still queued: it was never sent (open loop only).
    Abandoned,
    /// The server answered with this non-2xx status.
    Status(u16),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect => formatter.write_str("connect"),
            Self::Timeout => formatter.write_str("timeout"),
            Self::Io => formatter.write_str("io"),
            Self::Closed => formatter.write_str("closed"),
            Self::Malformed => formatter.write_str("malformed"),
            Self::Abandoned => formatter.write_str("abandoned"),
            Self::Status(status) => write!(formatter, "HTTP {status}"),
        }
    }
}

/// The parts of a response head the client needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Length of the head, final CRLF included.
    pub head_bytes: usize,
    /// Length of the body that follows.
    pub content_length: usize,
    /// False when the server said `Connection: close` (or spoke HTTP/1.0 without keep-alive).
    pub keep_alive: bool,
}

/// Parses a response head at the start of `bytes`: `Ok(None)` while incomplete.
///
/// # Errors
///
/// [`Failure::Malformed`] for a head that does not parse, two different `Content-Length`
/// values, a `Transfer-Encoding` (this client reads only `Content-Length` framing), a missing
/// `Content-Length` on a status that has a body, or a body beyond
/// [`limits::RESPONSE_BODY_BYTES_MAX`].
pub fn parse_response_head(bytes: &[u8]) -> Result<Option<ResponseHead>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; limits::RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_bytes = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Malformed),
    };
    let status = response.code.ok_or(Failure::Malformed)?;
    let mut keep_alive = response.version == Some(1);
    let mut content_length: Option<usize> = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value).map_err(|_| Failure::Malformed)?;
            let length: usize = text.trim().parse().map_err(|_| Failure::Malformed)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(Failure::Malformed);
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Failure::Malformed);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|byte| *byte == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 §6.3: 1xx, 204 and 304 responses have no body whatever their fields say.
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    let content_length = match content_length {
        _ if bodyless => 0,
        Some(length) if length <= limits::RESPONSE_BODY_BYTES_MAX => length,
        _ => return Err(Failure::Malformed),
    };
    Ok(Some(ResponseHead { status, head_bytes, content_length, keep_alive }))
}

/// What one exchange brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Whether the connection may carry the next request.
    pub keep_alive: bool,
}

/// One keep-alive connection and the request it sends.
pub struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    /// Bytes received; the last response stays at the front until the next exchange.
    buffer: Vec<u8>,
    /// The last response's body within `buffer`.
    last_body: std::ops::Range<usize>,
    /// Where each send writes the current time into `request`, if anywhere.
    stamp: Option<SendTimeStamp>,
}

impl Connection {
    /// Connects to `address` within [`limits::CONNECT_TIMEOUT_MS`]; every
    /// [`Connection::exchange`] sends `request`.
    ///
    /// # Errors
    ///
    /// [`Failure::Connect`].
    pub async fn open(address: SocketAddr, request: &[u8]) -> Result<Self, Failure> {
        let timeout = Duration::from_millis(limits::CONNECT_TIMEOUT_MS);
        let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => return Err(Failure::Connect),
        };
        // Requests are written whole: Nagle's algorithm could only delay them.
        stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
        Ok(Self {
            stream,
            request: request.to_vec(),
            buffer: Vec::with_capacity(limits::READ_CHUNK_BYTES),
            last_body: 0..0,
            stamp: None,
        })
    }

    /// The same connection, writing the current time into the request at `stamp` before
    /// every send (the delivery bench's ingest-to-delivery latency).
    #[must_use]
    pub fn stamping(mut self, stamp: Option<SendTimeStamp>) -> Self {
        self.stamp = stamp;
        self
    }

    /// Sends `request` from the next exchange on (the footprint bench's fill spreads one
    /// connection's ingests over many endpoints).
    pub fn set_request(&mut self, request: &[u8]) {
        self.request.clear();
        self.request.extend_from_slice(request);
    }

    /// Sends the request and reads the whole response. Not cancel-safe: a connection whose
    /// exchange was dropped half-way (a timeout) must be dropped too.
    ///
    /// # Errors
    ///
    /// What went wrong; the connection is then unusable.
    pub async fn exchange(&mut self) -> Result<Reply, Failure> {
        self.buffer.drain(..self.last_body.end.min(self.buffer.len()));
        self.last_body = 0..0;
        if let Some(stamp) = self.stamp {
            stamp.write(&mut self.request, unix_micros_now());
        }
        let (written, request) = self.stream.write_all(std::mem::take(&mut self.request)).await;
        self.request = request;
        written.map_err(|_| Failure::Io)?;
        loop {
            if let Some(head) = parse_response_head(&self.buffer)? {
                let end = head.head_bytes + head.content_length;
                while self.buffer.len() < end {
                    self.fill().await?;
                }
                self.last_body = head.head_bytes..end;
                return Ok(Reply { status: head.status, keep_alive: head.keep_alive });
            }
            if self.buffer.len() >= limits::RESPONSE_HEAD_BYTES_MAX {
                return Err(Failure::Malformed);
            }
            self.fill().await?;
        }
    }

    /// The body of the last response.
    pub fn last_body(&self) -> &[u8] {
        self.buffer.get(self.last_body.clone()).unwrap_or_default()
    }

    /// Reads more bytes onto the end of the buffer.
    async fn fill(&mut self) -> Result<(), Failure> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let length = buffer.len();
        if buffer.capacity() - length < limits::READ_CHUNK_BYTES / 4 {
            buffer.reserve(limits::READ_CHUNK_BYTES);
        }
        let end = buffer.capacity();
        let (read, slice) = self.stream.read(buffer.slice_mut(length..end)).await;
        self.buffer = slice.into_inner();
        match read {
            Ok(0) => Err(Failure::Closed),
            Ok(_) => Ok(()),
            Err(_) => Err(Failure::Io),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The load test counts statuses and reuses connections from these fields: they must be
    // read exactly, and an incomplete head must ask for more bytes rather than fail.
    #[test]
    fn parses_a_keep_alive_response_and_waits_for_more() {
        let response = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"status\":\"received\"}";
        let head = parse_response_head(response).unwrap().unwrap();
        assert_eq!(
            head,
            ResponseHead { status: 202, head_bytes: response.len() - 21, content_length: 21, keep_alive: true }
        );
        for cut in 0..head.head_bytes {
            assert_eq!(parse_response_head(&response[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    // A server that closes after its answer must not get the next request on that connection.
    #[test]
    fn connection_close_ends_keep_alive() {
        let response = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let head = parse_response_head(response).unwrap().unwrap();
        assert_eq!((head.status, head.keep_alive), (503, false));
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse_response_head(old).unwrap().unwrap().keep_alive);
    }

    // Framing the client cannot read exactly is an error, never a guess that would
    // desynchronise every later response on the connection.
    #[test]
    fn unreadable_framing_is_malformed() {
        for response in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert_eq!(parse_response_head(response), Err(Failure::Malformed));
        }
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response_head(no_content).unwrap().unwrap().content_length, 0);
    }
}
