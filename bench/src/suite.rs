//! The load test as `cargo bench` runs it: build the binaries, run every scenario against a
//! fresh server process, print the tables and the summary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::closed::{self, ClosedLoop, ClosedOutcome};
use crate::limits;
use crate::machine::{self, CpuMeter, CpuUsage, Facts};
use crate::open::{self, OpenLoop, OpenOutcome};
use crate::payload::{ingest_request, json_body};
use crate::process::ServerProcess;
use crate::report;
use crate::runtime::{block_on, Driver};
use crate::setup::{self, Paths, DESTINATIONS_ALLOWED};
use crate::stats::{Failures, Latencies};

/// The endpoint every ingest goes to (with `KAPSEL_BENCH_ENDPOINTS` > 1: `bench-0`, …).
const ENDPOINT: &str = "bench";

/// The endpoints' destination, with deliveries paused (`"enabled": false`): this load test
/// measures ingest alone (accept, make durable, answer); events wait in their queue as they do
/// for a disabled endpoint. Delivery throughput has its own benchmark.
pub(crate) const ENDPOINT_BODY: &str =
    r#"{"ingest_auth":{"type":"none"},"url":"http://127.0.0.1:9/bench","enabled":false}"#;

/// The servers under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// The real thing.
    Kapsel,
    /// Parse and answer 202.
    Noop,
    /// Parse, append, group-commit fdatasync, answer 202.
    Durable,
}

impl Server {
    /// Its name in the report, which is also its binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kapsel => "kapsel",
            Self::Noop => "reference-noop",
            Self::Durable => "reference-durable",
        }
    }
}

/// One scenario: a loop to run against one fresh server.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Plan {
    Closed(ClosedLoop),
    Open(OpenLoop),
}

impl Plan {
    /// `closed-64`, `open-10000`: in log names and for `KAPSEL_BENCH_ONLY`.
    pub(crate) fn label(self) -> String {
        match self {
            Self::Closed(closed) => format!("closed-{}", closed.connections),
            Self::Open(open) => format!("open-{}", open.rate_per_s),
        }
    }

    /// Its warm-up and measured period.
    pub(crate) fn period(self) -> (Duration, Duration) {
        match self {
            Self::Closed(closed) => (closed.warm_up, closed.measure),
            Self::Open(open) => (open.warm_up, open.measure),
        }
    }

    /// Runs the loop against `address`, connection `i` sending `requests[i % requests.len()]`.
    pub(crate) async fn run(
        self,
        address: SocketAddr,
        requests: &[Vec<u8>],
        meter: CpuMeter,
    ) -> Result<Outcome, String> {
        match self {
            Self::Closed(plan) => closed::run(address, requests, plan, meter).await.map(Outcome::Closed),
            Self::Open(plan) => open::run(address, requests, plan, meter).await.map(Outcome::Open),
        }
    }
}

/// What a [`Plan`] measured.
pub(crate) enum Outcome {
    Closed(ClosedOutcome),
    Open(OpenOutcome),
}

impl Outcome {
    /// 2xx answers per second (open loop: until its last answer), their latencies, the
    /// failures, and CPU use over the measured period.
    pub(crate) fn summary(&self) -> (f64, &Latencies, &Failures, &CpuUsage) {
        match self {
            Self::Closed(closed) => (closed.throughput_per_s(), &closed.latencies, &closed.failures, &closed.cpu),
            Self::Open(open) => (open.achieved_per_s(), &open.latencies, &open.failures, &open.cpu),
        }
    }

    /// 2xx answers over the whole run, warm-up and tail included.
    pub(crate) fn accepted_total(&self) -> u64 {
        match self {
            Self::Closed(closed) => closed.accepted_total,
            Self::Open(open) => open.accepted_total,
        }
    }
}

