//! Configuration as an operator meets it: the real `kapsel` binary, run with a clean
//! environment, a `kapsel.toml` in a temporary directory, environment variables and flags.
//! `kapsel config` shows what the server would run with, so most tests read its output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A command may take this long before the test gives up on it (a bad configuration must
/// fail at once; a server that starts by mistake must not hang the suite).
const COMMAND_SECONDS_MAX: u64 = 60;

/// Every variable of the external contract (docs/SPECIFICATION.md) and the ones this project
/// adds; `--help` must document each.
const VARIABLES: &[&str] = &[
    "SERVER_ADDR",
    "KAPSEL_DATA_DIR",
    "KAPSEL_SHARDS",
    "KAPSEL_IO_DRIVER",
    "KAPSEL_ADMIN_TOKEN",
    "KAPSEL_MAX_PAYLOAD_BYTES",
    "KAPSEL_WAL_SEGMENT_BYTES",
    "KAPSEL_RETENTION",
    "KAPSEL_TLS_CERT",
    "KAPSEL_TLS_KEY",
    "KAPSEL_EXTRA_CA_FILE",
    "KAPSEL_CONFIG",
    "KAPSEL_ALLOW_DESTINATIONS",
    "KAPSEL_IDEMPOTENCY_WINDOW",
    "KAPSEL_IDEMPOTENCY_KEYS_MAX",
    "KAPSEL_EVENTS_IN_MEMORY_MAX",
    "KAPSEL_TERMINAL_EVENTS_IN_MEMORY",
    "KAPSEL_PAYLOAD_MEMORY_BYTES",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "RUST_LOG",
    "KAPSEL_LOG_FORMAT",
];

/// Command-line arguments of one case.
type Arguments<'a> = &'a [&'a str];

/// Environment variables of one case.
type Environment<'a> = &'a [(&'a str, &'a str)];

/// The binary with an empty environment, so the machine's variables cannot leak in.
fn kapsel(arguments: &[&str], environment: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kapsel"));
    command.env_clear().args(arguments).envs(environment.iter().copied());
    command
}

/// Runs to completion, killing the process if it outlives [`COMMAND_SECONDS_MAX`].
fn output(mut command: Command) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(COMMAND_SECONDS_MAX);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("kapsel did not exit within {COMMAND_SECONDS_MAX} s: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run(arguments: &[&str], environment: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = output(kapsel(arguments, environment));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stdout, stderr)
}

/// `kapsel config`'s row for `variable`: its source and its value.
fn row(report: &str, variable: &str) -> (String, String) {
    let line = report
        .lines()
        .find(|line| line.split_whitespace().next() == Some(variable))
        .unwrap_or_else(|| panic!("no {variable} in:\n{report}"));
    let mut cells = line.split_whitespace().skip(1);
    let source = cells.next().unwrap().to_owned();
    (source, cells.collect::<Vec<_>>().join(" "))
}

/// The effective configuration, which must be valid.
fn effective(arguments: &[&str], environment: &[(&str, &str)]) -> String {
    let mut all = vec!["config"];
    all.extend(arguments);
    let (code, stdout, stderr) = run(&all, environment);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn write_file(directory: &Path, text: &str) -> String {
    let path = directory.join("kapsel.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

// The promised order is defaults < file < environment < flags; an operator who sets a value
// in two places must get the higher one, and see where it came from.
#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let file = write_file(
        directory.path(),
        "server_addr = \"127.0.0.1:7001\"\nio_driver = \"legacy\"\nshards = 3\nretention = \"2d\"\n",
    );
    let environment =
        [("KAPSEL_CONFIG", file.as_str()), ("SERVER_ADDR", "127.0.0.1:7002"), ("KAPSEL_IO_DRIVER", "uring")];
    let report = effective(&["--server-addr", "127.0.0.1:7003", "--max-payload-bytes=2048"], &environment);
    assert_eq!(row(&report, "SERVER_ADDR"), ("flag".into(), "127.0.0.1:7003".into()));
    assert_eq!(row(&report, "KAPSEL_IO_DRIVER"), ("env".into(), "uring".into()));
    assert_eq!(row(&report, "KAPSEL_SHARDS"), ("file".into(), "3".into()));
    assert_eq!(row(&report, "KAPSEL_RETENTION"), ("file".into(), "2d".into()));
    assert_eq!(row(&report, "KAPSEL_MAX_PAYLOAD_BYTES"), ("flag".into(), "2048".into()));
    assert_eq!(row(&report, "KAPSEL_WAL_SEGMENT_BYTES"), ("default".into(), "67108864".into()));
    assert!(report.contains(&format!("{file} (named by KAPSEL_CONFIG)")), "{report}");
}

// `--config` names the file as KAPSEL_CONFIG does, and wins over it like any flag.
#[test]
fn the_config_flag_beats_kapsel_config() {
    let chosen = tempfile::tempdir().unwrap();
    let ignored = tempfile::tempdir().unwrap();
    let chosen_file = write_file(chosen.path(), "shards = 5\n");
    let ignored_file = write_file(ignored.path(), "shards = 7\n");
    let report = effective(&["--config", &chosen_file], &[("KAPSEL_CONFIG", &ignored_file)]);
    assert_eq!(row(&report, "KAPSEL_SHARDS"), ("file".into(), "5".into()));
    assert!(report.contains(&format!("{chosen_file} (named by --config)")), "{report}");
}

// With no configuration at all the documented defaults apply, and no file is read, not even
// a kapsel.toml in the working directory.
#[test]
fn without_configuration_every_setting_is_its_default() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("kapsel.toml"), "shards = 9\n").unwrap();
    let mut command = kapsel(&["config"], &[]);
    command.current_dir(directory.path());
    let output = output(command);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains("Configuration file: none"), "{report}");
    for (variable, value) in [
        ("SERVER_ADDR", "127.0.0.1:8080"),
        ("KAPSEL_DATA_DIR", "./data"),
        ("KAPSEL_SHARDS", "(available cores)"),
        ("KAPSEL_RETENTION", "7d"),
        ("KAPSEL_ADMIN_TOKEN", "(generated)"),
        ("DATABASE_MAX_CONNECTIONS", "10"),
        ("KAPSEL_LOG_FORMAT", "json"),
    ] {
        assert_eq!(row(&report, variable), ("default".into(), value.into()), "{variable}");
    }
    for variable in VARIABLES.iter().filter(|variable| **variable != "KAPSEL_CONFIG") {
        row(&report, variable);
    }
}

