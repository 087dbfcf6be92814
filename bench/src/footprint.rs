//! The footprint benchmark as `cargo bench -p kapsel-bench --bench footprint` runs it: how much
//! memory an idle Kapsel holds, and how long it takes to start on a full log. It checks two
//! targets from the issue "Operating Kapsel": idle resident memory with 1,000 endpoints
//! configured below 30 MB, and ready (`GET /readyz` 200) within 5 s of starting on a
//! write-ahead log of 1,000,000 records.
//!
//! One data directory and five starts of the release `kapsel`, each stopped with SIGTERM:
//!
//! 1. fresh: resident memory once idle; then [`limits::FOOTPRINT_ENDPOINTS`] endpoints created
//!    (`PUT /admin/endpoints/ep-N`, deliveries paused) and the memory again;
//! 2. restarted: the endpoints replayed from the log; the memory; then the fill
//!    ([`crate::fill`]) ingests `KAPSEL_BENCH_FOOTPRINT_RECORDS` events spread over them;
//! 3. `kapsel wal inspect` counts the records in the logs;
//! 4. restarted with the log in the page cache (as after a restart in place): the time from
//!    spawning the process to the first `/readyz` 200, polled every
//!    [`limits::FOOTPRINT_READY_POLL_MS`], and the memory then and once idle;
//! 5. the same with the log's pages evicted first (`dd iflag=nocache`, file by file: as after a
//!    reboot, without dropping the whole machine's cache).
//!
//! Resident memory is `VmRSS` from `/proc/<pid>/status`, read after
//! [`limits::FOOTPRINT_SETTLE_MS`] without requests. Records replayed come from Kapsel's own
//! `replayed write-ahead log` lines (one per shard).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::fill::{self, Filled};
use crate::limits;
use crate::machine::{self, CpuMeter, Facts, Memory};
use crate::payload::{ingest_request, json_body};
use crate::process::ServerProcess;
use crate::runtime::{block_on, Driver};
use crate::setup::{self, Paths, DESTINATIONS_ALLOWED};

/// Idle resident memory with the endpoints configured must stay below this (30 MB, read as
/// 10^6 bytes: the stricter reading).
pub const IDLE_RESIDENT_TARGET_BYTES: u64 = 30_000_000;

/// Start-up on a log of a million records must reach `/readyz` 200 within this.
pub const READY_TARGET_MS: u64 = 5_000;

/// The endpoints' destination, with deliveries paused (`"enabled": false`): nothing listens
/// on port 9, and nothing is sent there.
const ENDPOINT_BODY: &str = r#"{"ingest_auth":{"type":"none"},"url":"http://127.0.0.1:9/hook","enabled":false}"#;

/// Endpoint ids are `ep-0` … `ep-999`.
const ENDPOINT_PREFIX: &str = "ep-";

/// The message of Kapsel's log line after each shard's replay.
const REPLAY_MESSAGE: &str = "replayed write-ahead log";

/// What the bench reads from the environment.
struct Settings {
    paths: Paths,
    shards: usize,
    driver: Driver,
    records: u64,
    skip_build: bool,
    admin_token: String,
}

/// What one start of Kapsel measured.
#[derive(Clone, Debug)]
struct Start {
    label: String,
    /// Spawn to the listening line.
    listening: Duration,
    /// Spawn to the first `/readyz` 200.
    ready: Duration,
    at_ready: Memory,
    /// After [`limits::FOOTPRINT_SETTLE_MS`] idle.
    idle: Memory,
    replay: Replay,
    /// Kapsel's CPU time from its listening line to ready.
    cpu_to_ready: Duration,
    /// Cores' worth of CPU used by other processes from the listening line to the idle reading.
    others_cores: f64,
}

/// The sums of Kapsel's `replayed write-ahead log` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Replay {
    shards: usize,
    records: u64,
    endpoints: u64,
    events: u64,
    /// The slowest shard's replay (they run in parallel).
    elapsed_ms_max: u64,
}

