//! Runtimes for both monoio drivers, shared by the http crate's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A monoio driver to run a scenario on.
#[derive(Debug, Clone, Copy)]
pub enum Driver {
    Uring,
    Legacy,
}

/// Every scenario runs on both.
pub const DRIVERS: [Driver; 2] = [Driver::Uring, Driver::Legacy];

/// Runs `future` to completion on a fresh runtime of `driver`, timers enabled.
pub fn block_on(driver: Driver, future: impl Future<Output = ()>) {
    match driver {
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime (io_uring must work on this machine)")
            .block_on(future),
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("legacy runtime")
            .block_on(future),
    }
}

/// Stops a background thread of a test fixture: raises its stop flag and joins it, reporting
/// its panic unless the test is already failing.
pub fn stop_and_join(stop: &AtomicBool, thread: Option<JoinHandle<()>>, what: &str) {
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = thread {
        let result = thread.join();
        if !std::thread::panicking() {
            result.unwrap_or_else(|_| panic!("{what} panicked"));
        }
    }
}