// `kapsel config` output ends up in tickets and chat logs; the admin token and the database
// password must never be in it, from whichever layer they came.
#[test]
fn secrets_are_redacted_from_every_layer() {
    let directory = tempfile::tempdir().unwrap();
    let file = write_file(directory.path(), "admin_token = \"file-token-secret\"\n");
    let cases: [(Arguments, Environment); 3] = [
        (&["--config", &file, "--database-url", "postgres://kapsel:flag-password@db:5432/kapsel"], &[]),
        (
            &[],
            &[
                ("KAPSEL_ADMIN_TOKEN", "env-token-secret"),
                ("DATABASE_URL", "host=db user=kapsel password=env-password"),
            ],
        ),
        (
            &["--admin-token=flag-token-secret"],
            &[("DATABASE_URL", "postgresql://kapsel:p%40ss@db/kapsel?sslmode=disable")],
        ),
    ];
    for (arguments, environment) in cases {
        let report = effective(arguments, environment);
        for secret in
            ["file-token-secret", "env-token-secret", "flag-token-secret", "flag-password", "env-password", "p%40ss"]
        {
            assert!(!report.contains(secret), "{secret} in:\n{report}");
        }
        assert_eq!(row(&report, "KAPSEL_ADMIN_TOKEN").1, "<redacted>", "{report}");
        assert!(row(&report, "DATABASE_URL").1.contains("<redacted>"), "{report}");
    }
    let report = effective(&["--database-url", "postgres://kapsel:flag-password@db:5432/kapsel"], &[]);
    assert_eq!(row(&report, "DATABASE_URL").1, "postgres://kapsel:<redacted>@db:5432/kapsel");
}

// A bad value must stop both `kapsel config` and the server before anything starts, with a
// message naming the setting in the spelling of the layer that set it.
#[test]
fn a_bad_value_fails_naming_the_setting_in_each_layer() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let data = data.to_str().unwrap();
    let file = write_file(directory.path(), "shards = 0\n");
    let cases: [(Arguments, Environment, &str); 5] = [
        (&["--config", &file], &[], "KAPSEL_SHARDS (set by `shards` in "),
        (&[], &[("KAPSEL_SHARDS", "lots")], "KAPSEL_SHARDS: `lots` is not a number"),
        (&["--shards=0"], &[], "KAPSEL_SHARDS (set by --shards): must be 1 to"),
        (&["--retention", "forever"], &[], "KAPSEL_RETENTION (set by --retention): `forever` is not a duration"),
        (&[], &[("KAPSEL_IO_DRIVER", "fast")], "KAPSEL_IO_DRIVER: `fast` is not auto, uring or legacy"),
    ];
    for (arguments, environment, expected) in cases {
        let mut environment = environment.to_vec();
        environment.extend([("KAPSEL_DATA_DIR", data), ("SERVER_ADDR", "127.0.0.1:0")]);
        for command in [&["config"][..], &[][..]] {
            let mut all = command.to_vec();
            all.extend(arguments);
            let (code, stdout, stderr) = run(&all, &environment);
            assert_eq!(code, Some(2), "{all:?}: stdout {stdout}\nstderr {stderr}");
            assert!(stderr.contains(expected), "{all:?}: {stderr}");
            assert!(!stdout.contains("listening"), "{stdout}");
        }
    }
    assert!(!Path::new(data).exists(), "a refused start must not create the data directory");
}

