//! Replay of the committed fuzz inputs by the ordinary test suites (`<crate>/tests/
//! fuzz_corpus.rs` include this file with `#[path]`): every input of a target's corpus and its
//! crash inputs goes through the same check the fuzz target runs, with no fuzzer.

use std::path::{Path, PathBuf};

/// The `fuzz/` folder, seen from a workspace member's manifest directory.
pub fn fuzz_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every committed input of `target`: its corpus and its crash inputs, in name order.
pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_directory().join(folder).join(target)) else {
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
pub fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no committed inputs for {target}");
    for (path, bytes) in inputs {
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{} fails (replay it with cargo fuzz run -s none -a {target} {})", path.display(), path.display());
        }
    }
}
