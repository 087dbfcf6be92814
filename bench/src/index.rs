//! The index benchmark as `cargo bench -p kapsel-bench --bench index` runs it: what Kapsel's
//! Postgres index costs the ingest path, and how far behind the ingest it runs.
//!
//! It starts a private, durable PostgreSQL ([`crate::postgres`]), then runs the ingest bench's
//! loops (the `Suite` of [`crate::suite`]) against fresh Kapsel processes (endpoints created
//! with deliveries paused): the closed loop of 64 connections without the index (the baseline)
//! and with it (`DATABASE_URL` set, on a freshly created database), and the open loop with it.
//! While an indexed loop runs, a thread samples `GET /readyz` ([`crate::progress`]); after the
//! load the bench waits (bounded) until the index has caught up, then checks with `psql` that
//! the `events` table holds exactly as many rows as Kapsel answered 202 for.
//!
//! Then the outage comparison: the open loop with the index healthy, with PostgreSQL stopped
//! (`pg_ctl stop -m immediate`) as the measured period starts and started again after the load,
//! and with it stopped at the start and back halfway through (so the reconnection and the
//! catch-up run beside the load), [`limits::INDEX_OUTAGE_ROUNDS`] rounds interleaved. Ingest
//! never waits on the index, so its p99 during an outage should stay within the healthy rounds'
//! spread (the noise); the table shows each round, and the count check runs after every one.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::limits;
use crate::machine;
use crate::postgres::Postgres;
use crate::progress::{self, LagSummary, Sampler};
use crate::report;
use crate::setup;
use crate::suite::{Outcome, Plan, Server, Suite};

/// The database Kapsel indexes into, created afresh for every indexed scenario.
const DATABASE: &str = "kapsel_bench";

/// The index keeps up when it commits at least this fraction of the ingest rate over the
/// measured period (the two rates are read at slightly different instants).
const KEEPS_UP_RATIO_MIN: f64 = 0.95;

/// Width of the scenario column (the longest label with its round number).
const LABEL_WIDTH: usize = 37;

/// What happens to PostgreSQL while an indexed loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// Up throughout.
    None,
    /// Stopped as the measured period starts, started again once the load has ended.
    Whole,
    /// Stopped as the measured period starts, started again halfway through it.
    Recovering,
}

/// One loop against a fresh Kapsel, with or without the index.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    plan: Plan,
    indexed: bool,
    outage: Outage,
    /// The round of the outage comparison (0: a scenario that runs once).
    round: usize,
}

impl Scenario {
    /// `kapsel closed-64`, `kapsel+index open-10000`, `kapsel+index-outage open-10000`: for
    /// `KAPSEL_BENCH_ONLY`.
    fn label(self) -> String {
        let server = match (self.indexed, self.outage) {
            (false, _) => "kapsel",
            (true, Outage::None) => "kapsel+index",
            (true, Outage::Whole) => "kapsel+index-outage",
            (true, Outage::Recovering) => "kapsel+index-recovering",
        };
        format!("{server} {}", self.plan.label())
    }

    /// The label with its round, in the tables.
    fn row_label(self) -> String {
        match self.round {
            0 => self.label(),
            round => format!("{} #{round}", self.label()),
        }
    }
}

/// What one scenario measured.
struct Measured {
    scenario: Scenario,
    outcome: Outcome,
    /// With the index: its progress over the measured period, and the catch-up.
    lag: Option<LagSummary>,
    /// With the index: events Kapsel accepted (the loop's 202s and one check ingest per
    /// endpoint before it), and rows in `events` once the index had caught up.
    count: Option<(u64, u64)>,
}

impl Measured {
    fn count_matches(&self) -> bool {
        self.count.is_none_or(|(accepted, indexed)| accepted == indexed)
    }
}

/// Entry point of `benches/index.rs`. Run under `cargo test` (no `--bench` argument) it only
/// says so.
pub fn main() -> ExitCode {
    setup::bench_main("kapsel-bench index", "cargo bench -p kapsel-bench --bench index", run)
}

