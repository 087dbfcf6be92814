//! The delivery bench's `tenants` scenario: does tenant B keep its ingest latency and its
//! delivery rate while tenant A floods (issue 14, "Isolation between tenants")? The issue sets
//! no numeric bar: the ratios are printed for information, and the scenario fails only if B
//! got an error (a 429 or 503 meant for A, or anything else) or lost a delivery.
//!
//! Each round runs two phases, each on a fresh sink and a fresh Kapsel (`KAPSEL_BENCH_SHARDS`
//! shards): `alone`, tenant `b` (no limits) with [`limits::TENANTS_ENDPOINTS`] endpoints, one
//! per shard in turn, pointing at the sink, under an open loop of
//! [`limits::TENANTS_B_INGEST_RATE_PER_S`] stamped ingests a second over
//! [`limits::TENANTS_B_CONNECTIONS`] connections (latency from the intended send time);
//! `beside`, the same after tenant `a` was created with
//! [`limits::TENANTS_A_RATE_LIMIT_PER_S`] and [`limits::TENANTS_A_EVENTS_WAITING_MAX`], with as
//! many endpoints (spread the same way) whose destination is dead, and flooded by a closed loop
//! of [`limits::TENANTS_FLOOD_CONNECTIONS`] connections on a thread and runtime of its own,
//! from [`limits::TENANTS_FLOOD_SETTLE_MS`] before B's loop to the end of its measured period.
//! Every delivery the sink receives is B's: A's never arrive. The rounds alternate the phases
//! so that drift on a shared machine touches both.

use super::hostile::owner_shard;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::time::Instant;

use super::{milliseconds, observe, wait_for_deliveries, Bench};
use crate::closed::{self, ClosedLoop, ClosedOutcome};
use crate::limits;
use crate::machine::CpuMeter;
use crate::open::{self, OpenLoop, OpenOutcome};
use crate::payload::{ingest_request, json_body, request, stamped_json_body, unix_micros_now, SendTimeStamp};
use crate::process::ServerProcess;
use crate::runtime::{block_on, Driver};
use crate::setup;
use crate::sink::{SinkStats, HOOK_PATH};

/// The label for `KAPSEL_BENCH_ONLY` and the logs' names.
pub(super) const LABEL: &str = "tenants";

/// The tenant whose isolation is measured.
const TENANT_B: &str = "b";

/// The tenant that floods.
const TENANT_A: &str = "a";

/// A's destination: the discard port on loopback, where nothing listens, so every attempt is
/// refused at once and A's events wait for their retries.
const DEAD_URL: &str = "http://127.0.0.1:9/dead";

/// One phase's figures.
struct Phase {
    /// B's open loop; its CPU figures are Kapsel's and this process's (B's loop and, beside,
    /// A's flood).
    ingest: OpenOutcome,
    /// The sink's counters over B's measured window (reset at its start).
    window: SinkStats,
    /// Its length.
    window_elapsed: Duration,
    /// The sink's CPU over the window.
    sink_cpu: Duration,
    /// B's events Kapsel accepted (202), the check ingests included.
    accepted: u64,
    /// The sink's counters when the drain ended.
    overall: SinkStats,
    /// From the end of the measured window to the end of the drain.
    drain: Duration,
    /// A's flood, beside: every answer it got, from its start to its end.
    flood: Option<ClosedOutcome>,
}

