//! The cluster benchmark as `cargo bench -p kapsel-bench --bench cluster` runs it (issue 16,
//! ADR 17): what one node of a three-node cluster on NATS JetStream costs against Kapsel
//! alone, and how long a partition takes to move when its owner dies.
//!
//! Three nodes on one two-core machine cannot show scaling, so the bench measures what can be:
//!
//! 1. **Single node**: Kapsel alone, as the ingest bench runs it (`KAPSEL_BENCH_SHARDS`
//!    shards, its own write-ahead log), with the closed loop of
//!    [`limits::CLUSTER_CLOSED_LOOP_CONNECTIONS`] connections and the open loop of
//!    [`limits::CLUSTER_OPEN_LOOP_RATE_PER_S`] requests/s, over
//!    [`limits::CLUSTER_ENDPOINTS`] endpoints (deliveries paused: ingest alone).
//! 2. **Cluster**: three `nats-server` processes in one JetStream cluster ([`crate::nats`],
//!    file storage on the bench's disk) and three Kapsel nodes (`cluster/nodes.rs`) with
//!    [`limits::CLUSTER_PARTITIONS`] partitions of three replicas; the same loops against
//!    `node-a` alone, the endpoints spread over partitions all three nodes own (an ingest for a
//!    partition another node owns is forwarded to it over NATS request/reply; the owner
//!    publishes it and answers once JetStream acknowledged it). CPU of every Kapsel and every
//!    `nats-server` process over the measured period, from `/proc/<pid>/stat`.
//! 3. **Fail-over** (`cluster/failover.rs`): `kill -9` of a partition's owner under a trickle of ingests
//!    through a survivor; the time to the first delivery, by the new owner, of an event
//!    ingested after the kill, and the lease's part of it.
//! 4. **Estimate**: throughput per node on a real three-machine cluster from the CPU per event.
//!
//! Without `nats-server` the bench says so and exits successfully: it measures nothing then.

mod arrivals;
mod failover;
mod nodes;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use monoio::time::Instant;

use self::failover::Failover;
use self::nodes::{partition_of, Nodes, NAMES};
use crate::closed::ClosedLoop;
use crate::limits;
use crate::machine::{self, CpuMeter, Facts};
use crate::nats::{self, NatsCluster};
use crate::open::OpenLoop;
use crate::payload::{ingest_request, json_body};
use crate::report;
use crate::runtime::{block_on, Driver};
use crate::setup;
use crate::suite::{Outcome, Plan, Server, Suite, ENDPOINT_BODY};

/// The command line the report quotes.
const COMMAND: &str = "cargo bench -p kapsel-bench --bench cluster";

/// Where the load goes in the cluster.
const LOADED: usize = 0;

/// Variables the header quotes when set.
const VARIABLES: [&str; 7] = [
    "CARGO_TARGET_DIR",
    "KAPSEL_BENCH_SECONDS",
    "KAPSEL_BENCH_SHARDS",
    "KAPSEL_BENCH_CLUSTER_SHARDS",
    "KAPSEL_BENCH_ONLY",
    "KAPSEL_BENCH_SKIP_BUILD",
    "KAPSEL_IO_DRIVER",
];

/// Which mode a loop ran against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Single,
    Cluster,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
        }
    }

    /// The row's name in the loop tables.
    fn server(self) -> &'static str {
        match self {
            Self::Single => "kapsel single",
            Self::Cluster => "cluster node-a",
        }
    }
}

/// One loop's results: the loop's own, and the CPU of every process measured.
struct Measured {
    mode: Mode,
    plan: Plan,
    outcome: Outcome,
    /// Each process (`kapsel node-a`, `nats-0`, …) and its CPU over the measured period.
    processes: Vec<(String, Duration)>,
}

impl Measured {
    fn label(&self) -> String {
        format!("{} {}", self.mode.name(), self.plan.label())
    }

    /// 2xx answers in the measured period.
    fn accepted(&self) -> u64 {
        self.outcome.summary().1.count()
    }

    /// CPU of the processes whose name starts with `prefix`.
    fn cpu_of(&self, prefix: &str) -> Duration {
        self.processes.iter().filter(|(name, _)| name.starts_with(prefix)).map(|(_, cpu)| *cpu).sum()
    }

