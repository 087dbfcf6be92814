//! The delivery bench's backlog scenarios, run after its loops. Each starts a fresh sink and a
//! fresh Kapsel (default settings, `KAPSEL_BENCH_SHARDS` shards), creates the one endpoint
//! [`ENDPOINT`] pointing at the sink, builds a backlog for it and waits, bounded by
//! [`limits::DELIVERY_BACKLOG_DRAIN_MS_MAX`], until the sink has received all of it:
//!
//! - `backlog`: the endpoint is created paused; `KAPSEL_BENCH_BACKLOG_EVENTS` events of 1 KiB
//!   (by default 15× the 64 MiB payload budget) are ingested with the count-bounded fill
//!   ([`crate::fill`]); then it is enabled and the clock runs until the last one arrives. Its
//!   rate is checked against the target; Kapsel's resident memory is read before, sampled at
//!   every poll during the drain, and read again after it.
//! - `burst`: the endpoint enabled, a closed loop of [`limits::DELIVERY_BURST_CONNECTIONS`]
//!   connections ingests into it for `KAPSEL_BENCH_BURST_SECONDS`; the clock runs from the
//!   burst's start to the last delivery, and every accepted event divided by it is checked
//!   against the target.
//! - `restart`: the endpoint enabled, `KAPSEL_BENCH_RESTART_EVENTS` events are filled in and
//!   delivered; once Kapsel has recorded every outcome it is stopped with SIGTERM, the sink's
//!   counters are reset and Kapsel is started again on the same data directory: the time from
//!   spawning it to `GET /readyz` 200, and the deliveries in the
//!   [`limits::DELIVERY_RESTART_QUIET_MS`] after (the target is none).
//!
//! The sink's counters are read by polling its `GET /stats` every [`limits::SINK_POLL_MS`], so
//! a drain's end is known to within that.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::time::Instant;

use super::{reset_sink, sink_stats, wait_for_deliveries, Bench, DELIVERIES_PER_S_TARGET_MIN};
use crate::closed::{self, ClosedLoop, ClosedOutcome};
use crate::fill::{self, Filled};
use crate::footprint::{self, megabytes};
use crate::limits;
use crate::machine::{self, CpuMeter, CpuSample, CpuUsage, Memory};
use crate::payload::{ingest_request, json_body, request, stamped_json_body, unix_micros_now, SendTimeStamp};
use crate::process::ServerProcess;
use crate::runtime::block_on;
use crate::setup;
use crate::sink::{SinkStats, HOOK_PATH};

/// The one endpoint of these scenarios: the loops' first, on shard 0.
const ENDPOINT: &str = "bench-0";

/// The second Kapsel of the restart scenario in its log's name:
/// `delivery-kapsel-restarted.log`.
const RESTARTED_LABEL: &str = "restarted";

/// Kapsel's per-shard gauge of events not yet delivered or failed.
const EVENTS_WAITING_METRIC: &str = "kapsel_events_waiting";

/// Kapsel's per-shard counter of events whose payload was read back from the log.
const READ_BACK_METRIC: &str = "kapsel_read_back_events_total";

/// The three scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scenario {
    Backlog,
    Burst,
    Restart,
}

impl Scenario {
    /// All of them, in order.
    pub(super) const ALL: [Self; 3] = [Self::Backlog, Self::Burst, Self::Restart];

    /// Its name in the report and log names, and for `KAPSEL_BENCH_ONLY`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::Burst => "burst",
            Self::Restart => "restart",
        }
    }
}

/// What one scenario measured.
pub(super) enum Measured {
    Backlog(Backlog),
    Burst(Burst),
    Restart(Restart),
}

/// The backlog scenario's figures.
pub(super) struct Backlog {
    /// The fill into the paused endpoint.
    filled: Filled,
    /// Kapsel's `kapsel_events_waiting`, summed over the shards, before the endpoint was enabled.
    waiting: Option<u64>,
    /// Kapsel's memory with the whole backlog accepted, before the endpoint was enabled.
    before: Memory,
    /// From enabling the endpoint to the poll that saw the last delivery (or the bound).
    drain: Watched,
    /// Kapsel's, the sink's and the machine's CPU over the drain.
    cpu: Cpus,
    /// Kapsel's memory [`limits::DELIVERY_SETTLE_MS`] after the drain.
    after: Memory,
    /// Kapsel's `kapsel_read_back_events_total` after the drain, summed over the shards.
    read_back: Option<u64>,
}

