//! Kapsel's HTTP/1.1 layer: a request parser that distrusts its input, on monoio TCP streams.
//!
//! This part is pure: no I/O, no clock, no allocation beyond what a request owns. A connection
//! keeps a read buffer and drives it:
//!
//! 1. [`parse_head`] on the buffer: [`Parsed::Partial`] means read more; an `Err` means write
//!    [`write_error_response`] and, when [`ParseError::closes_connection`] says so, close;
//!    [`Parsed::Complete`] gives the [`RequestHead`] and the `head_length` to drop from the
//!    buffer.
//! 2. If the head has `expect_continue` and no body bytes are buffered yet, write
//!    [`CONTINUE_100`].
//! 3. A [`BodyDecoder`] for the head's [`BodyFraming`] takes the bytes that follow until its
//!    [`Progress`] says the body is complete; what it did not consume is the next request.
//! 4. [`write_response`] the answer; keep the connection only if `keep_alive`.
//!
//! Every input size is bounded by [`Limits`] (see [`limits`]), and every error maps to its
//! status and E-code in one place, [`ParseError`].

#![warn(missing_docs)]

mod body;
mod chunked;
mod error;
mod headers;
pub mod limits;
mod request;
mod response;

pub use body::BodyDecoder;
pub use chunked::{ChunkedDecoder, Progress};
pub use error::ParseError;
pub use headers::{ApplicationHeaders, HeaderName};
pub use limits::Limits;
pub use request::{parse_head, BodyFraming, Method, Parsed, RequestHead, Version};
pub use response::{error_body, reason_phrase, write_error_response, write_response, CONTINUE_100};