fn run() -> Result<(), String> {
    let mut suite = Suite::from_env()?;
    suite.data_directory = suite.paths.bench_directory("index-data");
    suite.print_header("Kapsel index load test", "cargo bench -p kapsel-bench --bench index");
    setup::build_binaries(&suite.paths, suite.skip_build, &[Server::Kapsel.name()])?;
    setup::fresh_data_directory(&suite.paths, &suite.data_directory)?;
    let postgres = Postgres::start(&suite.data_directory)?;
    print_postgres(&postgres)?;
    println!(
        "\nrunning (every scenario on a fresh Kapsel, the indexed ones on a fresh database; {} s warm-up, {} s measured):",
        suite.warm_up.as_secs(),
        suite.measure.as_secs()
    );
    let mut results = Vec::new();
    for scenario in scenarios(&suite) {
        if !suite.selects(&scenario.label()) {
            continue;
        }
        let measured =
            if scenario.indexed { indexed(&suite, &postgres, scenario)? } else { baseline(&suite, scenario)? };
        println!("  {}", progress_line(&measured));
        results.push(measured);
    }
    print_results(&suite, &results);
    print_outage_comparison(&suite, &results);
    let mismatches = results.iter().filter(|measured| !measured.count_matches()).count();
    if mismatches > 0 {
        return Err(format!("{mismatches} scenario(s) MISMATCH: the index does not hold exactly the accepted events"));
    }
    Ok(())
}

/// The server, its settings and where its data lives.
fn print_postgres(postgres: &Postgres) -> Result<(), String> {
    let setting = |name: &str| postgres.psql("postgres", &format!("SHOW {name}"));
    let (kind, device) = machine::filesystem_of(postgres.directory());
    println!(
        "  postgres: {} at {}, fsync={} synchronous_commit={}, data in {} ({kind} on {device})",
        setting("server_version")?,
        postgres.url(DATABASE),
        setting("fsync")?,
        setting("synchronous_commit")?,
        postgres.directory().display(),
    );
    let connections =
        std::env::var("DATABASE_MAX_CONNECTIONS").unwrap_or_else(|_| "unset (Kapsel's default, 10)".into());
    println!("  index:    DATABASE_URL set on the indexed scenarios, DATABASE_MAX_CONNECTIONS {connections}");
    Ok(())
}

/// Rounds of the outage comparison: `KAPSEL_BENCH_ROUNDS` when it asks for more than one, else
/// [`limits::INDEX_OUTAGE_ROUNDS`].
fn outage_rounds(suite: &Suite) -> usize {
    if suite.rounds > 1 {
        suite.rounds
    } else {
        limits::INDEX_OUTAGE_ROUNDS
    }
}

/// The closed loop without and with the index, then the open loop with it: healthy, with
/// PostgreSQL down, and with it coming back, [`outage_rounds`] rounds interleaved.
fn scenarios(suite: &Suite) -> Vec<Scenario> {
    let plans = suite.plans();
    let closed = plans.iter().copied().find(
        |plan| matches!(plan, Plan::Closed(closed) if closed.connections == limits::INDEX_CLOSED_LOOP_CONNECTIONS),
    );
    let open = plans.iter().copied().find(|plan| matches!(plan, Plan::Open(_)));
    let mut scenarios = Vec::new();
    if let Some(plan) = closed {
        scenarios.extend([
            Scenario { plan, indexed: false, outage: Outage::None, round: 0 },
            Scenario { plan, indexed: true, outage: Outage::None, round: 0 },
        ]);
    }
    if let Some(plan) = open {
        for round in 1..=outage_rounds(suite) {
            for outage in [Outage::None, Outage::Whole, Outage::Recovering] {
                scenarios.push(Scenario { plan, indexed: true, outage, round });
            }
        }
    }
    scenarios
}