/// The burst scenario's figures.
pub(super) struct Burst {
    /// The closed loop.
    ingest: ClosedOutcome,
    /// From the burst's start to the poll that saw the last delivery (or the bound); the sink
    /// was reset at the start, so its `deliveries` are the burst's.
    drain: Watched,
    /// Kapsel's, the sink's and the machine's CPU over the same time.
    cpu: Cpus,
    /// Kapsel's memory at the end (its peak is the burst's: the process is fresh).
    memory: Memory,
}

/// The restart scenario's figures.
pub(super) struct Restart {
    /// The events delivered before the restart.
    filled: Filled,
    /// From the start of the fill to the last delivery (deliveries run during the fill).
    delivered: Watched,
    /// How long Kapsel took after that to report no events waiting, and how many still were.
    settled: (Duration, Option<u64>),
    /// The first Kapsel's memory once everything was delivered, before the stop.
    delivered_memory: Memory,
    /// SIGTERM to exit.
    stopped_in: Duration,
    /// Spawn of the second Kapsel to its first `GET /readyz` 200.
    ready: Duration,
    /// The sink's counters [`limits::DELIVERY_RESTART_QUIET_MS`] after ready, reset before the
    /// second start: `deliveries` are what the restarted Kapsel sent.
    after: SinkStats,
    /// `kapsel_events_waiting` of the restarted Kapsel then, summed over the shards.
    waiting_after: Option<u64>,
    /// Its memory then.
    memory: Memory,
}

/// What [`watch`] saw.
struct Watched {
    /// The sink's last counters.
    stats: SinkStats,
    /// From the clock's start to their reading.
    elapsed: Duration,
    /// Whether the sink had received every expected event by then.
    complete: bool,
    /// Events expected in all (`deliveries_total`, the check ingest included).
    expected: u64,
    /// The largest `VmRSS` of Kapsel seen at the polls.
    resident_peak_bytes: u64,
}

impl Watched {
    /// Expected events the sink had not received when the wait ended.
    fn undelivered(&self) -> u64 {
        self.expected.saturating_sub(self.stats.deliveries_total)
    }
}

/// CPU of Kapsel, of the sink and of the machine over one period.
struct Cpus {
    kapsel: CpuUsage,
    sink: Duration,
    wall: Duration,
}

impl Cpus {
    /// Cores' worth of CPU used by processes other than Kapsel, the sink and the bench.
    fn others_cores(&self) -> f64 {
        let others = self.kapsel.others().saturating_sub(self.sink);
        others.as_secs_f64() / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// Kapsel's CPU per delivery, in microseconds.
    fn kapsel_us_per(&self, deliveries: u64) -> f64 {
        self.kapsel.server.as_secs_f64() * 1e6 / deliveries.max(1) as f64
    }
}

/// Samples Kapsel's and the sink's CPU at the start of a period.
struct CpuClock {
    kapsel: (CpuMeter, CpuSample),
    sink: (CpuMeter, CpuSample),
}

impl CpuClock {
    fn start(kapsel: &ServerProcess, sink: &ServerProcess) -> Self {
        let meter = |process: &ServerProcess| {
            let meter = CpuMeter::new(process.pid());
            (meter, meter.sample())
        };
        Self { kapsel: meter(kapsel), sink: meter(sink) }
    }

