//! Named limits of the HTTP/1.1 parser and server. Every byte the parser or the chunked decoder
//! looks at is bounded by one of these, and so is every buffer, wait and connection of the
//! server, so a hostile peer costs at most a known amount of memory and CPU per connection and
//! a known number of connections per shard. The runtime [`Limits`] starts from these defaults;
//! only the payload limit is meant to be configured (`KAPSEL_MAX_PAYLOAD_BYTES`), and the
//! server's timeouts and connection limit through `ServerConfig`.
//!
//! The outbound client (deliveries) has its own section below: what a destination's response,
//! the connection pool, the resolver and a destination URL may cost.

/// Longest request line (method, target, version and its line ending) accepted. RFC 9112 §3:
/// "It is RECOMMENDED that all HTTP senders and recipients support, at a minimum, request-line
/// lengths of 8000 octets." Our paths are short ids, so this is generous; a longer line is
/// refused with 414 before the rest of it arrives.
pub const REQUEST_LINE_BYTES_MAX: usize = 8 * 1024;

/// Largest request head (request line, header fields and the empty line that ends them). A
/// connection's read buffer must hold a whole head before it can be parsed, so this bounds the
/// memory an idle or slow (slowloris) client can pin, and the cost of re-parsing a partial head
/// after every read. A larger head is refused with 431 as soon as this many bytes have arrived.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// Most header fields in one request head. The parser keeps them in a fixed array on the stack
/// (`httparse::Header` is 32 bytes, so 2 KiB per parse) instead of allocating per field.
pub const HEADER_COUNT_MAX: usize = 64;

/// Longest chunk-size line (hex size, extensions, CRLF) in a chunked body. The decoder stores
/// nothing of the line, so this bounds CPU spent on framing rather than memory; extensions are
/// ignored anyway (RFC 9112 §7.1.1).
pub const CHUNK_SIZE_LINE_BYTES_MAX: usize = 4 * 1024;

/// Most chunk-extension bytes over a whole chunked body. Without it a peer could send one data
/// byte per maximal size line and make us scan thousands of framing bytes per payload byte
/// (hyper bounds extensions the same way).
pub const CHUNK_EXTENSION_BYTES_MAX: usize = 16 * 1024;

/// Largest trailer section (every trailer field line and the final CRLF). Trailers are skipped,
/// not stored, so this too bounds CPU and the time a request can be kept open, not memory.
pub const TRAILER_BYTES_MAX: usize = 8 * 1024;

/// Default largest request body, after chunked decoding (`KAPSEL_MAX_PAYLOAD_BYTES`). A body is
/// buffered whole before it is appended to the write-ahead log, so this is the memory one
/// in-flight request may hold; a larger one is refused with 413 E1002.
pub const PAYLOAD_BYTES_DEFAULT: u64 = 10 * 1024 * 1024;

// The request line is part of the head, so its limit must leave room for header fields.
const _: () = assert!(REQUEST_LINE_BYTES_MAX < HEADER_BYTES_MAX);
// RFC 9112 §3 recommends accepting request lines of at least 8000 octets.
const _: () = assert!(REQUEST_LINE_BYTES_MAX >= 8000);
// The smallest header line is `a:` CRLF (4 bytes): the count limit must be reachable within the
// byte limit, or it would be dead code.
const _: () = assert!(HEADER_COUNT_MAX * 4 <= HEADER_BYTES_MAX);
// Any u64 chunk size (16 hex digits) plus CRLF must fit on a size line.
const _: () = assert!(CHUNK_SIZE_LINE_BYTES_MAX >= 16 + 2);
// One size line's extensions must fit in the whole body's extension budget.
const _: () = assert!(CHUNK_SIZE_LINE_BYTES_MAX <= CHUNK_EXTENSION_BYTES_MAX);
// Trailers are header fields sent late; they get no more room than the head.
const _: () = assert!(TRAILER_BYTES_MAX <= HEADER_BYTES_MAX);
// The body is collected into a `Vec<u8>`, so its limit must be addressable.
const _: () = assert!(PAYLOAD_BYTES_DEFAULT <= usize::MAX as u64);

// The server: timeouts, connections and buffers. The three read timeouts are defaults of
// `ServerConfig`; the rest are fixed, because they bound what the server itself spends.