/// What `kapsel wal inspect` counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Inspected {
    records: u64,
    bytes: u64,
}

/// Everything the report needs.
struct Results {
    fresh: Start,
    with_endpoints: Memory,
    endpoints_created_in: Duration,
    restarted: Start,
    filled: Filled,
    inspected: Inspected,
    warm: Start,
    cold: Start,
    evicted_files: usize,
}

/// Entry point of `benches/footprint.rs`. Run under `cargo test` (no `--bench` argument) it
/// only says so.
pub fn main() -> ExitCode {
    setup::bench_main("kapsel-bench footprint", "cargo bench -p kapsel-bench --bench footprint", run)
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    settings.print_header();
    setup::build_binaries(&settings.paths, settings.skip_build, &["kapsel"])?;
    let root = settings.paths.bench_directory("footprint-data");
    setup::fresh_data_directory(&settings.paths, &root)?;
    let data = tempfile::Builder::new()
        .prefix("kapsel-")
        .tempdir_in(&root)
        .map_err(|error| format!("creating a data directory in {}: {error}", root.display()))?;
    println!("\nrunning (one data directory; every start stopped with SIGTERM):");
    let results = measure(&settings, data.path())?;
    print_results(&settings, &results);
    check(&settings, &results)
}

/// The five starts, in order.
fn measure(settings: &Settings, data: &Path) -> Result<Results, String> {
    let (mut server, fresh) = settings.start(data, "fresh start", "footprint-1-fresh")?;
    println!("  {}", progress_line(&fresh));
    let endpoints_created_in = create_endpoints(settings, &server)?;
    std::thread::sleep(Duration::from_millis(limits::FOOTPRINT_SETTLE_MS));
    let with_endpoints = memory(&server)?;
    println!(
        "  {} endpoints created in {:.2} s; RSS idle {} MB",
        limits::FOOTPRINT_ENDPOINTS,
        endpoints_created_in.as_secs_f64(),
        megabytes(with_endpoints.resident_bytes)
    );
    server.terminate()?;
    let (mut server, restarted) = settings.start(data, "restart, endpoints", "footprint-2-endpoints")?;
    println!("  {}", progress_line(&restarted));
    if restarted.replay.endpoints != limits::FOOTPRINT_ENDPOINTS as u64 {
        return Err(format!(
            "the restart replayed {} endpoints, not {}",
            restarted.replay.endpoints,
            limits::FOOTPRINT_ENDPOINTS
        ));
    }
    let filled = fill_log(settings, &server)?;
    server.terminate()?;
    let inspected = inspect(settings, data)?;
    println!("  kapsel wal inspect: {} records, {} bytes", inspected.records, inspected.bytes);
    let warm_label = format!("{} records, warm", inspected.records);
    let (mut server, warm) = settings.start(data, &warm_label, "footprint-3-warm")?;
    println!("  {}", progress_line(&warm));
    server.terminate()?;
    let evicted_files = evict_page_cache(data)?;
    let cold_label = format!("{} records, cold", inspected.records);
    let (mut server, cold) = settings.start(data, &cold_label, "footprint-4-cold")?;
    println!("  {}", progress_line(&cold));
    server.terminate()?;
    Ok(Results { fresh, with_endpoints, endpoints_created_in, restarted, filled, inspected, warm, cold, evicted_files })
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let records = setup::number_from_env(
            "KAPSEL_BENCH_FOOTPRINT_RECORDS",
            limits::FOOTPRINT_RECORDS_DEFAULT,
            limits::FOOTPRINT_RECORDS_MAX,
        )?;
        Ok(Self {
            paths: Paths::from_env()?,
            // Kapsel's own default is one shard per core; the bench sets it explicitly so that
            // every start agrees with the data directory.
            shards: setup::number_from_env("KAPSEL_BENCH_SHARDS", cores, limits::SERVER_SHARDS_MAX)?,
            driver: Driver::from_env()?,
            records: records as u64,
            skip_build: setup::flag_from_env("KAPSEL_BENCH_SKIP_BUILD"),
            admin_token: format!("kapsel-bench-{}", std::process::id()),
        })
    }

    fn print_header(&self) {
        let facts = Facts::read();
        setup::print_preamble(
            "Kapsel footprint: idle memory and start-up time",
            &[
                "CARGO_TARGET_DIR",
                "KAPSEL_BENCH_FOOTPRINT_RECORDS",
                "KAPSEL_BENCH_SHARDS",
                "KAPSEL_BENCH_SKIP_BUILD",
                "KAPSEL_IO_DRIVER",
            ],
            "cargo bench -p kapsel-bench --bench footprint",
            &facts,
        );
        println!(
            "  kapsel:   {} shards, monoio driver {} (io_uring {}), on 127.0.0.1:0, other settings at their defaults",
            self.shards,
            self.driver.name(),
            if facts.io_uring { "available" } else { "unavailable" }
        );
        println!(
            "  set-up:   endpoints {ENDPOINT_PREFIX}0…{ENDPOINT_PREFIX}{} with {ENDPOINT_BODY}, \
             KAPSEL_ALLOW_DESTINATIONS={DESTINATIONS_ALLOWED}",
            limits::FOOTPRINT_ENDPOINTS - 1
        );
        println!(
            "  fill:     {} events, POST /ingest/{ENDPOINT_PREFIX}{{k mod {}}} with a {} B JSON body, \
             closed loop of {} keep-alive connections",
            self.records,
            limits::FOOTPRINT_ENDPOINTS,
            limits::PAYLOAD_BYTES,
            limits::FOOTPRINT_FILL_CONNECTIONS
        );
    }

    /// Spawns Kapsel on `data`, standard error to `<logs>/<log_name>.log`; times it to ready and
    /// reads its memory then and once idle.
    ///
    /// # Errors
    ///
    /// It did not start or get ready, or its replay lines are missing; with its log's tail.
    fn start(&self, data: &Path, label: &str, log_name: &str) -> Result<(ServerProcess, Start), String> {
        let log = self.paths.log_directory.join(format!("{log_name}.log"));
        let program = self.paths.binaries.join("kapsel");
        let mut variables = setup::kapsel_variables(self.shards, self.driver, data, &self.admin_token);
        // The replay lines are read back from the log: JSON, at info.
        variables.extend([("KAPSEL_LOG_FORMAT", "json".to_string()), ("RUST_LOG", "info".to_string())]);
        let spawned = Instant::now();
        let mut process = ServerProcess::spawn("kapsel", &program, &variables, &log)?;
        let listening = spawned.elapsed();
        let meter = CpuMeter::new(process.pid());
        let before = meter.sample();
        let ready = time_to_ready(&mut process, spawned)?;
        let cpu_to_ready = meter.sample().since(&before).server;
        let at_ready = memory(&process)?;
        std::thread::sleep(Duration::from_millis(limits::FOOTPRINT_SETTLE_MS));
        let idle = memory(&process)?;
        let usage = meter.sample().since(&before);
        let others_cores = usage.others().as_secs_f64() / (spawned.elapsed() - listening).as_secs_f64();
        let replay = Replay::from_log(&log, self.shards).map_err(|error| process.failure(&error))?;
        let start =
            Start { label: label.to_string(), listening, ready, at_ready, idle, replay, cpu_to_ready, others_cores };
        Ok((process, start))
    }
}

