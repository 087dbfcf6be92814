//! The server: a shard's accept loop on a monoio runtime, the types the application sees
//! ([`Request`], [`Response`], [`Handler`]) and the configuration ([`ServerConfig`]).
//!
//! Every accepted connection is its own task (see `connection.rs`), so a slow client only ever
//! stalls itself. The accept loop counts live connections and refuses those past
//! `connections_max` with 503 E3002; a shutdown stops accepting, lets in-flight requests finish
//! within [`limits::SHUTDOWN_DRAIN_TIMEOUT_MS`], then drops whatever is left.

mod connection;
mod date;
mod shutdown;
mod tasks;
mod tls;

pub use shutdown::{Shutdown, Wait};
pub use tls::load_tls_config;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio_rustls::TlsAcceptor;

use connection::{linger, Connection, Transport};
use tasks::{race, Either, TaskCount};
use tls::handshake;

use crate::limits::{self, Limits};
use crate::proto::{error_body, write_response, write_response_head, RequestHead};

/// A complete request handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The parsed head.
    pub head: RequestHead,
    /// The whole body, chunked coding removed; at most `limits.payload_bytes_max` bytes.
    pub body: Vec<u8>,
    /// The address of the client (the TCP peer, not a forwarded-for header).
    pub peer: SocketAddr,
}

/// What the application answers. The server adds `Date`, `Content-Length` and `Connection`, and
/// leaves the body out when the request was `HEAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, 200 to 599.
    pub status: u16,
    /// Extra header fields, written in order. Names and values are the server's own and must
    /// not hold CR or LF.
    pub headers: Vec<(&'static str, String)>,
    /// The `Content-Type`, if the response has a body.
    pub content_type: Option<&'static str>,
    /// The body; empty for 204.
    pub body: Vec<u8>,
    /// The E-code of an error response (for metrics); `None` otherwise.
    pub code: Option<&'static str>,
}

impl Response {
    /// A JSON response.
    #[must_use]
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Self { status, headers: Vec::new(), content_type: Some("application/json"), body, code: None }
    }

    /// A response without a body (`Content-Length: 0`, or nothing for 204).
    #[must_use]
    pub fn empty(status: u16) -> Self {
        Self { status, headers: Vec::new(), content_type: None, body: Vec::new(), code: None }
    }

    /// An error response of the external contract: `{"error":{"code":…,"message":…}}`.
    #[must_use]
    pub fn error(status: u16, code: &'static str, message: &str) -> Self {
        Self { code: Some(code), ..Self::json(status, error_body(code, message)) }
    }

    /// The same response with one more header field.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Appends the response to `out`, with the current `Date`. For a `HEAD` request
    /// (`head_only`) the body is left out but its `Content-Length` is kept, as RFC 9110 §9.3.2
    /// asks: the same header fields a `GET` gets, and no content.
    fn encode(&self, out: &mut Vec<u8>, head_only: bool, keep_alive: bool) {
        let date = date::now();
        // Allocates only when there are extra headers (errors, metrics), never for a plain 202.
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        if head_only {
            let length = self.body.len();
            write_response_head(out, self.status, date.as_ref(), &headers, self.content_type, length, keep_alive);
        } else {
            write_response(out, self.status, date.as_ref(), &headers, self.content_type, &self.body, keep_alive);
        }
    }
}

/// The application. One instance per shard (it need not be `Send`): the server runs on that
/// shard's monoio runtime and calls it from the connection tasks, one request at a time per
/// connection but concurrently across connections.
pub trait Handler: 'static {
    /// Called once the head is parsed, before the body is read: a `Some(response)` is sent
    /// instead of reading the body (e.g. 404 unknown endpoint, 401, 413 from the application's
    /// own limit), and no `100 Continue` is sent. The connection is then closed if a body was
    /// announced and not read.
    fn check_head(&self, head: &RequestHead) -> Option<Response> {
        let _ = head;
        None
    }

    /// Handles a complete request.
    fn handle(&self, request: Request) -> impl Future<Output = Response>;

    /// Told of every connection this shard starts (`true`) and ends (`false`) serving, for
    /// metrics. Connections refused at `connections_max` are reported through `on_refused`.
    fn on_connection(&self, open: bool) {
        let _ = open;
    }

    /// Told of every request the server refuses by itself (malformed, too large, too slow, too
    /// many connections) with the status and E-code it answered, for metrics.
    fn on_refused(&self, status: u16, code: &'static str) {
        let _ = (status, code);
    }
}