/// Default time a client has to send a whole request head, counted from its first byte
/// (`ServerConfig::header_read_timeout`). It is what cuts off a slowloris client, which keeps a
/// connection and its read buffer by trickling header bytes; legitimate heads arrive in one
/// round trip. On a new connection, the wait for that first byte is bounded by it too.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Default time a client has to send a whole request body once its head is parsed
/// (`ServerConfig::body_read_timeout`). Long enough for a maximal payload over a slow link
/// (10 MiB at 3 Mbit/s), short enough that a stalled upload releases its buffer.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Default time an idle keep-alive connection is kept waiting for its next request
/// (`ServerConfig::keep_alive_timeout`). An idle connection costs a task, a socket and a read
/// buffer of [`READ_BUFFER_BYTES_INITIAL`].
pub const KEEP_ALIVE_TIMEOUT_MS_DEFAULT: u64 = 60_000;

/// Default number of open connections one shard serves at once (`ServerConfig::connections_max`).
/// Past it, a new connection is answered 503 E3002 and closed.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// Capacity of a connection's read buffer when it is created. Most webhooks, head and body,
/// fit in it, and it is all an idle connection holds.
pub const READ_BUFFER_BYTES_INITIAL: usize = 4 * 1024;

/// Bytes by which a connection's read buffer grows when it runs short of room for a read. The
/// buffer holds at most an incomplete head plus one read, so it never exceeds
/// [`HEADER_BYTES_MAX`] + this; a body is decoded out of it as it arrives.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Write buffer capacity a connection keeps between responses. A larger response (an admin
/// listing) grows the buffer for its own write; the buffer is then released rather than held
/// for the life of the connection.
pub const WRITE_BUFFER_BYTES_KEPT_MAX: usize = 64 * 1024;

/// Connections the kernel queues for accepting on one shard's listener (the `listen` backlog;
/// Linux caps it at `net.core.somaxconn`). Past it, new connections wait in SYN retries, which
/// is the backpressure of last resort when the accept loop falls behind.
pub const ACCEPT_BACKLOG_MAX: i32 = 1024;

/// Time a response, or an interim `100 Continue`, may take to be written. A client that stops
/// reading would otherwise hold its connection (and the slot counted against
/// `connections_max`) forever.
pub const RESPONSE_WRITE_TIMEOUT_MS: u64 = 10_000;

/// Time a connection lingers after its last response, reading and discarding what the client
/// still sends, before it is closed. Closing a socket with unread bytes makes the kernel send a
/// reset, which can destroy the response before the client reads it.
pub const LINGER_TIMEOUT_MS: u64 = 1_000;

/// Most bytes discarded while lingering: past it the client is sending a body we refused, and
/// is not listening anyway.
pub const LINGER_BYTES_MAX: usize = 256 * 1024;

/// Most connections being refused at once (503 while at `connections_max`). Each costs a task
/// for at most [`RESPONSE_WRITE_TIMEOUT_MS`] + [`LINGER_TIMEOUT_MS`]; past this bound a new
/// connection is closed without an answer, so a flood cannot grow the refusals themselves.
pub const REJECTIONS_IN_FLIGHT_MAX: usize = 64;

/// Time a shutting-down server waits for its connections to finish their in-flight requests
/// before it drops them. The contract stops the whole process within 10 s of SIGTERM (a
/// watchdog in the binary exits at 8 s), so the drain leaves room for the final flush.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 6_000;

/// Pause after a failed accept (typically EMFILE, out of file descriptors) before the next one,
/// so that the accept loop does not spin while nothing can be accepted.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Longest timeout the server arms, whatever the configuration says; it keeps deadline
/// arithmetic far from overflow. A day is longer than any sensible read timeout.
pub const TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// Worst-case memory of the read buffers of one shard at [`CONNECTIONS_MAX_DEFAULT`]: every
/// connection holding an incomplete maximal head plus one read.
pub const READ_BUFFERS_BYTES_MAX: usize = CONNECTIONS_MAX_DEFAULT * (HEADER_BYTES_MAX + READ_CHUNK_BYTES);