/// Polls `GET /readyz` every [`limits::FOOTPRINT_READY_POLL_MS`] until it answers 200: the
/// time from `spawned`.
///
/// # Errors
///
/// The process exited, or was not ready within [`limits::SERVER_START_TIMEOUT_MS`].
pub(crate) fn time_to_ready(process: &mut ServerProcess, spawned: Instant) -> Result<Duration, String> {
    let deadline = spawned + Duration::from_millis(limits::SERVER_START_TIMEOUT_MS);
    let probe_timeout = Duration::from_millis(limits::FOOTPRINT_READY_PROBE_TIMEOUT_MS);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match setup::get_blocking(process.address(), "/readyz", probe_timeout.min(left)) {
            Ok((200, _)) => return Ok(spawned.elapsed()),
            Ok((status, body)) => format!("{status} {}", String::from_utf8_lossy(&body)),
            Err(error) => error,
        };
        process.check_running()?;
        if Instant::now() >= deadline {
            return Err(process.failure(&format!("not ready in time; last answer to GET /readyz: {last}")));
        }
        std::thread::sleep(Duration::from_millis(limits::FOOTPRINT_READY_POLL_MS));
    }
}

/// The memory of the server now.
pub(crate) fn memory(process: &ServerProcess) -> Result<Memory, String> {
    machine::memory_of(process.pid()).ok_or_else(|| process.failure("has no readable /proc/<pid>/status"))
}

