//! Replays the committed fuzz corpora of the HTTP targets (`fuzz/corpus/http_request`,
//! `fuzz/corpus/http_chunked`, `fuzz/corpus/http_response`) and their crash inputs
//! (`fuzz/artifacts/<target>/`) through the same harness the fuzz targets run
//! (`fuzz/harness/http.rs`), with no fuzzer. See docs/adr/0011-fuzzing-on-stable.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/harness/http.rs"]
#[allow(dead_code)]
mod harness;

#[path = "../../fuzz/harness/replay.rs"]
#[allow(dead_code)]
mod replay;

use replay::replay;

// Request heads and bodies from every input the fuzzer kept: the same answer whole or in
// pieces, within the limits, never a panic.
#[test]
fn http_request_corpus_replays() {
    replay("http_request", harness::request);
}

// Chunked bodies: the same payload whole or in pieces, and decoding inverts encoding.
#[test]
fn http_chunked_corpus_replays() {
    replay("http_chunked", harness::chunked);
}

// Responses from a distrusted destination: bounded excerpt and reads, same outcome in pieces.
#[test]
fn http_response_corpus_replays() {
    replay("http_response", harness::response);
}