// A connection starts small and grows in chunks; starting larger than a chunk would be waste.
const _: () = assert!(READ_BUFFER_BYTES_INITIAL <= READ_CHUNK_BYTES);
// A connection keeps at least room for a typical response between requests.
const _: () = assert!(READ_BUFFER_BYTES_INITIAL <= WRITE_BUFFER_BYTES_KEPT_MAX);
// One read during lingering must be allowed to complete.
const _: () = assert!(READ_CHUNK_BYTES <= LINGER_BYTES_MAX);
// A response written to a client that reads at a sane pace is lingered within the drain (a
// client too slow for RESPONSE_WRITE_TIMEOUT_MS is cut at shutdown: SIGTERM must end the process
// within 10 s).
const _: () = assert!(LINGER_TIMEOUT_MS < SHUTDOWN_DRAIN_TIMEOUT_MS);
// Refusing connections must stay cheaper than serving them.
const _: () = assert!(REJECTIONS_IN_FLIGHT_MAX <= CONNECTIONS_MAX_DEFAULT);
// The default timeouts must be armable as configured.
const _: () = assert!(HEADER_READ_TIMEOUT_MS_DEFAULT <= TIMEOUT_MS_MAX);
const _: () = assert!(BODY_READ_TIMEOUT_MS_DEFAULT <= TIMEOUT_MS_MAX);
const _: () = assert!(KEEP_ALIVE_TIMEOUT_MS_DEFAULT <= TIMEOUT_MS_MAX);
// A client that has started a request gets no more time for its head than an idle
// connection gets for nothing at all.
const _: () = assert!(HEADER_READ_TIMEOUT_MS_DEFAULT <= KEEP_ALIVE_TIMEOUT_MS_DEFAULT);
// Read buffers at the default connection limit stay within half a GiB per shard.
const _: () = assert!(READ_BUFFERS_BYTES_MAX <= 512 * 1024 * 1024);

// The client: what one delivery attempt, the connection pool and the resolver may hold.

/// Default time to establish a connection to a destination: the TCP handshake and, for https,
/// the TLS handshake (`ClientConfig::connect_timeout`). A destination that drops SYNs would
/// otherwise take the kernel's connect timeout (about two minutes) from the delivery timeout.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Default time one delivery attempt may take from connect to the end of the response body:
/// an endpoint's `timeout_ms` when it sets none. Past it the attempt fails with E2001.
pub const DELIVERY_TIMEOUT_MS_DEFAULT: u64 = 15_000;

/// Longest delivery timeout the client arms, whatever an endpoint asks for; it keeps deadline
/// arithmetic far from overflow, like [`TIMEOUT_MS_MAX`] does for the server.
pub const DELIVERY_TIMEOUT_MS_MAX: u64 = 5 * 60 * 1000;

/// Largest response head (status line and header fields) read from a destination. The head is
/// buffered whole before it is parsed, so this is the memory a destination can make an attempt
/// hold; a larger head fails the attempt (E2002) as soon as this many bytes have arrived.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Most header fields in one response head, kept in a fixed array on the stack (3.2 KiB per
/// parse). Responses carry more fields than our requests (CDN and security headers, cookies),
/// so this is hyper's default rather than [`HEADER_COUNT_MAX`].
pub const RESPONSE_HEADER_COUNT_MAX: usize = 100;

/// Interim (1xx) responses skipped before the final one. We never ask for them, but RFC 9110
/// §15.2 requires a client to accept them (`103 Early Hints`); a destination that sends an
/// endless stream of them is cut off here.
pub const INTERIM_RESPONSES_MAX: usize = 8;

/// Bytes of a response body kept with the attempt, for operators to see why a destination
/// refused a delivery. The rest of the body is read and discarded.
pub const RESPONSE_BODY_EXCERPT_BYTES_MAX: usize = 1024;

/// Most response body bytes (as they arrive on the wire, chunk framing included) read at full
/// speed, and the most after which a connection is still reused. Past it the rest of the body
/// is still read, since only a complete response is an answer, but slowly (see
/// [`RESPONSE_BODY_DRAIN_PAUSE_MS`]), and the connection is closed at its end: a destination
/// that streams forever ends at the attempt's timeout (E2001) having cost a few reads a second.
pub const RESPONSE_BODY_BYTES_MAX: u64 = 1024 * 1024;

