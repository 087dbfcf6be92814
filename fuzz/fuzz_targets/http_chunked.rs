//! The chunked body decoder, `kapsel_http::ChunkedDecoder` (`fuzz/harness/http.rs`).
#![no_main]

#[path = "../harness/http.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::chunked(data));
