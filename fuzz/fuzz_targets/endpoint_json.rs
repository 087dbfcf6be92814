//! Endpoint JSON bodies, `EndpointInput::parse` and `into_endpoint` (`fuzz/harness/engine.rs`).
#![no_main]

#[path = "../harness/engine.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::endpoint_json(data));