/// Pause before each read of a response body past [`RESPONSE_BODY_BYTES_MAX`]. One read takes
/// at most the read buffer (about [`READ_CHUNK_BYTES`]), so such a body is read at about
/// 400 KB/s per attempt: a 2 MiB answer (rare from a webhook receiver) still completes in about
/// three seconds, while an endless one costs the shard twenty small reads a second, a few MB
/// over a default timeout, instead of a core (a read that is always ready never yields on the
/// epoll driver), and its sender waits on TCP flow control. (At 10 ms, about 2 MB/s, an
/// endless destination with its 16 attempts in flight would take up to 32 MB/s off its shard.)
pub const RESPONSE_BODY_DRAIN_PAUSE_MS: u64 = 50;

/// Default idle connections kept per destination (`ClientConfig::idle_connections_per_destination_max`):
/// enough for the concurrent deliveries of several endpoints (16 in flight each by default)
/// sharing one destination to reuse their connections; fewer made a shard close and reopen
/// hundreds of connections a second under load (measured by the delivery benchmark).
pub const IDLE_CONNECTIONS_PER_DESTINATION_DEFAULT: usize = 64;

/// Most idle connections one shard's client keeps over all destinations. Each costs a socket
/// and a read buffer of [`READ_BUFFER_BYTES_INITIAL`]; past it a finished connection is closed
/// rather than pooled.
pub const IDLE_CONNECTIONS_MAX: usize = 1024;

/// Default time an idle pooled connection is kept (`ClientConfig::idle_timeout`). Servers close
/// idle connections on their own schedule (Node.js after 5 s, nginx after 75 s); reusing one
/// they just closed costs a retry, so old connections are not worth keeping.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Most resolved addresses of one destination that a delivery attempt tries to connect to, in
/// the resolver's order, each within the connect timeout.
pub const CONNECT_ADDRESSES_TRIED_MAX: usize = 3;

/// Longest destination URL accepted. The path and query become our request line, which must fit
/// a server's request-line limit (ours is [`REQUEST_LINE_BYTES_MAX`]).
pub const DESTINATION_URL_BYTES_MAX: usize = 4 * 1024;

/// Longest host name (RFC 1035 §2.3.4: 255 octets on the wire, so 253 characters as text).
pub const HOST_NAME_BYTES_MAX: usize = 253;

/// Longest label of a host name (RFC 1035 §2.3.4).
pub const HOST_LABEL_BYTES_MAX: usize = 63;

/// Most CIDR ranges in `KAPSEL_ALLOW_DESTINATIONS`. Every connection checks its address
/// against each of them.
pub const ALLOW_LIST_ENTRIES_MAX: usize = 256;

/// Most resolver threads. Lookups through the system resolver block their thread for up to the
/// resolver's own timeout (5 s per try by default), so a few threads serve many shards.
pub const RESOLVER_THREADS_MAX: usize = 16;

/// Names waiting for a resolver thread. Lookups of the same name share one entry, so this
/// bounds distinct names in flight; past it a lookup fails at once (E2002) instead of queueing.
pub const RESOLVER_QUEUE_MAX: usize = 1024;

/// Attempts waiting for one name's lookup. They are bounded by the deliveries in flight
/// anyway; this bounds the waiter list of one hot name explicitly.
pub const RESOLVER_WAITERS_PER_NAME_MAX: usize = 4096;

/// Time a successful lookup is reused. The system resolver reports no TTL, so this is a fixed,
/// short one: a destination that moves is followed within a minute.
pub const RESOLVER_CACHE_TTL_MS: u64 = 60_000;

/// Time a failed lookup is remembered, so that a burst of deliveries to a dead name costs one
/// lookup, while a name that comes back is seen again soon.
pub const RESOLVER_NEGATIVE_TTL_MS: u64 = 5_000;

/// Names (host and port) kept in the resolver cache. Past it, expired entries are dropped and
/// then the entry closest to expiry.
pub const RESOLVER_CACHE_ENTRIES_MAX: usize = 4096;

/// Addresses kept per resolved name; a name with more is cut to the first ones.
pub const RESOLVED_ADDRESSES_MAX: usize = 16;