    fn stop(&self, wall: Duration) -> Cpus {
        Cpus {
            kapsel: self.kapsel.0.sample().since(&self.kapsel.1),
            sink: self.sink.0.sample().since(&self.sink.1).server,
            wall,
        }
    }
}

/// Runs `scenario` on a fresh sink and Kapsel.
///
/// # Errors
///
/// A server did not start or exited, a request the set-up needs failed, or the fill gave up;
/// with the servers' log tails.
pub(super) fn run(bench: &Bench, scenario: Scenario) -> Result<Measured, String> {
    match scenario {
        Scenario::Backlog => run_backlog(bench).map(Measured::Backlog),
        Scenario::Burst => run_burst(bench).map(Measured::Burst),
        Scenario::Restart => run_restart(bench).map(Measured::Restart),
    }
}

fn run_backlog(bench: &Bench) -> Result<Backlog, String> {
    let data = bench.scenario_directory()?;
    let (mut sink, mut kapsel) = bench.spawn_servers(data.path(), Scenario::Backlog.label())?;
    let backlog = block_on(bench.driver, drain_backlog(bench, &kapsel, &sink))?
        .map_err(|error| failure(&kapsel, &sink, &error))?;
    kapsel.check_running()?;
    sink.check_running()?;
    Ok(backlog)
}

/// Fills the paused endpoint, enables it and watches the drain.
async fn drain_backlog(bench: &Bench, kapsel: &ServerProcess, sink: &ServerProcess) -> Result<Backlog, String> {
    let address = kapsel.address();
    setup::wait_until_ready(sink.address()).await?;
    setup::wait_until_ready(address).await?;
    let paused =
        format!(r#"{{"ingest_auth":{{"type":"none"}},"url":"http://{}{HOOK_PATH}","enabled":false}}"#, sink.address());
    setup::create_endpoint(address, &bench.admin_token, ENDPOINT, &paused).await?;
    println!("  backlog:  filling {ENDPOINT} (paused) with {} events:", bench.backlog_events);
    let filled = fill_endpoint(address, bench.backlog_events).await?;
    let waiting = metric_sum(address, EVENTS_WAITING_METRIC).await?;
    let before = footprint::memory(kapsel)?;
    let clock = CpuClock::start(kapsel, sink);
    setup::enable_endpoint(address, &bench.admin_token, ENDPOINT).await?;
    let enabled_at = Instant::now();
    let drain = watch(sink.address(), kapsel.pid(), bench.backlog_events, enabled_at).await?;
    let cpu = clock.stop(drain.elapsed);
    monoio::time::sleep(Duration::from_millis(limits::DELIVERY_SETTLE_MS)).await;
    let after = footprint::memory(kapsel)?;
    let read_back = metric_sum(address, READ_BACK_METRIC).await?;
    Ok(Backlog { filled, waiting, before, drain, cpu, after, read_back })
}

fn run_burst(bench: &Bench) -> Result<Burst, String> {
    let data = bench.scenario_directory()?;
    let (mut sink, mut kapsel) = bench.spawn_servers(data.path(), Scenario::Burst.label())?;
    let burst =
        block_on(bench.driver, burst(bench, &kapsel, &sink))?.map_err(|error| failure(&kapsel, &sink, &error))?;
    kapsel.check_running()?;
    sink.check_running()?;
    Ok(burst)
}

/// The closed loop into the one endpoint, then the wait for its last delivery.
async fn burst(bench: &Bench, kapsel: &ServerProcess, sink: &ServerProcess) -> Result<Burst, String> {
    let (body, digits_at) = stamped_json_body(limits::PAYLOAD_BYTES)?;
    let stamp = SendTimeStamp::of_body(&body, digits_at);
    let ingest = ingest_request(kapsel.address(), ENDPOINT, &body);
    first_delivery(bench, kapsel.address(), sink.address(), Some((&ingest, stamp))).await?;
    reset_sink(sink.address()).await?;
    let plan = ClosedLoop {
        connections: limits::DELIVERY_BURST_CONNECTIONS,
        warm_up: Duration::ZERO,
        measure: bench.burst,
        stamp: Some(stamp),
    };
    let clock = CpuClock::start(kapsel, sink);
    let started = Instant::now();
    let outcome = closed::run(kapsel.address(), &[ingest], plan, CpuMeter::new(kapsel.pid())).await?;
    // The check ingest before the burst is in `deliveries_total`, not in `deliveries`.
    let drain = watch(sink.address(), kapsel.pid(), 1 + outcome.accepted_total, started).await?;
    let cpu = clock.stop(drain.elapsed);
    let memory = footprint::memory(kapsel)?;
    Ok(Burst { ingest: outcome, drain, cpu, memory })
}

fn run_restart(bench: &Bench) -> Result<Restart, String> {
    let data = bench.scenario_directory()?;
    let (mut sink, mut kapsel) = bench.spawn_servers(data.path(), Scenario::Restart.label())?;
    let (filled, delivered, settled) =
        block_on(bench.driver, deliver_all(bench, &kapsel, &sink))?.map_err(|error| failure(&kapsel, &sink, &error))?;
    kapsel.check_running()?;
    let delivered_memory = footprint::memory(&kapsel)?;
    let stopped_in = kapsel.terminate()?;
    drop(kapsel);
    block_on(bench.driver, reset_sink(sink.address()))?.map_err(|error| sink.failure(&error))?;
    let spawned = std::time::Instant::now();
    let mut kapsel = bench.spawn_kapsel(data.path(), RESTARTED_LABEL)?;
    let ready = footprint::time_to_ready(&mut kapsel, spawned)?;
    std::thread::sleep(Duration::from_millis(limits::DELIVERY_RESTART_QUIET_MS));
    let read = async { Ok::<_, String>((sink_stats(sink.address()).await?, events_waiting(kapsel.address()).await?)) };
    let (after, waiting_after) = block_on(bench.driver, read)?.map_err(|error| failure(&kapsel, &sink, &error))?;
    let memory = footprint::memory(&kapsel)?;
    kapsel.check_running()?;
    sink.check_running()?;
    Ok(Restart { filled, delivered, settled, delivered_memory, stopped_in, ready, after, waiting_after, memory })
}

/// The first Kapsel's part of the restart scenario: the endpoint, the check ingest, the fill,
/// the wait for the last delivery, then for Kapsel to record every outcome.
async fn deliver_all(
    bench: &Bench,
    kapsel: &ServerProcess,
    sink: &ServerProcess,
) -> Result<(Filled, Watched, (Duration, Option<u64>)), String> {
    first_delivery(bench, kapsel.address(), sink.address(), None).await?;
    println!("  restart:  filling {ENDPOINT} (delivering) with {} events:", bench.restart_events);
    let started = Instant::now();
    let filled = fill_endpoint(kapsel.address(), bench.restart_events).await?;
    let delivered = watch(sink.address(), kapsel.pid(), 1 + bench.restart_events, started).await?;
    let settled = wait_settled(kapsel.address()).await?;
    Ok((filled, delivered, settled))
}

/// Readies both servers, creates [`ENDPOINT`] (enabled, default settings) and checks that one
/// ingest (`ingest` with its stamp, or a plain one) is delivered within
/// [`limits::DELIVERY_FIRST_MS_MAX`].
async fn first_delivery(
    bench: &Bench,
    kapsel: SocketAddr,
    sink: SocketAddr,
    ingest: Option<(&[u8], SendTimeStamp)>,
) -> Result<(), String> {
    setup::wait_until_ready(sink).await?;
    setup::wait_until_ready(kapsel).await?;
    let enabled = format!(r#"{{"ingest_auth":{{"type":"none"}},"url":"http://{sink}{HOOK_PATH}"}}"#);
    setup::create_endpoint(kapsel, &bench.admin_token, ENDPOINT, &enabled).await?;
    let request = match ingest {
        Some((ingest, stamp)) => {
            let mut request = ingest.to_vec();
            stamp.write(&mut request, unix_micros_now());
            request
        }
        None => ingest_request(kapsel, ENDPOINT, &json_body(limits::PAYLOAD_BYTES)?),
    };
    setup::check_ingest(kapsel, ENDPOINT, &request).await?;
    let deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_FIRST_MS_MAX);
    if !wait_for_deliveries(sink, 1, deadline).await?.2 {
        return Err(format!("the sink did not receive the first event within {} ms", limits::DELIVERY_FIRST_MS_MAX));
    }
    Ok(())
}

/// `events` ingests of the 1 KiB JSON body into [`ENDPOINT`], over
/// [`limits::DELIVERY_FILL_CONNECTIONS`] connections, until all were accepted (202: durable).
async fn fill_endpoint(kapsel: SocketAddr, events: u64) -> Result<Filled, String> {
    let request = ingest_request(kapsel, ENDPOINT, &json_body(limits::PAYLOAD_BYTES)?);
    let filled = fill::run(kapsel, &[request], events, limits::DELIVERY_FILL_CONNECTIONS).await?;
    println!("    {}", filled.summary());
    Ok(filled)
}

/// Polls the sink every [`limits::SINK_POLL_MS`] until it has received `expected` deliveries
/// in all, or [`limits::DELIVERY_BACKLOG_DRAIN_MS_MAX`] from `started` has passed; samples
/// Kapsel's resident memory at every poll and prints the progress every
/// [`limits::DELIVERY_PROGRESS_MS`].
async fn watch(sink: SocketAddr, kapsel_pid: u32, expected: u64, started: Instant) -> Result<Watched, String> {
    let deadline = started + Duration::from_millis(limits::DELIVERY_BACKLOG_DRAIN_MS_MAX);
    let progress = Duration::from_millis(limits::DELIVERY_PROGRESS_MS);
    let mut next_report = started + progress;
    let mut resident_peak_bytes = 0;
    loop {
        let stats = sink_stats(sink).await?;
        let read_at = Instant::now();
        let resident_bytes = machine::memory_of(kapsel_pid).map_or(0, |memory| memory.resident_bytes);
        resident_peak_bytes = resident_peak_bytes.max(resident_bytes);
        let complete = stats.deliveries_total >= expected;
        if complete || read_at >= deadline {
            let elapsed = read_at - started;
            return Ok(Watched { stats, elapsed, complete, expected, resident_peak_bytes });
        }
        if read_at >= next_report {
            let seconds = (read_at - started).as_secs_f64();
            println!(
                "    received {} of {expected} after {seconds:.0} s; Kapsel RSS {} MB",
                stats.deliveries_total,
                megabytes(resident_bytes)
            );
            next_report += progress;
        }
        monoio::time::sleep(Duration::from_millis(limits::SINK_POLL_MS)).await;
    }
}

/// Polls Kapsel's `kapsel_events_waiting` every [`limits::METRICS_POLL_MS`] until no shard has
/// an event waiting, or [`limits::DELIVERY_SETTLED_MS_MAX`] has passed: how long it took, and
/// the events still waiting then (`None`: the metric was missing).
async fn wait_settled(kapsel: SocketAddr) -> Result<(Duration, Option<u64>), String> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(limits::DELIVERY_SETTLED_MS_MAX);
    loop {
        let waiting = events_waiting(kapsel).await?;
        if waiting.is_none_or(|waiting| waiting == 0) || Instant::now() >= deadline {
            return Ok((started.elapsed(), waiting));
        }
        monoio::time::sleep(Duration::from_millis(limits::METRICS_POLL_MS)).await;
    }
}

/// `kapsel_events_waiting` summed over the shards.
async fn events_waiting(kapsel: SocketAddr) -> Result<Option<u64>, String> {
    metric_sum(kapsel, EVENTS_WAITING_METRIC).await
}

/// The sum of every sample of the metric `name` in Kapsel's `GET /metrics` (one per shard);
/// `None` when it has none.
async fn metric_sum(kapsel: SocketAddr, name: &str) -> Result<Option<u64>, String> {
    match setup::one_request(kapsel, &request("GET", "/metrics", kapsel, &[], None)).await? {
        (200, text) => Ok(sum_samples(&text, name)),
        (status, body) => Err(format!("GET /metrics answered {status}: {body}")),
    }
}

/// The sum of the samples of `name` in a Prometheus text exposition: lines `name value` and
/// `name{labels} value`; `None` when there is none. Values are whole numbers here (counters
/// and gauges of events); a fraction is truncated.
fn sum_samples(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !rest.starts_with(['{', ' ']) {
                return None;
            }
            let (_, value) = rest.trim_end().rsplit_once(' ')?;
            value.parse::<f64>().ok()
        })
        .fold(None, |sum, value| Some(sum.unwrap_or(0) + value as u64))
}

