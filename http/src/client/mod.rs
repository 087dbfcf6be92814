//! The outbound client each shard delivers webhooks with: HTTP/1.1 POSTs over plain TCP or
//! TLS, a bounded keep-alive pool per destination, and the SSRF guard on every connection.
//!
//! Everything runs on the calling shard's monoio runtime except name resolution, which the
//! shared [`Resolver`] does on its own threads. One [`Client::send`] is one delivery attempt:
//!
//! 1. Encode the request (refusing header fields that would change its framing).
//! 2. Take an idle connection to the destination from the pool, if there is one, and exchange
//!    on it. If it fails before any response byte arrives (the write fails, or the stream is
//!    reset or ends first: the server closed it while idle, or as it was reused), the request
//!    never got an answer and the attempt is not spent: drop the destination's other idle
//!    connections (older, so most likely closed too) and go on at once to a fresh connection.
//!    This is the only retry, and it can only duplicate a delivery the destination received
//!    without answering, which webhook ids make harmless.
//! 3. Otherwise resolve the host, keep the addresses the [`DestinationPolicy`] permits, and
//!    connect to the first that answers (the policy is checked on the very address connected
//!    to, so DNS rebinding cannot slip past it), with a TLS handshake for https.
//! 4. Read the response head (interim 1xx responses skipped) and the whole body, keeping its
//!    first KiB; past the first MiB the body is read slowly, so one that never ends costs
//!    little until the timeout ends it. Put the connection back in the pool when the response
//!    allows it and was read to its end within that MiB.
//!
//! The attempt's timeout covers all of it; the connect timeout bounds each TCP connect and the
//! TLS handshake within it. Redirects are never followed: a 3xx is a response like any other.

mod connection;
mod pool;
mod target;
mod tls;

pub use target::{Scheme, Target, TargetError};
pub use tls::tls_client_config;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use connection::{Connection, ExchangeFailure, Stream};
use pool::{Pool, PoolKey};

use crate::limits;
use crate::outbound::{DestinationPolicy, Resolver};

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("Kapsel/", env!("CARGO_PKG_VERSION"));

/// Header fields the client writes itself, or that would change the framing or the connection
/// if a caller wrote them; [`OutboundRequest::headers`] must not hold them.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// How a shard's client behaves. [`ClientConfig::new`] uses the defaults of [`limits`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time for each TCP connect, and again for the TLS handshake; default 5 s
    /// ([`limits::CONNECT_TIMEOUT_MS_DEFAULT`]). Running out is a connection failure (E2002),
    /// unless the attempt's own timeout runs out first (E2001).
    pub connect_timeout: Duration,
    /// Idle connections kept per destination (scheme, host, port); 0 disables reuse. Default
    /// [`limits::IDLE_CONNECTIONS_PER_DESTINATION_DEFAULT`]; the whole pool holds at most
    /// [`limits::IDLE_CONNECTIONS_MAX`].
    pub idle_connections_per_destination_max: usize,
    /// Time an idle connection is kept; default [`limits::IDLE_TIMEOUT_MS_DEFAULT`].
    pub idle_timeout: Duration,
    /// The SSRF guard (`KAPSEL_ALLOW_DESTINATIONS`).
    pub destinations: DestinationPolicy,
    /// TLS for https destinations, from [`crate::tls_client_config`].
    pub tls: Arc<rustls::ClientConfig>,
}

impl ClientConfig {
    /// The default configuration with the given TLS settings and no private destination
    /// allowed.
    #[must_use]
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            connect_timeout: Duration::from_millis(limits::CONNECT_TIMEOUT_MS_DEFAULT),
            idle_connections_per_destination_max: limits::IDLE_CONNECTIONS_PER_DESTINATION_DEFAULT,
            idle_timeout: Duration::from_millis(limits::IDLE_TIMEOUT_MS_DEFAULT),
            destinations: DestinationPolicy::default(),
            tls,
        }
    }
}

