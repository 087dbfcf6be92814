//! An incremental decoder of the chunked transfer coding (RFC 9112 §7.1):
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! It is fed whatever slices the socket delivers, keeps no input of its own (only a few counters
//! of state), stops exactly at the end of the body so pipelined bytes stay with the caller, and
//! bounds every part of the framing by a limit. Line endings must be CRLF: the RFC 9112 §2.2
//! leniency towards a bare LF covers the start line and fields, and differing readings of
//! chunk framing are a known request smuggling vector.

use super::error::ParseError;
use crate::limits::Limits;

/// What one call to a body decoder did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input taken; the caller drops them from its buffer. Less than the input
    /// only when the body is complete (the rest belongs to the next request).
    pub consumed_bytes: usize,
    /// Whether the whole body, trailers included, has been decoded.
    pub complete: bool,
}

/// Where the decoder is in the chunked grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line: a hex digit must come.
    SizeStart,
    /// Inside the hex digits of a chunk size.
    Size { size: u64 },
    /// After the digits, in whitespace before `;` or CR (hyper accepts it too).
    SizeWhitespace { size: u64 },
    /// Inside chunk extensions, which are skipped.
    Extension { size: u64 },
    /// After the CR of a chunk-size line.
    SizeLineFeed { size: u64 },
    /// Inside chunk data.
    Data { remaining_bytes: u64 },
    /// After chunk data: CR must come.
    DataCarriageReturn,
    /// After chunk data and CR: LF must come.
    DataLineFeed,
    /// At the start of a trailer field line or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line, which is skipped.
    TrailerLine,
    /// After the CR of a trailer field line.
    TrailerLineFeed,
    /// After the CR of the final empty line.
    EndLineFeed,
    /// The body is complete.
    Done,
    /// An error happened; it is returned again on every later call.
    Failed(ParseError),
}

