//! Replays the committed fuzz corpora of the log's targets (`fuzz/corpus/wal_segment`,
//! `fuzz/corpus/wal_recovery`) and their crash inputs (`fuzz/artifacts/<target>/`) through the
//! same harness the fuzz targets run (`fuzz/harness/wal.rs`), so every input the fuzzer found
//! interesting stays checked by the ordinary test suite, with no fuzzer. See
//! docs/adr/0011-fuzzing-on-stable.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/harness/wal.rs"]
#[allow(dead_code)]
mod harness;

#[path = "../../fuzz/harness/replay.rs"]
#[allow(dead_code)]
mod replay;

use std::path::Path;

use replay::{fuzz_directory, replay};

use kapsel_wal::{IoBackend, Options, Wal};

// Segment, batch and frame decoding must hold their properties on every input the fuzzer kept;
// a decoder change that breaks one on a known input fails here, not in production.
#[test]
fn wal_segment_corpus_replays() {
    replay("wal_segment", harness::segment);
}

// Recovery over damaged directories: idempotent when it succeeds, changing nothing but a cut
// tail when it fails.
#[test]
fn wal_recovery_corpus_replays() {
    replay("wal_recovery", harness::recovery);
}

/// Writes a real log: records of several kinds and sizes in batches of one to five, in
/// 4 KiB segments so that it seals two and leaves the third open.
async fn write_log(directory: &Path) {
    let options = Options { backend: IoBackend::Thread, segment_bytes: 4096, ..Options::default() };
    let (wal, _) = Wal::open(directory, options, |_| {}).await.unwrap();
    for round in 0..40_usize {
        let commits: Vec<_> = (0..round % 5 + 1)
            .map(|index| {
                let body = format!("record {round}.{index} ").repeat(round % 7 + 1).into_bytes();
                wal.append(u8::try_from(1 + index % 3).unwrap(), &body).unwrap()
            })
            .collect();
        for commit in commits {
            commit.await.unwrap();
        }
    }
    wal.close().await.unwrap();
}

// Not a test: writes the seeds of both targets from a real log. Run it after a change to the
// format, then minimise the corpora (fuzz/README.md):
// `cargo test -p kapsel-wal --test fuzz_corpus -- --ignored write_seeds`
#[test]
#[ignore = "writes the fuzz seeds into fuzz/corpus; run by hand"]
fn write_seeds() {
    let scratch = tempfile::tempdir().unwrap();
    let directory = scratch.path().join("wal");
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
    runtime.block_on(write_log(&directory));
    let segments = kapsel_wal::scan::list_segments(&directory).unwrap();
    assert!(segments.len() >= 3, "the seed log has sealed segments and an open one");
    let corpus = fuzz_directory().join("corpus");
    for folder in ["wal_segment", "wal_recovery"] {
        std::fs::create_dir_all(corpus.join(folder)).unwrap();
    }
    for (id, path) in &segments {
        std::fs::copy(path, corpus.join("wal_segment").join(format!("seed-segment-{id}"))).unwrap();
    }
    let whole = harness::encode_directory(&directory).unwrap();
    std::fs::write(corpus.join("wal_recovery").join("seed-log-three-segments"), whole).unwrap();
    // The same log after retention removed its first segment: the chain stands in for it.
    std::fs::remove_file(&segments[0].1).unwrap();
    let retained = harness::encode_directory(&directory).unwrap();
    std::fs::write(corpus.join("wal_recovery").join("seed-log-after-retention"), retained).unwrap();
}