// A misspelt key or flag must be refused by name, never silently ignored.
#[test]
fn unknown_keys_and_flags_are_refused_by_name() {
    let directory = tempfile::tempdir().unwrap();
    let file = write_file(directory.path(), "shards = 2\nretension = \"3d\"\n");
    let (code, _, stderr) = run(&["config", "--config", &file], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 2: unknown setting `retension`") && stderr.contains(&file), "{stderr}");
    let (code, stdout, stderr) = run(&["config", "--retension", "3d"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty() && stderr.contains("unknown option `--retension`"), "{stderr}");
    let (code, _, stderr) = run(&["--config", &file], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown setting `retension`"), "{stderr}");
}

// A configuration file that was asked for but is not there is an error naming it; running on
// defaults instead would hide the operator's mistake.
#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let directory = tempfile::tempdir().unwrap();
    let missing = directory.path().join("absent.toml");
    let missing = missing.to_str().unwrap();
    for (arguments, environment) in
        [(&["config", "--config", missing][..], &[][..]), (&["config"], &[("KAPSEL_CONFIG", missing)])]
    {
        let (code, _, stderr) = run(arguments, environment);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(missing) && stderr.contains("cannot read it"), "{stderr}");
    }
    let (code, _, stderr) = run(&["--config", missing], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(missing), "{stderr}");
}

// `--help` is the operator's reference: every variable, the file, the flags and the defaults.
#[test]
fn help_documents_every_setting_and_its_default() {
    let (code, stdout, stderr) = run(&["--help"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for variable in VARIABLES {
        assert!(stdout.contains(variable), "{variable} missing from:\n{stdout}");
    }
    for text in
        ["--config FILE", "--shards N", "--server-addr ADDR", "default: 127.0.0.1:8080", "default: 7d", "kapsel config"]
    {
        assert!(stdout.contains(text), "{text} missing from:\n{stdout}");
    }
}

// The file, like a flag, reaches the running server: it listens where the file says and keeps
// its data (the generated admin token) where the file says.
#[test]
fn the_server_runs_with_the_file_settings() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("from-file");
    let file = write_file(
        directory.path(),
        &format!(
            "server_addr = \"127.0.0.1:0\"\ndata_dir = {:?}\nshards = 1\nio_driver = \"legacy\"\n\
             rust_log = \"info\"\nlog_format = \"pretty\"\n",
            data.to_str().unwrap()
        ),
    );
    let log = directory.path().join("kapsel.log");
    let mut child: Child = kapsel(&["--config", &file], &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let stopped = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(line.starts_with("kapsel listening on http://127.0.0.1:") && !line.contains(":8080"), "{line}");
    assert!(stopped.success() && status.success(), "{status:?}");
    assert!(data.join("admin.token").exists() && data.join("wal").join("shard-0").exists());
    // The file's logging settings took effect: info lines, in the pretty format.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("replayed write-ahead log"), "{logged}");
    assert!(!logged.contains("{\"timestamp\""), "pretty, not JSON: {logged}");
}

// Logging is configured like every other setting (the server test below shows the file's
// values taking effect), and a bad format is refused by name.
#[test]
fn logging_follows_the_file_and_flags_too() {
    let directory = tempfile::tempdir().unwrap();
    let file = write_file(directory.path(), "log_format = \"pretty\"\nrust_log = \"warn\"\n");
    let report = effective(&["--config", &file, "--rust-log=info"], &[]);
    assert_eq!(row(&report, "KAPSEL_LOG_FORMAT"), ("file".into(), "pretty".into()));
    assert_eq!(row(&report, "RUST_LOG"), ("flag".into(), "info".into()));
    let (code, _, stderr) = run(&["config", "--log-format", "xml"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("KAPSEL_LOG_FORMAT"), "{stderr}");
}