    /// CPU of every measured process (Kapsel and NATS).
    fn cpu_total(&self) -> Duration {
        self.processes.iter().map(|(_, cpu)| *cpu).sum()
    }

    /// CPU seconds per 1000 events accepted in the measured period.
    fn per_thousand(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1000.0 / (self.accepted().max(1) as f64)
    }
}

/// Entry point of `benches/cluster.rs`. Run under `cargo test` (no `--bench` argument) it only
/// says so.
pub fn main() -> ExitCode {
    setup::bench_main("kapsel-bench cluster", COMMAND, run)
}

fn run() -> Result<(), String> {
    let Some(nats_binary) = nats::find_binary() else {
        println!(
            "kapsel-bench cluster: SKIPPED: nats-server not found on PATH or in /usr/sbin, /usr/local/sbin, \
             /usr/local/bin; the cluster bench starts its own three-server JetStream cluster: install it \
             (apt-get install nats-server, 2.9 or later) and run again. Nothing was measured."
        );
        return Ok(());
    };
    let mut suite = Suite::from_env()?;
    suite.data_directory = suite.paths.bench_directory("cluster-data");
    suite.endpoints = (0..limits::CLUSTER_ENDPOINTS).map(|index| format!("bench-{index}")).collect();
    let cluster_shards = setup::number_from_env(
        "KAPSEL_BENCH_CLUSTER_SHARDS",
        limits::CLUSTER_SHARDS_DEFAULT,
        limits::SERVER_SHARDS_MAX,
    )?;
    print_header(&suite, &nats_binary, cluster_shards);
    setup::build_binaries(&suite.paths, suite.skip_build, &[Server::Kapsel.name()])?;
    setup::fresh_data_directory(&suite.paths, &suite.data_directory)?;
    println!(
        "\nrunning ({} s warm-up, {} s measured per loop; single-node loops on a fresh Kapsel each, cluster loops on one cluster):",
        suite.warm_up.as_secs(),
        suite.measure.as_secs()
    );
    let mut results = Vec::new();
    for plan in plans(&suite) {
        if suite.selects(&format!("single {}", plan.label())) {
            results.push(single(&suite, plan)?);
        }
    }
    let cluster_wanted = plans(&suite).iter().any(|plan| suite.selects(&format!("cluster {}", plan.label())));
    let mut failover = None;
    if cluster_wanted || suite.selects("failover") {
        let nats_directory = tempfile::Builder::new()
            .prefix("nats-")
            .tempdir_in(&suite.data_directory)
            .map_err(|error| format!("creating a NATS directory in {}: {error}", suite.data_directory.display()))?;
        let started = std::time::Instant::now();
        let mut nats =
            NatsCluster::start(&nats_binary, limits::CLUSTER_NODES, nats_directory.path(), &suite.paths.log_directory)?;
        let mut nodes = Nodes::start(&suite, &nats, cluster_shards)?;
        prepare_endpoints(&suite, &nodes)?;
        println!("  cluster started and settled in {:.1} s", started.elapsed().as_secs_f64());
        print_spread(&nodes)?;
        for plan in plans(&suite) {
            if suite.selects(&format!("cluster {}", plan.label())) {
                results.push(clustered(&suite, &mut nats, &mut nodes, plan)?);
            }
        }
        if suite.selects("failover") {
            println!("  fail-over: kill -9 of the owner of a partition under a trickle of ingests …");
            let measured = failover::run(&mut nodes)?;
            println!(
                "  fail-over: partition {} moved from {} to {}; first delivery of an event ingested after the kill {:.2} s after it",
                measured.partition,
                measured.victim,
                measured.new_owner,
                seconds(measured.first_delivery_ms)
            );
            failover = Some(measured);
        }
        nats.check_running()?;
    }
    print_results(&suite, &results, failover.as_ref());
    Ok(())
}

/// The closed loop, then the open loop.
fn plans(suite: &Suite) -> [Plan; 2] {
    [
        Plan::Closed(ClosedLoop {
            connections: limits::CLUSTER_CLOSED_LOOP_CONNECTIONS,
            warm_up: suite.warm_up,
            measure: suite.measure,
            stamp: None,
        }),
        Plan::Open(OpenLoop {
            rate_per_s: limits::CLUSTER_OPEN_LOOP_RATE_PER_S,
            connections: limits::CLUSTER_OPEN_LOOP_CONNECTIONS,
            warm_up: suite.warm_up,
            measure: suite.measure,
            stamp: None,
        }),
    ]
}