/// One delivery attempt to send: always a POST.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// Where to send it.
    pub target: Rc<Target>,
    /// Header fields to send (the webhook signature headers, `traceparent`), in order. Names
    /// must be tokens and values visible characters; the fields the client writes itself
    /// (`Host`, `Content-Length`, `Content-Type`, `Connection`, …) are refused here.
    pub headers: Vec<(&'static str, String)>,
    /// The `Content-Type` to send, if any.
    pub content_type: Option<String>,
    /// The body, shared with the event it belongs to.
    pub body: Rc<[u8]>,
    /// Time the whole attempt may take, connect included (the endpoint's `timeout_ms`, default
    /// [`limits::DELIVERY_TIMEOUT_MS_DEFAULT`]); capped at [`limits::DELIVERY_TIMEOUT_MS_MAX`].
    pub timeout: Duration,
}

/// What a destination answered. Every status is an answer, 3xx included (redirects are not
/// followed); deciding what it means for the delivery is the engine's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    /// The status code, 200 to 599 (interim 1xx responses are skipped).
    pub status: u16,
    /// The first `Retry-After` value, as sent.
    pub retry_after: Option<String>,
    /// The first [`limits::RESPONSE_BODY_EXCERPT_BYTES_MAX`] bytes of the body, chunk framing
    /// removed.
    pub body_excerpt: Vec<u8>,
    /// Time from the start of the attempt to the end of the response (or of the part of the
    /// body that was read).
    pub latency: Duration,
}

/// Why a delivery attempt got no response. The message names the destination address or host
/// where one is known; it is meant for the attempt's record and for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The attempt's timeout ran out.
    #[error("no complete response within the delivery timeout")]
    Timeout,
    /// No connection, or it broke: DNS failure, refused, reset, TLS failure, connect timeout,
    /// closed before the response was complete.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The SSRF guard refused every address of the destination.
    #[error("destination refused: {0}")]
    Blocked(String),
    /// The destination's response is malformed or ambiguously framed.
    #[error("malformed response: {0}")]
    Protocol(String),
    /// The request itself cannot be sent: a header field the client owns, or a name or value
    /// that would break the message. A bug upstream; nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl SendError {
    /// The delivery error code: E2001 for a timeout, E2002 (connection failed) for the rest. A
    /// refused destination is E2002 too: the connection was not made.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout => "E2001",
            Self::Connect(_) | Self::Blocked(_) | Self::Protocol(_) | Self::InvalidRequest(_) => "E2002",
        }
    }
}

/// A shard's client: not `Send`, one per shard, sharing the [`Resolver`] with the others.
pub struct Client {
    config: ClientConfig,
    connector: TlsConnector,
    resolver: Resolver,
    pool: RefCell<Pool<Connection>>,
    /// When expired idle connections are next dropped from the whole pool.
    next_sweep: Cell<Instant>,
}

impl Client {
    /// A client with an empty pool.
    #[must_use]
    pub fn new(config: ClientConfig, resolver: Resolver) -> Self {
        let pool =
            Pool::new(config.idle_connections_per_destination_max, limits::IDLE_CONNECTIONS_MAX, config.idle_timeout);
        Self {
            connector: TlsConnector::from(config.tls.clone()),
            config,
            resolver,
            pool: RefCell::new(pool),
            next_sweep: Cell::new(Instant::now()),
        }
    }

    /// Idle connections in the pool, over all destinations.
    #[must_use]
    pub fn idle_connections(&self) -> usize {
        self.pool.borrow().len()
    }