fn log_name(scenario: Scenario) -> String {
    format!("index-{}", scenario.row_label().replace([' ', '#'], "-"))
}

/// Kapsel without the index: the ingest bench's scenario.
fn baseline(suite: &Suite, scenario: Scenario) -> Result<Measured, String> {
    let mut prepared = suite.prepare(Server::Kapsel, &log_name(scenario), &[])?;
    let outcome = suite.run_plan(&mut prepared, scenario.plan)?;
    Ok(Measured { scenario, outcome, lag: None, count: None })
}

/// Kapsel indexing into a fresh database: the loop with the sampler beside it, the catch-up,
/// the count.
fn indexed(suite: &Suite, postgres: &Postgres, scenario: Scenario) -> Result<Measured, String> {
    let url = postgres.fresh_database(DATABASE)?;
    let mut prepared = suite.prepare(Server::Kapsel, &log_name(scenario), &[("DATABASE_URL", url)])?;
    let address = prepared.process.address();
    progress::wait_until_connected(address).map_err(|error| prepared.process.failure(&error))?;
    // The loop starts its clock a moment later (a new runtime): the windows below are early by
    // that much, well under one sampling period.
    let origin = Instant::now();
    let postmaster = postgres.pid().ok_or("PostgreSQL's postmaster.pid is unreadable")?;
    let sampler = Sampler::start(address, origin, move || machine::process_tree_cpu(postmaster))?;
    let (warm_up, measure) = scenario.plan.period();
    let outcome = std::thread::scope(|scope| {
        let schedule = (scenario.outage != Outage::None)
            .then(|| scope.spawn(move || outage_schedule(postgres, scenario.outage, origin, warm_up, measure)));
        let outcome = suite.run_plan(&mut prepared, scenario.plan);
        let scheduled = schedule
            .map_or(Ok(()), |thread| thread.join().unwrap_or_else(|_| Err("the outage thread panicked".to_string())));
        scheduled.and(outcome)
    })?;
    let load_end = origin.elapsed();
    if scenario.outage == Outage::Whole {
        postgres.start_again()?;
    }
    let samples = sampler.finish(load_end)?;
    prepared.process.check_running()?;
    drop(prepared);
    let lag = progress::summarize(&samples, (warm_up, warm_up + measure), load_end);
    let accepted = outcome.accepted_total() + suite.endpoints.len() as u64;
    let indexed = postgres.count_rows(DATABASE, "events")?;
    Ok(Measured { scenario, outcome, lag: Some(lag), count: Some((accepted, indexed)) })
}