impl Phase {
    /// B's deliveries per second in the measured window (all the sink's are B's).
    fn deliveries_per_s(&self) -> f64 {
        self.window.deliveries as f64 / self.window_elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// B's ingest latency at `percentile`, from the intended send time, in ms.
    fn ingest_ms(&self, percentile: f64) -> f64 {
        self.ingest.latencies.at(percentile).as_secs_f64() * 1000.0
    }

    /// B's accepted events the sink had not received when the drain ended.
    fn undelivered(&self) -> u64 {
        self.accepted.saturating_sub(self.overall.deliveries_total)
    }

    /// Whether B got every ingest accepted and every event delivered.
    fn clean(&self) -> bool {
        self.ingest.failures.total() == 0 && self.undelivered() == 0
    }

    /// Cores' worth of CPU over B's measured period: Kapsel; this process (B's loop and, beside,
    /// A's flood); the sink; everything else (the noise).
    fn cores(&self) -> (f64, f64, f64, f64) {
        let cpu = &self.ingest.cpu;
        let wall = self.window_elapsed.as_secs_f64().max(f64::EPSILON);
        let others = cpu.others().saturating_sub(self.sink_cpu);
        let cores = |time: Duration| time.as_secs_f64() / wall;
        (cores(cpu.server), cores(cpu.client), cores(self.sink_cpu), cores(others))
    }

    /// A's answers: `202 ×N` and the refusals by kind (`HTTP 429 ×M`, …); `-` alone.
    fn flood_answers(&self) -> String {
        match &self.flood {
            Some(flood) if flood.failures.total() == 0 => format!("202 ×{}", flood.accepted_total),
            Some(flood) => format!("202 ×{}, {}", flood.accepted_total, flood.failures),
            None => "-".to_string(),
        }
    }

    /// A's answers per second over its flood, accepted or not.
    fn flood_answers_per_s(&self) -> f64 {
        self.flood.as_ref().map_or(0.0, |flood| {
            (flood.accepted_total + flood.failures.total()) as f64 / flood.elapsed.as_secs_f64().max(f64::EPSILON)
        })
    }
}

/// What the scenario measured: the rounds, each (alone, beside).
pub(super) struct Measured {
    rounds: Vec<(Phase, Phase)>,
}

impl Measured {
    fn mean(&self, pick: impl Fn(&(Phase, Phase)) -> f64) -> f64 {
        self.rounds.iter().map(pick).sum::<f64>() / self.rounds.len().max(1) as f64
    }

    /// B's mean ingest p99 (ms) alone and beside.
    fn p99_ms(&self) -> (f64, f64) {
        (self.mean(|(alone, _)| alone.ingest_ms(99.0)), self.mean(|(_, beside)| beside.ingest_ms(99.0)))
    }

    /// B's mean deliveries per second alone and beside.
    fn deliveries_per_s(&self) -> (f64, f64) {
        (self.mean(|(alone, _)| alone.deliveries_per_s()), self.mean(|(_, beside)| beside.deliveries_per_s()))
    }

    /// B's errors and undelivered events over every phase.
    fn b_errors_and_undelivered(&self) -> (u64, u64) {
        let phases = || self.rounds.iter().flat_map(|(alone, beside)| [alone, beside]);
        (phases().map(|phase| phase.ingest.failures.total()).sum(), phases().map(Phase::undelivered).sum())
    }

    /// The most cores' worth of CPU other processes used in a phase's window (the noise).
    pub(super) fn others_cores(&self) -> f64 {
        self.rounds.iter().flat_map(|(alone, beside)| [alone.cores().3, beside.cores().3]).fold(0.0, f64::max)
    }

