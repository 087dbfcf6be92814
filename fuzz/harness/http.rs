//! What the HTTP fuzz targets check, shared by the targets (`fuzz/fuzz_targets/http_*.rs`) and
//! the corpus replay in `http/tests/fuzz_corpus.rs`, so both hold the decoders to the same
//! properties. Each function takes one input and panics when a property fails.
//!
//! The properties, beyond "no panic":
//! - A head parsed whole is parsed the same from exactly its own bytes, and every shorter
//!   prefix of it asks for more bytes (a client whose head arrives in pieces is treated like one
//!   that sends it at once).
//! - A body decoded in one call and decoded fed in pieces gives the same payload, the same
//!   consumed count and the same error.
//! - Output stays within its limits: a decoded payload within `payload_bytes_max` and never
//!   larger than the bytes fed; a response excerpt within its cap; no more wire bytes read than
//!   allowed.
//! - Chunked decoding inverts chunked encoding.

use kapsel_http::{
    parse_head, parse_response_head, BodyDecoder, ChunkedDecoder, Limits, ParseError, Parsed, ParsedResponse, Progress,
    ResponseBodyReader, ResponseError, ResponseFraming,
};

/// A payload limit small enough for inputs to reach it (413), large enough for real bodies.
pub const PAYLOAD_BYTES_MAX: u64 = 64 * 1024;

/// The response body limits the target uses: small, so inputs reach both caps.
pub const EXCERPT_BYTES_MAX: usize = 64;
/// See [`EXCERPT_BYTES_MAX`].
pub const RESPONSE_WIRE_BYTES_MAX: u64 = 4096;

fn limits() -> Limits {
    Limits::default().with_payload_bytes_max(PAYLOAD_BYTES_MAX)
}

/// Piece lengths for feeding `input` in slices, taken from the input itself so that the fuzzer
/// steers the splits too: 1 to 16 bytes each, cycling through the input's first bytes.
fn piece_lengths(input: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let seed: Vec<usize> = input.iter().take(8).map(|byte| usize::from(byte % 16) + 1).collect();
    let seed = if seed.is_empty() { vec![1] } else { seed };
    (0..).map(move |index| seed[index % seed.len()])
}

/// The request head target: `parse_head` on the input, then the body decoder its framing
/// chooses on the bytes after the head.
pub fn request(input: &[u8]) {
    let limits = limits();
    let whole = parse_head(input, &limits);
    let Ok(Parsed::Complete { head, head_length }) = &whole else {
        // An error or a partial head on the whole input must not turn into a complete head on a
        // prefix of it: checked from the other side below, for complete heads.
        return;
    };
    assert!(*head_length <= input.len() && *head_length <= limits.header_bytes_max, "head_length out of bounds");
    assert!(head.path.starts_with('/'), "a path starts with /: {:?}", head.path);
    // The head alone parses the same: bytes after it are not looked at.
    assert_eq!(parse_head(&input[..*head_length], &limits), whole, "the head alone parses differently");
    // Every shorter prefix asks for more bytes. All prefixes for small heads; a spread otherwise.
    let prefixes: Vec<usize> = if *head_length <= 512 {
        (0..*head_length).collect()
    } else {
        (0..64).map(|step| step * *head_length / 64).chain([*head_length - 1]).collect()
    };
    for prefix in prefixes {
        assert_eq!(
            parse_head(&input[..prefix], &limits),
            Ok(Parsed::Partial),
            "prefix of {prefix} bytes of a complete {head_length}-byte head"
        );
    }
    let body = &input[*head_length..];
    let whole_body = decode_body(BodyDecoder::new(head.framing, &limits), body, None);
    let pieces_body = decode_body(BodyDecoder::new(head.framing, &limits), body, Some(body));
    assert_eq!(whole_body, pieces_body, "a body decoded whole and in pieces differs");
}

/// What decoding a body produced: the payload, the bytes consumed (0 after an error), and the
/// outcome.
type Decoded = (Vec<u8>, usize, Result<bool, ParseError>);

/// Feeds `input` to `decoder` whole, or in pieces whose lengths come from `pieces_from`.
fn decode_body(mut decoder: BodyDecoder, input: &[u8], pieces_from: Option<&[u8]>) -> Decoded {
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut lengths: Box<dyn Iterator<Item = usize>> = match pieces_from {
        Some(seed) => Box::new(piece_lengths(seed)),
        None => Box::new(std::iter::repeat(input.len().max(1))),
    };
    loop {
        let rest = &input[consumed..];
        let piece = &rest[..lengths.next().unwrap_or(1).min(rest.len())];
        let before = out.len();
        match decoder.decode(piece, &mut out) {
            Ok(Progress { consumed_bytes, complete }) => {
                assert!(consumed_bytes <= piece.len(), "consumed more than it was given");
                assert!(complete || consumed_bytes == piece.len(), "stopped early without completing");
                assert!(out.len() - before <= consumed_bytes, "payload grew more than the bytes consumed");
                assert_eq!(complete, decoder.is_complete());
                consumed += consumed_bytes;
                assert!(out.len() as u64 <= PAYLOAD_BYTES_MAX, "payload over its limit");
                if complete || consumed == input.len() {
                    return (out, consumed, Ok(complete));
                }
            }
            Err(error) => {
                // A spent decoder keeps answering the same error.
                assert_eq!(decoder.decode(b"0\r\n\r\n", &mut Vec::new()), Err(error.clone()), "error not sticky");
                assert!(out.len() <= consumed + piece.len(), "payload larger than its encoding");
                // How much was consumed before the error depends on the pieces: not compared.
                return (out, 0, Err(error));
            }
        }
    }
}

