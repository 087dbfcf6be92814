//! The read-only tool commands, `kapsel audit verify` and `kapsel wal inspect`, over every
//! write-ahead log under a data directory, and `kapsel audit verify` over a cluster's partitions
//! when `KAPSEL_NATS_URL` is set ([`audit_verify_cluster`]).
//!
//! Both only read (files through [`kapsel_wal::audit`], streams and the bucket through
//! [`kapsel_engine::cluster::seal`]), so they are safe beside a running server or cluster. Each takes its output streams as writers and returns an [`Exit`], so tests can run
//! them without a process. Results go to standard output; progress and errors go to standard
//! error, so a script can read the results while a person watches the progress.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kapsel_engine::cluster::nats::{block_on, BUCKET};
use kapsel_engine::cluster::seal::{self as cluster_seal, PartitionReport, VerifyError};
use kapsel_wal::audit::{self, SegmentReport, VerifyReport};
use kapsel_wal::merkle;
use kapsel_wal::scan;
use kapsel_wal::seal::{SealInfo, CHAIN_FILE_NAME};
use kapsel_wal::WalError;

use crate::config::{Configuration, Source, VARIABLES};

/// Below this many bytes in all, verification takes about a second and prints no progress:
/// on a tiny log, progress lines would only be noise.
pub const PROGRESS_BYTES_MIN: u64 = 256 * 1024 * 1024;

/// Verification of a larger log prints a progress line each time it passes another multiple
/// of this many percent: twenty lines for the whole run, however large the log.
pub const PROGRESS_STEP_PERCENT: u64 = 5;

/// Name of the directory under the data directory that holds one log per shard.
pub const WAL_DIRECTORY_NAME: &str = "wal";

/// Prefix of a shard's log directory name: `shard-0`, `shard-1`, …
pub const SHARD_DIRECTORY_PREFIX: &str = "shard-";

/// How a tool command ended; its value is the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every log checked out (or was listed).
    Success = 0,
    /// A log is corrupt: verification failed.
    Corrupt = 1,
    /// Bad usage, no log found, or an I/O error.
    Error = 2,
}

impl Exit {
    /// The exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit for a run with both outcomes. Corruption wins over an I/O error: it is the
    /// finding an auditor's script must not miss.
    fn worst(self, other: Self) -> Self {
        match (self, other) {
            (Self::Corrupt, _) | (_, Self::Corrupt) => Self::Corrupt,
            (Self::Error, _) | (_, Self::Error) => Self::Error,
            (Self::Success, Self::Success) => Self::Success,
        }
    }