/// An error with both servers' log tails.
fn failure(kapsel: &ServerProcess, sink: &ServerProcess, error: &str) -> String {
    format!("{}\n{}", kapsel.failure(error), sink.failure("(its log)"))
}

/// The backlog's payload bytes over one shard's default payload budget (the one endpoint lives
/// on one shard).
fn budget_multiple(events: u64) -> f64 {
    events as f64 * limits::PAYLOAD_BYTES as f64 / limits::KAPSEL_PAYLOAD_MEMORY_BYTES_DEFAULT as f64
}

fn per_s(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

fn milliseconds(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn pass(met: bool) -> &'static str {
    if met {
        "PASS"
    } else {
        "FAIL"
    }
}

/// ` (N undelivered within the bound)`, or nothing.
fn undelivered_caveat(watched: &Watched) -> String {
    match watched.undelivered() {
        0 => String::new(),
        missing => {
            format!("  ({missing} undelivered {} s after the start)", limits::DELIVERY_BACKLOG_DRAIN_MS_MAX / 1000)
        }
    }
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |value| value.to_string())
}

/// The header's lines on the scenarios `KAPSEL_BENCH_ONLY` selects.
pub(super) fn print_header(bench: &Bench) {
    let bound = limits::DELIVERY_BACKLOG_DRAIN_MS_MAX / 1000;
    if bench.selected(Scenario::Backlog.label()) {
        println!(
            "  backlog:  {ENDPOINT} paused, {} events of {} B ({:.1}× a shard's default {} MiB payload budget) \
             over {} connections, then enabled; drain ≤ {bound} s",
            bench.backlog_events,
            limits::PAYLOAD_BYTES,
            budget_multiple(bench.backlog_events),
            limits::KAPSEL_PAYLOAD_MEMORY_BYTES_DEFAULT >> 20,
            limits::DELIVERY_FILL_CONNECTIONS,
        );
    }
    if bench.selected(Scenario::Burst.label()) {
        println!(
            "  burst:    {ENDPOINT}, closed loop of {} connections for {} s, then until its last delivery (≤ {bound} s)",
            limits::DELIVERY_BURST_CONNECTIONS,
            bench.burst.as_secs(),
        );
    }
    if bench.selected(Scenario::Restart.label()) {
        println!(
            "  restart:  {ENDPOINT}, {} events delivered, SIGTERM, sink reset, start on the same data directory; \
             deliveries counted for {} s after ready",
            bench.restart_events,
            limits::DELIVERY_RESTART_QUIET_MS / 1000,
        );
    }
}