/// `PUT /admin/endpoints/ep-N` for every endpoint, one after the other, as an operator's
/// script would: how long it took.
fn create_endpoints(settings: &Settings, process: &ServerProcess) -> Result<Duration, String> {
    let started = Instant::now();
    block_on(settings.driver, async {
        for index in 0..limits::FOOTPRINT_ENDPOINTS {
            let endpoint = format!("{ENDPOINT_PREFIX}{index}");
            setup::create_endpoint(process.address(), &settings.admin_token, &endpoint, ENDPOINT_BODY).await?;
        }
        Ok::<_, String>(())
    })?
    .map_err(|error| process.failure(&error))?;
    Ok(started.elapsed())
}

/// Ingests the events, spread over the endpoints.
fn fill_log(settings: &Settings, process: &ServerProcess) -> Result<Filled, String> {
    let body = json_body(limits::PAYLOAD_BYTES)?;
    let requests: Vec<Vec<u8>> = (0..limits::FOOTPRINT_ENDPOINTS)
        .map(|index| ingest_request(process.address(), &format!("{ENDPOINT_PREFIX}{index}"), &body))
        .collect();
    println!("  filling the log with {} events:", settings.records);
    let filled = block_on(
        settings.driver,
        fill::run(process.address(), &requests, settings.records, limits::FOOTPRINT_FILL_CONNECTIONS),
    )?
    .map_err(|error| process.failure(&error))?;
    println!("  {}", filled.summary());
    Ok(filled)
}

