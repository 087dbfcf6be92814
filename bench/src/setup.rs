//! What every load test does before and around its loops: find the target directory, build
//! the release binaries it spawns, read its knobs from the environment, and talk to a spawned
//! server (readiness, endpoint creation, a first ingest) with one-off requests.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::{parse_response_head, Connection, Failure};
use crate::limits;
use crate::machine;
use crate::payload::request;
use crate::runtime::Driver;

/// `KAPSEL_ALLOW_DESTINATIONS` for the benches' loopback destinations.
pub const DESTINATIONS_ALLOWED: &str = "127.0.0.1/32";

/// Where the benches find their binaries and keep their files.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The workspace root.
    pub workspace: PathBuf,
    /// The target directory this bench was built into.
    pub target_directory: PathBuf,
    /// `<target>/release`: the binaries the benches spawn.
    pub binaries: PathBuf,
    /// `<target>/kapsel-bench/logs`: the servers' standard error.
    pub log_directory: PathBuf,
}

impl Paths {
    /// The paths of the bench running now.
    ///
    /// # Errors
    ///
    /// The crate is not inside a workspace.
    pub fn from_env() -> Result<Self, String> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("kapsel-bench is not inside a workspace")?
            .to_path_buf();
        let target_directory = target_directory(&workspace);
        Ok(Self {
            binaries: target_directory.join("release"),
            log_directory: target_directory.join("kapsel-bench").join("logs"),
            workspace,
            target_directory,
        })
    }

    /// `<target>/kapsel-bench/<name>`.
    pub fn bench_directory(&self, name: &str) -> PathBuf {
        self.target_directory.join("kapsel-bench").join(name)
    }
}

/// The target directory this bench was built into: the executable is
/// `<target>/release/deps/<bench>-<hash>`. Anything else (a copied binary) falls back to
/// `CARGO_TARGET_DIR`, then `<workspace>/target`.
fn target_directory(workspace: &Path) -> PathBuf {
    let from_executable = std::env::current_exe().ok().and_then(|executable| {
        let deps = executable.parent()?;
        let profile = deps.parent()?;
        (deps.file_name()? == "deps" && profile.file_name()? == "release")
            .then(|| profile.parent().map(Path::to_path_buf))?
    });
    from_executable
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|directory| workspace.join(directory)))
        .unwrap_or_else(|| workspace.join("target"))
}