impl Measured {
    /// The line printed when the scenario ends.
    pub(super) fn line(&self) -> String {
        match self {
            Self::Backlog(backlog) => format!(
                "filled {} in {:.1} s; drained in {:.2} s = {:.0} deliveries/s; RSS before {} MB, peak {} MB, \
                 after {} MB; undelivered {}",
                backlog.filled.accepted,
                backlog.filled.elapsed.as_secs_f64(),
                backlog.drain.elapsed.as_secs_f64(),
                per_s(backlog.filled.accepted, backlog.drain.elapsed),
                megabytes(backlog.before.resident_bytes),
                megabytes(backlog.drain.resident_peak_bytes),
                megabytes(backlog.after.resident_bytes),
                backlog.drain.undelivered(),
            ),
            Self::Burst(burst) => format!(
                "ingest {:.0}/s for {} s, accepted {}; delivered {} in {:.2} s = {:.0}/s; p50 {:.2} ms  p99 {:.2} ms  \
                 undelivered {}  errors {}",
                burst.ingest.throughput_per_s(),
                burst.ingest.elapsed.as_secs(),
                burst.ingest.accepted_total,
                burst.drain.stats.deliveries,
                burst.drain.elapsed.as_secs_f64(),
                per_s(burst.drain.stats.deliveries, burst.drain.elapsed),
                milliseconds(burst.drain.stats.p50_us),
                milliseconds(burst.drain.stats.p99_us),
                burst.drain.undelivered(),
                burst.ingest.failures,
            ),
            Self::Restart(restart) => format!(
                "{} delivered in {:.1} s; stopped in {:.2} s; ready again in {:.2} s; deliveries in the {} s after: {}; \
                 RSS {} MB",
                restart.delivered.stats.deliveries_total,
                restart.delivered.elapsed.as_secs_f64(),
                restart.stopped_in.as_secs_f64(),
                restart.ready.as_secs_f64(),
                limits::DELIVERY_RESTART_QUIET_MS / 1000,
                restart.after.deliveries,
                megabytes(restart.memory.resident_bytes),
            ),
        }
    }

