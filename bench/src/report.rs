//! The printed report: one table per loop kind, then the summary against the targets.

use std::fmt::Write as _;
use std::time::Duration;

use crate::closed::ClosedOutcome;
use crate::machine::CpuUsage;
use crate::open::OpenOutcome;
use crate::stats::{Latencies, PERCENTILES};

/// Kapsel's closed-loop throughput must reach this fraction of the minimal durable server's.
pub const THROUGHPUT_RATIO_TARGET_MIN: f64 = 0.75;

/// Kapsel's open-loop p99 may be at most this multiple of the minimal durable server's.
pub const OPEN_LOOP_P99_RATIO_TARGET_MAX: f64 = 1.5;

/// Kapsel's open-loop p99 must stay below this (the design card's original target).
pub const OPEN_LOOP_P99_TARGET_MS: f64 = 50.0;

/// Above this many cores' worth of CPU used by other processes during a measured period, the
/// summary warns that the run was noisy.
pub const NOISE_CORES_MAX: f64 = 0.25;

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn percentiles(latencies: &Latencies) -> String {
    let mut out = String::new();
    for percentile in PERCENTILES {
        let _ = write!(out, " {:>8.2}", milliseconds(latencies.at(percentile)));
    }
    let _ = write!(out, " {:>8.2}", milliseconds(latencies.max()));
    out
}

/// CPU per request in microseconds (server, client) and other processes' load in cores.
fn cpu_columns(cpu: &CpuUsage, requests: u64, wall: Duration) -> String {
    let per_request = |time: Duration| {
        if requests == 0 {
            0.0
        } else {
            time.as_secs_f64() * 1e6 / requests as f64
        }
    };
    let cores = |time: Duration| time.as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON);
    format!(
        " {:>9.1} {:>9.1} {:>6.2} {:>5.0}%",
        per_request(cpu.server),
        per_request(cpu.client),
        cores(cpu.others()),
        100.0 * cpu.machine_busy.as_secs_f64() / cpu.machine_total.as_secs_f64().max(f64::EPSILON),
    )
}

/// The closed-loop table's header.
pub fn closed_header() -> String {
    format!(
        "{:<18} {:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>6}  {}",
        "server",
        "conns",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "srv µs/rq",
        "cli µs/rq",
        "others",
        "busy",
        "errors"
    )
}

/// One closed-loop row.
pub fn closed_row(server: &str, outcome: &ClosedOutcome) -> String {
    format!(
        "{:<18} {:>5} {:>10.0}{}{}  {}",
        server,
        outcome.plan.connections,
        outcome.throughput_per_s(),
        percentiles(&outcome.latencies),
        cpu_columns(&outcome.cpu, outcome.successes, outcome.plan.measure),
        outcome.failures,
    )
}

/// The open-loop table's header.
pub fn open_header() -> String {
    format!(
        "{:<18} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6} {:>6}  {}",
        "server",
        "target/s",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "lag99 ms",
        "srv µs/rq",
        "cli µs/rq",
        "others",
        "busy",
        "errors"
    )
}

/// One open-loop row.
pub fn open_row(server: &str, outcome: &OpenOutcome) -> String {
    format!(
        "{:<18} {:>8} {:>10.0}{} {:>9.2}{}  {}",
        server,
        outcome.plan.rate_per_s,
        outcome.achieved_per_s(),
        percentiles(&outcome.latencies),
        milliseconds(outcome.send_lag.at(99.0)),
        cpu_columns(&outcome.cpu, outcome.successes, outcome.plan.measure),
        outcome.failures,
    )
}

/// The server's threads that used at least 1 % of a core, its peak memory, then the load
/// generator.
pub fn threads_row(label: &str, cpu: &CpuUsage, wall: Duration) -> String {
    let cores = |time: Duration| time.as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON);
    let threads: Vec<String> = cpu
        .server_threads
        .iter()
        .filter(|(_, time)| cores(*time) >= 0.01)
        .map(|(name, time)| format!("{name} {:.2}", cores(*time)))
        .collect();
    format!(
        "  {label:<22} {}  | peak RSS {} MiB | load generator {:.2}",
        threads.join(", "),
        cpu.server_peak_rss_bytes / (1024 * 1024),
        cores(cpu.client)
    )
}

/// `values` times `scale`, with `decimals` decimals, separated by commas.
pub fn list(values: &[f64], scale: f64, decimals: usize) -> String {
    values.iter().map(|value| format!("{:.decimals$}", value * scale)).collect::<Vec<_>>().join(", ")
}

/// The legend under the tables.
pub const LEGEND: &str = "  req/s, achieved/s: 2xx responses per second in the measured period (open loop: until its
    last response). Latencies in ms from an HdrHistogram at µs resolution: closed loop from
    send to response; open loop from the request's intended send time to its response.
  lag99 ms: p99 of intended send time → actual send (waiting for a free connection, plus the
    generator's timer slack).
  srv/cli µs/rq: CPU time (user+system) of the server process / of the load generator per 2xx.
    On loopback the kernel does much of the receiver's TCP work in the sender's system call,
    so part of each side's network cost is charged to the other.
  others: cores' worth of CPU used by other processes meanwhile (noise); busy: share of the
    machine's CPU time not idle.
  The no-op reference is mostly bounded by the one-thread load generator (near 1 core there).";

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The closed-loop summary line for one connection count: Kapsel's throughput as ratios of
/// the references', and the ≥ 0.75× durable target.
pub fn throughput_summary(connections: usize, kapsel: f64, noop: f64, durable: f64) -> String {
    let ratio = |reference: f64| if reference > 0.0 { kapsel / reference } else { 0.0 };
    format!(
        "closed loop, {connections:>3} connections: Kapsel {kapsel:.0} req/s = {:.2}× no-op ({noop:.0}), \
         {:.2}× durable ({durable:.0});  target ≥ {THROUGHPUT_RATIO_TARGET_MIN}× durable: {}",
        ratio(noop),
        ratio(durable),
        verdict(ratio(durable) >= THROUGHPUT_RATIO_TARGET_MIN),
    )
}

/// The open-loop summary: Kapsel's p99 against the durable reference's and the 50 ms bar.
pub fn latency_summary(rate_per_s: u64, kapsel: &OpenOutcome, durable: &OpenOutcome) -> String {
    let (kapsel_p99, durable_p99) = (milliseconds(kapsel.latencies.at(99.0)), milliseconds(durable.latencies.at(99.0)));
    let ratio = if durable_p99 > 0.0 { kapsel_p99 / durable_p99 } else { f64::INFINITY };
    // A run with errors cannot pass: failed requests have no latency to count.
    let clean = kapsel.failures.total() == 0 && kapsel.successes == kapsel.scheduled;
    format!(
        "open loop, {rate_per_s} req/s: p99 Kapsel {kapsel_p99:.2} ms vs durable {durable_p99:.2} ms = {ratio:.2}×;  \
         target ≤ {OPEN_LOOP_P99_RATIO_TARGET_MAX}×: {};  target < {OPEN_LOOP_P99_TARGET_MS:.0} ms: {}{}",
        verdict(clean && ratio <= OPEN_LOOP_P99_RATIO_TARGET_MAX),
        verdict(clean && kapsel_p99 < OPEN_LOOP_P99_TARGET_MS),
        if clean { "" } else { "  (Kapsel had errors or unanswered requests)" },
    )
}