/// The entry point of a load-test bench target: under `cargo test` (no `--bench` argument) it
/// only prints `hint` (a load test has no place in a test run); under `cargo bench` it runs
/// `run` and reports its error, if any, prefixed with `name`.
pub fn bench_main(name: &str, hint: &str, run: impl FnOnce() -> Result<(), String>) -> std::process::ExitCode {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("{name}: a load test; run it with `{hint}`");
        return std::process::ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A whole number from the environment variable `name`, from 1 to `max`; `default` when
/// unset or empty.
///
/// # Errors
///
/// A value that is not such a number, naming the variable.
pub fn number_from_env(name: &str, default: usize, max: usize) -> Result<usize, String> {
    match std::env::var(name).ok().filter(|value| !value.is_empty()) {
        Some(text) => match text.trim().parse::<usize>() {
            Ok(number) if (1..=max).contains(&number) => Ok(number),
            _ => Err(format!("{name}: `{text}` is not a number from 1 to {max}")),
        },
        None => Ok(default),
    }
}

/// Whether the environment variable `name` is set to something other than empty or `0`.
pub fn flag_from_env(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0")
}

/// The comma-separated words of the environment variable `name` (`KAPSEL_BENCH_ONLY`).
pub fn words_from_env(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(|word| word.trim().to_string())
        .filter(|word| !word.is_empty())
        .collect()
}

/// `NAME=value` for each of `names` that is set, then `command`: the exact command line.
/// `KAPSEL_BENCH_SECONDS`: the measured period of each scenario.
pub fn measure_seconds_from_env() -> Result<usize, String> {
    number_from_env("KAPSEL_BENCH_SECONDS", limits::MEASURE_SECONDS_DEFAULT, limits::MEASURE_SECONDS_MAX)
}

/// Prints the lines every bench starts with: its title, the command that reproduces it (with
/// the variables among `names` that are set), its arguments and the machine.
pub fn print_preamble(title: &str, names: &[&str], command: &str, facts: &machine::Facts) {
    println!("{title}");
    println!("  command:  {}", command_line(names, command));
    println!("  bench:    {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!(
        "  machine:  {} cores ({}), Linux {}, load average {}",
        facts.cores, facts.cpu_model, facts.kernel, facts.load_average
    );
}

/// The command line that reproduces a run: the variables among `names` that are set, then
/// `command`.
pub fn command_line(names: &[&str], command: &str) -> String {
    let mut words: Vec<String> =
        names.iter().filter_map(|name| std::env::var(name).ok().map(|value| format!("{name}={value}"))).collect();
    words.push(command.to_string());
    words.join(" ")
}

/// Builds the release binaries the benches spawn (`kapsel`, and this crate's), into the
/// target directory this bench runs from, unless `skip_build`; then prints each of
/// `binaries` with its age.
///
/// # Errors
///
/// Cargo failed, or a binary is missing.
pub fn build_binaries(paths: &Paths, skip_build: bool, binaries: &[&str]) -> Result<(), String> {
    let builds: [&[&str]; 2] = [
        &["build", "--release", "-p", "kapsel", "--bin", "kapsel"],
        &["build", "--release", "-p", "kapsel-bench", "--bins"],
    ];
    for arguments in builds {
        if skip_build {
            println!("  NOT building (KAPSEL_BENCH_SKIP_BUILD): cargo {}", arguments.join(" "));
            continue;
        }
        println!("  building: cargo {}", arguments.join(" "));
        let status = Command::new(env!("CARGO"))
            .args(arguments)
            .arg("--target-dir")
            .arg(&paths.target_directory)
            .current_dir(&paths.workspace)
            .status()
            .map_err(|error| format!("running cargo: {error}"))?;
        if !status.success() {
            return Err(format!("cargo {} failed ({status})", arguments.join(" ")));
        }
    }
    for name in binaries {
        let binary = paths.binaries.join(name);
        let modified = std::fs::metadata(&binary)
            .and_then(|metadata| metadata.modified())
            .map_err(|error| format!("{}: {error}", binary.display()))?;
        let age = modified.elapsed().unwrap_or_default();
        println!("  binary:   {} (built {} s ago)", binary.display(), age.as_secs());
    }
    std::fs::create_dir_all(&paths.log_directory)
        .map_err(|error| format!("creating {}: {error}", paths.log_directory.display()))
}

/// Empties (creates) `directory`, where the scenarios' data directories go, and says what
/// file system it is on: on tmpfs every fdatasync is free and the numbers mean little.
///
/// # Errors
///
/// It could not be created.
pub fn fresh_data_directory(paths: &Paths, directory: &Path) -> Result<(), String> {
    let (kind, device) = machine::filesystem_of(&paths.target_directory);
    println!("  data:     {} ({kind} on {device})", directory.display());
    if kind == "tmpfs" || kind == "ramfs" {
        println!("  WARNING:  the data directory is on {kind}: fdatasync costs nothing there; set CARGO_TARGET_DIR to a real disk");
    }
    // Left over by an interrupted run: every scenario's directory is deleted when it ends.
    let _ = std::fs::remove_dir_all(directory);
    std::fs::create_dir_all(directory).map_err(|error| format!("creating {}: {error}", directory.display()))
}

/// The environment of a spawned server: address, shards, data directory, driver.
pub fn server_variables(shards: usize, driver: Driver, data_directory: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("SERVER_ADDR", "127.0.0.1:0".to_string()),
        ("KAPSEL_SHARDS", shards.to_string()),
        ("KAPSEL_DATA_DIR", data_directory.display().to_string()),
        ("KAPSEL_IO_DRIVER", driver.name().to_string()),
    ]
}

/// Kapsel's environment on top of [`server_variables`]: the admin token, and loopback
/// destinations allowed (Kapsel refuses them by default).
pub fn kapsel_variables(
    shards: usize,
    driver: Driver,
    data_directory: &Path,
    admin_token: &str,
) -> Vec<(&'static str, String)> {
    let mut variables = server_variables(shards, driver, data_directory);
    variables.push(("KAPSEL_ADMIN_TOKEN", admin_token.to_string()));
    variables.push(("KAPSEL_ALLOW_DESTINATIONS", DESTINATIONS_ALLOWED.to_string()));
    variables
}

/// One request on a new connection, within the request timeout: status and body.
///
/// # Errors
///
/// The request failed or timed out.
pub async fn one_request(address: SocketAddr, bytes: &[u8]) -> Result<(u16, String), String> {
    let timeout = Duration::from_millis(limits::REQUEST_TIMEOUT_MS);
    let exchange = async {
        let mut connection = Connection::open(address, bytes).await?;
        let reply = connection.exchange().await?;
        Ok::<_, Failure>((reply.status, String::from_utf8_lossy(connection.last_body()).into_owned()))
    };
    match monoio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(failure)) => Err(format!("request to {address} failed: {failure}")),
        Err(_) => Err(format!("request to {address} timed out")),
    }
}