    /// Cores' worth of CPU other processes used while it was measured (0 when not measured).
    pub(super) fn others_cores(&self) -> f64 {
        match self {
            Self::Backlog(backlog) => backlog.cpu.others_cores(),
            Self::Burst(burst) => burst.cpu.others_cores(),
            Self::Restart(_) => 0.0,
        }
    }
}

/// The details of every scenario that ran, then the legend.
pub(super) fn print_results(measured: &[Measured]) {
    println!("Backlog, burst and restart (one endpoint, {ENDPOINT}; MB = 10^6 bytes):");
    for scenario in measured {
        match scenario {
            Measured::Backlog(backlog) => print_backlog(backlog),
            Measured::Burst(burst) => print_burst(burst),
            Measured::Restart(restart) => print_restart(restart),
        }
    }
    println!();
    println!("{LEGEND}");
}

fn print_backlog(backlog: &Backlog) {
    let (filled, drain) = (&backlog.filled, &backlog.drain);
    println!(
        "  backlog     {} events of {} B ({:.1}× the payload budget) accepted at {:.0}/s (failed and sent again: {}); \
         waiting before enabling: {}",
        filled.accepted,
        limits::PAYLOAD_BYTES,
        budget_multiple(filled.accepted),
        filled.accepted_per_s(),
        filled.failures,
        count(backlog.waiting),
    );
    println!(
        "              drained in {:.2} s = {:.0}/s; received {}, undelivered {}; read back from the log: {}; \
         Kapsel {:.1} µs CPU/delivery, sink {:.1}, others {:.2} cores",
        drain.elapsed.as_secs_f64(),
        per_s(filled.accepted, drain.elapsed),
        drain.stats.deliveries_total,
        drain.undelivered(),
        count(backlog.read_back),
        backlog.cpu.kapsel_us_per(drain.stats.deliveries_total),
        backlog.cpu.sink.as_secs_f64() * 1e6 / drain.stats.deliveries_total.max(1) as f64,
        backlog.cpu.others_cores(),
    );
    println!(
        "              Kapsel RSS {} MB with the backlog accepted, peak {} MB during the drain, {} MB {} s after it; \
         VmHWM {} MB",
        megabytes(backlog.before.resident_bytes),
        megabytes(drain.resident_peak_bytes),
        megabytes(backlog.after.resident_bytes),
        limits::DELIVERY_SETTLE_MS / 1000,
        megabytes(backlog.after.peak_bytes),
    );
}

