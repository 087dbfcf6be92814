//! The endpoint snapshot file, `kapsel_engine::snapshot::read` (`fuzz/harness/engine.rs`).
#![no_main]

#[path = "../harness/engine.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::endpoints_snapshot(data));
