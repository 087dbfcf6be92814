//! The one error type of request parsing and body decoding, and its mapping to an HTTP status,
//! a Kapsel error code and a connection decision. That mapping lives here and nowhere else.

/// Everything that can be wrong with the bytes a client sent. The `Display` text is the
/// client-facing message of the error body, so it names the rule broken but echoes none of the
/// client's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The request line is not `method SP request-target SP HTTP-version`.
    #[error("malformed request line")]
    InvalidRequestLine,
    /// The version is neither `HTTP/1.0` nor `HTTP/1.1` (an HTTP/2 preface lands here).
    #[error("unsupported HTTP version: only HTTP/1.0 and HTTP/1.1 are served")]
    UnsupportedVersion,
    /// A well-formed method token that this server does not implement.
    #[error("unsupported method")]
    UnsupportedMethod,
    /// The request target is not an origin-form (or absolute-form) path of valid UTF-8.
    #[error("invalid request target: {reason}")]
    InvalidTarget {
        /// Which rule the target breaks.
        reason: &'static str,
    },
    /// A header field line with a bad name, a bad value byte, or obsolete line folding.
    #[error("malformed header field")]
    InvalidHeader,
    /// A CR not followed by LF where a line ends.
    #[error("invalid line ending: CR must be followed by LF")]
    InvalidLineEnding,
    /// The request line is longer than the limit.
    #[error("request line is longer than {limit_bytes} bytes")]
    RequestLineTooLong {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
    /// The request head is larger than the limit.
    #[error("request head is larger than {limit_bytes} bytes")]
    HeadTooLarge {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
    /// The request head has more header fields than the limit.
    #[error("request has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// An HTTP/1.1 request without a Host header field (RFC 9112 §3.2).
    #[error("missing Host header field")]
    MissingHost,
    /// A header field that must appear at most once appears more than once.
    #[error("header field {name} appears more than once")]
    DuplicateHeader {
        /// The field's lowercase name.
        name: &'static str,
    },
    /// A Content-Length value that is not a list of decimal digits, or does not fit in 64 bits.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// More than one Content-Length value: a list in one field line (even of identical values,
    /// `1000,1000`) or the field repeated on several lines.
    #[error("Content-Length must be a single value on a single field line")]
    MultipleContentLengths,
    /// Both Content-Length and Transfer-Encoding: ambiguous framing, a smuggling vector.
    #[error("request has both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// A Transfer-Encoding other than a single, final `chunked`.
    #[error("invalid Transfer-Encoding: {reason}")]
    InvalidTransferEncoding {
        /// Which rule the field breaks.
        reason: &'static str,
    },
    /// An Expect value other than `100-continue`.
    #[error("unsupported expectation: only 100-continue is supported")]
    ExpectationFailed,
    /// The body is, or announces itself as, larger than the payload limit.
    #[error("payload is larger than {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The limit that was exceeded.
        limit_bytes: u64,
    },
    /// A chunk size that is not hexadecimal digits.
    #[error("invalid chunk size")]
    InvalidChunkSize,
    /// A chunk size that does not fit in 64 bits.
    #[error("chunk size overflows")]
    ChunkSizeOverflow,
    /// A chunk-size line (with its extensions) longer than the limit.
    #[error("chunk size line is longer than {limit_bytes} bytes")]
    ChunkLineTooLong {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
    /// Chunk extensions over the whole body add up to more than the limit.
    #[error("chunk extensions add up to more than {limit_bytes} bytes")]
    ChunkExtensionsTooLarge {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
    /// A chunked body whose framing is broken (a missing CRLF, a bare LF, a control byte).
    #[error("malformed chunked body: {reason}")]
    InvalidChunkFraming {
        /// Which rule the framing breaks.
        reason: &'static str,
    },
    /// The trailer section is larger than the limit.
    #[error("trailer section is larger than {limit_bytes} bytes")]
    TrailerTooLarge {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
}

impl ParseError {
    /// The HTTP status code to answer with.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::PayloadTooLarge { .. } => 413,
            // RFC 9112 §3: a server that receives a request-target longer than it wishes to
            // parse MUST respond with 414 (URI Too Long).
            Self::RequestLineTooLong { .. } => 414,
            // RFC 6585 §5: 431 when header fields are too large, one or all of them. Trailers
            // are header fields that arrive late.
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } | Self::TrailerTooLarge { .. } => 431,
            Self::UnsupportedMethod => 405,
            // RFC 9110 §10.1.1: a server that receives an Expect value other than
            // 100-continue MAY respond with 417 (Expectation Failed).
            Self::ExpectationFailed => 417,
            Self::InvalidRequestLine
            | Self::UnsupportedVersion
            | Self::InvalidTarget { .. }
            | Self::InvalidHeader
            | Self::InvalidLineEnding
            | Self::MissingHost
            | Self::DuplicateHeader { .. }
            | Self::InvalidContentLength
            | Self::MultipleContentLengths
            | Self::ContentLengthWithTransferEncoding
            | Self::InvalidTransferEncoding { .. }
            | Self::InvalidChunkSize
            | Self::ChunkSizeOverflow
            | Self::ChunkLineTooLong { .. }
            | Self::ChunkExtensionsTooLarge { .. }
            | Self::InvalidChunkFraming { .. } => 400,
        }
    }

    /// The Kapsel error code of the error body: E1002 for a payload too large, E1005 (invalid
    /// request) for everything else, whatever its status.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "E1002",
            _ => "E1005",
        }
    }

    /// The client-facing message of the error body (the `Display` text).
    #[must_use]
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Whether the connection must be closed after the error response. True whenever the
    /// framing is lost, which today is every case: a head-level error stops parsing before the
    /// end of the request is known, a rejected head (413, 417, 405) announced a body that will
    /// not be read, and a body-level error leaves the rest of the body unread. RFC 9112 §6.3
    /// requires closing after an invalid Content-Length or a Transfer-Encoding without a final
    /// chunked, and after answering a request with both Content-Length and Transfer-Encoding.
    /// Every variant is listed so that a new one has to decide.
    #[must_use]
    pub fn closes_connection(&self) -> bool {
        match self {
            Self::InvalidRequestLine
            | Self::UnsupportedVersion
            | Self::UnsupportedMethod
            | Self::InvalidTarget { .. }
            | Self::InvalidHeader
            | Self::InvalidLineEnding
            | Self::RequestLineTooLong { .. }
            | Self::HeadTooLarge { .. }
            | Self::TooManyHeaders { .. }
            | Self::MissingHost
            | Self::DuplicateHeader { .. }
            | Self::InvalidContentLength
            | Self::MultipleContentLengths
            | Self::ContentLengthWithTransferEncoding
            | Self::InvalidTransferEncoding { .. }
            | Self::ExpectationFailed
            | Self::PayloadTooLarge { .. }
            | Self::InvalidChunkSize
            | Self::ChunkSizeOverflow
            | Self::ChunkLineTooLong { .. }
            | Self::ChunkExtensionsTooLarge { .. }
            | Self::InvalidChunkFraming { .. }
            | Self::TrailerTooLarge { .. } => true,
        }
    }
}