    /// The line printed when the scenario ends.
    pub(super) fn line(&self) -> String {
        let ((p99_alone, p99_beside), (rate_alone, rate_beside)) = (self.p99_ms(), self.deliveries_per_s());
        let (errors, undelivered) = self.b_errors_and_undelivered();
        format!(
            "tenant B alone: ingest p99 {p99_alone:.2} ms, {rate_alone:.0} deliveries/s; beside A's flood: p99 \
             {p99_beside:.2} ms ({:.2}×), {rate_beside:.0}/s ({:.2}×); B errors {errors}, undelivered {undelivered}",
            p99_beside / p99_alone.max(f64::EPSILON),
            rate_beside / rate_alone.max(f64::EPSILON),
        )
    }
}

/// The header's line when the scenario is selected.
pub(super) fn print_header(bench: &Bench) {
    if bench.selected(LABEL) {
        println!(
            "  tenants:  tenant {TENANT_B} ({} endpoints over {} shards → sink, no limits), open loop {} ingests/s over {} connections; \
             alone, then beside tenant {TENANT_A} ({} endpoints → {DEAD_URL}, rate_limit_per_s {}, events_waiting_max {}) \
             flooded by a closed loop of {} connections on its own thread from {} ms before; {} rounds",
            limits::TENANTS_ENDPOINTS,
            bench.shards,
            limits::TENANTS_B_INGEST_RATE_PER_S,
            limits::TENANTS_B_CONNECTIONS,
            limits::TENANTS_ENDPOINTS,
            limits::TENANTS_A_RATE_LIMIT_PER_S,
            limits::TENANTS_A_EVENTS_WAITING_MAX,
            limits::TENANTS_FLOOD_CONNECTIONS,
            limits::TENANTS_FLOOD_SETTLE_MS,
            limits::TENANTS_ROUNDS,
        );
    }
}

/// Runs the rounds, printing each one's line as it ends.
///
/// # Errors
///
/// A server did not start or exited, a request the set-up needs failed, or the flood's thread
/// could not run; with the servers' log tails.
pub(super) fn run(bench: &Bench) -> Result<Measured, String> {
    let mut rounds = Vec::new();
    for round in 1..=limits::TENANTS_ROUNDS {
        let alone = phase(bench, false)?;
        let beside = phase(bench, true)?;
        println!(
            "    round {round}: B alone p99 {:.2} ms, {:.0} deliveries/s; beside p99 {:.2} ms, {:.0}/s; \
             B errors {}/{}; A answered {}",
            alone.ingest_ms(99.0),
            alone.deliveries_per_s(),
            beside.ingest_ms(99.0),
            beside.deliveries_per_s(),
            alone.ingest.failures,
            beside.ingest.failures,
            beside.flood_answers(),
        );
        rounds.push((alone, beside));
    }
    Ok(Measured { rounds })
}

/// One phase on a fresh sink and Kapsel: with A's flood when `flood`.
fn phase(bench: &Bench, flood: bool) -> Result<Phase, String> {
    let data = bench.scenario_directory()?;
    let label = if flood { "tenants-beside" } else { "tenants-alone" };
    let (mut sink, mut kapsel) = bench.spawn_servers(data.path(), label)?;
    let failure = |error: String, kapsel: &mut ServerProcess, sink: &mut ServerProcess| {
        format!("{}\n{}", kapsel.failure(&error), sink.failure("(its log)"))
    };
    let prepared = match block_on(bench.driver, prepare(bench, &kapsel, &sink, flood))? {
        Ok(prepared) => prepared,
        Err(error) => return Err(failure(error, &mut kapsel, &mut sink)),
    };
    let flooding = match prepared.flood_requests {
        Some(requests) => Some(start_flood(bench, kapsel.address(), kapsel.pid(), requests)?),
        None => None,
    };
    let measured = block_on(bench.driver, measure(bench, &kapsel, &sink, prepared.b_requests, prepared.stamp, flood));
    let flood = flooding.map(finish_flood).transpose();
    let (mut phase, flood) = match (measured, flood) {
        (Ok(Ok(phase)), Ok(flood)) => (phase, flood),
        (Err(error) | Ok(Err(error)), _) | (_, Err(error)) => return Err(failure(error, &mut kapsel, &mut sink)),
    };
    phase.flood = flood;
    kapsel.check_running()?;
    sink.check_running()?;
    Ok(phase)
}

/// What the set-up leaves for the loops.
struct Prepared {
    /// B's stamped ingests, one per endpoint.
    b_requests: Vec<Vec<u8>>,
    /// Where they carry their send time.
    stamp: SendTimeStamp,
    /// A's ingests, one per endpoint, when A floods.
    flood_requests: Option<Vec<Vec<u8>>>,
}

/// The tenants and their endpoints; B's first deliveries checked; A's endpoints checked to
/// accept an ingest.
async fn prepare(bench: &Bench, kapsel: &ServerProcess, sink: &ServerProcess, flood: bool) -> Result<Prepared, String> {
    let address = kapsel.address();
    setup::wait_until_ready(sink.address()).await?;
    setup::wait_until_ready(address).await?;
    put_tenant(address, &bench.admin_token, TENANT_B, "{}").await?;
    let (body, digits_at) = stamped_json_body(limits::PAYLOAD_BYTES)?;
    let stamp = SendTimeStamp::of_body(&body, digits_at);
    let b_body = format!(
        r#"{{"ingest_auth":{{"type":"none"}},"tenant_id":"{TENANT_B}","url":"http://{}{HOOK_PATH}"}}"#,
        sink.address()
    );
    let mut b_requests = Vec::new();
    for endpoint in spread_endpoint_ids(TENANT_B, bench.shards) {
        setup::create_endpoint(address, &bench.admin_token, &endpoint, &b_body).await?;
        let mut first = ingest_request(address, &endpoint, &body);
        stamp.write(&mut first, unix_micros_now());
        setup::check_ingest(address, &endpoint, &first).await?;
        b_requests.push(ingest_request(address, &endpoint, &body));
    }
    let first = b_requests.len() as u64;
    let deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_FIRST_MS_MAX);
    if !wait_for_deliveries(sink.address(), first, deadline).await?.2 {
        return Err(format!(
            "the sink did not receive tenant {TENANT_B}'s first {first} events within {} ms",
            limits::DELIVERY_FIRST_MS_MAX
        ));
    }
    let flood_requests = if flood { Some(prepare_flood(bench, address).await?) } else { None };
    Ok(Prepared { b_requests, stamp, flood_requests })
}