/// Where things are and how long to run. The index bench ([`crate::index`]) runs its
/// scenarios through the same settings and [`Suite::prepare`] / [`Suite::run_plan`].
pub(crate) struct Suite {
    pub(crate) paths: Paths,
    /// Where the scenarios' data directories go (emptied when the bench starts).
    pub(crate) data_directory: PathBuf,
    pub(crate) shards: usize,
    pub(crate) driver: Driver,
    pub(crate) warm_up: Duration,
    pub(crate) measure: Duration,
    pub(crate) endpoints: Vec<String>,
    /// `KAPSEL_BENCH_ROUNDS`: every scenario runs this many times; the tables show the median.
    pub(crate) rounds: usize,
    /// `KAPSEL_BENCH_SKIP_BUILD`: use the binaries already built (for profiling, or while
    /// the tree does not build).
    pub(crate) skip_build: bool,
    /// `KAPSEL_BENCH_ONLY`: run only the scenarios whose label contains one of these.
    only: Vec<String>,
    pub(crate) admin_token: String,
}

/// A server spawned for one scenario on a fresh data directory: ready, its endpoints created
/// and each checked with one ingest (a 202 each, before any loop). Dropping it kills the
/// process, then deletes the directory.
pub(crate) struct Prepared {
    pub(crate) process: ServerProcess,
    /// Connection `i` of a loop sends `requests[i % requests.len()]`.
    requests: Vec<Vec<u8>>,
    /// Declared after `process`, so deleted after the kill.
    _data: tempfile::TempDir,
}

/// Entry point of `benches/ingest.rs`. Run under `cargo test` (no `--bench` argument) it
/// only says so: a two-minute load test has no place in a test run.
pub fn main() -> ExitCode {
    setup::bench_main("kapsel-bench ingest", "cargo bench -p kapsel-bench --bench ingest", run)
}

fn run() -> Result<(), String> {
    let suite = Suite::from_env()?;
    suite.print_header("Kapsel ingest load test", "cargo bench -p kapsel-bench");
    let servers = [Server::Kapsel, Server::Noop, Server::Durable].map(Server::name);
    setup::build_binaries(&suite.paths, suite.skip_build, &servers)?;
    setup::fresh_data_directory(&suite.paths, &suite.data_directory)?;
    let mut closed_results: Vec<(Server, ClosedOutcome)> = Vec::new();
    let mut open_results: Vec<(Server, OpenOutcome)> = Vec::new();
    println!(
        "\nrunning ({} round(s); every scenario on a fresh server; {} s warm-up, {} s measured):",
        suite.rounds,
        suite.warm_up.as_secs(),
        suite.measure.as_secs()
    );
    // Interleaved, so that noise from other work on the machine spreads over all servers.
    for round in 1..=suite.rounds {
        for plan in suite.plans() {
            for server in [Server::Kapsel, Server::Noop, Server::Durable] {
                if !suite.selected(server, plan) {
                    continue;
                }
                let outcome = suite.scenario(server, plan)?;
                let (throughput, latencies, failures, _) = outcome.summary();
                println!(
                    "  round {round}: {:<18} {:<11} {throughput:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {failures}",
                    server.name(),
                    plan.label(),
                    latencies.at(50.0).as_secs_f64() * 1000.0,
                    latencies.at(99.0).as_secs_f64() * 1000.0,
                );
                match outcome {
                    Outcome::Closed(closed) => closed_results.push((server, closed)),
                    Outcome::Open(open) => open_results.push((server, open)),
                }
            }
        }
    }
    print_results(&suite, &closed_results, &open_results);
    Ok(())
}

/// The median of each scenario's rounds by `key` (the lower one of two middles), in the
/// order the scenarios first ran, with every round's key.
fn medians<T>(results: &[(Server, T)], scenario: impl Fn(&T) -> usize, key: impl Fn(&T) -> f64) -> Vec<Median<'_, T>> {
    let mut groups: Vec<(Server, usize, Vec<&T>)> = Vec::new();
    for (server, outcome) in results {
        match groups.iter_mut().find(|(known, number, _)| known == server && *number == scenario(outcome)) {
            Some((_, _, rounds)) => rounds.push(outcome),
            None => groups.push((*server, scenario(outcome), vec![outcome])),
        }
    }
    groups
        .into_iter()
        .filter_map(|(server, _, mut rounds)| {
            let keys: Vec<f64> = rounds.iter().map(|outcome| key(outcome)).collect();
            rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
            let median = *rounds.get((rounds.len() - 1) / 2)?;
            Some((server, median, keys))
        })
        .collect()
}

