//! One decoder for every body framing, so the connection loop has a single path: feed it what
//! follows the head, append the payload, stop when it says the body is complete.

use super::chunked::{ChunkedDecoder, Progress};
use super::error::ParseError;
use super::request::BodyFraming;
use crate::limits::Limits;

/// Decodes the body of one request, whatever its [`BodyFraming`].
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    /// A body of known length (zero for [`BodyFraming::Empty`]).
    Length {
        /// Bytes still to come.
        remaining_bytes: u64,
    },
    /// A chunked body.
    Chunked(ChunkedDecoder),
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing`. A `Length` framing from [`crate::parse_head`]
    /// is already within `limits.payload_bytes_max`.
    #[must_use]
    pub fn new(framing: BodyFraming, limits: &Limits) -> Self {
        match framing {
            BodyFraming::Empty => Self::Length { remaining_bytes: 0 },
            BodyFraming::Length(length) => Self::Length { remaining_bytes: length },
            BodyFraming::Chunked => Self::Chunked(ChunkedDecoder::new(limits)),
        }
    }

    /// Whether the whole body has been decoded.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        match self {
            Self::Length { remaining_bytes } => *remaining_bytes == 0,
            Self::Chunked(decoder) => decoder.is_complete(),
        }
    }

    /// Decodes as much of `input` as belongs to the body, appending the payload to `out`.
    ///
    /// No capacity is reserved up front from the announced length: a client that announces
    /// 10 MiB and sends nothing must not cost 10 MiB.
    ///
    /// # Errors
    ///
    /// Only a chunked body fails, as [`ChunkedDecoder::decode`] does.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, ParseError> {
        match self {
            Self::Length { remaining_bytes } => {
                let available = u64::try_from(input.len()).unwrap_or(u64::MAX);
                let taken = (*remaining_bytes).min(available);
                // `taken` is at most `input.len()`, so it fits in usize.
                let taken_bytes = usize::try_from(taken).unwrap_or(input.len()).min(input.len());
                out.extend_from_slice(input.get(..taken_bytes).unwrap_or_default());
                *remaining_bytes -= taken;
                Ok(Progress { consumed_bytes: taken_bytes, complete: *remaining_bytes == 0 })
            }
            Self::Chunked(decoder) => decoder.decode(input, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_body_stops_at_its_end() {
        // A pipelined request after a fixed-length body must stay in the caller's buffer.
        let mut decoder = BodyDecoder::new(BodyFraming::Length(5), &Limits::default());
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"hel", &mut out), Ok(Progress { consumed_bytes: 3, complete: false }));
        assert_eq!(decoder.decode(b"loGET /", &mut out), Ok(Progress { consumed_bytes: 2, complete: true }));
        assert_eq!(out, b"hello");
        assert!(decoder.is_complete());
    }

    #[test]
    fn empty_body_is_complete_at_once() {
        // A GET must be answerable without waiting for bytes that will never come.
        let mut decoder = BodyDecoder::new(BodyFraming::Empty, &Limits::default());
        let mut out = Vec::new();
        assert!(decoder.is_complete());
        assert_eq!(decoder.decode(b"GET /", &mut out), Ok(Progress { consumed_bytes: 0, complete: true }));
        assert!(out.is_empty());
    }
}