/// `kapsel wal inspect --data-dir DATA` (Kapsel stopped), bounded by
/// [`limits::FOOTPRINT_TOOL_TIMEOUT_MS`] through `timeout(1)`: the records and bytes of all logs.
fn inspect(settings: &Settings, data: &Path) -> Result<Inspected, String> {
    let program = settings.paths.binaries.join("kapsel");
    let output = bounded_command(&program)
        .args(["wal", "inspect", "--data-dir"])
        .arg(data)
        .env_remove("KAPSEL_CONFIG")
        .output()
        .map_err(|error| format!("running kapsel wal inspect: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("kapsel wal inspect failed ({}): {stderr}{stdout}", output.status));
    }
    stdout
        .lines()
        .rev()
        .find_map(parse_inspect_summary)
        .ok_or_else(|| format!("kapsel wal inspect printed no `inspected …` line:\n{stdout}"))
}

/// `timeout <seconds> <program>`: a tool run that cannot hang the bench.
fn bounded_command(program: &Path) -> Command {
    let mut command = Command::new("timeout");
    command.arg(format!("{}s", limits::FOOTPRINT_TOOL_TIMEOUT_MS / 1000)).arg(program);
    command
}

/// The records and bytes of `inspected 2 logs: 3 segments (1 sealed), 1001000 records,
/// 1161530368 bytes`, the last line `kapsel wal inspect` prints.
fn parse_inspect_summary(line: &str) -> Option<Inspected> {
    let (_, totals) = line.strip_prefix("inspected ")?.split_once(": ")?;
    let totals = totals.split(';').next()?;
    let count =
        |noun: &str| totals.split(", ").find_map(|part| part.trim().strip_suffix(noun)?.trim().parse::<u64>().ok());
    Some(Inspected { records: count(" records")?, bytes: count(" bytes")? })
}

/// Drops the page cache of every file under `directory` (`dd if=FILE iflag=nocache count=0`,
/// which asks the kernel to drop the whole file's clean pages; Kapsel has stopped, so none is
/// dirty): the next start reads its log from the disk. Returns the files it went through.
fn evict_page_cache(directory: &Path) -> Result<usize, String> {
    let mut files = Vec::new();
    collect_files(directory, &mut files)?;
    for file in &files {
        let mut input = std::ffi::OsString::from("if=");
        input.push(file);
        let status = bounded_command(Path::new("dd"))
            .arg(input)
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .map_err(|error| format!("running dd: {error}"))?;
        if !status.success() {
            return Err(format!("dd iflag=nocache on {} failed ({status})", file.display()));
        }
    }
    Ok(files.len())
}

/// Every regular file under `directory`, recursively.
fn collect_files(directory: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(directory).map_err(|error| format!("reading {}: {error}", directory.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| format!("reading {}: {error}", directory.display()))?;
        let kind = entry.file_type().map_err(|error| format!("{}: {error}", entry.path().display()))?;
        if kind.is_dir() {
            collect_files(&entry.path(), files)?;
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

impl Replay {
    /// The sums over the replay lines in `log`.
    ///
    /// # Errors
    ///
    /// The log is unreadable, or it does not hold one replay line per shard.
    fn from_log(log: &Path, shards: usize) -> Result<Self, String> {
        let text = std::fs::read_to_string(log).map_err(|error| format!("reading {}: {error}", log.display()))?;
        let replay = text.lines().filter_map(Self::parse_line).fold(Self::default(), |sum, line| Self {
            shards: sum.shards + 1,
            records: sum.records + line.records,
            endpoints: sum.endpoints + line.endpoints,
            events: sum.events + line.events,
            elapsed_ms_max: sum.elapsed_ms_max.max(line.elapsed_ms_max),
        });
        if replay.shards != shards {
            return Err(format!("{} `{REPLAY_MESSAGE}` lines in its log, not one per shard ({shards})", replay.shards));
        }
        Ok(replay)
    }

    /// One shard's figures from a JSON log line, if it is a replay line.
    fn parse_line(line: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = value.get("fields")?;
        if fields.get("message")?.as_str()? != REPLAY_MESSAGE {
            return None;
        }
        let number = |name: &str| fields.get(name).and_then(serde_json::Value::as_u64);
        Some(Self {
            shards: 1,
            records: number("records")?,
            endpoints: number("endpoints")?,
            events: number("events")?,
            elapsed_ms_max: number("elapsed_ms")?,
        })
    }
}

/// Bytes in MB (10^6 bytes), one decimal.
pub(crate) fn megabytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a (fewer than 1M records)",
    }
}

/// The line printed as each start is measured.
fn progress_line(start: &Start) -> String {
    format!(
        "{:<24} ready in {:>8.1} ms, {} records replayed, RSS at ready {} MB, idle {} MB",
        start.label,
        milliseconds(start.ready),
        start.replay.records,
        megabytes(start.at_ready.resident_bytes),
        megabytes(start.idle.resident_bytes)
    )
}

fn print_results(settings: &Settings, results: &Results) {
    println!();
    print_memory(results);
    println!();
    print_starts(results);
    println!();
    println!("{LEGEND}");
    println!();
    println!("Summary against the targets of \"Operating Kapsel\" (MB = 10^6 bytes):");
    for (what, value, target, pass) in verdicts(settings, results) {
        println!("  {what:<62} {value:>10}  {target:>8}  {}", verdict(pass));
    }
    let fill = &results.filled;
    println!(
        "  the log: {} events accepted at {:.0}/s over {} endpoints ({} B bodies, deliveries paused)",
        fill.accepted,
        fill.accepted_per_s(),
        limits::FOOTPRINT_ENDPOINTS,
        limits::PAYLOAD_BYTES,
    );
    println!(
        "    `kapsel wal inspect`: {} records, {} bytes; replayed by the warm start: {} records, {} events pending",
        results.inspected.records, results.inspected.bytes, results.warm.replay.records, results.warm.replay.events,
    );
    let noise = [&results.fresh, &results.restarted, &results.warm, &results.cold]
        .iter()
        .map(|start| start.others_cores)
        .fold(0.0, f64::max);
    if noise > crate::report::NOISE_CORES_MAX {
        println!("  NOISY: other processes used up to {noise:.2} cores during a start; the times may be inflated");
    }
    println!("  load average at the end: {}", machine::load_average());
}

fn print_memory(results: &Results) {
    println!(
        "Resident memory (VmRSS; MB = 10^6 bytes; idle: after {} s without requests):",
        limits::FOOTPRINT_SETTLE_MS / 1000
    );
    println!("{:<50} {:>8} {:>8} {:>8} {:>8}", "state", "RSS MB", "anon MB", "file MB", "peak MB");
    let rows = [
        ("fresh start, no endpoints, idle".to_string(), results.fresh.idle),
        (format!("{} endpoints created (same process), idle", limits::FOOTPRINT_ENDPOINTS), results.with_endpoints),
        (format!("restart, {} endpoints replayed, idle", limits::FOOTPRINT_ENDPOINTS), results.restarted.idle),
        (format!("restart on {}, at ready", results.warm.label), results.warm.at_ready),
        (format!("restart on {}, idle", results.warm.label), results.warm.idle),
        (format!("restart on {}, idle", results.cold.label), results.cold.idle),
    ];
    for (state, memory) in rows {
        println!(
            "{state:<50} {:>8} {:>8} {:>8} {:>8}",
            megabytes(memory.resident_bytes),
            megabytes(memory.anonymous_bytes),
            megabytes(memory.file_bytes),
            megabytes(memory.peak_bytes)
        );
    }
}

fn print_starts(results: &Results) {
    println!("Start-up (spawn to the first GET /readyz 200, polled every {} ms):", limits::FOOTPRINT_READY_POLL_MS);
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>12} {:>9} {:>10} {:>9} {:>11} {:>7}",
        "start",
        "records",
        "endpoints",
        "events",
        "listening ms",
        "ready ms",
        "replay ms",
        "cpu ms",
        "RSS ready",
        "others"
    );
    for start in [&results.fresh, &results.restarted, &results.warm, &results.cold] {
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>12.1} {:>9.1} {:>10} {:>9.0} {:>11} {:>7.2}",
            start.label,
            start.replay.records,
            start.replay.endpoints,
            start.replay.events,
            milliseconds(start.listening),
            milliseconds(start.ready),
            start.replay.elapsed_ms_max,
            milliseconds(start.cpu_to_ready),
            megabytes(start.at_ready.resident_bytes),
            start.others_cores,
        );
    }
    println!(
        "(endpoints created one after the other in {:.2} s; before the cold start the page cache of {} files \
         was dropped)",
        results.endpoints_created_in.as_secs_f64(),
        results.evicted_files
    );
}