fn print_header(suite: &Suite, nats_binary: &std::path::Path, cluster_shards: usize) {
    let facts = Facts::read();
    setup::print_preamble("Kapsel cluster benchmark (issue 16)", &VARIABLES, COMMAND, &facts);
    println!(
        "  nats:     {} ({}): {} servers in one JetStream cluster, file storage under the data directory",
        nats_binary.display(),
        nats::version(nats_binary),
        limits::CLUSTER_NODES
    );
    println!(
        "  single:   kapsel alone, {} shards, its own write-ahead log (as the ingest bench runs it)",
        suite.shards
    );
    println!(
        "  cluster:  {} kapsel nodes ({}), {cluster_shards} shard(s) each, KAPSEL_PARTITIONS={} KAPSEL_REPLICAS={}; \
         the loops go to {} only",
        limits::CLUSTER_NODES,
        NAMES.join(", "),
        limits::CLUSTER_PARTITIONS,
        limits::CLUSTER_NODES,
        NAMES[LOADED]
    );
    println!(
        "  client:   one monoio thread, keep-alive HTTP/1.1, POST /ingest/bench-{{0..{}}} (connection i → endpoint i mod {}), \
         {} B JSON; monoio driver {} (io_uring {})",
        limits::CLUSTER_ENDPOINTS - 1,
        limits::CLUSTER_ENDPOINTS,
        limits::PAYLOAD_BYTES,
        suite.driver.name(),
        if facts.io_uring { "available" } else { "unavailable" }
    );
    println!("  endpoints: {ENDPOINT_BODY} (deliveries paused: ingest alone)");
}

/// Kapsel alone on a fresh data directory: the loop, and its CPU.
fn single(suite: &Suite, plan: Plan) -> Result<Measured, String> {
    let mut prepared = suite.prepare(Server::Kapsel, &format!("cluster-single-{}", plan.label()), &[])?;
    let (address, pid) = (prepared.process.address(), prepared.process.pid());
    let requests = ingest_requests(address)?;
    let processes = vec![("kapsel single".to_string(), pid)];
    let (outcome, processes) = run_loop(suite.driver, plan, address, &requests, pid, processes)
        .map_err(|error| prepared.process.failure(&error))?;
    prepared.process.check_running()?;
    let measured = Measured { mode: Mode::Single, plan, outcome, processes };
    print_line(&measured);
    Ok(measured)
}

/// The loop against the cluster's `node-a`, and the CPU of every process of the cluster.
fn clustered(suite: &Suite, nats: &mut NatsCluster, nodes: &mut Nodes, plan: Plan) -> Result<Measured, String> {
    let (address, pid) = nodes.running(LOADED).ok_or("node-a is not running")?;
    let requests = ingest_requests(address)?;
    let mut processes = nodes.processes();
    processes.extend(nats.processes());
    let (outcome, processes) = run_loop(suite.driver, plan, address, &requests, pid, processes)?;
    nodes.check_running()?;
    nats.check_running()?;
    let measured = Measured { mode: Mode::Cluster, plan, outcome, processes };
    print_line(&measured);
    Ok(measured)
}

/// One ingest request per endpoint, for `address`.
fn ingest_requests(address: SocketAddr) -> Result<Vec<Vec<u8>>, String> {
    let body = json_body(limits::PAYLOAD_BYTES)?;
    Ok((0..limits::CLUSTER_ENDPOINTS).map(|index| ingest_request(address, &format!("bench-{index}"), &body)).collect())
}

/// Creates the endpoints through `node-a` and checks one ingest each (a 503 while a partition
/// is still being opened is retried).
fn prepare_endpoints(suite: &Suite, nodes: &Nodes) -> Result<(), String> {
    let (address, _) = nodes.running(LOADED).ok_or("node-a is not running")?;
    let requests = ingest_requests(address)?;
    for (endpoint, ingest) in suite.endpoints.iter().zip(&requests) {
        match nodes.admin(LOADED, "PUT", &format!("/admin/endpoints/{endpoint}"), Some(ENDPOINT_BODY))? {
            (200 | 201, _) => {}
            (status, body) => return Err(format!("PUT /admin/endpoints/{endpoint} answered {status}: {body}")),
        }
        nodes.ingest_until_accepted(LOADED, endpoint, ingest)?;
    }
    Ok(())
}

