//! Kapsel's HTTP/1.1 layer: a request parser that distrusts its input, the server that drives
//! it on monoio TCP streams, and the client each shard delivers webhooks with.
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
//! 4. [`write_response`] the answer with the current [`ImfFixdate`] as its `Date` (for a `HEAD`
//!    request, [`write_response_head`] with the length the body would have); keep the connection
//!    only if `keep_alive`.
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
//!
//! # Layout
//!
//! Four folders whose imports run one way, and two leaf modules beside them:
//!
//! ```text
//! server/ ──► proto/ ◄── client/ ──► outbound/
//! ```
//!
//! An arrow points from the importer to what it imports; every folder also imports `limits`.
//!
//! - `proto/`: the pure HTTP/1.1 codec, both directions (request heads, header fields, bodies,
//!   [`ParseError`], response encoding, response heads and bodies). No I/O, no clock; it
//!   imports no other folder.
//! - `server/`: [`serve`] and what it runs on: the connection loop, listener TLS, the
//!   [`Shutdown`] signal and task plumbing. Uses `proto/`.
//! - `client/`: [`Client`] and what it runs on: the connection and its exchange, the keep-alive
//!   pool, client TLS and destination URLs ([`Target`]). Uses `proto/` and `outbound/`, never
//!   `server/`.
//! - `outbound/`: the [`Resolver`] and the [`DestinationPolicy`]. Imports no other folder.
//! - [`limits`], which every folder uses, and `tls_error` ([`TlsError`], shared by the server's
//!   and the client's TLS setup so that neither half imports the other): leaves that import
//!   nothing of the crate.
//!
//! Each folder's `mod.rs` names what the rest of the crate may use of it; its files are private,
//! and what they share among themselves is `pub(super)`, visible in that folder only. Within a
//! folder, files import each other with `super::`; across folders, with `crate::` and only in
//! the directions above.

#![warn(missing_docs)]

mod client;
pub mod limits;
mod outbound;
mod proto;
mod server;
mod tls_error;

pub use client::{
    tls_client_config, Client, ClientConfig, OutboundRequest, OutboundResponse, Scheme, SendError, Target, TargetError,
};
pub use limits::Limits;
pub use outbound::{Cidr, DestinationPolicy, Resolver};
pub use proto::{
    error_body, parse_head, parse_response_head, reason_phrase, write_error_response, write_response,
    write_response_head, ApplicationHeaders, BodyDecoder, BodyFraming, BodyProgress, ChunkedDecoder, HeaderName,
    ImfFixdate, Method, ParseError, Parsed, ParsedResponse, Progress, RequestHead, ResponseBodyReader, ResponseError,
    ResponseFraming, ResponseHead, Version, CONTINUE_100, IMF_FIXDATE_BYTES,
};
pub use server::{bind_reuse_port, load_tls_config, serve, Handler, Request, Response, ServerConfig, Shutdown, Wait};
pub use tls_error::TlsError;

/// The rustls version this crate is built with, for building a [`ServerConfig::tls`] or a
/// [`ClientConfig::tls`] by hand.
pub use rustls;
