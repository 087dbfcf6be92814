//! The delivery benchmark as `cargo bench -p kapsel-bench --bench delivery` runs it: end to
//! end, ingest into endpoints whose destination is the [`crate::sink`] on loopback, and count
//! what arrives.
//!
//! Every scenario starts a fresh sink and a fresh Kapsel (fresh data directory on the real
//! disk), creates endpoints `bench-0`…`bench-3` pointing at the sink's `/hook` with the default
//! delivery settings, checks that one event per endpoint arrives, then runs a loop of stamped
//! ingests (each body carries its send time). At the end of the warm-up the sink's stats are
//! reset; at the end of the measured period they are read (deliveries in the window and their
//! ingest-to-delivery latency); then ingest stops and the bench waits, bounded, until the sink
//! has received every event Kapsel accepted (the drain).
//!
//! After the loops come three scenarios on one endpoint that each build a backlog and wait
//! until all of it has arrived: a paused endpoint's backlog far beyond the payload budget,
//! drained once it is enabled; a burst of 256 connections; and a graceful restart after a
//! million deliveries, which must send nothing again (the private `backlog` module). Last,
//! one endpoint's delivery rate alone and beside misbehaving destinations on its shard (the
//! private `hostile` module), and `POST /publish/{channel}` delivering every event to 1, 10
//! and 100 endpoints (the private `fanout` module); and one tenant's ingest latency and
//! delivery rate alone and beside another tenant's flood (the private `tenants` module).

mod backlog;
mod fanout;
mod hostile;
mod tenants;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use monoio::time::Instant;

use crate::closed::ClosedLoop;
use crate::limits;
use crate::machine::{self, CpuMeter, CpuUsage, Facts};
use crate::open::OpenLoop;
use crate::payload::{ingest_request, request, stamped_json_body, unix_micros_now, SendTimeStamp};
use crate::process::ServerProcess;
use crate::report;
use crate::runtime::{block_on, Driver};
use crate::setup::{self, Paths, DESTINATIONS_ALLOWED};
use crate::sink::{SinkStats, HOOK_PATH};
use crate::suite::{Outcome, Plan};

/// The issue's target: successful deliveries per second on this machine.
pub const DELIVERIES_PER_S_TARGET_MIN: f64 = 20_000.0;

/// The endpoints' name prefix: `bench-0`, `bench-1`, …
const ENDPOINT_PREFIX: &str = "bench";

/// The bench's settings, from the environment.
struct Bench {
    paths: Paths,
    data_directory: PathBuf,
    shards: usize,
    driver: Driver,
    warm_up: Duration,
    measure: Duration,
    endpoints: Vec<String>,
    skip_build: bool,
    only: Vec<String>,
    admin_token: String,
    /// `KAPSEL_BENCH_BACKLOG_EVENTS`: the backlog scenario's events.
    backlog_events: u64,
    /// `KAPSEL_BENCH_BURST_SECONDS`: the burst scenario's closed loop.
    burst: Duration,
    /// `KAPSEL_BENCH_RESTART_EVENTS`: events delivered before the restart.
    restart_events: u64,
}

/// What one scenario measured.
struct Delivered {
    plan: Plan,
    /// The ingest side, as the loop saw it; its CPU figures are Kapsel's and the generator's.
    ingest: Outcome,
    /// The sink's stats at the end of the measured period (reset at its start).
    window: SinkStats,
    /// From the reset to that reading.
    window_elapsed: Duration,
    /// The sink's own CPU over the window.
    sink_cpu: CpuUsage,
    /// Events Kapsel accepted (202), the first ones before the loop included.
    accepted: u64,
    /// The sink's stats when the drain ended (since the reset: window and drain).
    overall: SinkStats,
    /// From the reset to the end of the drain.
    overall_elapsed: Duration,
    /// From the end of the measured period to the end of the drain.
    drain: Duration,
}