impl Suite {
    pub(crate) fn from_env() -> Result<Self, String> {
        let paths = Paths::from_env()?;
        let measure_seconds = setup::measure_seconds_from_env()?;
        let shards =
            setup::number_from_env("KAPSEL_BENCH_SHARDS", limits::SERVER_SHARDS_DEFAULT, limits::SERVER_SHARDS_MAX)?;
        let endpoint_count = setup::number_from_env("KAPSEL_BENCH_ENDPOINTS", 1, limits::ENDPOINTS_MAX)?;
        let endpoints = if endpoint_count == 1 {
            vec![ENDPOINT.to_string()]
        } else {
            (0..endpoint_count).map(|index| format!("{ENDPOINT}-{index}")).collect()
        };
        Ok(Self {
            data_directory: paths.bench_directory("data"),
            paths,
            shards,
            driver: Driver::from_env()?,
            warm_up: Duration::from_millis(limits::WARM_UP_MS),
            measure: Duration::from_secs(measure_seconds as u64),
            endpoints,
            rounds: setup::number_from_env("KAPSEL_BENCH_ROUNDS", 1, limits::ROUNDS_MAX)?,
            skip_build: setup::flag_from_env("KAPSEL_BENCH_SKIP_BUILD"),
            only: setup::words_from_env("KAPSEL_BENCH_ONLY"),
            admin_token: format!("kapsel-bench-{}", std::process::id()),
        })
    }

    /// The bench's `title`, the exact command line (ending in `command`), the machine, the
    /// servers and the client.
    pub(crate) fn print_header(&self, title: &str, command: &str) {
        let facts = Facts::read();
        setup::print_preamble(
            title,
            &[
                "CARGO_TARGET_DIR",
                "KAPSEL_BENCH_SECONDS",
                "KAPSEL_BENCH_SHARDS",
                "KAPSEL_BENCH_ENDPOINTS",
                "KAPSEL_BENCH_ROUNDS",
                "KAPSEL_BENCH_ONLY",
                "KAPSEL_BENCH_SKIP_BUILD",
                "KAPSEL_IO_DRIVER",
                "DATABASE_MAX_CONNECTIONS",
            ],
            command,
            &facts,
        );
        println!(
            "  servers:  {} shards/threads each, monoio driver {} (io_uring {}), SO_REUSEPORT on 127.0.0.1:0",
            self.shards,
            self.driver.name(),
            if facts.io_uring { "available" } else { "unavailable" }
        );
        let target = match self.endpoints.as_slice() {
            [only] => format!("/ingest/{only}"),
            all => format!("/ingest/{ENDPOINT}-{{0..{}}} (connection i → endpoint i mod {})", all.len() - 1, all.len()),
        };
        println!(
            "  client:   one monoio thread, keep-alive HTTP/1.1, POST {target} with a {} B JSON body",
            limits::PAYLOAD_BYTES
        );
        println!(
            "  kapsel:   endpoint(s) {ENDPOINT_BODY} (nothing listens there), KAPSEL_ALLOW_DESTINATIONS={DESTINATIONS_ALLOWED}"
        );
    }

    /// Every loop, in the order they run: the closed loops by connection count, then the open
    /// loop.
    pub(crate) fn plans(&self) -> Vec<Plan> {
        let mut plans: Vec<Plan> = limits::CLOSED_LOOP_CONNECTIONS
            .into_iter()
            .map(|connections| {
                Plan::Closed(ClosedLoop { connections, warm_up: self.warm_up, measure: self.measure, stamp: None })
            })
            .collect();
        plans.push(Plan::Open(OpenLoop {
            rate_per_s: limits::OPEN_LOOP_RATE_PER_S,
            connections: limits::OPEN_LOOP_CONNECTIONS,
            warm_up: self.warm_up,
            measure: self.measure,
            stamp: None,
        }));
        plans
    }

