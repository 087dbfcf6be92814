//! The outbound client's response reading: `kapsel_http::parse_response_head` and `ResponseBodyReader` (`fuzz/harness/http.rs`).
#![no_main]

#[path = "../harness/http.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::response(data));
