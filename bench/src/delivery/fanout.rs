//! The delivery bench's `fanout` scenario: `POST /publish/{channel}` delivering every event to
//! N endpoints, for each N of [`limits::DELIVERY_FANOUT_ENDPOINTS`] (1, 10 and 100). There is
//! no fan-out target in the issue; deliveries per second are printed beside the delivery
//! target for information.
//!
//! Each N runs on a fresh sink and a fresh Kapsel (`KAPSEL_BENCH_SHARDS` shards). Endpoints
//! `fan-0`…`fan-{N-1}` (default delivery settings, all pointing at the sink's `/hook`, spread
//! over the shards by the hash of their ids) subscribe to the channel [`CHANNEL`] with no
//! `event_types`, so every publish matches all of them. One stamped publish must be answered
//! 202 with `"endpoints":N` and arrive N times. Then a closed loop of publishes of the loops'
//! stamped 1 KiB body (every delivery carries its publish's send time, so the sink's latency
//! runs from the publish to that delivery) runs the warm-up and `KAPSEL_BENCH_SECONDS`, the
//! sink observed around the measured window as in the loops; last, the bench waits, bounded by
//! [`limits::DELIVERY_FANOUT_DRAIN_MS_MAX`], until the sink has received N deliveries for every
//! accepted publish.
//!
//! The loop's connections fall as N grows ([`limits::DELIVERY_FANOUT_CONNECTIONS`]): a publish
//! costs Kapsel one record and one fsync on the channel's shard whatever N is (ADR 13), its
//! deliveries N times the work of one. With as many connections as the loops at N = 100, the
//! publishes would ask for far more deliveries than go out and take CPU the deliveries need:
//! the window would measure a growing backlog, its latency the backlog's age. With
//! connections × N near the loops' 64 requests outstanding, the delivery side is what runs out
//! first and what the rates measure.

use super::hostile::owner_shard;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::time::Instant;

use super::{milliseconds, observe, wait_for_deliveries, Bench, DELIVERIES_PER_S_TARGET_MIN};
use crate::closed::{self, ClosedLoop, ClosedOutcome};
use crate::limits;
use crate::machine::CpuMeter;
use crate::payload::{request, stamped_json_body, unix_micros_now, SendTimeStamp};
use crate::process::ServerProcess;
use crate::report;
use crate::runtime::block_on;
use crate::setup;
use crate::sink::{json_u64_field, SinkStats, HOOK_PATH};

/// The label for `KAPSEL_BENCH_ONLY` and, with N appended, the logs' names and the lines.
pub(super) const LABEL: &str = "fanout";

/// The channel every endpoint subscribes to and every publish goes to.
const CHANNEL: &str = "bench";

/// The endpoints' name prefix: `fan-0`, `fan-1`, …
const ENDPOINT_PREFIX: &str = "fan";

/// One N's figures.
struct Run {
    /// Endpoints subscribed to the channel: deliveries per publish.
    endpoints: usize,
    /// Of them, those on the channel's shard (delivered from the publish record itself; the
    /// others' shards adopt their deliveries first, with one more record each).
    local: usize,
    /// The closed loop of publishes; its CPU figures are Kapsel's and the generator's.
    ingest: ClosedOutcome,
    /// The sink's stats at the end of the measured period (reset at its start).
    window: SinkStats,
    /// From the reset to that reading.
    window_elapsed: Duration,
    /// The sink's own CPU over the window.
    sink_cpu: Duration,
    /// Publishes Kapsel accepted (202), the check publish included.
    published: u64,
    /// The sink's stats when the drain ended (since the reset: window and drain).
    overall: SinkStats,
    /// From the reset to the end of the drain.
    overall_elapsed: Duration,
    /// From the end of the measured period to the end of the drain.
    drain: Duration,
}

impl Run {
    fn label(&self) -> String {
        format!("{LABEL}-{}", self.endpoints)
    }

    /// Deliveries owed: one per endpoint per accepted publish.
    fn expected(&self) -> u64 {
        self.published * self.endpoints as u64
    }

    /// Owed deliveries the sink had not received when the drain ended.
    fn undelivered(&self) -> u64 {
        self.expected().saturating_sub(self.overall.deliveries_total)
    }