/// What, the figure, the target, and whether it is met (`None`: the target does not apply).
fn verdicts(settings: &Settings, results: &Results) -> Vec<(String, String, String, Option<bool>)> {
    let endpoints = limits::FOOTPRINT_ENDPOINTS;
    let rss_target = format!("< {} MB", IDLE_RESIDENT_TARGET_BYTES / 1_000_000);
    let mut rows = Vec::new();
    for (what, memory) in [
        (format!("idle RSS, {endpoints} endpoints created"), results.with_endpoints),
        (format!("idle RSS, restarted with {endpoints} endpoints"), results.restarted.idle),
    ] {
        let pass = memory.resident_bytes < IDLE_RESIDENT_TARGET_BYTES;
        rows.push((what, format!("{} MB", megabytes(memory.resident_bytes)), rss_target.clone(), Some(pass)));
    }
    // The target is about a log of a million records; a quick run on a smaller one says so.
    let applies = settings.records >= limits::FOOTPRINT_RECORDS_DEFAULT as u64;
    for (cache, start) in [("warm", &results.warm), ("cold", &results.cold)] {
        let pass = start.ready < Duration::from_millis(READY_TARGET_MS);
        rows.push((
            format!("start-up to ready, {} records replayed, page cache {cache}", start.replay.records),
            format!("{:.2} s", start.ready.as_secs_f64()),
            format!("< {} s", READY_TARGET_MS / 1000),
            applies.then_some(pass),
        ));
    }
    rows
}

