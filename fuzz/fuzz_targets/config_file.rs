//! `kapsel.toml`: the binary's file reader, merge and validation (`src/config.rs`, compiled in
//! here as it is, since the binary crate has no library), checked by `fuzz/harness/config.rs`.
#![no_main]

#[path = "../../src/config.rs"]
#[allow(dead_code, missing_docs)]
mod config;

#[path = "../harness/config.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config_file(data));
