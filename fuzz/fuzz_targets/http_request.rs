//! Request heads and their framing: `kapsel_http::parse_head`, then the body decoder the head's framing picks (`fuzz/harness/http.rs`).
#![no_main]

#[path = "../harness/http.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::request(data));