/// How one shard's server behaves. [`ServerConfig::default`] uses the documented defaults of
/// [`limits`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Parser limits, among them the payload limit (`KAPSEL_MAX_PAYLOAD_BYTES`).
    pub limits: Limits,
    /// Time to receive a whole request head, from its first byte; then 408 E1005 and close.
    /// Also bounds the wait for a new connection's first byte and its TLS handshake.
    /// Default 10 s ([`limits::HEADER_READ_TIMEOUT_MS_DEFAULT`]).
    pub header_read_timeout: Duration,
    /// Time to receive a whole request body, from the end of its head; then 408 E1005 and
    /// close. Default 30 s ([`limits::BODY_READ_TIMEOUT_MS_DEFAULT`]).
    pub body_read_timeout: Duration,
    /// Time an idle keep-alive connection waits for its next request before it is closed
    /// silently. Default 60 s ([`limits::KEEP_ALIVE_TIMEOUT_MS_DEFAULT`]).
    pub keep_alive_timeout: Duration,
    /// Open connections this shard serves at once; past it a new connection is answered 503
    /// E3002 with `Retry-After: 1` and closed. Default 10 000
    /// ([`limits::CONNECTIONS_MAX_DEFAULT`]).
    pub connections_max: usize,
    /// With `Some`, every connection speaks TLS (see [`crate::load_tls_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            header_read_timeout: Duration::from_millis(limits::HEADER_READ_TIMEOUT_MS_DEFAULT),
            body_read_timeout: Duration::from_millis(limits::BODY_READ_TIMEOUT_MS_DEFAULT),
            keep_alive_timeout: Duration::from_millis(limits::KEEP_ALIVE_TIMEOUT_MS_DEFAULT),
            connections_max: limits::CONNECTIONS_MAX_DEFAULT,
            tls: None,
        }
    }
}

/// Binds a listener with `SO_REUSEPORT` (and `SO_REUSEADDR`) so that every shard can bind the
/// same address and the kernel spreads connections over them. Call it on the shard's runtime:
/// the socket is registered with that runtime's driver.
///
/// # Errors
///
/// The bind or listen failure, e.g. the address is in use by a socket without `SO_REUSEPORT`.
pub fn bind_reuse_port(address: SocketAddr) -> io::Result<TcpListener> {
    let options = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(limits::ACCEPT_BACKLOG_MAX);
    TcpListener::bind_with_config(address, &options)
}

/// Serves `listener` with `handler` until `shutdown` fires.
///
/// Then it stops accepting (and closes the listener, so that the kernel stops queueing
/// connections for this shard), lets in-flight requests finish and their responses be written
/// (with `Connection: close`), closes idle keep-alive connections, and returns once every
/// connection task has ended. Connections still busy after
/// [`limits::SHUTDOWN_DRAIN_TIMEOUT_MS`] are dropped unanswered. Must run on a monoio runtime
/// with its timer enabled.
pub async fn serve<H: Handler>(listener: TcpListener, config: Rc<ServerConfig>, handler: Rc<H>, shutdown: Shutdown) {
    let shard = Shard {
        acceptor: config.tls.clone().map(TlsAcceptor::from),
        config,
        handler,
        shutdown,
        connections: TaskCount::default(),
        rejections: TaskCount::default(),
        abort: Shutdown::new(),
    };
    shard.accept_until_shutdown(&listener).await;
    drop(listener);
    shard.drain().await;
}

/// What the accept loop shares with the tasks it spawns.
struct Shard<H> {
    config: Rc<ServerConfig>,
    handler: Rc<H>,
    shutdown: Shutdown,
    acceptor: Option<TlsAcceptor>,
    /// Connections being served, counted against `connections_max`.
    connections: TaskCount,
    /// Connections being refused, counted against [`limits::REJECTIONS_IN_FLIGHT_MAX`].
    rejections: TaskCount,
    /// Fired when the drain time is up: every task drops what it is doing.
    abort: Shutdown,
}