/// Stops PostgreSQL as the measured period starts (`warm_up` after `origin`) and, for
/// [`Outage::Recovering`], starts it again halfway through the period.
fn outage_schedule(
    postgres: &Postgres,
    outage: Outage,
    origin: Instant,
    warm_up: Duration,
    measure: Duration,
) -> Result<(), String> {
    std::thread::sleep((origin + warm_up).saturating_duration_since(Instant::now()));
    postgres.stop_immediately()?;
    if outage == Outage::Recovering {
        std::thread::sleep((origin + warm_up + measure / 2).saturating_duration_since(Instant::now()));
        postgres.start_again()?;
    }
    Ok(())
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Cores' worth of CPU used in the measured period by processes other than Kapsel, the load
/// generator and (indexed scenarios) PostgreSQL: the noise.
fn others_cores(measured: &Measured, measure: Duration) -> f64 {
    let others = measured.outcome.summary().3.others().as_secs_f64() / measure.as_secs_f64().max(f64::EPSILON);
    (others - measured.lag.as_ref().map_or(0.0, |lag| lag.postgres_cores)).max(0.0)
}

/// The line printed as each scenario ends.
fn progress_line(measured: &Measured) -> String {
    let (throughput, latencies, failures, _) = measured.outcome.summary();
    let mut line = format!(
        "{:<LABEL_WIDTH$} {throughput:>7.0} req/s  p99 {:>7.2} ms  errors {failures}",
        measured.scenario.row_label(),
        milliseconds(latencies.at(99.0)),
    );
    if let Some(lag) = &measured.lag {
        line.push_str(&format!(
            "  indexed {:>7.0} rows/s  lag p99 {} records  catch-up {}",
            lag.indexed_per_s,
            lag.lag_records_p99,
            catch_up_text(lag)
        ));
    }
    line
}

fn catch_up_text(lag: &LagSummary) -> String {
    match lag.catch_up {
        Some(catch_up) => format!("{:.2} s", catch_up.as_secs_f64()),
        None => format!("> {} s", limits::INDEX_CATCH_UP_MS_MAX / 1000),
    }
}

/// The baseline's throughput: Kapsel without the index, closed loop.
fn baseline_throughput(results: &[Measured]) -> Option<f64> {
    results.iter().find(|measured| !measured.scenario.indexed).map(|measured| measured.outcome.summary().0)
}

fn print_results(suite: &Suite, results: &[Measured]) {
    if results.is_empty() {
        return;
    }
    println!();
    println!(
        "Ingest with and without the Postgres index: POST {} B JSON, deliveries paused, {} s measured; \
         index sampled every {} ms from GET /readyz",
        limits::PAYLOAD_BYTES,
        suite.measure.as_secs(),
        limits::INDEX_SAMPLE_MS,
    );
    println!("{}", header());
    let baseline = baseline_throughput(results);
    for measured in results {
        println!("{}", row(measured, baseline, suite.measure));
    }
    println!("The index against what Kapsel accepted (after the catch-up), and the samples in the measured period:");
    for measured in results {
        if let (Some((accepted, indexed)), Some(lag)) = (measured.count, &measured.lag) {
            println!(
                "  {:<LABEL_WIDTH$} accepted {accepted} (the loop's 202s, warm-up included, + {} check ingest(s)); \
                 SELECT count(*) FROM events = {indexed}: {};  {} samples, {} failed, {} with the index unavailable",
                measured.scenario.row_label(),
                suite.endpoints.len(),
                if measured.count_matches() { "MATCH" } else { "MISMATCH" },
                lag.samples,
                lag.failed,
                lag.unavailable,
            );
        }
    }
    println!("Kapsel CPU by thread over the measured period (cores), peak memory, load generator CPU:");
    for measured in results {
        println!(
            "{}",
            report::threads_row(&measured.scenario.row_label(), measured.outcome.summary().3, suite.measure)
        );
    }
    println!();
    println!("{LEGEND}");
    println!();
    println!("Summary:");
    println!("{}", summary(results));
    let noise = results
        .iter()
        .filter(|measured| measured.scenario.outage == Outage::None)
        .map(|measured| others_cores(measured, suite.measure))
        .fold(0.0, f64::max);
    if noise > report::NOISE_CORES_MAX {
        println!(
            "  NOISY: processes other than Kapsel, PostgreSQL and the generator used up to {noise:.2} cores during a \
             measured period; compare with care"
        );
    }
    println!("  load average at the end: {}", machine::load_average());
}

fn header() -> String {
    format!(
        "{:<LABEL_WIDTH$} {:>9} {:>6} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>8} {:>6} {:>8}  {}",
        "scenario",
        "ingest/s",
        "vs A",
        "p50 ms",
        "p99 ms",
        "indexed/s",
        "lag p50",
        "lag p99",
        "lag max",
        "lag s max",
        "catch-up s",
        "srv µs/rq",
        "pg cores",
        "others",
        "count",
        "errors",
    )
}

/// One row: the ingest figures, then the index's (dashes without it).
fn row(measured: &Measured, baseline: Option<f64>, measure: Duration) -> String {
    let (throughput, latencies, failures, cpu) = measured.outcome.summary();
    let requests = throughput * measure.as_secs_f64();
    let server_per_request = if requests > 0.0 { cpu.server.as_secs_f64() * 1e6 / requests } else { 0.0 };
    let versus = match (measured.scenario.plan, baseline) {
        (Plan::Closed(_), Some(baseline)) if baseline > 0.0 => format!("{:.2}", throughput / baseline),
        _ => "-".into(),
    };
    let index = match &measured.lag {
        Some(lag) => format!(
            "{:>10.0} {:>8} {:>8} {:>8} {:>9.2} {:>10}",
            lag.indexed_per_s,
            lag.lag_records_p50,
            lag.lag_records_p99,
            lag.lag_records_max,
            lag.lag_seconds_max,
            lag.catch_up.map_or_else(|| "never".into(), |catch_up| format!("{:.2}", catch_up.as_secs_f64())),
        ),
        None => format!("{:>10} {:>8} {:>8} {:>8} {:>9} {:>10}", "-", "-", "-", "-", "-", "-"),
    };
    // Across a restart the postmaster (whose process tree is measured) is another process, so
    // neither PostgreSQL's CPU nor, without it, the others' can be told.
    let (postgres, others) = match &measured.lag {
        Some(_) if measured.scenario.outage != Outage::None => ("-".into(), "-".into()),
        Some(lag) => (format!("{:.2}", lag.postgres_cores), format!("{:.2}", others_cores(measured, measure))),
        None => ("-".into(), format!("{:.2}", others_cores(measured, measure))),
    };
    let count = match measured.count {
        Some(_) if measured.count_matches() => "MATCH",
        Some(_) => "MISMATCH",
        None => "-",
    };
    format!(
        "{:<LABEL_WIDTH$} {throughput:>9.0} {versus:>6} {:>8.2} {:>8.2} {index} {server_per_request:>9.1} \
         {postgres:>8} {others:>6} {count:>8}  {failures}",
        measured.scenario.row_label(),
        milliseconds(latencies.at(50.0)),
        milliseconds(latencies.at(99.0)),
    )
}

/// What the rounds of one outage kind measured.
struct Rounds {
    p99_ms: Vec<f64>,
    p50_ms: Vec<f64>,
    max_ms: f64,
    errors: u64,
    /// Each round's catch-up in seconds ("never" past the bound).
    catch_ups: Vec<String>,
    counts_match: bool,
}

/// A scenario's ingest latencies.
fn latencies(measured: &Measured) -> &crate::stats::Latencies {
    measured.outcome.summary().1
}

impl Rounds {
    fn of(measured: &[&Measured]) -> Self {
        Self {
            p99_ms: measured.iter().map(|one| milliseconds(latencies(one).at(99.0))).collect(),
            p50_ms: measured.iter().map(|one| milliseconds(latencies(one).at(50.0))).collect(),
            max_ms: measured.iter().map(|one| milliseconds(latencies(one).max())).fold(0.0, f64::max),
            errors: measured.iter().map(|one| one.outcome.summary().2.total()).sum(),
            catch_ups: measured
                .iter()
                .map(|one| match one.lag.as_ref().map(|lag| lag.catch_up) {
                    Some(Some(catch_up)) => format!("{:.2}", catch_up.as_secs_f64()),
                    Some(None) => "never".into(),
                    None => "-".into(),
                })
                .collect(),
            counts_match: measured.iter().all(|one| one.count_matches()),
        }
    }

    fn row(&self, what: &str) -> String {
        format!(
            "  {what:<30} {:>30} {:>8.2} {:>8.2} {:>9.2} {:>7} {:>30}  {}",
            report::list(&self.p99_ms, 1.0, 2),
            median(&self.p99_ms),
            median(&self.p50_ms),
            self.max_ms,
            self.errors,
            self.catch_ups.join(", "),
            if self.counts_match { "MATCH" } else { "MISMATCH" },
        )
    }
}

/// The smallest and largest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    (values.iter().copied().fold(f64::INFINITY, f64::min), values.iter().copied().fold(0.0, f64::max))
}

