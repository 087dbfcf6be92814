//! Kapsel's HTTP/1.1 layer: a request parser that distrusts its input, and the server that
//! drives it on monoio TCP streams.
//!
//! The parser is pure: no I/O, no clock, no allocation beyond what a request owns. A connection
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
//!
//! The server ([`serve`]) is that loop on a shard's monoio runtime: one task per connection,
//! plain TCP or TLS ([`load_tls_config`]), with read deadlines, a connection limit and a
//! graceful [`Shutdown`]. The application implements [`Handler`]: it sees each complete
//! [`Request`] and answers a [`Response`].
//!
//! The client ([`Client`]) is the other direction: each shard's deliveries, as HTTP/1.1 POSTs
//! to a destination [`Target`], over a bounded keep-alive pool, with TLS from
//! [`tls_client_config`]. Names are resolved off the shard by the shared [`Resolver`], and
//! every connection goes only to an address the [`DestinationPolicy`] (the SSRF guard)
//! permits. Responses are read by [`parse_response_head`] and a [`ResponseBodyReader`], as
//! distrustful of a destination as the server is of a client.

#![warn(missing_docs)]

mod body;
mod chunked;
mod client;
mod client_connection;
mod client_tls;
mod connection;
mod destination;
mod error;
mod headers;
pub mod limits;
mod pool;
mod request;
mod resolve;
mod response;
mod response_parse;
mod server;
mod shutdown;
mod target;
mod tasks;
mod tls;

pub use body::BodyDecoder;
pub use chunked::{ChunkedDecoder, Progress};
pub use client::{Client, ClientConfig, OutboundRequest, OutboundResponse, SendError};
pub use client_tls::tls_client_config;
pub use destination::{Cidr, DestinationPolicy};
pub use error::ParseError;
pub use headers::{ApplicationHeaders, HeaderName};
pub use limits::Limits;
pub use request::{parse_head, BodyFraming, Method, Parsed, RequestHead, Version};
pub use resolve::Resolver;
pub use response::{error_body, reason_phrase, write_error_response, write_response, CONTINUE_100};
pub use response_parse::{
    parse_response_head, BodyProgress, ParsedResponse, ResponseBodyReader, ResponseError, ResponseFraming, ResponseHead,
};
pub use server::{bind_reuse_port, serve, Handler, Request, Response, ServerConfig};
pub use shutdown::{Shutdown, Wait};
pub use target::{Scheme, Target, TargetError};
pub use tls::{load_tls_config, TlsError};

/// The rustls version this crate is built with, for building a [`ServerConfig::tls`] or a
/// [`ClientConfig::tls`] by hand.
pub use rustls;
