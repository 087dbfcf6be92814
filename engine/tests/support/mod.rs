//! What the deterministic simulations share (`simulation.rs`, one shard; `fanout_simulation.rs`,
//! publish and fan-out across shards): the seeded generator, scripted destination answers, a
//! single poll that leaves an append waiting for its fsync, and the environment's knobs.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use kapsel_http::{OutboundResponse, SendError};

pub mod stepping;

/// A small, fast, seedable generator (splitmix64).
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, probability: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }

    pub fn unit_signed(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A destination's answer, as the client reports it.
pub fn response(status: u16, retry_after: Option<&str>) -> Result<OutboundResponse, SendError> {
    Ok(OutboundResponse {
        status,
        retry_after: retry_after.map(String::from),
        body_excerpt: format!("answer {status}").into_bytes(),
        latency: Duration::from_millis(3),
    })
}

/// Polls a future once with a waker that does nothing: it runs up to its first wait (an append
/// waits for its fsync), then the crash drops it.
pub fn poll_once<F: Future>(future: F) {
    let mut future = pin!(future);
    let _ = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
}

/// A number from the environment (`KAPSEL_SIM_SEEDS`, `KAPSEL_SIM_SEED`, `KAPSEL_SIM_STEPS`).
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}