/// The open-loop rounds of each outage kind: their p99s, p50s and largest latencies, errors,
/// catch-up times and count checks; then whether the outage's median p99 stayed within the
/// healthy rounds' spread.
fn print_outage_comparison(suite: &Suite, results: &[Measured]) {
    let rounds = |outage: Outage| -> Vec<&Measured> {
        results
            .iter()
            .filter(|measured| matches!(measured.scenario.plan, Plan::Open(_)) && measured.scenario.outage == outage)
            .collect()
    };
    let (healthy, down, back) = (rounds(Outage::None), rounds(Outage::Whole), rounds(Outage::Recovering));
    let Some(Plan::Open(open)) = healthy.first().map(|measured| measured.scenario.plan) else { return };
    if down.is_empty() && back.is_empty() {
        return;
    }
    println!();
    println!(
        "Ingest p99 with the index healthy and during a PostgreSQL outage: open loop {} req/s, {} s measured, \
         rounds interleaved; PostgreSQL stopped with `pg_ctl stop -m immediate` as the measured period starts",
        open.rate_per_s,
        suite.measure.as_secs(),
    );
    println!(
        "  {:<30} {:>30} {:>8} {:>8} {:>9} {:>7} {:>30}  count",
        "PostgreSQL", "p99 ms by round", "med p99", "med p50", "max ms", "errors", "catch-up s by round"
    );
    let healthy = Rounds::of(&healthy);
    println!("{}", healthy.row("up (healthy)"));
    let ((low, high), (p50_low, p50_high)) = (range(&healthy.p99_ms), range(&healthy.p50_ms));
    let mut sentences = vec![format!(
        "With the index healthy, ingest p99 ranged {low:.2}–{high:.2} ms over {} rounds (the noise, median {:.2} ms).",
        healthy.p99_ms.len(),
        median(&healthy.p99_ms)
    )];
    let outages = [
        (down, "down for the whole period", "With PostgreSQL down"),
        (back, "down, back halfway (catch-up)", "With PostgreSQL back halfway and the index catching up"),
    ];
    for (measured, what, sentence) in outages {
        if measured.is_empty() {
            continue;
        }
        let outage = Rounds::of(&measured);
        println!("{}", outage.row(what));
        let (p99, p50) = (median(&outage.p99_ms), median(&outage.p50_ms));
        sentences.push(format!(
            "{sentence} its median p99 was {p99:.2} ms: {} (median p50 {p50:.2} ms, {} the healthy rounds' range \
             {p50_low:.2}–{p50_high:.2} ms).",
            if p99 <= high { "not beyond the noise" } else { "BEYOND the noise" },
            if p50 <= p50_high { "not above" } else { "ABOVE" },
        ));
    }
    println!("  {}", wrap(&sentences.join(" "), 100).join("\n  "));
}