impl Delivered {
    fn window_per_s(&self) -> f64 {
        self.window.deliveries as f64 / self.window_elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn overall_per_s(&self) -> f64 {
        self.overall.deliveries as f64 / self.overall_elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Accepted events the sink had not received when the drain ended.
    fn undelivered(&self) -> u64 {
        self.accepted.saturating_sub(self.overall.deliveries_total)
    }
}

/// Entry point of `benches/delivery.rs`. Run under `cargo test` (no `--bench` argument) it
/// only says so.
pub fn main() -> ExitCode {
    setup::bench_main("kapsel-bench delivery", "cargo bench -p kapsel-bench --bench delivery", run)
}

fn run() -> Result<(), String> {
    let bench = Bench::from_env()?;
    bench.print_header();
    setup::build_binaries(&bench.paths, bench.skip_build, &["kapsel", "sink"])?;
    setup::fresh_data_directory(&bench.paths, &bench.data_directory)?;
    println!(
        "\nrunning (every scenario on a fresh Kapsel and sink; {} s warm-up, {} s measured, then the drain):",
        bench.warm_up.as_secs(),
        bench.measure.as_secs()
    );
    let mut results = Vec::new();
    for plan in bench.plans() {
        if !bench.selected(&plan.label()) {
            continue;
        }
        let delivered = bench.scenario(plan)?;
        let (ingest_per_s, _, failures, _) = delivered.ingest.summary();
        println!(
            "  {:<11} ingest {ingest_per_s:>7.0}/s  delivered {:>7.0}/s (with drain {:>7.0}/s)  \
             p50 {:>7.2} ms  p99 {:>7.2} ms  undelivered {}  errors {failures}",
            plan.label(),
            delivered.window_per_s(),
            delivered.overall_per_s(),
            milliseconds(delivered.window.p50_us),
            milliseconds(delivered.window.p99_us),
            delivered.undelivered(),
        );
        results.push(delivered);
    }
    let mut backlogs = Vec::new();
    for scenario in backlog::Scenario::ALL {
        if bench.selected(scenario.label()) {
            let measured = backlog::run(&bench, scenario)?;
            println!("  {:<11} {}", scenario.label(), measured.line());
            backlogs.push(measured);
        }
    }
    let hostile = if bench.selected(hostile::LABEL) {
        let measured = hostile::run(&bench)?;
        println!("  {:<11} {}", hostile::LABEL, measured.line());
        Some(measured)
    } else {
        None
    };
    let fanout = if bench.selected(fanout::LABEL) {
        let measured = fanout::run(&bench)?;
        println!("  {:<11} {}", fanout::LABEL, measured.line());
        Some(measured)
    } else {
        None
    };
    let tenants = if bench.selected(tenants::LABEL) {
        let measured = tenants::run(&bench)?;
        println!("  {:<11} {}", tenants::LABEL, measured.line());
        Some(measured)
    } else {
        None
    };
    print_results(&bench, &results, &backlogs, hostile.as_ref(), fanout.as_ref(), tenants.as_ref());
    Ok(())
}

impl Bench {
    fn from_env() -> Result<Self, String> {
        let paths = Paths::from_env()?;
        let measure_seconds = setup::measure_seconds_from_env()?;
        let events = |name, default| setup::number_from_env(name, default, limits::DELIVERY_EVENTS_MAX);
        let burst_seconds = setup::number_from_env(
            "KAPSEL_BENCH_BURST_SECONDS",
            limits::DELIVERY_BURST_SECONDS_DEFAULT,
            limits::DELIVERY_BURST_SECONDS_MAX,
        )?;
        Ok(Self {
            data_directory: paths.bench_directory("delivery-data"),
            paths,
            shards: setup::number_from_env(
                "KAPSEL_BENCH_SHARDS",
                limits::SERVER_SHARDS_DEFAULT,
                limits::SERVER_SHARDS_MAX,
            )?,
            driver: Driver::from_env()?,
            warm_up: Duration::from_millis(limits::WARM_UP_MS),
            measure: Duration::from_secs(measure_seconds as u64),
            endpoints: (0..limits::DELIVERY_ENDPOINTS).map(|index| format!("{ENDPOINT_PREFIX}-{index}")).collect(),
            skip_build: setup::flag_from_env("KAPSEL_BENCH_SKIP_BUILD"),
            only: setup::words_from_env("KAPSEL_BENCH_ONLY"),
            admin_token: format!("kapsel-bench-{}", std::process::id()),
            backlog_events: events("KAPSEL_BENCH_BACKLOG_EVENTS", limits::DELIVERY_BACKLOG_EVENTS_DEFAULT)? as u64,
            burst: Duration::from_secs(burst_seconds as u64),
            restart_events: events("KAPSEL_BENCH_RESTART_EVENTS", limits::DELIVERY_RESTART_EVENTS_DEFAULT)? as u64,
        })
    }

    /// Whether `KAPSEL_BENCH_ONLY` selects the scenario `label` (unset: every one).
    fn selected(&self, label: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|word| label.contains(word.as_str()))
    }

    fn print_header(&self) {
        let facts = Facts::read();
        setup::print_preamble(
            "Kapsel delivery load test",
            &[
                "CARGO_TARGET_DIR",
                "KAPSEL_BENCH_SECONDS",
                "KAPSEL_BENCH_SHARDS",
                "KAPSEL_BENCH_ONLY",
                "KAPSEL_BENCH_BACKLOG_EVENTS",
                "KAPSEL_BENCH_BURST_SECONDS",
                "KAPSEL_BENCH_RESTART_EVENTS",
                "KAPSEL_BENCH_SKIP_BUILD",
                "KAPSEL_IO_DRIVER",
            ],
            "cargo bench -p kapsel-bench --bench delivery",
            &facts,
        );
        println!(
            "  kapsel:   {} shards, monoio driver {} (io_uring {}), endpoints {ENDPOINT_PREFIX}-{{0..{}}} → sink {HOOK_PATH} \
             (default delivery settings: max_in_flight 16), KAPSEL_ALLOW_DESTINATIONS={DESTINATIONS_ALLOWED}",
            self.shards,
            self.driver.name(),
            if facts.io_uring { "available" } else { "unavailable" },
            self.endpoints.len() - 1,
        );
        println!("  sink:     one thread on the same HTTP stack, 200 at once, keep-alive; latency = arrival − sent_us in the body");
        println!(
            "  client:   one monoio thread, keep-alive HTTP/1.1, POST /ingest/{ENDPOINT_PREFIX}-i (connection i → endpoint i mod {}), \
             {} B JSON body stamped with its send time",
            self.endpoints.len(),
            limits::PAYLOAD_BYTES
        );
        backlog::print_header(self);
        hostile::print_header(self);
        fanout::print_header(self);
        tenants::print_header(self);
    }

    /// The closed loop, then the open loops by rate.
    fn plans(&self) -> Vec<Plan> {
        let (warm_up, measure) = (self.warm_up, self.measure);
        // The stamp is filled in per scenario, once the body is built.
        let mut plans = vec![Plan::Closed(ClosedLoop {
            connections: limits::DELIVERY_CLOSED_LOOP_CONNECTIONS,
            warm_up,
            measure,
            stamp: None,
        })];
        plans.extend(limits::DELIVERY_OPEN_LOOP_RATES_PER_S.map(|rate_per_s| {
            Plan::Open(OpenLoop {
                rate_per_s,
                connections: limits::OPEN_LOOP_CONNECTIONS,
                warm_up,
                measure,
                stamp: None,
            })
        }));
        plans
    }

    /// Spawns a sink and Kapsel, readies them, runs `plan`, drains, kills both.
    fn scenario(&self, plan: Plan) -> Result<Delivered, String> {
        let data = self.scenario_directory()?;
        let (mut sink, mut kapsel) = self.spawn_servers(data.path(), &plan.label())?;
        let (body, digits_at) = stamped_json_body(limits::PAYLOAD_BYTES)?;
        let stamp = SendTimeStamp::of_body(&body, digits_at);
        let address = kapsel.address();
        let requests: Vec<Vec<u8>> =
            self.endpoints.iter().map(|endpoint| ingest_request(address, endpoint, &body)).collect();
        let plan = match plan {
            Plan::Closed(closed) => Plan::Closed(ClosedLoop { stamp: Some(stamp), ..closed }),
            Plan::Open(open) => Plan::Open(OpenLoop { stamp: Some(stamp), ..open }),
        };
        let meters = (CpuMeter::new(kapsel.pid()), CpuMeter::new(sink.pid()));
        let delivered = block_on(self.driver, self.drive(plan, address, sink.address(), &requests, stamp, meters))?
            .map_err(|error| format!("{}\n{}", kapsel.failure(&error), sink.failure("(its log)")))?;
        kapsel.check_running()?;
        sink.check_running()?;
        drop(kapsel);
        drop(sink);
        drop(data);
        Ok(delivered)
    }

    /// A fresh data directory for one scenario, deleted when dropped.
    fn scenario_directory(&self) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix("kapsel-")
            .tempdir_in(&self.data_directory)
            .map_err(|error| format!("creating a data directory in {}: {error}", self.data_directory.display()))
    }

