//! One connection's loop, generic over the stream (plain TCP or TLS): read a head, ask the
//! handler whether to read the body, read it, hand the request over, write the response, and
//! again while the connection is kept alive.
//!
//! Requests are served one at a time, so pipelined requests are answered in order: their bytes
//! wait in the read buffer (or the socket) until the previous response is written. Every read
//! has a deadline and every write a timeout, so a slow or stalled client costs its own task and
//! nothing else. The read buffer holds at most an incomplete head plus one read; a body is
//! decoded out of it as it arrives and grows only up to the payload limit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::date;
use super::shutdown::Shutdown;
use super::tasks::{race, Either};
use super::{Handler, Request, Response, ServerConfig};
use crate::limits;
use crate::proto::{
    parse_head, write_error_response, BodyDecoder, BodyFraming, Method, ParseError, Parsed, RequestHead, CONTINUE_100,
};

/// A byte stream the server speaks HTTP over.
pub(super) trait Transport: AsyncReadRent + AsyncWriteRent + 'static {
    /// The TCP stream under any encryption. Lingering reads it directly: the bytes are thrown
    /// away, and monoio-rustls cannot read again after a cancelled read (its read buffer went
    /// with the cancelled operation).
    fn into_tcp(self) -> TcpStream;
}

impl Transport for TcpStream {
    fn into_tcp(self) -> TcpStream {
        self
    }
}

/// How a connection ends.
enum Ending {
    /// Close now: the peer left, the connection was idle too long, the server shuts down, or
    /// the stream is unusable (a write failed or timed out).
    Drop,
    /// The last response is written and says `Connection: close`: shut down the write side and
    /// linger, so that the client reads the response instead of a reset.
    Linger,
}

/// Why a read brought no bytes.
enum ReadEnd {
    /// The peer closed its side.
    Closed,
    /// The deadline passed; the read was cancelled.
    TimedOut,
    /// The read failed (reset, TLS error).
    Failed,
}

/// One connection and its reusable buffers.
pub(super) struct Connection<S, H> {
    stream: S,
    peer: SocketAddr,
    config: Rc<ServerConfig>,
    handler: Rc<H>,
    shutdown: Shutdown,
    /// Bytes received and not yet consumed: part of a head, or what follows it.
    read_buffer: Vec<u8>,
    /// The response being written; empty between writes.
    write_buffer: Vec<u8>,
    /// Set once a read was cancelled. Nothing reads `stream` after that (see
    /// [`Transport::into_tcp`]); it is asserted.
    read_cancelled: bool,
}