/// Tenant A with its limits and its endpoints to the dead destination, each checked to accept
/// one ingest: A's ingests, one per endpoint.
async fn prepare_flood(bench: &Bench, address: SocketAddr) -> Result<Vec<Vec<u8>>, String> {
    let limits_body = format!(
        r#"{{"rate_limit_per_s":{},"events_waiting_max":{}}}"#,
        limits::TENANTS_A_RATE_LIMIT_PER_S,
        limits::TENANTS_A_EVENTS_WAITING_MAX
    );
    put_tenant(address, &bench.admin_token, TENANT_A, &limits_body).await?;
    let a_body = format!(r#"{{"ingest_auth":{{"type":"none"}},"tenant_id":"{TENANT_A}","url":"{DEAD_URL}"}}"#);
    let body = json_body(limits::PAYLOAD_BYTES)?;
    let mut requests = Vec::new();
    for endpoint in spread_endpoint_ids(TENANT_A, bench.shards) {
        setup::create_endpoint(address, &bench.admin_token, &endpoint, &a_body).await?;
        let ingest = ingest_request(address, &endpoint, &body);
        setup::check_ingest(address, &endpoint, &ingest).await?;
        requests.push(ingest);
    }
    Ok(requests)
}

/// `PUT /admin/tenants/{tenant}` with `body`, the operator's token.
async fn put_tenant(address: SocketAddr, token: &str, tenant: &str, body: &str) -> Result<(), String> {
    let authorization = format!("Bearer {token}");
    let put = request(
        "PUT",
        &format!("/admin/tenants/{tenant}"),
        address,
        &[("Authorization", &authorization)],
        Some(body.as_bytes()),
    );
    match setup::one_request(address, &put).await? {
        (200 | 201, _) => Ok(()),
        (status, answer) => Err(format!("PUT /admin/tenants/{tenant} answered {status}: {answer}")),
    }
}

/// A's flood on a thread and monoio runtime of its own, so that its loop does not share B's
/// generator's event loop: a closed loop of [`limits::TENANTS_FLOOD_CONNECTIONS`] connections,
/// no warm-up (every answer is counted), for the settle time, B's warm-up and B's measured
/// period.
fn start_flood(
    bench: &Bench,
    kapsel: SocketAddr,
    kapsel_pid: u32,
    requests: Vec<Vec<u8>>,
) -> Result<JoinHandle<Result<ClosedOutcome, String>>, String> {
    let plan = ClosedLoop {
        connections: limits::TENANTS_FLOOD_CONNECTIONS,
        warm_up: Duration::ZERO,
        measure: Duration::from_millis(limits::TENANTS_FLOOD_SETTLE_MS) + bench.warm_up + bench.measure,
        stamp: None,
    };
    let driver: Driver = bench.driver;
    std::thread::Builder::new()
        .name("tenant-a-flood".to_string())
        .spawn(move || block_on(driver, closed::run(kapsel, &requests, plan, CpuMeter::new(kapsel_pid)))?)
        .map_err(|error| format!("starting tenant {TENANT_A}'s flood thread: {error}"))
}

/// Waits for the flood's thread (its loop is bounded by its plan and the drain grace).
fn finish_flood(thread: JoinHandle<Result<ClosedOutcome, String>>) -> Result<ClosedOutcome, String> {
    thread.join().map_err(|_| format!("tenant {TENANT_A}'s flood thread panicked"))?
}

/// B's loop with the sink observed around its window, after the flood's settle time when A
/// floods; then the drain of B's accepted events.
async fn measure(
    bench: &Bench,
    kapsel: &ServerProcess,
    sink: &ServerProcess,
    requests: Vec<Vec<u8>>,
    stamp: SendTimeStamp,
    flood: bool,
) -> Result<Phase, String> {
    if flood {
        monoio::time::sleep(Duration::from_millis(limits::TENANTS_FLOOD_SETTLE_MS)).await;
    }
    let plan = OpenLoop {
        rate_per_s: limits::TENANTS_B_INGEST_RATE_PER_S,
        connections: limits::TENANTS_B_CONNECTIONS,
        warm_up: bench.warm_up,
        measure: bench.measure,
        stamp: Some(stamp),
    };
    let measure_start = Instant::now() + plan.warm_up;
    let measure_end = measure_start + plan.measure;
    let observer = monoio::spawn(observe(sink.address(), CpuMeter::new(sink.pid()), measure_start, measure_end));
    let ingest = open::run(kapsel.address(), &requests, plan, CpuMeter::new(kapsel.pid())).await?;
    let observed = observer.await?;
    let accepted = requests.len() as u64 + ingest.accepted_total;
    let deadline = Instant::now() + Duration::from_millis(limits::DELIVERY_DRAIN_MS_MAX);
    let (overall, drained_at, _) = wait_for_deliveries(sink.address(), accepted, deadline).await?;
    Ok(Phase {
        ingest,
        window: observed.stats,
        window_elapsed: observed.elapsed,
        sink_cpu: observed.cpu.server,
        accepted,
        overall,
        drain: drained_at.saturating_duration_since(measure_end),
        flood: None,
    })
}

/// [`limits::TENANTS_ENDPOINTS`] endpoint ids of `tenant`, the i-th on shard i mod `shards` by
/// Kapsel's owner hash, so that each tenant's load reaches every shard.
fn spread_endpoint_ids(tenant: &str, shards: usize) -> Vec<String> {
    (0..limits::TENANTS_ENDPOINTS)
        .map(|index| {
            let shard = index % shards.max(1);
            (0..limits::TENANTS_ID_SEARCH_MAX)
                .map(|suffix| format!("tenant-{tenant}-{index}-{suffix}"))
                .find(|id| owner_shard(id, shards) == shard)
                .unwrap_or_else(|| format!("tenant-{tenant}-{index}"))
        })
        .collect()
}

/// Per round and phase: B's achieved rate, ingest p50/p99, send lag, deliveries/s,
/// ingest-to-delivery latency, errors and undelivered events; A's answers; the CPU split. Then
/// the legend.
pub(super) fn print_results(measured: &Measured) {
    println!(
        "Tenant isolation (tenant {TENANT_B}: open loop {} ingests/s over {} connections; beside: tenant {TENANT_A} \
         flooding with {} connections, rate_limit_per_s {}, events_waiting_max {}):",
        limits::TENANTS_B_INGEST_RATE_PER_S,
        limits::TENANTS_B_CONNECTIONS,
        limits::TENANTS_FLOOD_CONNECTIONS,
        limits::TENANTS_A_RATE_LIMIT_PER_S,
        limits::TENANTS_A_EVENTS_WAITING_MAX,
    );
    for (round, (alone, beside)) in measured.rounds.iter().enumerate() {
        for (name, phase) in [("alone", alone), ("beside", beside)] {
            let (kapsel, generator, sink, others) = phase.cores();
            println!(
                "  round {} {name:<6}  B ingest {:>6.0}/s of {} scheduled, p50 {:.2} ms, p99 {:.2} ms, send lag p99 \
                 {:.2} ms, errors {}; {:.0} deliveries/s, ingest-to-delivery p50 {:.2} ms, p99 {:.2} ms; \
                 accepted {}, undelivered {} (drain {:.2} s)",
                round + 1,
                phase.ingest.achieved_per_s(),
                phase.ingest.scheduled,
                phase.ingest_ms(50.0),
                phase.ingest_ms(99.0),
                phase.ingest.send_lag.at(99.0).as_secs_f64() * 1000.0,
                phase.ingest.failures,
                phase.deliveries_per_s(),
                milliseconds(phase.window.p50_us),
                milliseconds(phase.window.p99_us),
                phase.accepted,
                phase.undelivered(),
                phase.drain.as_secs_f64(),
            );
            if phase.flood.is_some() {
                println!(
                    "                  A answered {} ({:.0} answers/s)",
                    phase.flood_answers(),
                    phase.flood_answers_per_s()
                );
            }
            println!(
                "                  cores: Kapsel {kapsel:.2}, generator{} {generator:.2}, sink {sink:.2}, others {others:.2}",
                if phase.flood.is_some() { " and A's flood" } else { "" },
            );
        }
    }
    println!();
    println!("{LEGEND}");
}

/// The legend under the details.
const LEGEND: &str = "  tenants: B's ingest latency runs from each request's intended send time (open loop); send
    lag is the wait for a free connection. deliveries/s is what the sink received in B's
    measured window: every delivery is B's, A's destination being dead. A answered: every
    answer to A's closed loop over its whole flood (settle, B's warm-up and window), 202s and
    refusals by status (429 E1003: A's rate limit; 503 E3002: A's waiting bound). cores: the
    generator shares this process with A's flood, so beside, it includes its thread.";