// The excerpt is a prefix of what is read.
const _: () = assert!(RESPONSE_BODY_EXCERPT_BYTES_MAX as u64 <= RESPONSE_BODY_BYTES_MAX);
// A slow drain must still make progress well within the shortest delivery timeout worth having.
const _: () = assert!(RESPONSE_BODY_DRAIN_PAUSE_MS * 10 <= 1_000);
// Connecting is part of the attempt and must leave it time to send and read.
const _: () = assert!(CONNECT_TIMEOUT_MS_DEFAULT < DELIVERY_TIMEOUT_MS_DEFAULT);
const _: () = assert!(DELIVERY_TIMEOUT_MS_DEFAULT <= DELIVERY_TIMEOUT_MS_MAX);
const _: () = assert!(DELIVERY_TIMEOUT_MS_MAX <= TIMEOUT_MS_MAX);
// The smallest header line is `a:` CRLF (4 bytes): the count limit must be reachable.
const _: () = assert!(RESPONSE_HEADER_COUNT_MAX * 4 <= RESPONSE_HEAD_BYTES_MAX);
// The head is read into a buffer that grows a chunk at a time.
const _: () = assert!(READ_CHUNK_BYTES <= RESPONSE_HEAD_BYTES_MAX);
// A full pool per destination fits in the shard's pool.
const _: () = assert!(IDLE_CONNECTIONS_PER_DESTINATION_DEFAULT <= IDLE_CONNECTIONS_MAX);
// Our request line is `POST ` + path and query + ` HTTP/1.1` CRLF: it must fit our own server.
const _: () = assert!(DESTINATION_URL_BYTES_MAX + 16 <= REQUEST_LINE_BYTES_MAX);
// A host name is part of the URL.
const _: () = assert!(HOST_NAME_BYTES_MAX < DESTINATION_URL_BYTES_MAX);
const _: () = assert!(HOST_LABEL_BYTES_MAX < HOST_NAME_BYTES_MAX);
// A failure is retried sooner than a success is refreshed.
const _: () = assert!(RESOLVER_NEGATIVE_TTL_MS <= RESOLVER_CACHE_TTL_MS);
// Every queued name can be cached once resolved.
const _: () = assert!(RESOLVER_QUEUE_MAX <= RESOLVER_CACHE_ENTRIES_MAX);
// Trying an address beyond those kept is impossible.
const _: () = assert!(CONNECT_ADDRESSES_TRIED_MAX <= RESOLVED_ADDRESSES_MAX);

/// The limits one server applies, copied into each connection. [`Limits::default`] uses the
/// constants of this module; the binary overrides `payload_bytes_max` from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`REQUEST_LINE_BYTES_MAX`].
    pub request_line_bytes_max: usize,
    /// See [`HEADER_BYTES_MAX`].
    pub header_bytes_max: usize,
    /// See [`HEADER_COUNT_MAX`]. Values above that constant act as it: the header array is
    /// sized at compile time.
    pub header_count_max: usize,
    /// See [`CHUNK_SIZE_LINE_BYTES_MAX`].
    pub chunk_size_line_bytes_max: usize,
    /// See [`CHUNK_EXTENSION_BYTES_MAX`].
    pub chunk_extension_bytes_max: usize,
    /// See [`TRAILER_BYTES_MAX`].
    pub trailer_bytes_max: usize,
    /// Largest decoded request body; see [`PAYLOAD_BYTES_DEFAULT`].
    pub payload_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_line_bytes_max: REQUEST_LINE_BYTES_MAX,
            header_bytes_max: HEADER_BYTES_MAX,
            header_count_max: HEADER_COUNT_MAX,
            chunk_size_line_bytes_max: CHUNK_SIZE_LINE_BYTES_MAX,
            chunk_extension_bytes_max: CHUNK_EXTENSION_BYTES_MAX,
            trailer_bytes_max: TRAILER_BYTES_MAX,
            payload_bytes_max: PAYLOAD_BYTES_DEFAULT,
        }
    }
}

impl Limits {
    /// The default limits with another payload limit (`KAPSEL_MAX_PAYLOAD_BYTES`).
    #[must_use]
    pub fn with_payload_bytes_max(self, payload_bytes_max: u64) -> Self {
        Self { payload_bytes_max, ..self }
    }
}
