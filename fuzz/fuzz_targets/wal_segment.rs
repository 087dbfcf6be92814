//! WAL segment, batch and frame decoding: `kapsel_wal::frame` and `kapsel_wal::scan::scan_segment` (`fuzz/harness/wal.rs`).
#![no_main]

#[path = "../harness/wal.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::segment(data));
