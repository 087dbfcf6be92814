//! The HTTP/1.1 codec, both directions: request heads ([`parse_head`]) and their header fields,
//! bodies ([`BodyDecoder`], [`ChunkedDecoder`]), the one request error ([`ParseError`]),
//! response encoding ([`write_response`], with the `Date` value [`ImfFixdate`]) and, for the client, response heads and bodies
//! ([`parse_response_head`], [`ResponseBodyReader`]).
//!
//! Everything here is pure: bytes in, values out, no I/O, no clock, every size bounded by
//! [`Limits`](crate::Limits). It imports nothing of `server/`, `client/` or `outbound/`; they
//! drive it.

mod body;
mod chunked;
mod date;
mod error;
mod headers;
mod request;
mod response;
mod response_parse;

pub use body::BodyDecoder;
pub use chunked::{ChunkedDecoder, Progress};
pub use date::{ImfFixdate, IMF_FIXDATE_BYTES};
pub use error::ParseError;
pub use headers::{ApplicationHeaders, HeaderName};
pub use request::{parse_head, BodyFraming, Method, Parsed, RequestHead, Version};
pub use response::{
    error_body, reason_phrase, write_error_response, write_response, write_response_head, CONTINUE_100,
};
pub use response_parse::{
    parse_response_head, BodyProgress, ParsedResponse, ResponseBodyReader, ResponseError, ResponseFraming, ResponseHead,
};