    /// Spawns a sink, then Kapsel on `data`: their logs are
    /// `delivery-{sink,kapsel}-<label>.log`.
    fn spawn_servers(&self, data: &Path, label: &str) -> Result<(ServerProcess, ServerProcess), String> {
        let sink = ServerProcess::spawn(
            "sink",
            &self.paths.binaries.join("sink"),
            &setup::server_variables(1, self.driver, data),
            &self.paths.log_directory.join(format!("delivery-sink-{label}.log")),
        )?;
        let kapsel = self.spawn_kapsel(data, label)?;
        Ok((sink, kapsel))
    }

    /// Spawns Kapsel on `data`, its log `delivery-kapsel-<label>.log`.
    fn spawn_kapsel(&self, data: &Path, label: &str) -> Result<ServerProcess, String> {
        let variables = setup::kapsel_variables(self.shards, self.driver, data, &self.admin_token);
        let log = self.paths.log_directory.join(format!("delivery-kapsel-{label}.log"));
        ServerProcess::spawn("kapsel", &self.paths.binaries.join("kapsel"), &variables, &log)
    }

    /// Everything a scenario does over HTTP: endpoints, the first deliveries, the loop with
    /// the sink observed around its measured period, the drain.
    async fn drive(
        &self,
        plan: Plan,
        kapsel: SocketAddr,
        sink: SocketAddr,
        requests: &[Vec<u8>],
        stamp: SendTimeStamp,
        (kapsel_meter, sink_meter): (CpuMeter, CpuMeter),
    ) -> Result<Delivered, String> {
        setup::wait_until_ready(sink).await?;
        setup::wait_until_ready(kapsel).await?;
        let endpoint_body = format!(r#"{{"ingest_auth":{{"type":"none"}},"url":"http://{sink}{HOOK_PATH}"}}"#);
        for (endpoint, ingest) in self.endpoints.iter().zip(requests) {
            setup::create_endpoint(kapsel, &self.admin_token, endpoint, &endpoint_body).await?;
            let mut ingest = ingest.clone();
            stamp.write(&mut ingest, unix_micros_now());
            setup::check_ingest(kapsel, endpoint, &ingest).await?;
        }
        let first = self.endpoints.len() as u64;
        let first_deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_FIRST_MS_MAX);
        if !wait_for_deliveries(sink, first, first_deadline).await?.2 {
            return Err(format!(
                "the sink did not receive the first {first} events within {} ms",
                limits::DELIVERY_FIRST_MS_MAX
            ));
        }
        let (warm_up, measure) = plan.period();
        let measure_start = Instant::now() + warm_up;
        let measure_end = measure_start + measure;
        let observer = monoio::spawn(observe(sink, sink_meter, measure_start, measure_end));
        let ingest = plan.run(kapsel, requests, kapsel_meter).await?;
        let observed = observer.await?;
        let accepted = first + ingest.accepted_total();
        let drain_deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_DRAIN_MS_MAX);
        let (overall, drained_at, _) = wait_for_deliveries(sink, accepted, drain_deadline).await?;
        Ok(Delivered {
            plan,
            ingest,
            window: observed.stats,
            window_elapsed: observed.elapsed,
            sink_cpu: observed.cpu,
            accepted,
            overall,
            overall_elapsed: drained_at - observed.reset_at,
            drain: drained_at.saturating_duration_since(measure_end),
        })
    }
}