/// Which node owns the partitions the load's endpoints fall in: how much of it `node-a`
/// forwards.
fn print_spread(nodes: &Nodes) -> Result<(), String> {
    let view = nodes.view(LOADED)?;
    let mut hit: Vec<u32> = (0..limits::CLUSTER_ENDPOINTS)
        .map(|index| partition_of(&format!("bench-{index}"), limits::CLUSTER_PARTITIONS))
        .collect();
    let shares: Vec<String> = NAMES
        .iter()
        .map(|name| {
            let owned = view.owned_by(name);
            let endpoints = hit.iter().filter(|partition| owned.contains(partition)).count();
            format!("{name} owns {} partitions, {endpoints} of the endpoints", owned.len())
        })
        .collect();
    hit.sort_unstable();
    hit.dedup();
    println!(
        "  spread:   the {} endpoints fall in {} of {} partitions; {}",
        limits::CLUSTER_ENDPOINTS,
        hit.len(),
        limits::CLUSTER_PARTITIONS,
        shares.join("; ")
    );
    Ok(())
}

/// Runs `plan` against `address` (the loop's CPU meter on `pid`) while sampling the CPU of
/// `processes` over the same measured period.
fn run_loop(
    driver: Driver,
    plan: Plan,
    address: SocketAddr,
    requests: &[Vec<u8>],
    pid: u32,
    processes: Vec<(String, u32)>,
) -> Result<(Outcome, Vec<(String, Duration)>), String> {
    let (warm_up, measure) = plan.period();
    block_on(driver, async move {
        // The loop starts its own clock within microseconds of this one.
        let measure_start = Instant::now() + warm_up;
        let sampler = monoio::spawn(sample_processes(processes, measure_start, measure_start + measure));
        let outcome = plan.run(address, requests, CpuMeter::new(pid)).await;
        let cpu = sampler.await;
        outcome.map(|outcome| (outcome, cpu))
    })?
}

/// The CPU each of `processes` used from `start` to `end` (zero for one that could not be read).
async fn sample_processes(processes: Vec<(String, u32)>, start: Instant, end: Instant) -> Vec<(String, Duration)> {
    monoio::time::sleep_until(start).await;
    let before: Vec<Option<Duration>> = processes.iter().map(|(_, pid)| machine::process_cpu(*pid)).collect();
    monoio::time::sleep_until(end).await;
    processes
        .into_iter()
        .zip(before)
        .map(|((name, pid), before)| {
            let used = machine::process_cpu(pid).zip(before).map(|(after, before)| after.saturating_sub(before));
            (name, used.unwrap_or_default())
        })
        .collect()
}

