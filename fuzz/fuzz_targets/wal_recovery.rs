//! WAL recovery over a damaged directory: the read-only tools, then open-time recovery twice (`fuzz/harness/wal.rs`).
#![no_main]

#[path = "../harness/wal.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::recovery(data));
