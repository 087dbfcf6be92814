//! Replays the committed fuzz corpora of the HTTP targets (`fuzz/corpus/http_request`,
//! `fuzz/corpus/http_chunked`, `fuzz/corpus/http_response`) and their crash inputs
//! (`fuzz/artifacts/<target>/`) through the same harness the fuzz targets run
//! (`fuzz/harness/http.rs`), with no fuzzer. See docs/adr/0011-fuzzing-on-stable.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/harness/http.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

/// Every committed input of `target`: its corpus and its crash inputs, in name order.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut found = Vec::new();
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                found.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// Runs `check` on every input of `target`, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no committed inputs for {target}");
    for (path, bytes) in inputs {
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{} fails (replay it with cargo fuzz run -s none -a {target} {})", path.display(), path.display());
        }
    }
}

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