/// Non-zero exit when the counts disagree: the log holds fewer records than were accepted, or
/// the warm start replayed a different number than the tool counted.
fn check(settings: &Settings, results: &Results) -> Result<(), String> {
    let expected = settings.records + limits::FOOTPRINT_ENDPOINTS as u64;
    if results.inspected.records < expected {
        return Err(format!("the logs hold {} records, fewer than the {expected} accepted", results.inspected.records));
    }
    if results.warm.replay.records != results.inspected.records {
        return Err(format!(
            "the warm start replayed {} records, `kapsel wal inspect` counted {}",
            results.warm.replay.records, results.inspected.records
        ));
    }
    Ok(())
}

/// The legend under the tables.
const LEGEND: &str = "  RSS: VmRSS, resident now; anon: RssAnon (heap, stacks); file: RssFile (the binary's and
    libraries' pages); peak: VmHWM since the process started.
  records, endpoints, events: summed over the shards' `replayed write-ahead log` lines (events:
    non-terminal events in memory after replay). listening ms: spawn to the listening line;
    ready ms: spawn to the first GET /readyz 200; replay ms: the slowest shard's replay as
    Kapsel logs it; cpu ms: Kapsel's CPU time from its listening line to ready; RSS ready: VmRSS
    at the first 200; others: cores' worth of CPU used by other processes from the listening line
    until the idle reading (the noise).
  warm: the log's pages still in the page cache (a restart in place); cold: dropped first,
    file by file, with dd iflag=nocache (as after a reboot).";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The record count checked against the accepted events comes from this line of
    // `kapsel wal inspect` (src/tools.rs): both counts must be read exactly, with or without the
    // note on failed logs.
    #[test]
    fn inspect_summary_gives_records_and_bytes() {
        let line = "inspected 2 logs: 35 segments (33 sealed), 1001000 records, 1161530368 bytes";
        assert_eq!(parse_inspect_summary(line), Some(Inspected { records: 1_001_000, bytes: 1_161_530_368 }));
        let failed = "inspected 1 log: 1 segment (0 sealed), 3 records, 90 bytes; 1 with errors, see above";
        assert_eq!(parse_inspect_summary(failed), Some(Inspected { records: 3, bytes: 90 }));
        assert_eq!(parse_inspect_summary("shard-0 (/d/wal/shard-0): 1 segment"), None);
    }

    // Records replayed are summed from Kapsel's JSON log lines; other lines, and lines from an
    // older Kapsel without some field, must not be mistaken for them.
    #[test]
    fn replay_lines_are_recognised() {
        let line = r#"{"timestamp":"2026-11-29T08:07:42.940515Z","level":"INFO","fields":{"message":"replayed write-ahead log","shard":1,"records":500500,"endpoints":500,"snapshot_endpoints":0,"events":500000,"elapsed_ms":812},"target":"kapsel_engine::runtime"}"#;
        assert_eq!(
            Replay::parse_line(line),
            Some(Replay { shards: 1, records: 500_500, endpoints: 500, events: 500_000, elapsed_ms_max: 812 })
        );
        assert_eq!(Replay::parse_line(r#"{"fields":{"message":"listening"}}"#), None);
        assert_eq!(Replay::parse_line("kapsel listening on http://127.0.0.1:1"), None);
    }
}