fn print_burst(burst: &Burst) {
    let (ingest, drain) = (&burst.ingest, &burst.drain);
    println!(
        "  burst       {} connections for {} s: {} accepted ({:.0}/s in the burst), ingest p99 {:.2} ms, errors {}",
        ingest.plan.connections,
        ingest.elapsed.as_secs(),
        ingest.accepted_total,
        ingest.throughput_per_s(),
        ingest.latencies.at(99.0).as_secs_f64() * 1000.0,
        ingest.failures,
    );
    println!(
        "              {} delivered, the last {:.2} s after the burst's start = {:.0}/s; undelivered {}; \
         ingest-to-delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        drain.stats.deliveries,
        drain.elapsed.as_secs_f64(),
        per_s(drain.stats.deliveries, drain.elapsed),
        drain.undelivered(),
        milliseconds(drain.stats.p50_us),
        milliseconds(drain.stats.p99_us),
        milliseconds(drain.stats.max_us),
    );
    println!(
        "              Kapsel {:.1} µs CPU/delivery (ingest and delivery), sink {:.1}, others {:.2} cores; \
         Kapsel RSS peak {} MB (VmHWM), {} MB at the end",
        burst.cpu.kapsel_us_per(drain.stats.deliveries),
        burst.cpu.sink.as_secs_f64() * 1e6 / drain.stats.deliveries.max(1) as f64,
        burst.cpu.others_cores(),
        megabytes(burst.memory.peak_bytes),
        megabytes(burst.memory.resident_bytes),
    );
}

fn print_restart(restart: &Restart) {
    let (filled, delivered) = (&restart.filled, &restart.delivered);
    let (settled_in, waiting) = restart.settled;
    println!(
        "  restart     {} events accepted at {:.0}/s and delivered, the last {:.1} s after the fill's start \
         (received {}, undelivered {}); none waiting after {:.2} s more: {}",
        filled.accepted,
        filled.accepted_per_s(),
        delivered.elapsed.as_secs_f64(),
        delivered.stats.deliveries_total,
        delivered.undelivered(),
        settled_in.as_secs_f64(),
        if waiting == Some(0) { "yes".to_string() } else { format!("no, {} waiting", count(waiting)) },
    );
    println!(
        "              Kapsel RSS {} MB with every event delivered (peak {} MB), before the stop",
        megabytes(restart.delivered_memory.resident_bytes),
        megabytes(restart.delivered_memory.peak_bytes),
    );
    println!(
        "              SIGTERM to exit {:.2} s; spawn to ready {:.2} s; in the {} s after ready: {} deliveries, \
         {} events waiting; Kapsel RSS {} MB",
        restart.stopped_in.as_secs_f64(),
        restart.ready.as_secs_f64(),
        limits::DELIVERY_RESTART_QUIET_MS / 1000,
        restart.after.deliveries,
        count(restart.waiting_after),
        megabytes(restart.memory.resident_bytes),
    );
}