/// Decodes one chunked body, fed in arbitrary slices. Never panics and never allocates beyond
/// the decoded payload, which is bounded by `payload_bytes_max`.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    limits: Limits,
    decoded_bytes: u64,
    size_line_bytes: usize,
    extension_bytes: usize,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body, bounded by `limits`.
    #[must_use]
    pub fn new(limits: &Limits) -> Self {
        Self {
            state: State::SizeStart,
            limits: *limits,
            decoded_bytes: 0,
            size_line_bytes: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the whole body has been decoded.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes decoded so far.
    #[must_use]
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded_bytes
    }

    /// Decodes as much of `input` as belongs to the body, appending the payload to `out`.
    ///
    /// Returns how many bytes were consumed and whether the body is complete. After an error
    /// the decoder is spent: every later call returns the same error, and the connection must
    /// be closed (the framing is lost).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] for broken framing (400), oversized framing parts (400, or 431 for
    /// trailers) and a payload over the limit (413).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, ParseError> {
        let mut position = 0;
        while let Some(rest) = input.get(position..) {
            let Some(&byte) = rest.first() else {
                break;
            };
            let step = match self.state {
                State::Done => break,
                State::Data { remaining_bytes } => Ok(self.copy_data(remaining_bytes, rest, out)),
                _ => self.step(byte).map(|()| 1),
            };
            match step {
                Ok(taken) => position += taken,
                Err(error) => {
                    self.state = State::Failed(error.clone());
                    return Err(error);
                }
            }
        }
        if let State::Failed(error) = &self.state {
            return Err(error.clone());
        }
        Ok(Progress { consumed_bytes: position, complete: self.is_complete() })
    }

    /// Copies as much chunk data as `input` holds and the chunk still needs.
    fn copy_data(&mut self, remaining_bytes: u64, input: &[u8], out: &mut Vec<u8>) -> usize {
        let available = u64::try_from(input.len()).unwrap_or(u64::MAX);
        let taken = remaining_bytes.min(available);
        // `taken` is at most `input.len()`, so it fits in usize and the slice is in bounds.
        let taken_bytes = usize::try_from(taken).unwrap_or(input.len()).min(input.len());
        out.extend_from_slice(input.get(..taken_bytes).unwrap_or_default());
        self.decoded_bytes = self.decoded_bytes.saturating_add(taken);
        self.state = match remaining_bytes - taken {
            0 => State::DataCarriageReturn,
            remaining_bytes => State::Data { remaining_bytes },
        };
        taken_bytes
    }

    /// Advances the framing state machine by one byte (every state but `Data`).
    fn step(&mut self, byte: u8) -> Result<(), ParseError> {
        match self.state.clone() {
            State::SizeStart
            | State::Size { .. }
            | State::SizeWhitespace { .. }
            | State::Extension { .. }
            | State::SizeLineFeed { .. } => self.step_size_line(byte),
            State::DataCarriageReturn => {
                self.state = expect(byte, b'\r', State::DataLineFeed, "chunk data must end with CRLF")?;
                Ok(())
            }
            State::DataLineFeed => {
                self.state = expect(byte, b'\n', State::SizeStart, "chunk data must end with CRLF")?;
                Ok(())
            }
            State::TrailerStart | State::TrailerLine | State::TrailerLineFeed | State::EndLineFeed => {
                self.step_trailer(byte)
            }
            // `decode` handles these without calling `step`; reaching here is harmless.
            State::Data { .. } | State::Done => Ok(()),
            State::Failed(error) => Err(error),
        }
    }

    /// One byte of a chunk-size line: `chunk-size [ chunk-ext ] CRLF`.
    fn step_size_line(&mut self, byte: u8) -> Result<(), ParseError> {
        self.size_line_bytes = self.size_line_bytes.saturating_add(1);
        if self.size_line_bytes > self.limits.chunk_size_line_bytes_max {
            return Err(ParseError::ChunkLineTooLong { limit_bytes: self.limits.chunk_size_line_bytes_max });
        }
        let digit = hex_digit(byte);
        self.state = match (self.state.clone(), digit, byte) {
            (State::SizeStart, Some(digit), _) => State::Size { size: digit },
            (State::SizeStart, None, _) => return Err(ParseError::InvalidChunkSize),
            (State::Size { size }, Some(digit), _) => {
                let size = size.checked_mul(16).and_then(|size| size.checked_add(digit));
                State::Size { size: size.ok_or(ParseError::ChunkSizeOverflow)? }
            }
            (State::Size { size } | State::SizeWhitespace { size }, _, b' ' | b'\t') => State::SizeWhitespace { size },
            (State::Size { size } | State::SizeWhitespace { size }, _, b';') => self.extension_byte(size)?,
            (State::Size { size } | State::SizeWhitespace { size } | State::Extension { size }, _, b'\r') => {
                State::SizeLineFeed { size }
            }
            (State::Size { .. } | State::SizeWhitespace { .. }, _, _) => return Err(ParseError::InvalidChunkSize),
            (State::Extension { .. }, _, b'\n') => {
                return Err(ParseError::InvalidChunkFraming { reason: "bare LF in a chunk extension" });
            }
            // Control bytes other than HTAB have no place in chunk-ext (RFC 9112 §7.1.1 builds
            // it from tokens and quoted strings).
            (State::Extension { .. }, _, byte) if byte.is_ascii_control() && byte != b'\t' => {
                return Err(ParseError::InvalidChunkFraming { reason: "control byte in a chunk extension" });
            }
            (State::Extension { size }, _, _) => self.extension_byte(size)?,
            (State::SizeLineFeed { size }, _, b'\n') => self.end_size_line(size)?,
            (State::SizeLineFeed { .. }, _, _) => {
                return Err(ParseError::InvalidChunkFraming { reason: "chunk size line must end with CRLF" });
            }
            (other, _, _) => other,
        };
        Ok(())
    }

    /// Counts one skipped extension byte against the whole body's extension budget.
    fn extension_byte(&mut self, size: u64) -> Result<State, ParseError> {
        self.extension_bytes = self.extension_bytes.saturating_add(1);
        if self.extension_bytes > self.limits.chunk_extension_bytes_max {
            return Err(ParseError::ChunkExtensionsTooLarge { limit_bytes: self.limits.chunk_extension_bytes_max });
        }
        Ok(State::Extension { size })
    }

    /// A complete chunk-size line: the chunk's data follows, or the trailers after a last chunk.
    fn end_size_line(&mut self, size: u64) -> Result<State, ParseError> {
        self.size_line_bytes = 0;
        if size == 0 {
            return Ok(State::TrailerStart);
        }
        // Refused before any of the chunk is read: announcing a huge chunk costs the client
        // nothing, buffering it would cost us.
        let decoded_bytes = self.decoded_bytes.saturating_add(size);
        if decoded_bytes > self.limits.payload_bytes_max {
            return Err(ParseError::PayloadTooLarge { limit_bytes: self.limits.payload_bytes_max });
        }
        Ok(State::Data { remaining_bytes: size })
    }

    /// One byte of the trailer section: `*( field-line CRLF ) CRLF`. Trailer fields are
    /// skipped (RFC 9112 §7.1.2 lets a recipient discard them), only their size is bounded.
    fn step_trailer(&mut self, byte: u8) -> Result<(), ParseError> {
        self.trailer_bytes = self.trailer_bytes.saturating_add(1);
        if self.trailer_bytes > self.limits.trailer_bytes_max {
            return Err(ParseError::TrailerTooLarge { limit_bytes: self.limits.trailer_bytes_max });
        }
        let bare_line_feed = ParseError::InvalidChunkFraming { reason: "trailer lines must end with CRLF" };
        self.state = match (self.state.clone(), byte) {
            (State::TrailerStart, b'\r') => State::EndLineFeed,
            (State::TrailerStart | State::TrailerLine, b'\n') => return Err(bare_line_feed),
            (State::TrailerLine, b'\r') => State::TrailerLineFeed,
            (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
            (State::TrailerLineFeed, b'\n') => State::TrailerStart,
            (State::EndLineFeed, b'\n') => State::Done,
            (State::TrailerLineFeed | State::EndLineFeed, _) => return Err(bare_line_feed),
            (other, _) => other,
        };
        Ok(())
    }
}

