//! The `kapsel` binary's tool commands, run as a real process against real write-ahead logs
//! written by `kapsel_wal::Wal` on a real disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kapsel_wal::{merkle, scan, IoBackend, Options, SealInfo, Wal};

/// Small segments, so a few hundred records seal several of them.
const SEGMENT_BYTES: u64 = 8192;

/// Writes `records` records to a fresh log in `directory` and returns the seals it made.
fn write_log(directory: &Path, records: usize) -> Vec<SealInfo> {
    std::fs::create_dir_all(directory).unwrap();
    // The legacy driver runs everywhere, including containers whose seccomp profile blocks
    // io_uring; the commands under test only read the files afterwards.
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
    runtime.block_on(async {
        let options = Options { backend: IoBackend::Thread, segment_bytes: SEGMENT_BYTES, ..Options::default() };
        let (wal, _) = Wal::open(directory, options, |_| {}).await.unwrap();
        let commits: Vec<_> = (0..records)
            .map(|index| {
                let body: Vec<u8> = format!("event-{index:06}-").into_bytes().into_iter().cycle().take(150).collect();
                wal.append(1, &body).unwrap()
            })
            .collect();
        for commit in commits {
            commit.await.unwrap();
        }
        wal.flush().await.unwrap();
        let sealed = wal.sealed_segments();
        wal.close().await.unwrap();
        sealed
    })
}

/// A data directory with two shards of different sizes: 300 and 120 records.
fn two_shard_data_directory() -> (tempfile::TempDir, Vec<SealInfo>, Vec<SealInfo>) {
    let data = tempfile::tempdir().unwrap();
    let first = write_log(&shard(data.path(), 0), 300);
    let second = write_log(&shard(data.path(), 1), 120);
    assert!(first.len() >= 3, "shard-0 sealed only {} segments", first.len());
    (data, first, second)
}

fn shard(data: &Path, number: u32) -> PathBuf {
    data.join("wal").join(format!("shard-{number}"))
}

fn segment_files(directory: &Path) -> Vec<PathBuf> {
    scan::list_segments(directory).unwrap().into_iter().map(|(_, path)| path).collect()
}

