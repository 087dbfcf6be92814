//! `cargo bench -p kapsel-wal`: durable 1 KiB appends per second on one core with 1, 16 and 256
//! concurrent appenders, under each monoio driver, and the mean group-commit batch size.
//!
//! Each appender loops: append a 1 KiB record, await its commit (the fdatasync covering it),
//! repeat. Throughput is completed commits over the measured interval. The log runs with its
//! production defaults (64 MiB segments, sealed and chained as they fill).
//!
//! Environment: `KAPSEL_BENCH_SECONDS` (default 3) per configuration; `KAPSEL_BENCH_DIR` for the
//! log (default: a temporary directory under the current directory, so the bench measures the
//! project's disk rather than a tmpfs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kapsel_wal::{IoBackend, Options, Wal};

const RECORD_BYTES: usize = 1024;
const CONCURRENCY: [usize; 3] = [1, 16, 256];

struct Outcome {
    appends: u64,
    seconds: f64,
    batches: u64,
    syncs: u64,
}

async fn measure(backend: IoBackend, appenders: usize, duration: Duration) -> Outcome {
    let base = std::env::var_os("KAPSEL_BENCH_DIR").map_or_else(|| std::env::current_dir().unwrap(), Into::into);
    let directory = tempfile::Builder::new().prefix("kapsel-wal-bench").tempdir_in(base).unwrap();
    let options = Options { backend, ..Options::default() };
    let (wal, _) = Wal::open(directory.path(), options, |_| {}).await.unwrap();
    let wal = Rc::new(wal);
    // Warm up: create the first segment and fault in buffers.
    wal.append(1, &[0u8; RECORD_BYTES]).unwrap().await.unwrap();
    let stop = Rc::new(Cell::new(false));
    let completed = Rc::new(Cell::new(0u64));
    let batches_before = wal.batches();
    let syncs_before = wal.io_counters().syncs();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(appenders);
    for appender in 0..appenders {
        let (wal, stop, completed) = (Rc::clone(&wal), Rc::clone(&stop), Rc::clone(&completed));
        tasks.push(monoio::spawn(async move {
            let record = vec![appender as u8; RECORD_BYTES];
            while !stop.get() {
                wal.append(1, &record).unwrap().await.unwrap();
                completed.set(completed.get() + 1);
            }
        }));
    }
    monoio::time::sleep(duration).await;
    stop.set(true);
    let appends = completed.get();
    let seconds = started.elapsed().as_secs_f64();
    let batches = wal.batches() - batches_before;
    let syncs = wal.io_counters().syncs() - syncs_before;
    for task in tasks {
        task.await;
    }
    if let Ok(wal) = Rc::try_unwrap(wal) {
        wal.close().await.unwrap();
    }
    Outcome { appends, seconds, batches, syncs }
}

fn report(driver: &str, appenders: usize, outcome: &Outcome) {
    let rate = outcome.appends as f64 / outcome.seconds;
    let mean_batch = outcome.appends as f64 / outcome.batches.max(1) as f64;
    println!(
        "{driver:<40} appenders={appenders:<4} durable_appends_per_s={rate:>10.0} mean_batch={mean_batch:>7.1} fsyncs={} appends={}",
        outcome.syncs, outcome.appends
    );
}

fn main() {
    let seconds = std::env::var("KAPSEL_BENCH_SECONDS").ok().and_then(|text| text.parse().ok()).unwrap_or(3.0);
    let duration = Duration::from_secs_f64(seconds);
    println!("kapsel-wal append benchmark: {RECORD_BYTES}-byte records, {seconds} s per configuration, one core");
    let mut uring =
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().expect("io_uring runtime");
    for appenders in CONCURRENCY {
        let outcome = uring.block_on(measure(IoBackend::Thread, appenders, duration));
        report("io_uring driver, I/O thread (default)", appenders, &outcome);
    }
    for appenders in CONCURRENCY {
        let outcome = uring.block_on(measure(IoBackend::Uring, appenders, duration));
        report("io_uring driver, io_uring file ops", appenders, &outcome);
    }
    let mut legacy =
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("legacy runtime");
    for appenders in CONCURRENCY {
        let outcome = legacy.block_on(measure(IoBackend::Thread, appenders, duration));
        report("legacy driver, I/O thread (default)", appenders, &outcome);
    }
}