fn print_line(measured: &Measured) {
    let (throughput, latencies, failures, _) = measured.outcome.summary();
    println!(
        "  {:<18} {throughput:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {failures}",
        measured.label(),
        milliseconds(latencies.at(50.0)),
        milliseconds(latencies.at(99.0)),
    );
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn seconds(milliseconds: i64) -> f64 {
    milliseconds as f64 / 1000.0
}

fn print_results(suite: &Suite, results: &[Measured], failover: Option<&Failover>) {
    let closed: Vec<&Measured> = results.iter().filter(|m| matches!(m.outcome, Outcome::Closed(_))).collect();
    let open: Vec<&Measured> = results.iter().filter(|m| matches!(m.outcome, Outcome::Open(_))).collect();
    if !closed.is_empty() {
        println!();
        println!(
            "Closed loop: POST {} B JSON over {} endpoints, {} connections, {} s measured",
            limits::PAYLOAD_BYTES,
            limits::CLUSTER_ENDPOINTS,
            limits::CLUSTER_CLOSED_LOOP_CONNECTIONS,
            suite.measure.as_secs()
        );
        println!("{}", report::closed_header());
        for measured in &closed {
            if let Outcome::Closed(outcome) = &measured.outcome {
                println!("{}", report::closed_row(measured.mode.server(), outcome));
            }
        }
        print_threads(&closed);
    }
    if !open.is_empty() {
        println!();
        println!(
            "Open loop: {} req/s scheduled over {} connections, {} s measured, latency from intended send time",
            limits::CLUSTER_OPEN_LOOP_RATE_PER_S,
            limits::CLUSTER_OPEN_LOOP_CONNECTIONS,
            suite.measure.as_secs()
        );
        println!("{}", report::open_header());
        for measured in &open {
            if let Outcome::Open(outcome) = &measured.outcome {
                println!("{}", report::open_row(measured.mode.server(), outcome));
            }
        }
        print_threads(&open);
    }
    if !results.is_empty() {
        println!();
        print_cpu(results);
    }
    if let Some(failover) = failover {
        println!();
        print_failover(failover);
    }
    if !results.is_empty() {
        println!();
        println!("{}", report::LEGEND);
        println!("{LOOPS_LEGEND}");
    }
    if failover.is_some() {
        println!("{FAILOVER_LEGEND}");
    }
    println!();
    println!("Summary:");
    print_summary(results, failover);
}

fn print_threads(measured: &[&Measured]) {
    println!("Loaded Kapsel's CPU by thread over the measured period (cores), peak memory, load generator CPU:");
    for one in measured {
        let (_, _, _, cpu) = one.outcome.summary();
        println!("{}", report::threads_row(one.mode.server(), cpu, one.plan.period().1));
    }
}

/// The processes' columns in the CPU table, by name prefix: in a single-node row the one
/// Kapsel is in the first.
const CPU_COLUMNS: [(&str, &str); 6] = [
    ("kapsel-a", "kapsel node-a"),
    ("kapsel-b", "kapsel node-b"),
    ("kapsel-c", "kapsel node-c"),
    ("nats-0", "nats-0"),
    ("nats-1", "nats-1"),
    ("nats-2", "nats-2"),
];

fn print_cpu(results: &[Measured]) {
    println!("CPU per 1000 accepted events (CPU seconds, user+system from /proc/<pid>/stat) over the measured period; cores below:");
    let mut header = format!("{:<20} {:>8}", "scenario", "ev/s");
    for (column, _) in CPU_COLUMNS {
        header.push_str(&format!(" {column:>8}"));
    }
    header.push_str(&format!(" | {:>8} {:>8} {:>8} | {:>8} {:>7}", "kapsel Σ", "nats Σ", "total", "loadgen", "others"));
    println!("{header}");
    for measured in results {
        let (throughput, _, _, cpu) = measured.outcome.summary();
        let wall = measured.plan.period().1.as_secs_f64().max(f64::EPSILON);
        let column = |prefix: &str| match (measured.mode, prefix) {
            (Mode::Single, "kapsel node-a") => Some(measured.cpu_of("kapsel single")),
            (Mode::Single, _) => None,
            (Mode::Cluster, prefix) => Some(measured.cpu_of(prefix)),
        };
        let others = cpu.machine_busy.saturating_sub(measured.cpu_total() + cpu.client);
        let (kapsel, nats, total) = (measured.cpu_of("kapsel"), measured.cpu_of("nats"), measured.cpu_total());
        let format_row = |value: &dyn Fn(Duration) -> f64, decimals: usize| {
            let mut row = String::new();
            for (_, prefix) in CPU_COLUMNS {
                match column(prefix) {
                    Some(cpu) => row.push_str(&format!(" {:>8.decimals$}", value(cpu))),
                    None => row.push_str(&format!(" {:>8}", "-")),
                }
            }
            let nats = if measured.mode == Mode::Single {
                format!("{:>8}", "-")
            } else {
                format!("{:>8.decimals$}", value(nats))
            };
            row.push_str(&format!(
                " | {:>8.decimals$} {nats} {:>8.decimals$} | {:>8.decimals$}",
                value(kapsel),
                value(total),
                value(cpu.client)
            ));
            row
        };
        let per_thousand = |cpu: Duration| measured.per_thousand(cpu);
        let cores = |cpu: Duration| cpu.as_secs_f64() / wall;
        println!(
            "{:<20} {throughput:>8.0}{} {:>7.2}",
            measured.label(),
            format_row(&per_thousand, 3),
            others.as_secs_f64() / wall
        );
        println!("{:<20} {:>8}{}", "  cores", "", format_row(&cores, 2));
    }
}

fn print_failover(failover: &Failover) {
    println!(
        "Fail-over: kill -9 of {}, owner of partition {} (endpoint {}), a trickle of one ingest every {} ms through node-a; \
         times after the kill (lease {} ms, skew allowance {} ms):",
        failover.victim,
        failover.partition,
        failover.endpoint,
        limits::FAILOVER_TRICKLE_MS,
        failover.lease_ms,
        failover::SKEW_MS
    );
    let line = |what: &str, milliseconds: i64| println!("  {what:<76} {:>6.2} s", seconds(milliseconds));
    line("its last lease of the partition lapses (expiry it last wrote)", failover.lease_lapse_ms);
    line("(b) the lease's part: lapsed for the others (+ skew allowance)", failover.lease_part_ms());
    line("its last heartbeat lapses (the others stop counting it live)", failover.heartbeat_lapse_ms);
    line(&format!("{} takes the partition (its lease's expiry − lease length)", failover.new_owner), failover.taken_ms);
    line("first ingest sent after the kill answered 202 (forwarded to the new owner)", failover.first_accepted_ms);
    line("(a) first delivery of an event ingested after the kill (fail-over time)", failover.first_delivery_ms);
    match failover.all_moved_ms {
        Some(moved) => {
            line(&format!("all of {}'s partitions owned again (as node-a saw them)", failover.victim), moved)
        }
        None => println!("  all of {}'s partitions owned again: not seen before the fail-over ended", failover.victim),
    }
    println!(
        "  trickle: {} events accepted, {} ingests answered 503 between the kill and the first 202, {} other errors; \
         {} accepted events not delivered within {} s after, {} delivered twice, {} deliveries unreadable",
        failover.accepted,
        failover.refused_after_kill,
        failover.errors,
        failover.undelivered,
        limits::FAILOVER_DRAIN_MS_MAX / 1000,
        failover.repeated,
        failover.sink_refused
    );
}

/// The cluster bench's part of the loops' legend, under the ingest bench's.
const LOOPS_LEGEND: &str =
    "  single: Kapsel alone; cluster node-a: the one node of three that takes the load, the figures
    its answers (an ingest for a partition another node owns is forwarded to it and answered
    once JetStream acknowledged it on a quorum of replicas). In the loop tables `srv µs/rq` is the
    loaded Kapsel's alone, and a cluster row's `others` counts the other five processes of the
    cluster too; the CPU table below separates them.
  CPU table: CPU seconds per 1000 events accepted in the measured period, per process (the six
    processes of the cluster; a single-node row has its one Kapsel under kapsel-a), Σ of the
    Kapsel and NATS processes, the load generator, and others: cores' worth of CPU of every
    other process (the noise). The `cores` line under each row: the same CPU as cores.";

/// The fail-over's legend.
const FAILOVER_LEGEND: &str =
    "  Fail-over: (a) from the kill to the first arrival at the sink of an event sent after the kill,
    which only the new owner can deliver; (b) the part the lease imposes: the dead owner's lease
    running out plus the skew allowance, before which nobody may take the partition. Lease
    times are Kapsel's own (Unix ms in GET /admin/cluster), all on this machine's one clock.";

/// CPU per event of the closed loop's rows: single node and the cluster's six processes.
fn closed_rows(results: &[Measured]) -> (Option<&Measured>, Option<&Measured>) {
    let closed = |mode: Mode| results.iter().find(|m| m.mode == mode && matches!(m.outcome, Outcome::Closed(_)));
    (closed(Mode::Single), closed(Mode::Cluster))
}

fn print_summary(results: &[Measured], failover: Option<&Failover>) {
    let (single, cluster) = closed_rows(results);
    let rate = |measured: Option<&Measured>| measured.map(|m| m.outcome.summary().0);
    let p99 = |mode: Mode, closed: bool| {
        results
            .iter()
            .find(|m| m.mode == mode && matches!(m.outcome, Outcome::Closed(_)) == closed)
            .map(|m| milliseconds(m.outcome.summary().1.at(99.0)))
    };
    if let (Some(single_rate), Some(cluster_rate)) = (rate(single), rate(cluster)) {
        println!(
            "  closed loop, {} connections: one cluster node {cluster_rate:.0} req/s = {:.2}× single node ({single_rate:.0}); \
             p99 {:.2} ms vs {:.2} ms",
            limits::CLUSTER_CLOSED_LOOP_CONNECTIONS,
            cluster_rate / single_rate.max(f64::EPSILON),
            p99(Mode::Cluster, true).unwrap_or(0.0),
            p99(Mode::Single, true).unwrap_or(0.0),
        );
    }
    if let (Some(cluster), Some(single)) = (p99(Mode::Cluster, false), p99(Mode::Single, false)) {
        println!(
            "  open loop, {} req/s: p99 one cluster node {cluster:.2} ms vs single node {single:.2} ms",
            limits::CLUSTER_OPEN_LOOP_RATE_PER_S
        );
    }
    if let Some(failover) = failover {
        println!(
            "  fail-over after kill -9 of a partition's owner: (a) first delivery by the new owner {:.2} s; \
             (b) of which the lease {:.2} s",
            seconds(failover.first_delivery_ms),
            seconds(failover.lease_part_ms())
        );
    }
    print_estimate(single, cluster);
    let noise = results
        .iter()
        .map(|m| {
            let cpu = m.outcome.summary().3;
            let others = cpu.machine_busy.saturating_sub(m.cpu_total() + cpu.client);
            others.as_secs_f64() / m.plan.period().1.as_secs_f64().max(f64::EPSILON)
        })
        .fold(0.0, f64::max);
    if noise > report::NOISE_CORES_MAX {
        println!("  NOISY: other processes used up to {noise:.2} cores during a measured period; compare with care");
    }
    println!("  load average at the end: {}", machine::load_average());
}

/// The written estimate of throughput per node on three real machines, from the closed loop's
/// CPU per event.
fn print_estimate(single: Option<&Measured>, cluster: Option<&Measured>) {
    let Some(cluster) = cluster else {
        println!("  estimate: needs the cluster's closed loop (KAPSEL_BENCH_ONLY left it out)");
        return;
    };
    let cores = Facts::read().cores as f64;
    let micros = |cpu: Duration, measured: &Measured| cpu.as_secs_f64() * 1e6 / measured.accepted().max(1) as f64;
    let (total, kapsel, nats) = (
        micros(cluster.cpu_total(), cluster),
        micros(cluster.cpu_of("kapsel"), cluster),
        micros(cluster.cpu_of("nats"), cluster),
    );
    let per_node = cores * 1e6 / total.max(f64::EPSILON);
    println!(
        "  estimate, throughput per node on a real 3-machine cluster: ≈ {per_node:.0} ingests/s per node \
         ({:.0}/s for the cluster), CPU-bound;",
        3.0 * per_node
    );
    println!(
        "    from the cluster's closed loop: {total:.0} µs of CPU per accepted event over all six processes \
         (Kapsel {kapsel:.0} µs, nats-server {nats:.0} µs); per node = {cores:.0} cores ÷ {total:.0} µs."
    );
    if let Some(single) = single {
        let alone = micros(single.cpu_total(), single);
        let used = single.cpu_total().as_secs_f64() / single.plan.period().1.as_secs_f64().max(f64::EPSILON);
        println!(
            "    single-node mode: {alone:.0} µs per event, ≈ {:.0}/s on {cores:.0} cores by the same rule \
             (measured: {:.0}/s on {used:.2} cores); an event costs the cluster {:.1}× its CPU alone.",
            cores * 1e6 / alone.max(f64::EPSILON),
            single.outcome.summary().0,
            total / alone.max(f64::EPSILON)
        );
    }
    for line in [
        format!("    assumes: each machine has {cores:.0} cores like this one and runs one Kapsel and one nats-server and"),
        "      nothing else; clients spread over the three nodes, and partition owners and stream leaders spread".into(),
        "      evenly, so each machine does a third of every event's work (the sum over the six processes per event".into(),
        "      does not depend on which node takes it); CPU is the limit, not the network or the disks; and the CPU".into(),
        format!("      per event measured here, six processes on {cores:.0} cores over loopback, holds there (contention is"),
        "      charged here, a real NIC's interrupts are not). JetStream 2.9 acknowledges a publish once a quorum".into(),
        "      of replicas has it, without an fsync per message; Kapsel alone fdatasyncs every group commit.".into(),
        "    latency: a real cluster adds one to three LAN round trips to the p50 above (the forward to the owner,".into(),
        "      for 2/3 of the events, and JetStream's replication to a quorum).".into(),
    ] {
        println!("{line}");
    }
}
