//! One outbound connection, plain or TLS, and one exchange on it: write the request, read the
//! response head (skipping interim 1xx responses), read the body into an excerpt, and say
//! whether the connection can carry another request.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;

use super::SendError;
use crate::limits;
use crate::proto::{parse_response_head, ParsedResponse, ResponseBodyReader, ResponseError, ResponseHead};

/// The byte stream under a connection.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

/// An open connection to one destination address.
pub(super) struct Connection {
    stream: Stream,
    peer: SocketAddr,
    /// Bytes received and not yet consumed. Empty between exchanges: a connection with
    /// unexplained bytes left over is never reused.
    read_buffer: Vec<u8>,
    /// Whether any byte arrived during the current exchange.
    received: bool,
}

/// A response read off a connection.
pub(super) struct Exchanged {
    pub(super) head: ResponseHead,
    pub(super) body_excerpt: Vec<u8>,
    /// Whether the connection may go back to the pool: the response allowed keep-alive, its
    /// body was read to the end within the read cap, and nothing followed it.
    pub(super) reusable: bool,
}

/// Why an exchange failed, and whether the destination had sent anything by then. A pooled
/// connection that fails before any response byte was most likely closed by the server while
/// idle, and the request is worth one more try on a fresh connection.
pub(super) struct ExchangeFailure {
    pub(super) error: SendError,
    pub(super) nothing_received: bool,
}

impl Connection {
    pub(super) fn new(stream: Stream, peer: SocketAddr) -> Self {
        Self { stream, peer, read_buffer: Vec::with_capacity(limits::READ_BUFFER_BYTES_INITIAL), received: false }
    }

    /// Writes the request (taken from `request_bytes` and put back, so that it can be sent
    /// again on another connection) and reads the response.
    pub(super) async fn exchange(&mut self, request_bytes: &mut Vec<u8>) -> Result<Exchanged, ExchangeFailure> {
        debug_assert!(self.read_buffer.is_empty(), "a connection with leftover bytes was reused");
        self.received = false;
        let (written, bytes) = self.write_all(std::mem::take(request_bytes)).await;
        *request_bytes = bytes;
        if let Err(error) = written {
            return Err(self.failure(SendError::Connect(format!("writing the request to {}: {error}", self.peer))));
        }
        let head = self.read_head().await?;
        let (body_excerpt, body_complete) = self.read_body(&head).await?;
        let reusable = head.keep_alive && body_complete && self.read_buffer.is_empty();
        if self.read_buffer.capacity() > limits::READ_BUFFER_BYTES_INITIAL {
            // An idle connection keeps no more than a fresh one.
            self.read_buffer.shrink_to(limits::READ_BUFFER_BYTES_INITIAL);
        }
        Ok(Exchanged { head, body_excerpt, reusable })
    }

    /// Reads until a final (non-1xx) response head is parsed, and drops it from the buffer.
    async fn read_head(&mut self) -> Result<ResponseHead, ExchangeFailure> {
        let mut interim_responses = 0;
        loop {
            match parse_response_head(&self.read_buffer, limits::RESPONSE_HEAD_BYTES_MAX) {
                Ok(ParsedResponse::Complete { head, head_length }) => {
                    self.read_buffer.drain(..head_length.min(self.read_buffer.len()));
                    if head.status >= 200 {
                        return Ok(head);
                    }
                    // RFC 9110 §15.2: a client must accept interim responses it did not ask
                    // for (103 Early Hints) and wait for the final one.
                    interim_responses += 1;
                    if interim_responses > limits::INTERIM_RESPONSES_MAX {
                        let limit = limits::INTERIM_RESPONSES_MAX;
                        return Err(self.protocol(ResponseError::TooManyInterimResponses { limit }));
                    }
                    continue;
                }
                Ok(ParsedResponse::Partial) => {}
                Err(error) => return Err(self.protocol(error)),
            }
            match self.fill().await {
                Ok(0) => {
                    let error = if self.received {
                        format!("{} closed the connection in the middle of the response head", self.peer)
                    } else {
                        format!("{} closed the connection without answering", self.peer)
                    };
                    return Err(self.failure(SendError::Connect(error)));
                }
                Ok(_) => {}
                Err(error) => {
                    let error = format!("reading the response from {}: {error}", self.peer);
                    return Err(self.failure(SendError::Connect(error)));
                }
            }
        }
    }