/// The summary's lines: the ratios, for information, and PASS/FAIL on B's errors and
/// deliveries.
pub(super) fn print_summary(measured: &Measured) {
    let ((p99_alone, p99_beside), (rate_alone, rate_beside)) = (measured.p99_ms(), measured.deliveries_per_s());
    let (errors, undelivered) = measured.b_errors_and_undelivered();
    let a_refused: u64 = measured
        .rounds
        .iter()
        .filter_map(|(_, beside)| beside.flood.as_ref())
        .map(|flood| flood.failures.total())
        .sum();
    println!(
        "  tenant B beside A's flood: ingest p99 {p99_beside:.2} ms against {p99_alone:.2} ms alone = {:.2}×, \
         deliveries {rate_beside:.0}/s against {rate_alone:.0}/s = {:.2}× (no bar in the issue; for information)",
        p99_beside / p99_alone.max(f64::EPSILON),
        rate_beside / rate_alone.max(f64::EPSILON),
    );
    println!(
        "    B never limited, nothing lost: B errors {errors}, undelivered {undelivered} (A refused {a_refused} times): {}",
        if errors == 0 && undelivered == 0 { "PASS" } else { "FAIL" },
    );
    for (round, (alone, beside)) in measured.rounds.iter().enumerate() {
        if !alone.clean() || !beside.clean() {
            println!(
                "    round {}: B errors alone {}, beside {}; undelivered alone {}, beside {}",
                round + 1,
                alone.ingest.failures,
                beside.ingest.failures,
                alone.undelivered(),
                beside.undelivered(),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The i-th endpoint of a tenant lands on shard i mod shards.
    #[test]
    fn endpoints_are_spread_over_the_shards() {
        for shards in [1, 2, 3, 8] {
            let ids = spread_endpoint_ids(TENANT_B, shards);
            assert_eq!(ids.len(), limits::TENANTS_ENDPOINTS);
            for (index, id) in ids.iter().enumerate() {
                assert_eq!(owner_shard(id, shards), index % shards, "{id}");
            }
        }
    }
}