/// `next` if `byte` is `wanted`, a framing error otherwise.
fn expect(byte: u8, wanted: u8, next: State, reason: &'static str) -> Result<State, ParseError> {
    if byte == wanted {
        Ok(next)
    } else {
        Err(ParseError::InvalidChunkFraming { reason })
    }
}

/// The value of a hexadecimal digit (RFC 5234 HEXDIG, either case).
fn hex_digit(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8], limits: &Limits) -> Result<(Vec<u8>, Progress), ParseError> {
        let mut decoder = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let progress = decoder.decode(input, &mut out)?;
        Ok((out, progress))
    }

    #[test]
    fn decodes_chunks_with_extensions_and_trailers() {
        // Extensions and trailers are legal and rare; a decoder that chokes on them loses
        // real webhooks from unusual senders.
        let input = b"4;name=value;flag\r\nWiki\r\n5 ; x=\"q;uoted\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0;last\r\nExpires: never\r\nX-Checksum: abc\r\n\r\nGET /";
        let (out, progress) = decode_all(input, &Limits::default()).unwrap();
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(progress, Progress { consumed_bytes: input.len() - 5, complete: true });
    }

    #[test]
    fn decodes_empty_body_and_uppercase_hex() {
        // The smallest chunked body and uppercase digits are both in RFC 9112 §7.1's grammar.
        assert_eq!(decode_all(b"0\r\n\r\n", &Limits::default()).unwrap().0, b"");
        let (out, _) = decode_all(b"A\r\n0123456789\r\n000\r\n\r\n", &Limits::default()).unwrap();
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn waits_for_more_input_without_consuming_past_the_body() {
        // Socket reads end anywhere; the decoder must hold its place and never swallow the
        // next pipelined request.
        let mut decoder = ChunkedDecoder::new(&Limits::default());
        let mut out = Vec::new();
        let first = decoder.decode(b"5\r\nhel", &mut out).unwrap();
        assert_eq!(first, Progress { consumed_bytes: 6, complete: false });
        let second = decoder.decode(b"lo\r\n0\r\n\r\nPOST", &mut out).unwrap();
        assert_eq!(second, Progress { consumed_bytes: 9, complete: true });
        assert_eq!(out, b"hello");
        assert_eq!(decoder.decoded_bytes(), 5);
        assert_eq!(decoder.decode(b"POST", &mut out).unwrap(), Progress { consumed_bytes: 0, complete: true });
    }

    #[test]
    fn malformed_chunked_bodies_map_to_their_status_and_code() {
        // Broken chunk framing is where smuggling lives; each must be a clean 4xx that closes
        // the connection, never a guess.
        let small = Limits {
            payload_bytes_max: 10,
            chunk_size_line_bytes_max: 24,
            chunk_extension_bytes_max: 30,
            trailer_bytes_max: 16,
            ..Limits::default()
        };
        let cases: Vec<(&str, Vec<u8>, ParseError, u16, &str)> = vec![
            ("bad hex in chunk size", b"5g\r\nhello\r\n".to_vec(), ParseError::InvalidChunkSize, 400, "E1005"),
            ("empty chunk size", b"\r\nhello\r\n".to_vec(), ParseError::InvalidChunkSize, 400, "E1005"),
            ("signed chunk size", b"+5\r\nhello\r\n".to_vec(), ParseError::InvalidChunkSize, 400, "E1005"),
            (
                "chunk size overflowing u64",
                b"1ffffffffffffffff\r\n".to_vec(),
                ParseError::ChunkSizeOverflow,
                400,
                "E1005",
            ),
            (
                "missing CRLF after data",
                b"5\r\nhelloX\r\n".to_vec(),
                ParseError::InvalidChunkFraming { reason: "chunk data must end with CRLF" },
                400,
                "E1005",
            ),
            (
                "missing LF after data",
                b"5\r\nhello\rX".to_vec(),
                ParseError::InvalidChunkFraming { reason: "chunk data must end with CRLF" },
                400,
                "E1005",
            ),
            ("bare LF after size", b"5\nhello\r\n".to_vec(), ParseError::InvalidChunkSize, 400, "E1005"),
            (
                "bare CR after size",
                b"5\rhello\r\n".to_vec(),
                ParseError::InvalidChunkFraming { reason: "chunk size line must end with CRLF" },
                400,
                "E1005",
            ),
            (
                "bare LF in extension",
                b"5;a\nhello\r\n".to_vec(),
                ParseError::InvalidChunkFraming { reason: "bare LF in a chunk extension" },
                400,
                "E1005",
            ),
            (
                "NUL in extension",
                b"5;a\0\r\nhello\r\n".to_vec(),
                ParseError::InvalidChunkFraming { reason: "control byte in a chunk extension" },
                400,
                "E1005",
            ),
            (
                "size line too long",
                [[b'0'; 30].as_slice(), b"1\r\n"].concat(),
                ParseError::ChunkLineTooLong { limit_bytes: 24 },
                400,
                "E1005",
            ),
            (
                "extensions too large in total",
                b"1;aaaaaaaaaaaaaaaa\r\nx\r\n1;bbbbbbbbbbbbbbbb\r\nx\r\n".to_vec(),
                ParseError::ChunkExtensionsTooLarge { limit_bytes: 30 },
                400,
                "E1005",
            ),
            (
                "bare LF in trailer",
                b"0\r\nX: y\n\r\n".to_vec(),
                ParseError::InvalidChunkFraming { reason: "trailer lines must end with CRLF" },
                400,
                "E1005",
            ),
            (
                "trailer section too large",
                b"0\r\nX-Long-Trailer: abcdefgh\r\n\r\n".to_vec(),
                ParseError::TrailerTooLarge { limit_bytes: 16 },
                431,
                "E1005",
            ),
            (
                "one chunk over the payload limit",
                b"b\r\n".to_vec(),
                ParseError::PayloadTooLarge { limit_bytes: 10 },
                413,
                "E1002",
            ),
            (
                "chunks adding up over the payload limit",
                b"6\r\nabcdef\r\n5\r\n".to_vec(),
                ParseError::PayloadTooLarge { limit_bytes: 10 },
                413,
                "E1002",
            ),
        ];
        for (name, input, expected, status, code) in cases {
            let error = match decode_all(&input, &small) {
                Err(error) => error,
                Ok(outcome) => panic!("{name}: expected an error, got {outcome:?}"),
            };
            assert_eq!(error, expected, "{name}");
            assert_eq!((error.status(), error.code()), (status, code), "{name}");
            assert!(error.closes_connection(), "{name}");
        }
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        // A connection loop that calls again after an error must not see the body resume
        // mid-frame as if nothing happened.
        let mut decoder = ChunkedDecoder::new(&Limits::default());
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"z", &mut out), Err(ParseError::InvalidChunkSize));
        assert_eq!(decoder.decode(b"0\r\n\r\n", &mut out), Err(ParseError::InvalidChunkSize));
        assert_eq!(decoder.decode(b"", &mut out), Err(ParseError::InvalidChunkSize));
    }

    #[test]
    fn payload_at_the_limit_is_accepted() {
        // The limit is the largest body allowed, not the smallest refused.
        let limits = Limits { payload_bytes_max: 10, ..Limits::default() };
        let (out, progress) = decode_all(b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n", &limits).unwrap();
        assert_eq!(out, b"abcdefghij");
        assert!(progress.complete);
    }

    /// How many chunks [`encode`] makes of a body of `length` bytes.
    fn chunk_count(length: usize, sizes: &[usize]) -> usize {
        let (mut rest, mut chunks) = (length, 0);
        for size in sizes.iter().cycle() {
            if rest == 0 {
                break;
            }
            rest -= (*size).min(rest);
            chunks += 1;
        }
        chunks
    }

    /// Chunked encoding of `body` with chunk sizes taken in turn from `sizes`.
    fn encode(body: &[u8], sizes: &[usize], extensions: bool, trailers: &[String], uppercase: bool) -> Vec<u8> {
        let mut encoded = Vec::new();
        let mut rest = body;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            let size_line = if uppercase { format!("{:X}", chunk.len()) } else { format!("{:x}", chunk.len()) };
            encoded.extend_from_slice(size_line.as_bytes());
            if extensions {
                encoded.extend_from_slice(b" ;ext=\"v\";flag");
            }
            encoded.extend_from_slice(b"\r\n");
            encoded.extend_from_slice(chunk);
            encoded.extend_from_slice(b"\r\n");
            rest = tail;
        }
        encoded.extend_from_slice(b"0\r\n");
        for trailer in trailers {
            encoded.extend_from_slice(trailer.as_bytes());
            encoded.extend_from_slice(b"\r\n");
        }
        encoded.extend_from_slice(b"\r\n");
        encoded
    }

    proptest! {
        #[test]
        fn chunked_bodies_round_trip_under_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1_usize..700, 1..8),
            extensions in any::<bool>(),
            uppercase in any::<bool>(),
            trailers in proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3),
            feeds in proptest::collection::vec(1_usize..97, 1..16),
        ) {
            // Whatever chunk sizes the sender picks and wherever TCP cuts the stream, the body
            // must come out byte for byte, and the next request must stay unread.
            // Extensions count against a per-message total (15 bytes a chunk here); many tiny
            // chunks past it are refused by design, which another test covers.
            let chunks = chunk_count(body.len(), &sizes);
            prop_assume!(!extensions || chunks * 15 <= Limits::default().chunk_extension_bytes_max);
            let mut stream = encode(&body, &sizes, extensions, &trailers, uppercase);
            let body_end = stream.len();
            stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut decoder = ChunkedDecoder::new(&Limits::default());
            let mut out = Vec::new();
            let mut position = 0;
            let mut feed = feeds.iter().cycle();
            while !decoder.is_complete() {
                prop_assert!(position < stream.len(), "ran out of input");
                let end = (position + feed.next().copied().unwrap_or(1)).min(stream.len());
                let slice = &stream[position..end];
                let progress = decoder.decode(slice, &mut out).unwrap();
                prop_assert!(progress.consumed_bytes == slice.len() || progress.complete);
                position += progress.consumed_bytes;
            }
            prop_assert_eq!(position, body_end);
            prop_assert_eq!(out, body);
        }

        #[test]
        fn random_input_never_panics_or_overruns(
            prefix in proptest::sample::select(vec!["", "5\r\n", "0\r\n", "3;x\r\nabc\r\n", "ff\r\n"]),
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            feeds in proptest::collection::vec(1_usize..64, 1..8),
            payload_bytes_max in 0_u64..300,
            small_limits in 1_usize..40,
        ) {
            // A decoder of untrusted bytes must answer every input with a value and never
            // hold more than the payload limit.
            let limits = Limits {
                payload_bytes_max,
                chunk_size_line_bytes_max: small_limits,
                chunk_extension_bytes_max: small_limits * 2,
                trailer_bytes_max: small_limits,
                ..Limits::default()
            };
            let input = [prefix.as_bytes(), &bytes].concat();
            let mut decoder = ChunkedDecoder::new(&limits);
            let mut out = Vec::new();
            let mut position = 0;
            let mut feed = feeds.iter().cycle();
            while position < input.len() {
                let end = (position + feed.next().copied().unwrap_or(1)).min(input.len());
                match decoder.decode(&input[position..end], &mut out) {
                    Ok(progress) if progress.complete => break,
                    Ok(progress) => position += progress.consumed_bytes,
                    Err(_) => break,
                }
            }
            prop_assert!(u64::try_from(out.len()).unwrap() <= payload_bytes_max);
        }
    }
}