/// The sink around the measured period.
struct Observed {
    /// When the sink's stats were reset (the start of the measured period).
    reset_at: Instant,
    /// From the reset to the reading of `stats`.
    elapsed: Duration,
    /// The sink's stats at the end of the measured period.
    stats: SinkStats,
    /// The sink's CPU in between.
    cpu: CpuUsage,
}

/// Resets the sink's stats when the measured period starts and reads them when it ends.
async fn observe(sink: SocketAddr, meter: CpuMeter, start: Instant, end: Instant) -> Result<Observed, String> {
    monoio::time::sleep_until(start).await;
    let reset_at = Instant::now();
    let before = meter.sample();
    reset_sink(sink).await?;
    monoio::time::sleep_until(end).await;
    let read_at = Instant::now();
    let stats = sink_stats(sink).await?;
    Ok(Observed { reset_at, elapsed: read_at - reset_at, stats, cpu: meter.sample().since(&before) })
}

/// `POST /reset` to the sink: everything but `deliveries_total` starts again from zero.
async fn reset_sink(sink: SocketAddr) -> Result<(), String> {
    match setup::one_request(sink, &request("POST", "/reset", sink, &[], None)).await? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("the sink answered POST /reset with {status}: {body}")),
    }
}

/// `GET /stats` of the sink.
async fn sink_stats(sink: SocketAddr) -> Result<SinkStats, String> {
    match setup::one_request(sink, &request("GET", "/stats", sink, &[], None)).await? {
        (200, body) => {
            SinkStats::parse(body.as_bytes()).ok_or_else(|| format!("the sink's stats do not parse: {body}"))
        }
        (status, body) => Err(format!("the sink answered GET /stats with {status}: {body}")),
    }
}

