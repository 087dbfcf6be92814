//! Named limits of the HTTP/1.1 parser. Every byte the parser or the chunked decoder looks at
//! is bounded by one of these, so a hostile peer costs at most a known amount of memory and CPU
//! per connection. The runtime [`Limits`] starts from these defaults; only the payload limit is
//! meant to be configured (`KAPSEL_MAX_PAYLOAD_BYTES`).

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