impl<H: Handler> Shard<H> {
    async fn accept_until_shutdown(&self, listener: &TcpListener) {
        let backoff = Duration::from_millis(limits::ACCEPT_ERROR_BACKOFF_MS);
        // Checked before every accept too: with connections always waiting, the accept would
        // always be ready and the race would never look at the signal.
        while !self.shutdown.is_triggered() {
            let accepted = match race(listener.accept(), self.shutdown.wait()).await {
                Either::First(accepted) => accepted,
                Either::Second(()) => return,
            };
            match accepted {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(error) => {
                    // Typically out of file descriptors: every connection held one more than
                    // the system allows. Waiting lets some of them close.
                    tracing::warn!(%error, "accepting a connection failed");
                    if let Either::Second(()) = race(monoio::time::sleep(backoff), self.shutdown.wait()).await {
                        return;
                    }
                }
            }
        }
    }

    /// Spawns the task that serves or refuses a new connection.
    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        if self.connections.live() >= self.config.connections_max {
            self.handler.on_refused(503, "E3002");
            if self.rejections.live() >= limits::REJECTIONS_IN_FLIGHT_MAX {
                // Refusing politely is itself at its limit: dropping the stream closes it.
                return;
            }
            let guard = self.rejections.enter();
            let refusal = refuse_connection(stream, self.acceptor.clone(), self.config.header_read_timeout);
            let abort = self.abort.wait();
            monoio::spawn(async move {
                let _guard = guard;
                race(refusal, abort).await;
            });
            return;
        }
        // Responses are written whole, so Nagle's algorithm could only delay them.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "setting TCP_NODELAY failed");
        }
        let guard = self.connections.enter();
        self.handler.on_connection(true);
        let handler = self.handler.clone();
        let connection = serve_connection(
            stream,
            peer,
            self.acceptor.clone(),
            self.config.clone(),
            self.handler.clone(),
            self.shutdown.clone(),
        );
        let abort = self.abort.wait();
        monoio::spawn(async move {
            let _guard = guard;
            race(connection, abort).await;
            handler.on_connection(false);
        });
    }

    /// Waits for every task to end, at most the drain time, then aborts the rest.
    async fn drain(&self) {
        let all_ended = async {
            self.connections.idle().await;
            self.rejections.idle().await;
        };
        let drain_timeout = Duration::from_millis(limits::SHUTDOWN_DRAIN_TIMEOUT_MS);
        if let Either::Second(()) = race(all_ended, monoio::time::sleep(drain_timeout)).await {
            tracing::warn!(
                connections = self.connections.live(),
                "shutdown drain timed out; dropping the remaining connections"
            );
            self.abort.trigger();
            // Each aborted task ends the next time it is polled, which the trigger caused.
            self.connections.idle().await;
            self.rejections.idle().await;
        }
    }
}

/// Serves one accepted connection, after its TLS handshake if the server speaks TLS.
async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    config: Rc<ServerConfig>,
    handler: Rc<H>,
    shutdown: Shutdown,
) {
    match acceptor {
        None => Connection::new(stream, peer, config, handler, shutdown).run().await,
        Some(acceptor) => {
            if let Some(stream) = handshake(&acceptor, stream, peer, config.header_read_timeout).await {
                Connection::new(stream, peer, config, handler, shutdown).run().await;
            }
        }
    }
}

/// Answers a connection past `connections_max` with 503 E3002 and closes it. Over TLS this
/// still costs a handshake, which is why refusals are bounded too: a client that cannot read
/// the 503 would only retry at once.
async fn refuse_connection(stream: TcpStream, acceptor: Option<TlsAcceptor>, handshake_timeout: Duration) {
    match acceptor {
        None => refuse(stream).await,
        Some(acceptor) => {
            let peer = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            if let Some(stream) = handshake(&acceptor, stream, peer, handshake_timeout).await {
                refuse(stream).await;
            }
        }
    }
}

async fn refuse<S: Transport>(mut stream: S) {
    let response =
        Response::error(503, "E3002", "too many connections; retry later").with_header("Retry-After", "1".to_owned());
    let mut out = Vec::new();
    response.encode(&mut out, false, false);
    let write_timeout = Duration::from_millis(limits::RESPONSE_WRITE_TIMEOUT_MS);
    if let Ok((Ok(_), buffer)) = monoio::time::timeout(write_timeout, stream.write_all(out)).await {
        linger(stream, buffer).await;
    }
}