    fn of(error: &WalError) -> Self {
        match error {
            WalError::Corrupt { .. } => Self::Corrupt,
            _ => Self::Error,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// Why no log could be found under a data directory.
#[derive(Debug)]
#[non_exhaustive]
pub enum FindError {
    /// The data directory does not exist.
    Missing(PathBuf),
    /// The data directory is a file or something else.
    NotDirectory(PathBuf),
    /// The directory exists but holds no log.
    NoLogs(PathBuf),
    /// Listing a directory failed.
    Io {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

impl fmt::Display for FindError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(path) => write!(formatter, "data directory {} does not exist", path.display()),
            Self::NotDirectory(path) => write!(formatter, "data directory {} is not a directory", path.display()),
            Self::NoLogs(path) => write!(
                formatter,
                "no write-ahead logs found in {}: expected {}/{WAL_DIRECTORY_NAME}/{SHARD_DIRECTORY_PREFIX}<n>/ \
                 directories, or a log directory itself (with *.wal segment files or {CHAIN_FILE_NAME})",
                path.display(),
                path.display()
            ),
            Self::Io { path, source } => write!(formatter, "cannot list {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for FindError {}

/// One write-ahead log to process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDirectory {
    /// How output names it: `shard-<n>`, or the path when the data directory is the log.
    pub label: String,
    /// Its directory.
    pub path: PathBuf,
}

/// Finds the logs under `data_directory`: `data_directory` itself when it is a log directory;
/// else every `wal/shard-<n>/` in shard order; else every `shard-<n>/` directly inside it, so
/// that pointing the tools at the `wal` directory works too.
pub fn find_logs(data_directory: &Path) -> Result<Vec<LogDirectory>, FindError> {
    match std::fs::metadata(data_directory) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(FindError::NotDirectory(data_directory.to_path_buf())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(FindError::Missing(data_directory.to_path_buf()))
        }
        Err(source) => return Err(FindError::Io { path: data_directory.to_path_buf(), source }),
    }
    if is_log_directory(data_directory)? {
        let label = data_directory.display().to_string();
        return Ok(vec![LogDirectory { label, path: data_directory.to_path_buf() }]);
    }
    for parent in [data_directory.join(WAL_DIRECTORY_NAME), data_directory.to_path_buf()] {
        let shards = shard_directories(&parent)?;
        if !shards.is_empty() {
            return Ok(shards);
        }
    }
    Err(FindError::NoLogs(data_directory.to_path_buf()))
}

fn list(directory: &Path) -> Result<Vec<std::fs::DirEntry>, FindError> {
    let io_error = |source| FindError::Io { path: directory.to_path_buf(), source };
    std::fs::read_dir(directory).map_err(io_error)?.collect::<Result<_, _>>().map_err(io_error)
}

fn is_log_directory(directory: &Path) -> Result<bool, FindError> {
    Ok(list(directory)?.iter().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_file = entry.path().is_file();
        is_file && (name == CHAIN_FILE_NAME || name.ends_with(".wal"))
    }))
}

fn shard_directories(parent: &Path) -> Result<Vec<LogDirectory>, FindError> {
    if !parent.is_dir() {
        return Ok(Vec::new());
    }
    let mut shards: Vec<(u64, LogDirectory)> = Vec::new();
    for entry in list(parent)? {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(number) = name.strip_prefix(SHARD_DIRECTORY_PREFIX).and_then(parse_shard_number) else {
            continue;
        };
        if entry.path().is_dir() {
            shards.push((number, LogDirectory { label: name, path: entry.path() }));
        }
    }
    // Numeric order, so shard-10 follows shard-9 rather than shard-1.
    shards.sort_by_key(|(number, _)| *number);
    Ok(shards.into_iter().map(|(_, log)| log).collect())
}

fn parse_shard_number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `kapsel audit verify`: verifies every log under `data_directory` (every frame, every sealed
/// segment's Merkle root, the seals against `audit.chain` and the chain's links), prints one
/// line per log and a summary to `stdout`, progress and errors to `stderr`. A corrupt log does
/// not stop the others from being checked: an operator wants every damaged shard at once.
pub fn audit_verify(data_directory: &Path, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Exit {
    let logs = match find_logs(data_directory) {
        Ok(logs) => logs,
        Err(error) => return report_find_error(&error, stderr),
    };
    let outcome = verify_logs(&logs, stdout, stderr);
    finish(outcome, stderr)
}

/// `kapsel wal inspect`: lists every segment of every log under `data_directory` (id, file,
/// bytes, records, first LSN, seal root and chain hash, torn tail) and the length of each
/// audit chain. It checks no roots; `audit verify` does.
pub fn wal_inspect(data_directory: &Path, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Exit {
    let logs = match find_logs(data_directory) {
        Ok(logs) => logs,
        Err(error) => return report_find_error(&error, stderr),
    };
    let outcome = inspect_logs(&logs, stdout, stderr);
    finish(outcome, stderr)
}

/// `kapsel audit verify` as configured: the cluster's partitions when `KAPSEL_NATS_URL` is set
/// ([`audit_verify_cluster`]), else the local logs under the data directory ([`audit_verify`]).
pub fn audit_verify_configured(configuration: &Configuration, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Exit {
    if configuration.values().nats_url.as_deref().is_some_and(|urls| !urls.trim().is_empty()) {
        audit_verify_cluster(configuration, stdout, stderr)
    } else {
        audit_verify(&configuration.data_directory(), stdout, stderr)
    }
}

/// `kapsel audit verify` in cluster mode: connects to NATS (`KAPSEL_NATS_URL`), takes the
/// partition count from `KAPSEL_PARTITIONS` when given (it must equal the one the cluster
/// recorded) or from the bucket, and verifies every partition's seals against its stream
/// ([`cluster_seal::verify_cluster`]): one line per partition and a summary on `stdout`, each
/// failure with its partition, range and sequence on `stderr` too. Exit 1 when a partition is
/// corrupt, 2 when NATS cannot be reached or read.
pub fn audit_verify_cluster(configuration: &Configuration, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Exit {
    let connected = connect_cluster(configuration);
    let (link, partitions) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            let _ = writeln!(stderr, "kapsel: {error}");
            return Exit::Error;
        }
    };
    let outcome = verify_partitions(&link, partitions, stdout, stderr);
    link.close();
    finish(outcome, stderr)
}

/// The link to the cluster and its partition count, or why not.
fn connect_cluster(configuration: &Configuration) -> Result<(kapsel_nats::Link, u32), String> {
    let settings = configuration.settings().map_err(|error| error.to_string())?;
    let cluster = settings.cluster.ok_or("KAPSEL_NATS_URL is not set")?;
    let options = kapsel_nats::LinkOptions {
        urls: cluster.urls.clone(),
        name: format!("kapsel-audit-{}", cluster.node),
        ..kapsel_nats::LinkOptions::default()
    };
    let link = kapsel_nats::Link::connect(options).map_err(|error| error.to_string())?;
    let given = (configuration.source(VARIABLES.partitions) != Source::Default).then_some(cluster.partitions);
    match cluster_partitions(&link, given) {
        Ok(partitions) => Ok((link, partitions)),
        Err(error) => {
            link.close();
            Err(error)
        }
    }
}

/// The partitions to verify: the count the cluster recorded in its bucket, which `given`
/// (`KAPSEL_PARTITIONS`) must equal when set; `given` alone when the bucket has none.
fn cluster_partitions(link: &kapsel_nats::Link, given: Option<u32>) -> Result<u32, String> {
    let entry = block_on(link.kv_get(BUCKET, "partitions"))
        .map_err(|error| format!("reading the cluster's partition count from the bucket {BUCKET}: {error}"))?;
    let recorded = entry
        .map(|entry| String::from_utf8(entry.value).ok().and_then(|text| text.parse::<u32>().ok()).ok_or("unreadable"));
    match (recorded, given) {
        (Some(Ok(recorded)), Some(given)) if recorded != given => {
            Err(format!("the cluster has {recorded} partitions and {} is {given}", VARIABLES.partitions))
        }
        (Some(Ok(recorded)), _) => Ok(recorded),
        (Some(Err(_)), _) => Err(format!("the partition count in the bucket {BUCKET} is unreadable")),
        (None, Some(given)) => Ok(given),
        (None, None) => Err(format!(
            "no Kapsel cluster found: the bucket {BUCKET} has no partition count (give {} to verify anyway)",
            VARIABLES.partitions
        )),
    }
}

fn verify_partitions(
    link: &kapsel_nats::Link,
    partitions: u32,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> io::Result<Exit> {
    let mut written = Ok(());
    let mut print = |outcome: &Result<PartitionReport, VerifyError>| {
        if written.is_ok() {
            written = write_partition(outcome, stdout, stderr);
        }
    };
    let outcomes = block_on(cluster_seal::verify_cluster(link, partitions, &mut print));
    written?;
    let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
    let exit = outcomes.iter().fold(Exit::Success, |exit, outcome| match outcome {
        Ok(_) => exit,
        Err(VerifyError::Corrupt(_)) => exit.worst(Exit::Corrupt),
        Err(_) => exit.worst(Exit::Error),
    });
    let reports: Vec<&PartitionReport> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).collect();
    if failed == 0 {
        let seals: u64 = reports.iter().map(|report| report.seals).sum();
        let records: u64 = reports.iter().map(|report| report.records).sum();
        writeln!(
            stdout,
            "verified {}: {}, {records} records recomputed; every Merkle root and chain link checks out",
            plural(partitions as usize, "partition"),
            plural(seals as usize, "seal")
        )?;
    } else {
        writeln!(
            stdout,
            "verification FAILED: {failed} of {} did not verify",
            plural(partitions as usize, "partition")
        )?;
    }
    Ok(exit)
}

/// One partition's line on `stdout`; a failure on `stderr` as well.
fn write_partition(
    outcome: &Result<PartitionReport, VerifyError>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> io::Result<()> {
    match outcome {
        Ok(report) => writeln!(stdout, "partition {}: ok: {}", report.partition, partition_summary(report)),
        Err(VerifyError::Corrupt(mismatch)) => {
            writeln!(stdout, "partition {}: FAILED: corrupt: {mismatch}", mismatch.partition)?;
            writeln!(stderr, "kapsel: corrupt: {mismatch}")
        }
        Err(error @ VerifyError::Unavailable { partition, reason }) => {
            writeln!(stdout, "partition {partition}: FAILED: cannot verify: {reason}")?;
            writeln!(stderr, "kapsel: {error}")
        }
        Err(error) => {
            writeln!(stdout, "FAILED: {error}")?;
            writeln!(stderr, "kapsel: {error}")
        }
    }
}

/// "3 seals (2 recomputed, 40 records; 1 of a purged range, by chain only), head `<hex>`; 7
/// sequences not sealed yet".
fn partition_summary(report: &PartitionReport) -> String {
    let unsealed = format!("{} not sealed yet", plural(report.unsealed as usize, "sequence"));
    let Some(head) = report.chain_head else {
        return format!("no seals yet; {unsealed}");
    };
    let chain_only = if report.chain_only > 0 {
        format!("; {} of purged ranges, by chain only", report.chain_only)
    } else {
        String::new()
    };
    format!(
        "{} ({} recomputed, {} records{chain_only}), head {}; {unsealed}",
        plural(report.seals as usize, "seal"),
        report.recomputed,
        report.records,
        merkle::to_hex(&head)
    )
}

fn report_find_error(error: &FindError, stderr: &mut dyn Write) -> Exit {
    // Nothing more can be done when standard error itself fails; the exit code still tells.
    let _ = writeln!(stderr, "kapsel: {error}");
    Exit::Error
}

fn finish(outcome: io::Result<Exit>, stderr: &mut dyn Write) -> Exit {
    outcome.unwrap_or_else(|error| {
        // Standard output failed (a closed pipe, a full disk): the results are incomplete.
        let _ = writeln!(stderr, "kapsel: cannot write the results: {error}");
        Exit::Error
    })
}

/// Sums over the logs a run went through.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    failed: usize,
    segments: usize,
    sealed: usize,
    records: u64,
    bytes: u64,
}

impl Totals {
    fn add(&mut self, segments: &[SegmentReport]) {
        self.segments += segments.len();
        self.sealed += segments.iter().filter(|segment| segment.seal.is_some()).count();
        self.records += segments.iter().map(|segment| segment.records).sum::<u64>();
        self.bytes += segments.iter().map(|segment| segment.bytes).sum::<u64>();
    }
}

fn verify_logs(logs: &[LogDirectory], stdout: &mut dyn Write, stderr: &mut dyn Write) -> io::Result<Exit> {
    let sizes: Vec<u64> = logs.iter().map(|log| log_bytes(&log.path)).collect();
    let mut meter = ProgressMeter::new(sizes.iter().sum(), Instant::now());
    if let Some(line) = meter.start_line(logs.len()) {
        writeln!(stderr, "{line}")?;
    }
    let mut totals = Totals::default();
    let mut exit = Exit::Success;
    let mut bytes_before = 0;
    for (log, size) in logs.iter().zip(sizes) {
        let result = audit::verify(&log.path, &mut |progress| {
            let file = progress.path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
            if let Some(line) = meter.update(bytes_before + progress.bytes_done, &log.label, &file, Instant::now()) {
                // A lost progress line is no reason to abandon a verification.
                let _ = writeln!(stderr, "{line}");
            }
        });
        bytes_before += size;
        match result {
            Ok(report) => {
                writeln!(stdout, "{}", verified_line(&log.label, &report))?;
                totals.add(&report.segments);
            }
            Err(error) => {
                writeln!(stdout, "{}: FAILED: {}", log.label, describe(&error))?;
                writeln!(stderr, "kapsel: {}: {}", log.label, describe(&error))?;
                exit = exit.worst(Exit::of(&error));
                totals.failed += 1;
            }
        }
    }
    writeln!(stdout, "{}", verify_summary(logs.len(), &totals))?;
    Ok(exit)
}

/// Bytes of a log's segment files, for the progress total. A log that cannot be listed counts
/// as empty here; verifying it reports the real error.
fn log_bytes(directory: &Path) -> u64 {
    let segments = scan::list_segments(directory).unwrap_or_default();
    segments.iter().filter_map(|(_, path)| std::fs::metadata(path).ok()).map(|metadata| metadata.len()).sum()
}

fn verified_line(label: &str, report: &VerifyReport) -> String {
    let sealed = report.segments.iter().filter(|segment| segment.seal.is_some()).count();
    let bytes: u64 = report.segments.iter().map(|segment| segment.bytes).sum();
    format!(
        "{label}: ok: {}, {} records, {bytes} bytes; chain: {}",
        segment_count(report.segments.len(), sealed),
        report.records,
        chain_summary(&report.chain, &report.segments)
    )
}

/// "N seals, head `<hex>`", noting seals whose segments retention removed (their
/// roots stay in the chain, so the history stays verifiable).
fn chain_summary(chain: &[SealInfo], segments: &[SegmentReport]) -> String {
    let Some(head) = chain.last() else {
        return "no seals yet".into();
    };
    let present = |id: u64| segments.iter().any(|segment| segment.segment_id == id);
    let removed = chain.iter().filter(|seal| !present(seal.segment_id)).count();
    let removed_note =
        if removed > 0 { format!(" ({removed} of segments removed by retention)") } else { String::new() };
    format!("{}{removed_note}, head {}", plural(chain.len(), "seal"), merkle::to_hex(&head.chain))
}

/// "1 segment (1 sealed)", "7 segments (5 sealed)".
fn segment_count(segments: usize, sealed: usize) -> String {
    format!("{} ({sealed} sealed)", plural(segments, "segment"))
}

/// "1 log", "2 logs": the nouns here all take a plain "s".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn verify_summary(log_count: usize, totals: &Totals) -> String {
    let scope = format!(
        "{}, {} records, {} bytes",
        segment_count(totals.segments, totals.sealed),
        totals.records,
        totals.bytes
    );
    if totals.failed == 0 {
        format!("verified {}: {scope}; every Merkle root and chain link checks out", plural(log_count, "log"))
    } else {
        format!("verification FAILED: {} of {} did not verify", totals.failed, plural(log_count, "log"))
    }
}

/// A `WalError` as one line: for corruption, which file (segment or chain) and where.
fn describe(error: &WalError) -> String {
    match error {
        WalError::Corrupt { segment, offset, reason } => {
            let kind =
                if segment.file_name().is_some_and(|name| name == CHAIN_FILE_NAME) { "chain" } else { "segment" };
            format!("corrupt {kind} file {} at byte offset {offset}: {reason}", segment.display())
        }
        other => other.to_string(),
    }
}

/// Decides when verification prints progress. The clock is passed in, so the pacing is
/// tested without waiting.
#[derive(Clone, Debug)]
struct ProgressMeter {
    bytes_total: u64,
    started: Instant,
    next_percent: u64,
    enabled: bool,
}

impl ProgressMeter {
    fn new(bytes_total: u64, started: Instant) -> Self {
        Self { bytes_total, started, next_percent: PROGRESS_STEP_PERCENT, enabled: bytes_total >= PROGRESS_BYTES_MIN }
    }

    fn start_line(&self, log_count: usize) -> Option<String> {
        self.enabled.then(|| format!("audit verify: checking {log_count} logs, {}", human_bytes(self.bytes_total)))
    }

    /// A progress line when `bytes_done` (over all logs) passes the next step, else `None`.
    fn update(&mut self, bytes_done: u64, label: &str, file: &str, now: Instant) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let percent = percent_of(bytes_done, self.bytes_total);
        if percent < self.next_percent {
            return None;
        }
        self.next_percent = (percent / PROGRESS_STEP_PERCENT + 1) * PROGRESS_STEP_PERCENT;
        let seconds = now.saturating_duration_since(self.started).as_secs_f64();
        let mut line =
            format!("audit verify: {percent:>3}% ({} of {})", human_bytes(bytes_done), human_bytes(self.bytes_total));
        // A rate over a few milliseconds is meaningless; show it once there is some history.
        if seconds >= 0.5 {
            let bytes_per_second = bytes_done as f64 / seconds;
            line.push_str(&format!(" at {}/s", human_bytes(bytes_per_second as u64)));
            let bytes_remaining = self.bytes_total.saturating_sub(bytes_done);
            if bytes_remaining > 0 {
                let remaining_seconds = bytes_remaining as f64 / bytes_per_second.max(1.0);
                line.push_str(&format!(", about {} left", human_duration(remaining_seconds)));
            }
        }
        line.push_str(&format!("; {label} {file} checked"));
        Some(line)
    }
}

fn percent_of(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 100;
    }
    let percent = u128::from(part) * 100 / u128::from(whole);
    // Files may grow under a live server between sizing and reading them.
    u64::try_from(percent.min(100)).unwrap_or(100)
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `3.4 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn human_duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{} s", seconds.ceil() as u64)
    } else {
        format!("{} min", (seconds / 60.0).ceil() as u64)
    }
}

fn inspect_logs(logs: &[LogDirectory], stdout: &mut dyn Write, stderr: &mut dyn Write) -> io::Result<Exit> {
    let mut totals = Totals::default();
    let mut exit = Exit::Success;
    for (index, log) in logs.iter().enumerate() {
        if index > 0 {
            writeln!(stdout)?;
        }
        let segments = match audit::inspect(&log.path) {
            Ok(segments) => segments,
            Err(error) => {
                writeln!(stdout, "{} ({}): FAILED: {}", log.label, log.path.display(), describe(&error))?;
                writeln!(stderr, "kapsel: {}: {}", log.label, describe(&error))?;
                exit = exit.worst(Exit::of(&error));
                totals.failed += 1;
                continue;
            }
        };
        writeln!(stdout, "{} ({}): {}", log.label, log.path.display(), plural(segments.len(), "segment"))?;
        write_segment_table(&segments, stdout)?;
        totals.add(&segments);
        warn_of_damage(&log.label, &segments, stderr)?;
        match audit::read_chain(&log.path) {
            Ok(chain) => writeln!(stdout, "chain: {}", chain_summary(&chain, &segments))?,
            Err(error) => {
                writeln!(stderr, "kapsel: {}: {}", log.label, describe(&error))?;
                exit = exit.worst(Exit::of(&error));
                totals.failed += 1;
            }
        }
    }
    let failed_note =
        if totals.failed > 0 { format!("; {} with errors, see above", totals.failed) } else { String::new() };
    writeln!(
        stdout,
        "\ninspected {}: {}, {} records, {} bytes{failed_note}",
        plural(logs.len(), "log"),
        segment_count(totals.segments, totals.sealed),
        totals.records,
        totals.bytes
    )?;
    Ok(exit)
}

/// Inspect lists damage as a torn tail without judging it; only the newest segment may have
/// one legitimately (a batch being written), so anywhere else the operator is told to verify.
fn warn_of_damage(label: &str, segments: &[SegmentReport], stderr: &mut dyn Write) -> io::Result<()> {
    let older = segments.len().saturating_sub(1);
    for segment in &segments[..older] {
        if let Some(offset) = segment.torn_tail {
            writeln!(
                stderr,
                "kapsel: {label}: warning: segment {} is damaged at byte offset {offset} but is not the newest; \
                 run `kapsel audit verify`",
                segment.path.display()
            )?;
        }
    }
    Ok(())
}

const TABLE_HEADINGS: [&str; 9] =
    ["id", "file", "bytes", "records", "first_lsn", "sealed", "root", "chain", "torn_tail"];

/// The segments as an aligned table, one row each; `-` marks an absent value.
fn write_segment_table(segments: &[SegmentReport], stdout: &mut dyn Write) -> io::Result<()> {
    let rows: Vec<[String; 9]> = segments.iter().map(segment_row).collect();
    let mut widths = TABLE_HEADINGS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let headings = TABLE_HEADINGS.map(str::to_owned);
    for row in std::iter::once(&headings).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        writeln!(stdout, "  {}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

fn segment_row(segment: &SegmentReport) -> [String; 9] {
    let file = segment.path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let absent = || "-".to_owned();
    [
        segment.segment_id.to_string(),
        file,
        segment.bytes.to_string(),
        segment.records.to_string(),
        segment.first_lsn.to_string(),
        if segment.seal.is_some() { "yes" } else { "no" }.to_owned(),
        segment.seal.as_ref().map_or_else(absent, |seal| merkle::to_hex(&seal.root)),
        segment.seal.as_ref().map_or_else(absent, |seal| merkle::to_hex(&seal.chain)),
        segment.torn_tail.map_or_else(absent, |offset| offset.to_string()),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    // A person watching a multi-gigabyte verify needs regular signs of life, not one per byte.
    #[test]
    fn progress_prints_once_per_step_on_a_large_log() {
        let started = Instant::now();
        let mut meter = ProgressMeter::new(10 * GIB, started);
        assert!(meter.start_line(3).unwrap().contains("10.0 GiB"));
        let mut lines = Vec::new();
        for step in 1..=1000u64 {
            let now = started + Duration::from_millis(step * 10);
            if let Some(line) = meter.update(step * 10 * GIB / 1000, "shard-0", "x.wal", now) {
                lines.push(line);
            }
        }
        assert_eq!(lines.len(), (100 / PROGRESS_STEP_PERCENT) as usize);
        assert!(lines[0].starts_with("audit verify:   5% (512.0 MiB of 10.0 GiB)"), "{}", lines[0]);
        assert!(lines[9].contains(" at 1.0 GiB/s, about 5 s left; shard-0 x.wal checked"), "{}", lines[9]);
        assert!(lines[19].contains("100%") && !lines[19].contains("left"), "{}", lines[19]);
    }

    // A segment larger than a step must yield one line, not a burst of stale percentages.
    #[test]
    fn progress_skips_steps_passed_in_one_segment() {
        let started = Instant::now();
        let mut meter = ProgressMeter::new(GIB, started);
        assert!(meter.update(GIB / 3, "shard-0", "a.wal", started).unwrap().contains(" 33%"));
        assert_eq!(meter.update(GIB / 3 + 1, "shard-0", "b.wal", started), None);
        assert!(meter.update(GIB / 2, "shard-0", "c.wal", started).unwrap().contains(" 50%"));
    }

    // Tiny logs verify in an instant; progress there would only clutter the output.
    #[test]
    fn progress_is_quiet_on_a_small_log() {
        let started = Instant::now();
        let mut meter = ProgressMeter::new(PROGRESS_BYTES_MIN - 1, started);
        assert_eq!(meter.start_line(1), None);
        assert_eq!(meter.update(PROGRESS_BYTES_MIN - 1, "shard-0", "a.wal", started), None);
    }

    // Sizes in progress lines must be read at a glance and never overflow.
    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * GIB + GIB / 2), "3.5 GiB");
        assert!(human_bytes(u64::MAX).ends_with("PiB"));
        assert_eq!(percent_of(u64::MAX, u64::MAX), 100);
        assert_eq!(percent_of(5, 0), 100);
        assert_eq!(percent_of(11, 10), 100);
    }

    // Scripts rely on corruption being reported as 1 even when another log also failed to read.
    #[test]
    fn corruption_outranks_other_failures() {
        assert_eq!(Exit::Success.worst(Exit::Error), Exit::Error);
        assert_eq!(Exit::Error.worst(Exit::Corrupt), Exit::Corrupt);
        assert_eq!(Exit::Corrupt.worst(Exit::Success), Exit::Corrupt);
        assert_eq!(Exit::Success.worst(Exit::Success), Exit::Success);
        assert_eq!([Exit::Success, Exit::Corrupt, Exit::Error].map(Exit::code), [0, 1, 2]);
    }

    // Shard 10 must come after shard 9, and stray entries must not be taken for logs.
    #[test]
    fn shard_directories_are_found_in_numeric_order() {
        let data = tempfile::tempdir().unwrap();
        for name in ["shard-10", "shard-2", "shard-0", "shard-x", "shard-", "other"] {
            std::fs::create_dir_all(data.path().join("wal").join(name)).unwrap();
        }
        std::fs::write(data.path().join("wal").join("shard-3"), b"a file, not a log").unwrap();
        let labels: Vec<String> = find_logs(data.path()).unwrap().into_iter().map(|log| log.label).collect();
        assert_eq!(labels, ["shard-0", "shard-2", "shard-10"]);
        // Pointing at the `wal` directory itself finds the same shards.
        let labels: Vec<String> =
            find_logs(&data.path().join("wal")).unwrap().into_iter().map(|log| log.label).collect();
        assert_eq!(labels, ["shard-0", "shard-2", "shard-10"]);
    }

    // A data directory that is itself a log is processed alone, whatever else it holds.
    #[test]
    fn a_log_directory_is_processed_by_itself() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join(CHAIN_FILE_NAME), b"").unwrap();
        std::fs::create_dir_all(data.path().join("wal").join("shard-0")).unwrap();
        let logs = find_logs(data.path()).unwrap();
        assert_eq!(logs, [LogDirectory { label: data.path().display().to_string(), path: data.path().to_path_buf() }]);
    }

    // An empty or missing directory must say what was expected, not print an empty report.
    #[test]
    fn missing_and_empty_directories_are_errors() {
        let data = tempfile::tempdir().unwrap();
        assert!(matches!(find_logs(&data.path().join("absent")), Err(FindError::Missing(_))));
        assert!(matches!(find_logs(data.path()), Err(FindError::NoLogs(_))));
        let file = data.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(find_logs(&file), Err(FindError::NotDirectory(_))));
    }
}