    /// Reads the body: its excerpt, and whether the connection may carry another request (the
    /// body was read to its end, within [`limits::RESPONSE_BODY_BYTES_MAX`], and the stream is
    /// still open).
    ///
    /// A body is read to its end however long it is, because only a complete response is an
    /// answer: a destination that streams forever, or trickles, ends at the attempt's timeout
    /// (E2001). Past [`limits::RESPONSE_BODY_BYTES_MAX`] the rest is read one buffer at a time
    /// with [`limits::RESPONSE_BODY_DRAIN_PAUSE_MS`] between reads: an endless body then costs
    /// the shard a few reads a second instead of a core, and TCP flow control makes the
    /// destination wait rather than us.
    async fn read_body(&mut self, head: &ResponseHead) -> Result<(Vec<u8>, bool), ExchangeFailure> {
        // The reader keeps the excerpt and decodes the framing; the pace is decided here, so
        // its own cap is not used.
        let mut reader =
            ResponseBodyReader::with_limits(head.framing, limits::RESPONSE_BODY_EXCERPT_BYTES_MAX, u64::MAX);
        let mut wire_bytes: u64 = 0;
        loop {
            let progress = reader.read(&self.read_buffer).map_err(|error| self.protocol(error))?;
            self.read_buffer.drain(..progress.consumed_bytes.min(self.read_buffer.len()));
            wire_bytes = wire_bytes.saturating_add(progress.consumed_bytes as u64);
            let past_cap = wire_bytes > limits::RESPONSE_BODY_BYTES_MAX;
            if reader.is_complete() {
                return Ok((reader.take_excerpt(), !past_cap));
            }
            if past_cap {
                monoio::time::sleep(Duration::from_millis(limits::RESPONSE_BODY_DRAIN_PAUSE_MS)).await;
            }
            let end_of_stream = match self.fill().await {
                Ok(0) => true,
                Ok(_) => false,
                // A TLS peer that closes without close_notify; for a body delimited by the close
                // that is its end (we keep an excerpt, so truncation cannot mislead anyone).
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => true,
                Err(error) => {
                    let error = format!("reading the response body from {}: {error}", self.peer);
                    return Err(self.failure(SendError::Connect(error)));
                }
            };
            if end_of_stream {
                reader.end_of_stream().map_err(|error| self.failure(SendError::Connect(error.to_string())))?;
                // Whatever the framing, a closed connection is not reused.
                return Ok((reader.take_excerpt(), false));
            }
        }
    }

    /// Reads more bytes onto the end of the read buffer; `Ok(0)` is the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut buffer = std::mem::take(&mut self.read_buffer);
        let length = buffer.len();
        if buffer.capacity() - length < limits::READ_BUFFER_BYTES_INITIAL {
            buffer.reserve_exact(limits::READ_CHUNK_BYTES);
        }
        let end = buffer.capacity();
        let (result, buffer) = match &mut self.stream {
            Stream::Plain(stream) => stream.read(buffer.slice_mut(length..end)).await,
            Stream::Tls(stream) => stream.read(buffer.slice_mut(length..end)).await,
        };
        self.read_buffer = buffer.into_inner();
        let read_bytes = result?;
        self.received |= read_bytes > 0;
        Ok(read_bytes)
    }

    async fn write_all(&mut self, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (result, bytes) = match &mut self.stream {
            Stream::Plain(stream) => stream.write_all(bytes).await,
            Stream::Tls(stream) => stream.write_all(bytes).await,
        };
        (result.map(|_| ()), bytes)
    }

    fn failure(&self, error: SendError) -> ExchangeFailure {
        ExchangeFailure { error, nothing_received: !self.received }
    }

    fn protocol(&self, error: ResponseError) -> ExchangeFailure {
        self.failure(SendError::Protocol(format!("{} sent a malformed response: {error}", self.peer)))
    }
}