    /// Whether `KAPSEL_BENCH_ONLY` (when set) selects this scenario.
    fn selected(&self, server: Server, plan: Plan) -> bool {
        self.selects(&format!("{} {}", server.name(), plan.label()))
    }

    /// Whether `KAPSEL_BENCH_ONLY` (when set) selects the scenario labelled `label`.
    pub(crate) fn selects(&self, label: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|word| label.contains(word.as_str()))
    }

    fn variables(&self, server: Server, data_directory: &Path) -> Vec<(&'static str, String)> {
        match server {
            Server::Kapsel => setup::kapsel_variables(self.shards, self.driver, data_directory, &self.admin_token),
            Server::Noop | Server::Durable => setup::server_variables(self.shards, self.driver, data_directory),
        }
    }

    /// Spawns `server` with a fresh data directory, readies it, runs `plan`, kills it.
    fn scenario(&self, server: Server, plan: Plan) -> Result<Outcome, String> {
        let mut prepared = self.prepare(server, &format!("{}-{}", server.name(), plan.label()), &[])?;
        self.run_plan(&mut prepared, plan)
    }

    /// Spawns `server` with a fresh data directory and its variables plus `extra`, standard
    /// error going to `<logs>/<log_name>.log`; waits until it is ready, then creates the
    /// endpoints (Kapsel) and checks one ingest per endpoint.
    ///
    /// # Errors
    ///
    /// It did not start, or a set-up request failed; with the tail of its log.
    pub(crate) fn prepare(
        &self,
        server: Server,
        log_name: &str,
        extra: &[(&'static str, String)],
    ) -> Result<Prepared, String> {
        let data = tempfile::Builder::new()
            .prefix(&format!("{}-", server.name()))
            .tempdir_in(&self.data_directory)
            .map_err(|error| format!("creating a data directory in {}: {error}", self.data_directory.display()))?;
        let log = self.paths.log_directory.join(format!("{log_name}.log"));
        let program = self.paths.binaries.join(server.name());
        let mut variables = self.variables(server, data.path());
        variables.extend_from_slice(extra);
        let process = ServerProcess::spawn(server.name(), &program, &variables, &log)?;
        let address = process.address();
        let body = json_body(limits::PAYLOAD_BYTES)?;
        let requests: Vec<Vec<u8>> =
            self.endpoints.iter().map(|endpoint| ingest_request(address, endpoint, &body)).collect();
        block_on(self.driver, async {
            setup::wait_until_ready(address).await?;
            for (endpoint, ingest) in self.endpoints.iter().zip(&requests) {
                if server == Server::Kapsel {
                    setup::create_endpoint(address, &self.admin_token, endpoint, ENDPOINT_BODY).await?;
                }
                setup::check_ingest(address, endpoint, ingest).await?;
            }
            Ok::<_, String>(())
        })?
        .map_err(|error| process.failure(&error))?;
        Ok(Prepared { process, requests, _data: data })
    }

    /// Runs `plan` against a prepared server, then checks that it is still running.
    ///
    /// # Errors
    ///
    /// The loop could not run, or the server exited; with the tail of its log.
    pub(crate) fn run_plan(&self, prepared: &mut Prepared, plan: Plan) -> Result<Outcome, String> {
        let (address, meter) = (prepared.process.address(), CpuMeter::new(prepared.process.pid()));
        let outcome = block_on(self.driver, plan.run(address, &prepared.requests, meter))?
            .map_err(|error| prepared.process.failure(&error))?;
        prepared.process.check_running()?;
        Ok(outcome)
    }
}

/// The heading of the per-thread lines under each table.
const THREADS_HEADING: &str = "Server CPU by thread over the measured period (cores), peak memory, load generator CPU:";

/// One scenario's median round, with every round's key.
type Median<'a, T> = (Server, &'a T, Vec<f64>);