/// The median of `values` (the lower of two middles); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// The legend under the table.
const LEGEND: &str = "  ingest/s: 202 answers per second in the measured period (open loop: until its last answer);
    vs A: as a fraction of Kapsel's closed loop without the index. p50/p99 ms: their latency
    (closed loop: send to answer; open loop: from the intended send time).
  indexed/s: rows the index committed per second over the measured period (the change in
    /readyz's rows_indexed between the first and last sample inside it).
  lag p50/p99/max: records durable in Kapsel's logs but not yet in the index (lag_records), over
    the samples in the measured period (ten a second: with fewer than 100, p99 is the max).
  lag s max: the largest lag_seconds among them: how long the shard furthest behind had been
    behind without a break (Kapsel restarts a shard's clock whenever its index reaches the
    shard's durable LSN).
  catch-up s: from the end of the load until a sample showed lag_records 0 (\"never\": not within
    the bound); resolution one sampling period.
  srv µs/rq: Kapsel's CPU (user+system, all threads, the index thread included) per 202.
  pg cores: cores' worth of CPU used by PostgreSQL (the postmaster and its children: Kapsel's
    backends, WAL writer, checkpointer, …) between the first and last sample in the period.
  others: cores' worth of CPU used by every other process (the noise).
  count: the events table against the events Kapsel accepted, checked after the catch-up.
  kapsel+index-outage: PostgreSQL stopped (pg_ctl stop -m immediate) as the measured period
    starts, started again once the load ended (its catch-up includes PostgreSQL's start and
    Kapsel's reconnection backoff, at most 5 s); kapsel+index-recovering: stopped at the start,
    back halfway through. #n: the round. For both, pg cores and others are \"-\": the restarted
    PostgreSQL is another process tree.";

/// One paragraph: the index's cost to ingest, its pace and lag, and the count check.
fn summary(results: &[Measured]) -> String {
    let without = results.iter().find(|measured| !measured.scenario.indexed);
    let mut sentences = Vec::new();
    // The outage comparison has its own summary; here the healthy open loop's first round.
    let healthy_once = |measured: &&Measured| measured.scenario.outage == Outage::None && measured.scenario.round <= 1;
    for measured in results.iter().filter(|measured| measured.lag.is_some()).filter(healthy_once) {
        let (throughput, latencies, _, _) = measured.outcome.summary();
        let p99 = milliseconds(latencies.at(99.0));
        let opening = match (measured.scenario.plan, without) {
            (Plan::Closed(closed), Some(without)) => {
                let (baseline, baseline_latencies, _, _) = without.outcome.summary();
                format!(
                    "With the Postgres index, Kapsel ingested {throughput:.0} events/s over {} connections, {:.2}× \
                     the {baseline:.0}/s it takes without (p99 {:.2} ms → {p99:.2} ms)",
                    closed.connections,
                    throughput / baseline.max(f64::EPSILON),
                    milliseconds(baseline_latencies.at(99.0)),
                )
            }
            (Plan::Closed(closed), None) => format!(
                "With the Postgres index, Kapsel ingested {throughput:.0} events/s over {} connections (p99 {p99:.2} ms)",
                closed.connections
            ),
            (Plan::Open(open), _) => {
                format!("At a fixed {} events/s (open loop) its ingest p99 was {p99:.2} ms", open.rate_per_s)
            }
        };
        sentences.push(format!("{opening}; {}", pace(measured, throughput)));
    }
    let checked: Vec<&Measured> = results.iter().filter(|measured| measured.count.is_some()).collect();
    if checked.iter().any(|measured| !measured.count_matches()) {
        sentences.push("The events table did NOT hold exactly the events Kapsel accepted (MISMATCH above).".into());
    } else if !checked.is_empty() {
        sentences
            .push("In every indexed scenario the events table held exactly the events Kapsel accepted (MATCH).".into());
    }
    format!("  {}", wrap(&sentences.join(" "), 100).join("\n  "))
}

/// How the index kept pace with `throughput` ingests per second.
fn pace(measured: &Measured, throughput: f64) -> String {
    let Some(lag) = &measured.lag else { return String::new() };
    let verdict = if lag.indexed_per_s >= KEEPS_UP_RATIO_MIN * throughput { "keeping up" } else { "falling behind" };
    format!(
        "the index committed {:.0} rows/s ({verdict}), its lag at p50 {} / p99 {} / max {} records and at most \
         {:.2} s behind, and it caught up {} after the load stopped{}.",
        lag.indexed_per_s,
        lag.lag_records_p50,
        lag.lag_records_p99,
        lag.lag_records_max,
        lag.lag_seconds_max,
        catch_up_text(lag),
        if lag.failed + lag.unavailable > 0 {
            format!(" ({} failed samples, {} with the index unavailable)", lag.failed, lag.unavailable)
        } else {
            String::new()
        },
    )
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}