/// The chunked decoder on its own: whole against pieces, and the payload encoded again as
/// chunks decodes to itself.
pub fn chunked(input: &[u8]) {
    let limits = limits();
    let whole = decode_body(BodyDecoder::Chunked(ChunkedDecoder::new(&limits)), input, None);
    let pieces = decode_body(BodyDecoder::Chunked(ChunkedDecoder::new(&limits)), input, Some(input));
    assert_eq!(whole, pieces, "chunked body decoded whole and in pieces differs");
    let (payload, consumed, outcome) = whole;
    assert!(outcome.is_err() || payload.len() <= consumed, "payload larger than its encoding");
    if outcome == Ok(true) {
        let encoded = encode_chunked(&payload, input);
        let again = decode_body(BodyDecoder::Chunked(ChunkedDecoder::new(&limits)), &encoded, None);
        assert_eq!(again, (payload, encoded.len(), Ok(true)), "decode(encode(payload)) is not the payload");
    }
}

/// Encodes `payload` as a chunked body, with chunk sizes taken from `seed`.
fn encode_chunked(payload: &[u8], seed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = payload;
    let mut lengths = piece_lengths(seed).map(|length| length * 37);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(lengths.next().unwrap_or(1).min(rest.len()));
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = after;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The client's response reading: `parse_response_head`, then a `ResponseBodyReader` on what
/// follows, whole against pieces.
pub fn response(input: &[u8]) {
    let head_bytes_max = kapsel_http::limits::RESPONSE_HEAD_BYTES_MAX;
    let whole = parse_response_head(input, head_bytes_max);
    let Ok(ParsedResponse::Complete { head, head_length }) = &whole else {
        return;
    };
    assert!(*head_length <= input.len() && *head_length <= head_bytes_max, "head_length out of bounds");
    assert!((100..=599).contains(&head.status) && head.status != 101, "status {}", head.status);
    assert!(!(head.keep_alive && head.framing == ResponseFraming::UntilClose), "keep-alive on a close-delimited body");
    assert_eq!(parse_response_head(&input[..*head_length], head_bytes_max), whole, "the head alone parses differently");
    for prefix in [0, *head_length / 2, *head_length - 1] {
        assert_eq!(
            parse_response_head(&input[..prefix], head_bytes_max),
            Ok(ParsedResponse::Partial),
            "prefix {prefix}"
        );
    }
    let body = &input[*head_length..];
    let whole_body = read_response_body(head.framing, body, None);
    let pieces_body = read_response_body(head.framing, body, Some(body));
    assert_eq!(whole_body, pieces_body, "a response body read whole and in pieces differs");
}

/// What reading a response body produced: excerpt, wire bytes consumed (both empty after an
/// error), complete, capped, the error, and the outcome of the end of the stream.
type ReadBody = (Vec<u8>, usize, bool, bool, Option<ResponseError>, Result<(), ResponseError>);

fn read_response_body(framing: ResponseFraming, input: &[u8], pieces_from: Option<&[u8]>) -> ReadBody {
    let mut reader = ResponseBodyReader::with_limits(framing, EXCERPT_BYTES_MAX, RESPONSE_WIRE_BYTES_MAX);
    let mut lengths: Box<dyn Iterator<Item = usize>> = match pieces_from {
        Some(seed) => Box::new(piece_lengths(seed)),
        None => Box::new(std::iter::repeat(input.len().max(1))),
    };
    let mut consumed = 0;
    let mut error = None;
    while consumed < input.len() && !reader.is_complete() && !reader.is_capped() {
        let rest = &input[consumed..];
        let piece = &rest[..lengths.next().unwrap_or(1).min(rest.len())];
        match reader.read(piece) {
            Ok(progress) => {
                assert!(progress.consumed_bytes <= piece.len(), "consumed more than it was given");
                consumed += progress.consumed_bytes;
                assert!(consumed as u64 <= RESPONSE_WIRE_BYTES_MAX, "read past the wire cap");
                if progress.consumed_bytes < piece.len() && !progress.complete && !reader.is_capped() {
                    panic!("stopped early without completing or reaching the cap");
                }
            }
            Err(failure) => {
                error = Some(failure);
                break;
            }
        }
    }
    assert!(reader.excerpt().len() <= EXCERPT_BYTES_MAX, "excerpt over its cap");
    let (complete, capped) = (reader.is_complete(), reader.is_capped());
    let end = reader.end_of_stream();
    if error.is_some() {
        // After an error the exchange is abandoned: how much was read and kept before it depends
        // on the pieces (the excerpt of the failing call is dropped), so neither is compared.
        return (Vec::new(), 0, complete, capped, error, end);
    }
    (reader.take_excerpt(), consumed, complete, capped, error, end)
}