/// Polls the sink until it has received `count` deliveries in all, or `deadline` passes: its
/// last stats, when they were read, and whether the count was reached.
async fn wait_for_deliveries(
    sink: SocketAddr,
    count: u64,
    deadline: Instant,
) -> Result<(SinkStats, Instant, bool), String> {
    loop {
        let read_at = Instant::now();
        let stats = sink_stats(sink).await?;
        if stats.deliveries_total >= count {
            return Ok((stats, read_at, true));
        }
        if read_at >= deadline {
            return Ok((stats, read_at, false));
        }
        monoio::time::sleep(Duration::from_millis(limits::SINK_POLL_MS)).await;
    }
}

fn milliseconds(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn print_results(
    bench: &Bench,
    results: &[Delivered],
    backlogs: &[backlog::Measured],
    hostile: Option<&hostile::Measured>,
    fanout: Option<&fanout::Measured>,
    tenants: Option<&tenants::Measured>,
) {
    if results.is_empty() && backlogs.is_empty() && hostile.is_none() && fanout.is_none() && tenants.is_none() {
        return;
    }
    if !results.is_empty() {
        print_loops(bench, results);
    }
    if !backlogs.is_empty() {
        println!();
        backlog::print_results(backlogs);
    }
    if let Some(hostile) = hostile {
        println!();
        hostile::print_results(hostile);
    }
    if let Some(fanout) = fanout {
        println!();
        fanout::print_results(fanout);
    }
    if let Some(tenants) = tenants {
        println!();
        tenants::print_results(tenants);
    }
    println!();
    println!("Summary (target from the issue: ≥ {DELIVERIES_PER_S_TARGET_MIN:.0} deliveries/s):");
    print_summary(results);
    backlog::print_summary(backlogs);
    if let Some(hostile) = hostile {
        hostile::print_summary(hostile);
    }
    if let Some(fanout) = fanout {
        fanout::print_summary(fanout);
    }
    if let Some(tenants) = tenants {
        tenants::print_summary(tenants);
    }
    let noise = results
        .iter()
        .map(|delivered| {
            let (_, _, _, cpu) = delivered.ingest.summary();
            let others = cpu.machine_busy.saturating_sub(cpu.server + cpu.client + delivered.sink_cpu.server);
            others.as_secs_f64() / delivered.window_elapsed.as_secs_f64().max(f64::EPSILON)
        })
        .chain(backlogs.iter().map(backlog::Measured::others_cores))
        .chain(hostile.map(hostile::Measured::others_cores))
        .chain(fanout.map(fanout::Measured::others_cores))
        .chain(tenants.map(tenants::Measured::others_cores))
        .fold(0.0, f64::max);
    if noise > report::NOISE_CORES_MAX {
        println!("  NOISY: other processes used up to {noise:.2} cores during a measured period; compare with care");
    }
    println!("  load average at the end: {}", machine::load_average());
}

/// The loops' tables and legend.
fn print_loops(bench: &Bench, results: &[Delivered]) {
    println!();
    println!(
        "Delivery end to end: {} B JSON, {} endpoints over {} shards, {} s measured, then drained (≤ {} s)",
        limits::PAYLOAD_BYTES,
        bench.endpoints.len(),
        bench.shards,
        bench.measure.as_secs(),
        limits::DELIVERY_DRAIN_MS_MAX / 1000,
    );
    println!("{}", header());
    for delivered in results {
        println!("{}", row(delivered));
    }
    println!("With the drain (since the start of the measured period, until the last event arrived):");
    for delivered in results {
        let overall = &delivered.overall;
        println!(
            "  {:<11} {} deliveries in {:.2} s = {:.0}/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; \
             accepted {}, received {}, undelivered {}, unstamped {}",
            delivered.plan.label(),
            overall.deliveries,
            delivered.overall_elapsed.as_secs_f64(),
            delivered.overall_per_s(),
            milliseconds(overall.p50_us),
            milliseconds(overall.p99_us),
            milliseconds(overall.p999_us),
            milliseconds(overall.max_us),
            delivered.accepted,
            overall.deliveries_total,
            delivered.undelivered(),
            overall.unstamped,
        );
    }
    println!("Kapsel CPU by thread over the measured period (cores), peak memory, load generator CPU:");
    for delivered in results {
        let (_, _, _, cpu) = delivered.ingest.summary();
        println!("{}", report::threads_row(&delivered.plan.label(), cpu, delivered.window_elapsed));
    }
    println!();
    println!("{LEGEND}");
}

/// The table's header.
fn header() -> String {
    format!(
        "{:<11} {:>9} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6}  {}",
        "scenario",
        "ingest/s",
        "ing p99",
        "deliv/s",
        "+drain/s",
        "drain s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "srv µs/dl",
        "snk µs/dl",
        "cli µs/rq",
        "others",
        "errors",
    )
}

/// One row of the table: the measured window.
fn row(delivered: &Delivered) -> String {
    let (ingest_per_s, ingest_latencies, failures, cpu) = delivered.ingest.summary();
    let wall = delivered.window_elapsed.as_secs_f64().max(f64::EPSILON);
    let per = |time: Duration, count: u64| if count == 0 { 0.0 } else { time.as_secs_f64() * 1e6 / count as f64 };
    let others = cpu.machine_busy.saturating_sub(cpu.server + cpu.client + delivered.sink_cpu.server);
    let window = &delivered.window;
    format!(
        "{:<11} {:>9.0} {:>8.2} {:>9.0} {:>9.0} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>6.2}  {}",
        delivered.plan.label(),
        ingest_per_s,
        ingest_latencies.at(99.0).as_secs_f64() * 1000.0,
        delivered.window_per_s(),
        delivered.overall_per_s(),
        delivered.drain.as_secs_f64(),
        milliseconds(window.p50_us),
        milliseconds(window.p99_us),
        milliseconds(window.p999_us),
        milliseconds(window.max_us),
        per(cpu.server, window.deliveries),
        per(delivered.sink_cpu.server, window.deliveries),
        per(cpu.client, (ingest_per_s * wall) as u64),
        others.as_secs_f64() / wall,
        failures,
    )
}

/// The legend under the table.
const LEGEND: &str = "  ingest/s: 202 answers per second in the measured period (open loop: until its last answer);
    ing p99: their p99 in ms (open loop: from the intended send time).
  deliv/s: deliveries the sink received in the measured period, per second; +drain/s: the same
    from the start of the measured period until every accepted event had arrived; drain s: how
    long after the end of the measured period that took.
  p50…max ms: ingest-to-delivery latency of the deliveries in the measured period, from the
    send time the generator wrote into the body to the sink's receipt (HdrHistogram, µs).
  srv µs/dl: Kapsel's CPU (user+system, ingest and delivery) per delivery in the measured
    period; snk µs/dl: the sink's; cli µs/rq: the load generator's per 202.
  others: cores' worth of CPU used by processes other than Kapsel, the sink and the generator.";

/// The closed loop's delivery rate against the target; the open loops' rates and latencies.
fn print_summary(results: &[Delivered]) {
    for delivered in results {
        let (ingest_per_s, _, failures, _) = delivered.ingest.summary();
        let clean = delivered.undelivered() == 0 && failures.total() == 0;
        let caveat = if clean {
            String::new()
        } else {
            format!("  ({} undelivered, ingest errors {failures})", delivered.undelivered())
        };
        match delivered.plan {
            Plan::Closed(closed) => println!(
                "  closed loop, {} connections: {:.0} deliveries/s in the measured window (ingest {ingest_per_s:.0}/s), \
                 {:.0}/s with the drain;  target ≥ {DELIVERIES_PER_S_TARGET_MIN:.0}/s: {}{caveat}",
                closed.connections,
                delivered.window_per_s(),
                delivered.overall_per_s(),
                if clean && delivered.window_per_s() >= DELIVERIES_PER_S_TARGET_MIN { "PASS" } else { "FAIL" },
            ),
            Plan::Open(open) => println!(
                "  open loop, {} ingests/s: {:.0} deliveries/s ({}), ingest-to-delivery p50 {:.2} ms, p99 {:.2} ms{caveat}",
                open.rate_per_s,
                delivered.window_per_s(),
                if delivered.window_per_s() >= 0.98 * open.rate_per_s as f64 { "keeps up" } else { "falls behind" },
                milliseconds(delivered.window.p50_us),
                milliseconds(delivered.window.p99_us),
            ),
        }
    }
}