/// Runs the binary with a clean environment for the variables it reads.
fn kapsel(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(arguments)
        .env_remove("KAPSEL_DATA_DIR")
        .env_remove("KAPSEL_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn kapsel_on(data: &Path, arguments: &[&str]) -> Output {
    let mut all: Vec<&str> = arguments.to_vec();
    all.extend(["--data-dir", data.to_str().unwrap()]);
    kapsel(&all)
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Flips one bit of the byte at `offset`.
fn flip_bit(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

/// The byte offset named by a "… at byte offset N: …" message.
fn reported_offset(message: &str) -> u64 {
    let after = message.split("at byte offset ").nth(1).unwrap_or_else(|| panic!("no offset in {message:?}"));
    after.split(|character: char| !character.is_ascii_digit()).next().unwrap().parse().unwrap()
}

// The everyday case: an operator verifies a healthy multi-shard log and must get 0 and counts
// that match what was written.
#[test]
fn verify_passes_a_good_multi_segment_log_and_prints_counts() {
    let (data, _, _) = two_shard_data_directory();
    let segments = segment_files(&shard(data.path(), 0)).len() + segment_files(&shard(data.path(), 1)).len();
    let output = kapsel_on(data.path(), &["audit", "verify"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("shard-0: ok:") && stdout.contains("300 records"), "{stdout}");
    assert!(stdout.contains("shard-1: ok:") && stdout.contains("120 records"), "{stdout}");
    assert!(stdout.contains(&format!("verified 2 logs: {segments} segments")), "{stdout}");
    assert!(stdout.contains("420 records"), "{stdout}");
}

// The audit promise: any edit to a sealed segment is detected, and the report leads the
// operator to the damaged file and no later than the damaged byte.
#[test]
fn verify_fails_on_a_flipped_bit_in_a_sealed_segment_and_names_it() {
    let (data, _, _) = two_shard_data_directory();
    let files = segment_files(&shard(data.path(), 0));
    assert!(files.len() >= 3, "the damaged segment must not be the newest");
    let damaged = &files[1];
    let flipped = std::fs::metadata(damaged).unwrap().len() as usize / 2;
    flip_bit(damaged, flipped);
    let output = kapsel_on(data.path(), &["audit", "verify"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let file_name = damaged.file_name().unwrap().to_str().unwrap();
    let error_line = stderr.lines().find(|line| line.contains(file_name)).unwrap_or_else(|| panic!("{stderr}"));
    assert!(error_line.contains("shard-0") && error_line.contains("corrupt segment file"), "{error_line}");
    assert!(reported_offset(error_line) <= flipped as u64, "{error_line} (flipped byte {flipped})");
    assert!(stdout.contains("shard-0: FAILED") && stdout.contains(file_name), "{stdout}");
    // The other shard is still checked and still good.
    assert!(stdout.contains("shard-1: ok:"), "{stdout}");
}

// The chain file is the history that outlives retention; tampering with it must be caught.
#[test]
fn verify_fails_on_a_flipped_bit_in_the_chain_file_and_names_it() {
    let (data, _, _) = two_shard_data_directory();
    let chain = shard(data.path(), 1).join("audit.chain");
    flip_bit(&chain, 200);
    let output = kapsel_on(data.path(), &["audit", "verify"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let error_line = stderr.lines().find(|line| line.contains("audit.chain")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(error_line.contains("shard-1") && error_line.contains("corrupt chain file"), "{error_line}");
    assert!(reported_offset(error_line) <= 200, "{error_line}");
}

// Operators read inspect to find a segment and its root; every segment must be listed with
// the same counts and roots the log sealed.
#[test]
fn inspect_lists_every_segment_with_records_and_seal_root() {
    let (data, first, second) = two_shard_data_directory();
    let output = kapsel_on(data.path(), &["wal", "inspect"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    for (number, seals) in [(0, &first), (1, &second)] {
        let files = segment_files(&shard(data.path(), number));
        for file in &files {
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
        }
        for seal in seals.iter() {
            let name = scan::segment_file_name(seal.segment_id);
            let row = stdout.lines().find(|line| line.contains(&name)).unwrap();
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[0], seal.segment_id.to_string(), "{row}");
            assert_eq!(cells[3], seal.records.to_string(), "{row}");
            assert_eq!(cells[4], seal.first_lsn.to_string(), "{row}");
            assert_eq!(cells[5], "yes", "{row}");
            assert_eq!(cells[6], merkle::to_hex(&seal.root), "{row}");
            assert_eq!(cells[7], merkle::to_hex(&seal.chain), "{row}");
        }
        let head = merkle::to_hex(&seals.last().unwrap().chain);
        assert!(
            stdout.contains(&format!(
                "chain: {} seal{}, head {head}",
                seals.len(),
                if seals.len() == 1 { "" } else { "s" }
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("inspected 2 logs"), "{stdout}");
    assert!(stdout.contains("420 records"), "{stdout}");
}

// A mistyped path must be a clear error with exit 2, never an empty "all good".
#[test]
fn a_missing_data_directory_exits_2_with_a_message() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("no-such-directory");
    for command in [["audit", "verify"], ["wal", "inspect"]] {
        let output = kapsel_on(&missing, &command);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("does not exist") && stderr.contains("no-such-directory"), "{stderr}");
    }
}

// A directory with no logs must say what was expected, so the operator can fix the path.
#[test]
fn a_data_directory_without_logs_exits_2_with_a_message() {
    let data = tempfile::tempdir().unwrap();
    let output = kapsel_on(data.path(), &["audit", "verify"]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no write-ahead logs found") && stderr.contains("shard-<n>"), "{stderr}");
}

// Pointing the tools straight at one shard's log directory checks just that log.
#[test]
fn verify_accepts_a_log_directory_itself() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("copied-log");
    write_log(&log, 100);
    let output = kapsel_on(&log, &["audit", "verify"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("verified 1 log:") && stdout.contains("100 records"), "{stdout}");
}

// KAPSEL_DATA_DIR is the documented default; the tools must honour it without a flag.
#[test]
fn the_data_directory_defaults_to_kapsel_data_dir() {
    let data = tempfile::tempdir().unwrap();
    write_log(&shard(data.path(), 0), 50);
    let output = Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(["audit", "verify"])
        .env("KAPSEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("50 records"), "{stdout}");
}

// A server that cannot honour its configuration must refuse to start, naming the variable,
// rather than run with a silent default.
#[test]
fn the_server_refuses_a_bad_configuration_and_exits_2() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .env("KAPSEL_DATA_DIR", data.path())
        .env("SERVER_ADDR", "not-an-address")
        .env_remove("KAPSEL_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SERVER_ADDR"), "{stderr}");
}

// A typo must print the usage and fail, not fall through to some other command.
#[test]
fn an_unknown_subcommand_prints_usage_and_exits_2() {
    let output = kapsel(&["audit", "verfy"]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("unknown command `audit verfy`") && stderr.contains("Usage:"), "{stderr}");
}

// Help and version are how an operator finds their way; they go to stdout and succeed.
#[test]
fn help_and_version_succeed() {
    for flag in ["--help", "-h"] {
        let output = kapsel(&[flag]);
        assert_eq!(output.status.code(), Some(0));
        assert!(text(&output).0.contains("kapsel audit verify"));
    }
    let output = kapsel(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(text(&output).0.trim(), format!("kapsel {}", env!("CARGO_PKG_VERSION")));
}