impl<S: Transport, H: Handler> Connection<S, H> {
    pub(super) fn new(
        stream: S,
        peer: SocketAddr,
        config: Rc<ServerConfig>,
        handler: Rc<H>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            stream,
            peer,
            config,
            handler,
            shutdown,
            read_buffer: Vec::with_capacity(limits::READ_BUFFER_BYTES_INITIAL),
            write_buffer: Vec::new(),
            read_cancelled: false,
        }
    }

    /// Serves requests until the connection ends, then closes it.
    pub(super) async fn run(mut self) {
        let Err(ending) = self.serve_requests().await;
        if let Ending::Linger = ending {
            let Self { stream, write_buffer, .. } = self;
            linger(stream, write_buffer).await;
        }
    }

    async fn serve_requests(&mut self) -> Result<Infallible, Ending> {
        // A new connection gets the header timeout to start its first request; only a
        // connection that has completed one earns the longer keep-alive wait.
        let mut idle_timeout = self.config.header_read_timeout;
        loop {
            let (head, head_length) = self.read_head(idle_timeout).await?;
            self.serve_request(head, head_length).await?;
            idle_timeout = self.config.keep_alive_timeout;
        }
    }

    /// Reads until a whole head is buffered; returns it and its length in the buffer.
    async fn read_head(&mut self, idle_timeout: Duration) -> Result<(RequestHead, usize), Ending> {
        if self.read_buffer.is_empty() {
            self.await_request(idle_timeout).await?;
        }
        // Measured from the first byte of the request: trickling bytes does not extend it.
        let deadline = deadline_after(self.config.header_read_timeout);
        loop {
            match parse_head(&self.read_buffer, &self.config.limits) {
                Ok(Parsed::Complete { head, head_length }) => return Ok((head, head_length)),
                Ok(Parsed::Partial) => {}
                Err(error) => return Err(self.answer_parse_error(&error).await),
            }
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(ReadEnd::TimedOut) => {
                    let timeout = self.config.header_read_timeout;
                    return Err(self.answer_timeout("head", timeout).await);
                }
                Err(ReadEnd::Closed | ReadEnd::Failed) => return Err(Ending::Drop),
            }
        }
    }

    /// Waits, while idle, for the first bytes of the next request. Ends the connection
    /// silently when the idle time runs out or the server shuts down.
    async fn await_request(&mut self, idle_timeout: Duration) -> Result<(), Ending> {
        if self.shutdown.is_triggered() {
            return Err(Ending::Drop);
        }
        let shutdown = self.shutdown.wait();
        match race(self.fill(deadline_after(idle_timeout)), shutdown).await {
            Either::First(Ok(())) => Ok(()),
            Either::First(Err(_)) => Err(Ending::Drop),
            Either::Second(()) => {
                self.read_cancelled = true;
                Err(Ending::Drop)
            }
        }
    }

    /// Serves the request whose head was just parsed, leaving what follows it in the buffer.
    async fn serve_request(&mut self, head: RequestHead, head_length: usize) -> Result<(), Ending> {
        self.read_buffer.drain(..head_length.min(self.read_buffer.len()));
        if let Some(response) = self.handler.check_head(&head) {
            // The body, if one was announced, stays unread: the framing is lost unless there
            // is none.
            let keep_alive = head.keep_alive && head.framing == BodyFraming::Empty;
            return self.respond(&response, head.method, keep_alive).await;
        }
        let body = self.read_body(&head).await?;
        let (method, keep_alive) = (head.method, head.keep_alive);
        let response = self.handler.handle(Request { head, body, peer: self.peer }).await;
        self.respond(&response, method, keep_alive).await
    }

    /// Reads and decodes the body that follows `head`, sending `100 Continue` first if the
    /// client waits for it.
    async fn read_body(&mut self, head: &RequestHead) -> Result<Vec<u8>, Ending> {
        // RFC 9110 §10.1.1: a client that already sent body bytes is not waiting for the
        // interim response, and it would only be noise before the final one.
        if head.expect_continue && self.read_buffer.is_empty() {
            self.write_buffer.extend_from_slice(CONTINUE_100);
            self.flush().await?;
        }
        let mut decoder = BodyDecoder::new(head.framing, &self.config.limits);
        let mut body = Vec::new();
        let deadline = deadline_after(self.config.body_read_timeout);
        loop {
            match decoder.decode(&self.read_buffer, &mut body) {
                Ok(progress) => {
                    self.read_buffer.drain(..progress.consumed_bytes.min(self.read_buffer.len()));
                    if progress.complete {
                        return Ok(body);
                    }
                }
                // A chunked body passing the payload limit lands here (413) as soon as it does.
                Err(error) => return Err(self.answer_parse_error(&error).await),
            }
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(ReadEnd::TimedOut) => {
                    let timeout = self.config.body_read_timeout;
                    return Err(self.answer_timeout("body", timeout).await);
                }
                Err(ReadEnd::Closed | ReadEnd::Failed) => return Err(Ending::Drop),
            }
        }
    }

    /// Writes `response`; ends the connection unless it is kept alive.
    async fn respond(&mut self, response: &Response, method: Method, keep_alive: bool) -> Result<(), Ending> {
        let keep_alive = keep_alive && !self.shutdown.is_triggered();
        response.encode(&mut self.write_buffer, method == Method::Head, keep_alive);
        self.flush().await?;
        if keep_alive {
            Ok(())
        } else {
            Err(Ending::Linger)
        }
    }

    /// Answers a malformed or refused request and ends the connection.
    async fn answer_parse_error(&mut self, error: &ParseError) -> Ending {
        tracing::debug!(peer = %self.peer, %error, "refusing a request");
        self.handler.on_refused(error.status(), error.code());
        write_error_response(&mut self.write_buffer, error, date::now().as_ref());
        if let Err(ending) = self.flush().await {
            return ending;
        }
        // Every error loses the framing today. Should one ever keep it, this loop still could
        // not resynchronise (a failed head has no known end), so it closes anyway: RFC 9112
        // §9.6 lets a server close an idle persistent connection at any time.
        Ending::Linger
    }

    /// Answers a request that did not arrive in time with 408 E1005 and ends the connection.
    async fn answer_timeout(&mut self, part: &str, timeout: Duration) -> Ending {
        tracing::debug!(peer = %self.peer, part, "request timed out");
        let message = format!("request {part} not received within {} ms", timeout.as_millis());
        self.handler.on_refused(408, "E1005");
        Response::error(408, "E1005", &message).encode(&mut self.write_buffer, false, false);
        match self.flush().await {
            Ok(()) => Ending::Linger,
            Err(ending) => ending,
        }
    }

    /// Reads more bytes onto the end of the read buffer before `deadline`.
    async fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        debug_assert!(!self.read_cancelled, "read after a cancelled read");
        debug_assert!(self.read_buffer.len() < self.config.limits.header_bytes_max.max(1));
        let mut buffer = std::mem::take(&mut self.read_buffer);
        let length = buffer.len();
        // Grow only when the room left is smaller than a fresh buffer's: an idle connection
        // keeps its small buffer, a large request grows it a chunk at a time.
        if buffer.capacity() - length < limits::READ_BUFFER_BYTES_INITIAL {
            buffer.reserve_exact(limits::READ_CHUNK_BYTES);
        }
        let end = buffer.capacity();
        let read = self.stream.read(buffer.slice_mut(length..end));
        let Ok((result, buffer)) = monoio::time::timeout_at(deadline, read).await else {
            // The buffer went with the cancelled read; the connection is about to end anyway.
            self.read_cancelled = true;
            return Err(ReadEnd::TimedOut);
        };
        self.read_buffer = buffer.into_inner();
        match result {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::debug!(peer = %self.peer, %error, "reading a request failed");
                Err(ReadEnd::Failed)
            }
        }
    }

    /// Writes the whole write buffer and empties it for the next response.
    async fn flush(&mut self) -> Result<(), Ending> {
        let buffer = std::mem::take(&mut self.write_buffer);
        let write_timeout = Duration::from_millis(limits::RESPONSE_WRITE_TIMEOUT_MS);
        // A cancelled write leaves a TLS stream unusable too, so a timeout drops the connection.
        let (result, mut buffer) =
            monoio::time::timeout(write_timeout, self.stream.write_all(buffer)).await.map_err(|_| Ending::Drop)?;
        buffer.clear();
        if buffer.capacity() > limits::WRITE_BUFFER_BYTES_KEPT_MAX {
            buffer = Vec::new();
        }
        self.write_buffer = buffer;
        result.map(|_| ()).map_err(|error| {
            tracing::debug!(peer = %self.peer, %error, "writing a response failed");
            Ending::Drop
        })
    }
}