    /// Sends one delivery attempt and reads the response. Must run on a monoio runtime with
    /// its timer enabled.
    ///
    /// # Errors
    ///
    /// A [`SendError`] when no complete response arrived; its [`SendError::code`] is the
    /// attempt's error code.
    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, SendError> {
        let started = Instant::now();
        let request_bytes = encode_request(&request)?;
        let timeout = request.timeout.min(Duration::from_millis(limits::DELIVERY_TIMEOUT_MS_MAX));
        // Dropping the attempt on timeout drops its connection too: a connection whose read or
        // write was cancelled is never reused.
        match monoio::time::timeout(timeout, self.attempt(&request.target, request_bytes, started)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout),
        }
    }

    async fn attempt(
        &self,
        target: &Target,
        mut request_bytes: Vec<u8>,
        started: Instant,
    ) -> Result<OutboundResponse, SendError> {
        let key = PoolKey::of(target);
        self.sweep_idle(started);
        let pooled = self.pool.borrow_mut().take(&key, started);
        if let Some(connection) = pooled {
            match self.exchange(connection, &key, &mut request_bytes, started).await {
                Ok(response) => return Ok(response),
                Err(failure) if failure.nothing_received => {
                    // The server closed the connection while it sat idle (or as it was reused):
                    // not an answer, and no attempt of the destination's. The other idle
                    // connections to it are older, so most likely closed as well.
                    let discarded = self.pool.borrow_mut().discard(&key);
                    tracing::debug!(destination = %target, error = %failure.error, discarded, "pooled connection was closed by the server; reconnecting");
                }
                Err(failure) => return Err(failure.error),
            }
        }
        let connection = self.connect(target).await?;
        self.exchange(connection, &key, &mut request_bytes, started).await.map_err(|failure| failure.error)
    }

    /// One exchange; the connection goes back to the pool if it can be reused.
    async fn exchange(
        &self,
        mut connection: Connection,
        key: &PoolKey,
        request_bytes: &mut Vec<u8>,
        started: Instant,
    ) -> Result<OutboundResponse, ExchangeFailure> {
        let exchanged = connection.exchange(request_bytes).await?;
        let finished = Instant::now();
        if exchanged.reusable {
            // A full pool hands the connection back, and dropping it closes it.
            let _ = self.pool.borrow_mut().put(key.clone(), connection, finished);
        }
        Ok(OutboundResponse {
            status: exchanged.head.status,
            retry_after: exchanged.head.retry_after,
            body_excerpt: exchanged.body_excerpt,
            latency: finished.saturating_duration_since(started),
        })
    }

    /// Drops expired idle connections of every destination, at most once per idle timeout
    /// (and at least once a second): taking a connection only checks its own destination.
    fn sweep_idle(&self, now: Instant) {
        if now < self.next_sweep.get() {
            return;
        }
        self.pool.borrow_mut().sweep(now);
        let interval = self.config.idle_timeout.clamp(Duration::from_millis(1), Duration::from_secs(1));
        self.next_sweep.set(now.checked_add(interval).unwrap_or(now));
    }

    /// Opens a connection to a permitted address of `target`, with TLS for https.
    async fn connect(&self, target: &Target) -> Result<Connection, SendError> {
        let addresses = self.permitted_addresses(target).await?;
        let (tcp, peer) = self.connect_tcp(&addresses).await?;
        // Webhook requests are written whole; Nagle's algorithm could only delay them.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, %peer, "setting TCP_NODELAY failed");
        }
        let stream = match target.scheme {
            Scheme::Http => Stream::Plain(tcp),
            Scheme::Https => Stream::Tls(Box::new(self.handshake(target, tcp, peer).await?)),
        };
        Ok(Connection::new(stream, peer))
    }

    /// The resolved addresses of `target` that the policy permits, in the resolver's order.
    async fn permitted_addresses(&self, target: &Target) -> Result<Vec<SocketAddr>, SendError> {
        let addresses = match target.ip_literal() {
            Some(address) => vec![SocketAddr::new(address, target.port)],
            None => self
                .resolver
                .resolve(&target.host, target.port)
                .await
                .map_err(|error| SendError::Connect(format!("resolving {}: {error}", target.host)))?,
        };
        let policy = &self.config.destinations;
        let (permitted, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addresses.into_iter().partition(|address| policy.permits(address.ip()));
        match (permitted.is_empty(), refused.first()) {
            (false, _) => Ok(permitted),
            (true, Some(refused)) => Err(SendError::Blocked(blocked_message(target, refused.ip(), policy))),
            (true, None) => Err(SendError::Connect(format!("{} has no address", target.host))),
        }
    }

    /// Connects to the first of `addresses` that accepts, trying at most
    /// [`limits::CONNECT_ADDRESSES_TRIED_MAX`] of them.
    async fn connect_tcp(&self, addresses: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), SendError> {
        let mut last_error = String::new();
        for address in addresses.iter().take(limits::CONNECT_ADDRESSES_TRIED_MAX) {
            match monoio::time::timeout(self.config.connect_timeout, TcpStream::connect_addr(*address)).await {
                Ok(Ok(stream)) => return Ok((stream, *address)),
                Ok(Err(error)) => last_error = format!("connecting to {address}: {error}"),
                Err(_) => {
                    let timeout_ms = self.config.connect_timeout.as_millis();
                    last_error = format!("connecting to {address} timed out after {timeout_ms} ms");
                }
            }
        }
        Err(SendError::Connect(last_error))
    }

    async fn handshake(
        &self,
        target: &Target,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<monoio_rustls::ClientTlsStream<TcpStream>, SendError> {
        // An IP literal host becomes an IP server name: no SNI is sent, and the certificate
        // must name the address.
        let server_name = ServerName::try_from(target.host.clone())
            .map_err(|error| SendError::Connect(format!("{} is not a valid TLS server name: {error}", target.host)))?;
        match monoio::time::timeout(self.config.connect_timeout, self.connector.connect(server_name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => {
                // monoio-rustls's own Display is only "io error" or "rustls error"; the cause (a
                // certificate expired, for another name, of an unknown issuer) is inside.
                let cause = std::io::Error::from(error);
                Err(SendError::Connect(format!("TLS handshake with {peer} failed: {cause}")))
            }
            Err(_) => {
                let timeout_ms = self.config.connect_timeout.as_millis();
                Err(SendError::Connect(format!("TLS handshake with {peer} timed out after {timeout_ms} ms")))
            }
        }
    }
}

/// The operator-facing reason a destination was refused.
fn blocked_message(target: &Target, address: IpAddr, policy: &DestinationPolicy) -> String {
    let kind = policy.refusal(address).unwrap_or("a refused address");
    if target.ip_literal().is_some() {
        format!("{address} is {kind}; KAPSEL_ALLOW_DESTINATIONS does not allow it")
    } else {
        format!("{} resolves to {address}, {kind}; KAPSEL_ALLOW_DESTINATIONS does not allow it", target.host)
    }
}

/// The request as bytes: request line, head and body.
fn encode_request(request: &OutboundRequest) -> Result<Vec<u8>, SendError> {
    // One buffer, sized once: the head is a few hundred bytes, and this runs for every delivery.
    let headers_bytes: usize = request.headers.iter().map(|(name, value)| name.len() + value.len() + 4).sum();
    let mut bytes = Vec::with_capacity(HEAD_BYTES_ESTIMATE + headers_bytes + request.body.len());
    bytes.extend_from_slice(b"POST ");
    bytes.extend_from_slice(request.target.path_and_query.as_bytes());
    bytes.extend_from_slice(b" HTTP/1.1\r\n");
    push_field(&mut bytes, "Host", &request.target.authority());
    push_field(&mut bytes, "User-Agent", USER_AGENT);
    if let Some(content_type) = &request.content_type {
        check_value("content-type", content_type)?;
        push_field(&mut bytes, "Content-Type", content_type);
    }
    push_field(&mut bytes, "Content-Length", &request.body.len().to_string());
    for (name, value) in &request.headers {
        check_name(name)?;
        check_value(name, value)?;
        push_field(&mut bytes, name, value);
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&request.body);
    Ok(bytes)
}

/// Bytes of the request line and the fields the client writes itself, roughly; only sizes the
/// buffer.
const HEAD_BYTES_ESTIMATE: usize = 256;

fn push_field(bytes: &mut Vec<u8>, name: &str, value: &str) {
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(b": ");
    bytes.extend_from_slice(value.as_bytes());
    bytes.extend_from_slice(b"\r\n");
}

/// A field name must be a token (RFC 9110 §5.1) and not one the client owns.
fn check_name(name: &str) -> Result<(), SendError> {
    let token = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(SendError::InvalidRequest(format!("{name:?} is not a header field name")));
    }
    if RESERVED_HEADERS.iter().any(|reserved| reserved.eq_ignore_ascii_case(name)) {
        return Err(SendError::InvalidRequest(format!("the client writes the {name} header field itself")));
    }
    Ok(())
}

/// A field value holds visible characters, spaces and tabs (RFC 9110 §5.5): above all no CR or
/// LF, which would let a value start a field of its own.
fn check_value(name: &str, value: &str) -> Result<(), SendError> {
    if value.bytes().all(|byte| byte == b'\t' || byte >= b' ') && !value.bytes().any(|byte| byte == 0x7f) {
        Ok(())
    } else {
        Err(SendError::InvalidRequest(format!("the value of {name} holds a control character")))
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn request(headers: Vec<(&'static str, String)>, content_type: Option<&str>) -> OutboundRequest {
        OutboundRequest {
            target: Rc::new(Target::parse("http://example.com:8080/hooks?a=1").unwrap()),
            headers,
            content_type: content_type.map(str::to_owned),
            body: Rc::from(&b"{\"x\":1}"[..]),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn requests_are_encoded_with_host_length_and_agent() {
        // The destination verifies the signature over exactly these bytes, and routes by Host.
        let bytes = encode_request(&request(
            vec![("webhook-id", "msg_1".to_owned()), ("traceparent", "00-a-b-01".to_owned())],
            Some("application/json"),
        ))
        .unwrap();
        let expected = format!(
            "POST /hooks?a=1 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: Kapsel/{}\r\n\
Content-Type: application/json\r\nContent-Length: 7\r\nwebhook-id: msg_1\r\ntraceparent: 00-a-b-01\r\n\r\n{{\"x\":1}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn header_fields_that_would_break_the_message_are_refused() {
        // A CR LF in a value, or a second Content-Length, would let a payload rewrite the
        // request a destination sees.
        let cases = [
            request(vec![("x-a", "a\r\nHost: evil".to_owned())], None),
            request(vec![("x-a", "a\0b".to_owned())], None),
            request(vec![("bad name", "v".to_owned())], None),
            request(vec![("", "v".to_owned())], None),
            request(vec![("Content-Length", "1".to_owned())], None),
            request(vec![("Transfer-Encoding", "chunked".to_owned())], None),
            request(vec![("HOST", "other".to_owned())], None),
            request(Vec::new(), Some("text/plain\r\nX: y")),
        ];
        for case in cases {
            assert!(matches!(encode_request(&case), Err(SendError::InvalidRequest(_))), "{case:?}");
        }
        assert!(encode_request(&request(vec![("x-a", "tab\tand caf\u{e9}".to_owned())], None)).is_ok());
    }

    #[test]
    fn error_codes_follow_the_contract() {
        // E2001 and E2002 are what operators and the retry schedule see.
        assert_eq!(SendError::Timeout.code(), "E2001");
        for error in [
            SendError::Connect("refused".to_owned()),
            SendError::Blocked("loopback".to_owned()),
            SendError::Protocol("bad".to_owned()),
            SendError::InvalidRequest("bad".to_owned()),
        ] {
            assert_eq!(error.code(), "E2002", "{error:?}");
        }
    }
}