/// `GET {path}` on a new blocking connection (plain std sockets, for threads without a monoio
/// runtime), connect, write and read together bounded by `timeout`: status and body.
///
/// # Errors
///
/// The request failed, timed out, or the response did not parse; the message starts with
/// `GET {path}`.
pub fn get_blocking(address: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    request_blocking(address, &request("GET", path, address, &[], None), timeout)
        .map_err(|error| format!("GET {path}: {error}"))
}

/// One request (`bytes`, whole) on a new blocking connection, connect, write and read together
/// bounded by `timeout`: status and body.
///
/// # Errors
///
/// The request failed, timed out, or the response did not parse; the message does not name
/// the request (the caller does).
pub fn request_blocking(address: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let io = |error: std::io::Error| error.to_string();
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&address, left()).map_err(io)?;
    stream.set_write_timeout(Some(left())).map_err(io)?;
    stream.write_all(bytes).map_err(io)?;
    let mut buffer = Vec::with_capacity(limits::READ_CHUNK_BYTES);
    let mut chunk = [0u8; 4096];
    loop {
        match parse_response_head(&buffer).map_err(|failure| failure.to_string())? {
            Some(head) => {
                if let Some(body) = buffer.get(head.head_bytes..head.head_bytes + head.content_length) {
                    return Ok((head.status, body.to_vec()));
                }
            }
            None if buffer.len() >= limits::RESPONSE_HEAD_BYTES_MAX => {
                return Err("response head too long".into());
            }
            None => {}
        }
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
        stream.set_read_timeout(Some(left())).map_err(io)?;
        match stream.read(&mut chunk).map_err(io)? {
            0 => return Err("connection closed before the whole response".into()),
            read => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

/// Polls `GET /readyz` until it answers 2xx (Kapsel: every shard recovered; the references
/// answer everything with 202; the sink with 200).
///
/// # Errors
///
/// Not ready within [`limits::SERVER_START_TIMEOUT_MS`].
pub async fn wait_until_ready(address: SocketAddr) -> Result<(), String> {
    let deadline = monoio::time::Instant::now() + Duration::from_millis(limits::SERVER_START_TIMEOUT_MS);
    let probe = request("GET", "/readyz", address, &[], None);
    loop {
        let last = match one_request(address, &probe).await {
            Ok((status, _)) if (200..300).contains(&status) => return Ok(()),
            Ok((status, body)) => format!("{status} {body}"),
            Err(error) => error,
        };
        if monoio::time::Instant::now() >= deadline {
            return Err(format!("not ready in time; last answer to GET /readyz: {last}"));
        }
        monoio::time::sleep(Duration::from_millis(limits::RECONNECT_BACKOFF_MS)).await;
    }
}

/// `PUT /admin/endpoints/{endpoint}` with `body`.
///
/// # Errors
///
/// Anything but 200 or 201.
pub async fn create_endpoint(address: SocketAddr, token: &str, endpoint: &str, body: &str) -> Result<(), String> {
    let authorization = format!("Bearer {token}");
    let put = request(
        "PUT",
        &format!("/admin/endpoints/{endpoint}"),
        address,
        &[("Authorization", &authorization)],
        Some(body.as_bytes()),
    );
    match one_request(address, &put).await? {
        (200 | 201, _) => Ok(()),
        (status, body) => Err(format!("PUT /admin/endpoints/{endpoint} answered {status}: {body}")),
    }
}

/// `POST /admin/endpoints/{endpoint}/enable`: deliveries of a paused endpoint start.
///
/// # Errors
///
/// Anything but 200.
pub async fn enable_endpoint(address: SocketAddr, token: &str, endpoint: &str) -> Result<(), String> {
    let authorization = format!("Bearer {token}");
    let path = format!("/admin/endpoints/{endpoint}/enable");
    let post = request("POST", &path, address, &[("Authorization", &authorization)], None);
    match one_request(address, &post).await? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("POST {path} answered {status}: {body}")),
    }
}

/// One ingest before the loop: it must be a 202, or the loop would measure errors.
///
/// # Errors
///
/// Anything but 202.
pub async fn check_ingest(address: SocketAddr, endpoint: &str, ingest: &[u8]) -> Result<(), String> {
    match one_request(address, ingest).await? {
        (202, _) => Ok(()),
        (status, body) => Err(format!("POST /ingest/{endpoint} answered {status} instead of 202: {body}")),
    }
}