fn print_results(suite: &Suite, closed_results: &[(Server, ClosedOutcome)], open_results: &[(Server, OpenOutcome)]) {
    let closed = medians(closed_results, |outcome| outcome.plan.connections, ClosedOutcome::throughput_per_s);
    let open =
        medians(open_results, |outcome| outcome.plan.connections, |outcome| outcome.latencies.at(99.0).as_secs_f64());
    let which = if suite.rounds > 1 { format!(", median of {} rounds", suite.rounds) } else { String::new() };
    if !closed.is_empty() {
        println!();
        println!(
            "Closed loop: POST {} B JSON, keep-alive, one request outstanding per connection, {} s measured{which}",
            limits::PAYLOAD_BYTES,
            suite.measure.as_secs(),
        );
        print_closed(&closed);
    }
    if !open.is_empty() {
        println!();
        println!(
            "Open loop: {} req/s scheduled over {} connections, {} s measured, latency from intended send time{which}",
            limits::OPEN_LOOP_RATE_PER_S,
            limits::OPEN_LOOP_CONNECTIONS,
            suite.measure.as_secs(),
        );
        print_open(&open);
    }
    println!();
    println!("{}", report::LEGEND);
    println!();
    println!("Summary (targets from the issue{which}):");
    print_summary(&closed, &open);
}

fn print_closed(closed: &[Median<'_, ClosedOutcome>]) {
    println!("{}", report::closed_header());
    for (server, outcome, _) in closed {
        println!("{}", report::closed_row(server.name(), outcome));
    }
    println!("{THREADS_HEADING}");
    for (server, outcome, rounds) in closed {
        let label = format!("{} {}", server.name(), outcome.plan.connections);
        println!("{}", report::threads_row(&label, &outcome.cpu, outcome.plan.measure));
        if rounds.len() > 1 {
            println!("  {:<22} req/s by round: {}", "", report::list(rounds, 1.0, 0));
        }
    }
}

fn print_open(open: &[Median<'_, OpenOutcome>]) {
    println!("{}", report::open_header());
    for (server, outcome, _) in open {
        println!("{}", report::open_row(server.name(), outcome));
    }
    println!("{THREADS_HEADING}");
    for (server, outcome, rounds) in open {
        println!("{}", report::threads_row(server.name(), &outcome.cpu, outcome.plan.measure));
        if rounds.len() > 1 {
            println!("  {:<22} p99 ms by round: {}", "", report::list(rounds, 1000.0, 2));
        }
    }
}

/// Kapsel against the references, with the issue's targets marked, and a warning when other
/// processes took a noticeable share of the machine.
fn print_summary(closed: &[Median<'_, ClosedOutcome>], open: &[Median<'_, OpenOutcome>]) {
    for connections in limits::CLOSED_LOOP_CONNECTIONS {
        let throughput = |wanted: Server| {
            closed
                .iter()
                .find(|(server, outcome, _)| *server == wanted && outcome.plan.connections == connections)
                .map(|(_, outcome, _)| outcome.throughput_per_s())
        };
        let (Some(kapsel), Some(noop), Some(durable)) =
            (throughput(Server::Kapsel), throughput(Server::Noop), throughput(Server::Durable))
        else {
            continue;
        };
        println!("  {}", report::throughput_summary(connections, kapsel, noop, durable));
    }
    let open_of = |wanted: Server| open.iter().find(|(server, _, _)| *server == wanted).map(|(_, outcome, _)| *outcome);
    if let (Some(kapsel), Some(durable)) = (open_of(Server::Kapsel), open_of(Server::Durable)) {
        println!("  {}", report::latency_summary(limits::OPEN_LOOP_RATE_PER_S, kapsel, durable));
    }
    let noise = closed
        .iter()
        .map(|(_, outcome, _)| (outcome.cpu.others(), outcome.plan.measure))
        .chain(open.iter().map(|(_, outcome, _)| (outcome.cpu.others(), outcome.plan.measure)))
        .map(|(others, wall)| others.as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON))
        .fold(0.0, f64::max);
    if noise > report::NOISE_CORES_MAX {
        println!(
            "  NOISY: other processes used up to {noise:.2} cores during a measured period; compare with care \
             (KAPSEL_BENCH_ROUNDS=3 takes medians)"
        );
    }
    println!("  load average at the end: {}", machine::load_average());
}