    fn window_per_s(&self) -> f64 {
        self.window.deliveries as f64 / self.window_elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn overall_per_s(&self) -> f64 {
        self.overall.deliveries as f64 / self.overall_elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Cores' worth of CPU over the measured period used by processes other than Kapsel, the
    /// generator and the sink.
    fn others_cores(&self) -> f64 {
        let cpu = &self.ingest.cpu;
        let others = cpu.machine_busy.saturating_sub(cpu.server + cpu.client + self.sink_cpu);
        others.as_secs_f64() / self.window_elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The line printed when the run ends, in the loops' format.
    fn line(&self) -> String {
        format!(
            "{:<11} publish {:>6.0}/s  delivered {:>7.0}/s (with drain {:>7.0}/s)  p50 {:>7.2} ms  p99 {:>7.2} ms  \
             undelivered {}  errors {}",
            self.label(),
            self.ingest.throughput_per_s(),
            self.window_per_s(),
            self.overall_per_s(),
            milliseconds(self.window.p50_us),
            milliseconds(self.window.p99_us),
            self.undelivered(),
            self.ingest.failures,
        )
    }
}

/// What the scenario measured: one run per N.
pub(super) struct Measured {
    runs: Vec<Run>,
    /// Kapsel's shards, for the table's title.
    shards: usize,
    /// The measured period, for the table's title.
    measure: Duration,
}

impl Measured {
    /// The line printed when the scenario ends: deliveries per second by N.
    pub(super) fn line(&self) -> String {
        let rates: Vec<String> =
            self.runs.iter().map(|run| format!("×{} {:.0}/s", run.endpoints, run.window_per_s())).collect();
        let undelivered: u64 = self.runs.iter().map(Run::undelivered).sum();
        let errors: u64 = self.runs.iter().map(|run| run.ingest.failures.total()).sum();
        format!("deliveries by endpoints per publish: {}; undelivered {undelivered}, errors {errors}", rates.join(", "))
    }

    /// The most cores' worth of CPU other processes used in a run's window (the noise).
    pub(super) fn others_cores(&self) -> f64 {
        self.runs.iter().map(Run::others_cores).fold(0.0, f64::max)
    }
}

/// The header's line when the scenario is selected.
pub(super) fn print_header(bench: &Bench) {
    if bench.selected(LABEL) {
        let list = |values: &[usize]| values.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
        println!(
            "  fanout:   POST /publish/{CHANNEL} (channel on shard {}) to N = {} endpoints {ENDPOINT_PREFIX}-{{0..N-1}} → \
             sink {HOOK_PATH}, closed loops of {} connections; drain ≤ {} s",
            owner_shard(&format!("default/{CHANNEL}"), bench.shards),
            list(&limits::DELIVERY_FANOUT_ENDPOINTS),
            list(&limits::DELIVERY_FANOUT_CONNECTIONS),
            limits::DELIVERY_FANOUT_DRAIN_MS_MAX / 1000,
        );
    }
}

/// Runs every N, printing each one's line as it ends.
///
/// # Errors
///
/// A server did not start or exited, or a request the set-up needs failed (the check publish
/// included); with the servers' log tails.
pub(super) fn run(bench: &Bench) -> Result<Measured, String> {
    let mut runs = Vec::new();
    let planned = limits::DELIVERY_FANOUT_ENDPOINTS.into_iter().zip(limits::DELIVERY_FANOUT_CONNECTIONS);
    for (endpoints, connections) in planned {
        let run = fan_out(bench, endpoints, connections)?;
        println!("  {}", run.line());
        runs.push(run);
    }
    Ok(Measured { runs, shards: bench.shards, measure: bench.measure })
}

/// One N on a fresh sink and Kapsel.
fn fan_out(bench: &Bench, endpoints: usize, connections: usize) -> Result<Run, String> {
    let data = bench.scenario_directory()?;
    let (mut sink, mut kapsel) = bench.spawn_servers(data.path(), &format!("{LABEL}-{endpoints}"))?;
    let run = block_on(bench.driver, drive(bench, &kapsel, &sink, endpoints, connections))?
        .map_err(|error| format!("{}\n{}", kapsel.failure(&error), sink.failure("(its log)")))?;
    kapsel.check_running()?;
    sink.check_running()?;
    Ok(run)
}

/// The run over HTTP: the endpoints, the check publish, the loop with the sink observed around
/// its window, the drain.
async fn drive(
    bench: &Bench,
    kapsel: &ServerProcess,
    sink: &ServerProcess,
    endpoints: usize,
    connections: usize,
) -> Result<Run, String> {
    let address = kapsel.address();
    setup::wait_until_ready(sink.address()).await?;
    setup::wait_until_ready(address).await?;
    let endpoint_body = format!(
        r#"{{"ingest_auth":{{"type":"none"}},"url":"http://{}{HOOK_PATH}","channels":["{CHANNEL}"]}}"#,
        sink.address()
    );
    let ids: Vec<String> = (0..endpoints).map(|index| format!("{ENDPOINT_PREFIX}-{index}")).collect();
    for id in &ids {
        setup::create_endpoint(address, &bench.admin_token, id, &endpoint_body).await?;
    }
    let channel_shard = owner_shard(&format!("default/{CHANNEL}"), bench.shards);
    let local = ids.iter().filter(|id| owner_shard(id, bench.shards) == channel_shard).count();
    let (body, digits_at) = stamped_json_body(limits::PAYLOAD_BYTES)?;
    let stamp = SendTimeStamp::of_body(&body, digits_at);
    // A publish needs the operator token (or a key with `ingest`): `default`'s channel.
    let authorization = format!("Bearer {}", bench.admin_token);
    let publish =
        request("POST", &format!("/publish/{CHANNEL}"), address, &[("Authorization", &authorization)], Some(&body));
    check_publish(address, sink.address(), &publish, stamp, endpoints).await?;
    let plan = ClosedLoop { connections, warm_up: bench.warm_up, measure: bench.measure, stamp: Some(stamp) };
    let measure_start = Instant::now() + plan.warm_up;
    let measure_end = measure_start + plan.measure;
    let observer = monoio::spawn(observe(sink.address(), CpuMeter::new(sink.pid()), measure_start, measure_end));
    let ingest = closed::run(address, &[publish], plan, CpuMeter::new(kapsel.pid())).await?;
    let observed = observer.await?;
    let published = 1 + ingest.accepted_total;
    let (overall, drained_at) = drain(sink.address(), endpoints, published * endpoints as u64).await?;
    Ok(Run {
        endpoints,
        local,
        ingest,
        window: observed.stats,
        window_elapsed: observed.elapsed,
        sink_cpu: observed.cpu.server,
        published,
        overall,
        overall_elapsed: drained_at - observed.reset_at,
        drain: drained_at.saturating_duration_since(measure_end),
    })
}

/// One publish before the loop: it must be a 202 naming every endpoint, and arrive at the sink
/// once per endpoint within [`limits::DELIVERY_FIRST_MS_MAX`], or the loop would measure a
/// broken fan-out.
async fn check_publish(
    kapsel: SocketAddr,
    sink: SocketAddr,
    publish: &[u8],
    stamp: SendTimeStamp,
    endpoints: usize,
) -> Result<(), String> {
    let mut first = publish.to_vec();
    stamp.write(&mut first, unix_micros_now());
    match setup::one_request(kapsel, &first).await? {
        (202, answer) if json_u64_field(answer.as_bytes(), "endpoints") == Some(endpoints as u64) => {}
        (status, answer) => {
            return Err(format!(
                "POST /publish/{CHANNEL} answered {status} instead of 202 with \"endpoints\":{endpoints}: {answer}"
            ))
        }
    }
    let deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_FIRST_MS_MAX);
    let (stats, _, arrived) = wait_for_deliveries(sink, endpoints as u64, deadline).await?;
    if !arrived {
        return Err(format!(
            "the sink received {} of the first publish's {endpoints} deliveries within {} ms",
            stats.deliveries_total,
            limits::DELIVERY_FIRST_MS_MAX
        ));
    }
    Ok(())
}

/// Waits, bounded by [`limits::DELIVERY_FANOUT_DRAIN_MS_MAX`], until the sink has received
/// `expected` deliveries in all, saying how far it got every [`limits::DELIVERY_PROGRESS_MS`]:
/// the sink's last stats and when they were read.
async fn drain(sink: SocketAddr, endpoints: usize, expected: u64) -> Result<(SinkStats, Instant), String> {
    let deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_FANOUT_DRAIN_MS_MAX);
    loop {
        let until = (Instant::now() + Duration::from_millis(limits::DELIVERY_PROGRESS_MS)).min(deadline);
        let (stats, read_at, complete) = wait_for_deliveries(sink, expected, until).await?;
        if complete || read_at >= deadline {
            return Ok((stats, read_at));
        }
        println!("    {LABEL}-{endpoints}: draining, {} of {expected} deliveries received", stats.deliveries_total);
    }
}

/// The details of every N, then the legend.
pub(super) fn print_results(measured: &Measured) {
    println!(
        "Fan-out: POST /publish/{CHANNEL}, {} B JSON, to N endpoints over {} shards (the channel's is shard {}), \
         {} s measured, then drained (≤ {} s):",
        limits::PAYLOAD_BYTES,
        measured.shards,
        owner_shard(&format!("default/{CHANNEL}"), measured.shards),
        measured.measure.as_secs(),
        limits::DELIVERY_FANOUT_DRAIN_MS_MAX / 1000,
    );
    println!("{}", header());
    for run in &measured.runs {
        println!("{}", row(run));
    }
    println!("With the drain (since the start of the measured period, until the last delivery arrived):");
    for run in &measured.runs {
        let overall = &run.overall;
        println!(
            "  {:<11} {} deliveries in {:.2} s = {:.0}/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; \
             published {}, owed {}, received {}, undelivered {}, unstamped {}",
            run.label(),
            overall.deliveries,
            run.overall_elapsed.as_secs_f64(),
            run.overall_per_s(),
            milliseconds(overall.p50_us),
            milliseconds(overall.p99_us),
            milliseconds(overall.p999_us),
            milliseconds(overall.max_us),
            run.published,
            run.expected(),
            overall.deliveries_total,
            run.undelivered(),
            overall.unstamped,
        );
    }
    println!("Kapsel CPU by thread over the measured period (cores), peak memory, load generator CPU:");
    for run in &measured.runs {
        println!("{}", report::threads_row(&run.label(), &run.ingest.cpu, run.window_elapsed));
    }
    println!();
    println!("{LEGEND}");
}

/// The table's header.
fn header() -> String {
    format!(
        "{:<11} {:>5} {:>5} {:>9} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>11}  {}",
        "scenario",
        "conns",
        "local",
        "publish/s",
        "pub p99",
        "deliv/s",
        "+drain/s",
        "drain s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv µs/dl",
        "snk µs/dl",
        "others",
        "undelivered",
        "errors",
    )
}

/// One row of the table: the measured window.
fn row(run: &Run) -> String {
    let cpu = &run.ingest.cpu;
    let per_delivery = |time: Duration| {
        if run.window.deliveries == 0 {
            0.0
        } else {
            time.as_secs_f64() * 1e6 / run.window.deliveries as f64
        }
    };
    format!(
        "{:<11} {:>5} {:>5} {:>9.0} {:>8.2} {:>9.0} {:>9.0} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>9.1} {:>6.2} {:>11}  {}",
        run.label(),
        run.ingest.plan.connections,
        format!("{}/{}", run.local, run.endpoints),
        run.ingest.throughput_per_s(),
        run.ingest.latencies.at(99.0).as_secs_f64() * 1000.0,
        run.window_per_s(),
        run.overall_per_s(),
        run.drain.as_secs_f64(),
        milliseconds(run.window.p50_us),
        milliseconds(run.window.p99_us),
        milliseconds(run.window.max_us),
        per_delivery(cpu.server),
        per_delivery(run.sink_cpu),
        run.others_cores(),
        run.undelivered(),
        run.ingest.failures,
    )
}

/// The legend under the table.
const LEGEND: &str = "  fanout-N: every publish delivered to N endpoints; conns: the closed loop's connections
    (fewer as N grows, so that the deliveries, not the publishes, use up the machine); local:
    endpoints on the channel's shard, delivered from the publish record itself, the others
    adopted by their shards first (ADR 13).
  publish/s: 202 answers per second in the measured period; pub p99: their p99 in ms.
  deliv/s: deliveries the sink received in the measured period, per second; +drain/s: the same
    from the start of the measured period until every owed delivery (N per accepted publish)
    had arrived; drain s: how long after the end of the measured period that took.
  p50…max ms: publish-to-delivery latency of the deliveries in the measured period, from the
    send time the generator wrote into the body to the sink's receipt; when the publishes
    outrun the deliveries it includes the time waited in the backlog.
  srv µs/dl: Kapsel's CPU (publishes, handoffs, deliveries) per delivery in the measured
    period; snk µs/dl: the sink's; others: cores' worth of CPU used by other processes.";

/// The summary's lines: each N's delivery rate beside the delivery target, for information.
pub(super) fn print_summary(measured: &Measured) {
    for run in &measured.runs {
        let failures = &run.ingest.failures;
        let caveat = if run.undelivered() == 0 && failures.total() == 0 {
            String::new()
        } else {
            format!("  ({} undelivered, publish errors {failures})", run.undelivered())
        };
        println!(
            "  fan-out N = {}, {} connections: {:.0} deliveries/s in the measured window ({:.0} publishes/s), \
             {:.0}/s with the drain; {} the {DELIVERIES_PER_S_TARGET_MIN:.0}/s delivery target (information: no fan-out \
             target){caveat}",
            run.endpoints,
            run.ingest.plan.connections,
            run.window_per_s(),
            run.ingest.throughput_per_s(),
            run.overall_per_s(),
            if run.window_per_s() >= DELIVERIES_PER_S_TARGET_MIN { "at or above" } else { "below" },
        );
    }
}