/// The summary's lines for the scenarios that ran.
pub(super) fn print_summary(measured: &[Measured]) {
    let target = DELIVERIES_PER_S_TARGET_MIN;
    for scenario in measured {
        match scenario {
            Measured::Backlog(backlog) => {
                let (events, drain) = (backlog.filled.accepted, &backlog.drain);
                let rate = per_s(events, drain.elapsed);
                println!(
                    "  backlog drain, {events} events ({:.1}× the payload budget): {rate:.0} deliveries/s over {:.1} s;  \
                     target ≥ {target:.0}/s: {}{}",
                    budget_multiple(events),
                    drain.elapsed.as_secs_f64(),
                    pass(drain.complete && rate >= target),
                    undelivered_caveat(drain),
                );
                println!(
                    "    Kapsel RSS {} MB with the backlog accepted, peak {} MB during the drain, {} MB after",
                    megabytes(backlog.before.resident_bytes),
                    megabytes(drain.resident_peak_bytes),
                    megabytes(backlog.after.resident_bytes),
                );
            }
            Measured::Burst(burst) => {
                let (ingest, drain) = (&burst.ingest, &burst.drain);
                let rate = per_s(drain.stats.deliveries, drain.elapsed);
                let errors = match ingest.failures.total() {
                    0 => String::new(),
                    _ => format!("  (ingest errors, not accepted: {})", ingest.failures),
                };
                println!(
                    "  burst, {} connections for {} s into one endpoint: {} accepted, {} delivered, the last {:.2} s \
                     after its start = {rate:.0}/s;  target ≥ {target:.0}/s: {}{}{errors}",
                    ingest.plan.connections,
                    ingest.elapsed.as_secs(),
                    ingest.accepted_total,
                    drain.stats.deliveries,
                    drain.elapsed.as_secs_f64(),
                    pass(drain.complete && rate >= target),
                    undelivered_caveat(drain),
                );
            }
            Measured::Restart(restart) => print_restart_summary(restart),
        }
    }
}

fn print_restart_summary(restart: &Restart) {
    let (_, waiting) = restart.settled;
    let caveat = match (restart.delivered.undelivered(), waiting) {
        (0, Some(0)) => String::new(),
        (missing, waiting) => {
            format!("  ({missing} undelivered before the stop, {} events waiting at the stop)", count(waiting))
        }
    };
    println!(
        "  graceful restart after {} deliveries: {} deliveries in the {} s after ready;  target 0: {}; \
         ready in {:.2} s, Kapsel RSS {} MB{caveat}",
        restart.delivered.stats.deliveries_total,
        restart.after.deliveries,
        limits::DELIVERY_RESTART_QUIET_MS / 1000,
        pass(restart.after.deliveries == 0),
        restart.ready.as_secs_f64(),
        megabytes(restart.memory.resident_bytes),
    );
}

/// The legend under the details.
const LEGEND: &str = "  backlog: the endpoint paused while the events are ingested (202: durable), then enabled;
    drained in: from the enable to the first poll of the sink's GET /stats (every 50 ms) that
    counted them all; the rate is the events over that time. waiting: kapsel_events_waiting
    summed over the shards; read back: kapsel_read_back_events_total, events whose payload came
    back from the log. RSS: VmRSS of Kapsel, sampled at every poll during the drain for the peak;
    VmHWM: its peak since it started, the fill included.
  burst: the closed loop's 202s; delivered: what the sink received after the check ingest; the
    rate is those over the time from the burst's start to the poll that counted the last one.
    Ingest-to-delivery latency runs from the send time stamped into each body.
  restart: the first Kapsel stopped with SIGTERM once the sink had received every event and no
    shard reported an event waiting; the sink's counters reset; the second started on the same
    data directory; ready: spawn to the first GET /readyz 200 (polled every 10 ms).
  CPU/delivery: user+system time over the drain (backlog) or from the burst's start to its last
    delivery (burst); others: cores' worth used by other processes meanwhile (the noise).";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The backlog and restart figures read Kapsel's per-shard gauges out of GET /metrics: every
    // shard's sample must be summed, and the help lines, longer names sharing the prefix and
    // unlabelled samples told apart.
    #[test]
    fn metric_samples_are_summed_over_the_shards() {
        let text = "# HELP kapsel_events_waiting Events not yet delivered.\n\
                    # TYPE kapsel_events_waiting gauge\n\
                    kapsel_events_waiting{shard=\"0\"} 999000\n\
                    kapsel_events_waiting{shard=\"1\"} 1000\n\
                    kapsel_events_waiting_total{shard=\"0\"} 7\n\
                    process_resident_memory_bytes 4.2e7\n";
        assert_eq!(sum_samples(text, "kapsel_events_waiting"), Some(1_000_000));
        assert_eq!(sum_samples(text, "process_resident_memory_bytes"), Some(42_000_000));
        assert_eq!(sum_samples(text, "kapsel_read_back_events_total"), None);
    }
}