/// Closes a connection whose last response is written: shuts down the write side (the client
/// reads the response, then end of stream) and reads and discards what the client still sends
/// for at most [`limits::LINGER_TIMEOUT_MS`] or [`limits::LINGER_BYTES_MAX`], until it closes.
/// Closing with unread bytes would make the kernel answer with a reset, which can discard the
/// response before the client reads it. `buffer` is any spare buffer, reused for the reads.
pub(super) async fn linger<S: Transport>(mut stream: S, mut buffer: Vec<u8>) {
    let linger_timeout = Duration::from_millis(limits::LINGER_TIMEOUT_MS);
    let deadline = deadline_after(linger_timeout);
    match monoio::time::timeout_at(deadline, stream.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    let mut tcp = stream.into_tcp();
    buffer.clear();
    buffer.reserve_exact(limits::READ_CHUNK_BYTES);
    let mut discarded_bytes = 0;
    while discarded_bytes < limits::LINGER_BYTES_MAX {
        buffer.clear();
        match monoio::time::timeout_at(deadline, tcp.read(buffer)).await {
            Ok((Ok(read_bytes), returned)) if read_bytes > 0 => {
                discarded_bytes += read_bytes;
                buffer = returned;
            }
            // End of stream, a reset, or the time is up.
            _ => return,
        }
    }
}

/// The instant `timeout` from now, with the timeout capped at [`limits::TIMEOUT_MS_MAX`] so
/// that the arithmetic cannot overflow.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    let timeout = timeout.min(Duration::from_millis(limits::TIMEOUT_MS_MAX));
    now.checked_add(timeout).unwrap_or(now)
}
