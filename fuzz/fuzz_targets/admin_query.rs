//! Admin query strings, the `GET /admin/events` parser (`fuzz/harness/engine.rs`).
#![no_main]

#[path = "../harness/engine.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::admin_query(data));
