//! A private PostgreSQL for tests: `initdb` into a temporary directory and `pg_ctl start` on a
//! free loopback port, run as the `postgres` user (tests run as root, and PostgreSQL refuses to
//! run as root), stopped when dropped. When the binaries are missing the tests that need it say
//! so loudly and skip, except under `CI=true`, where that is a failure (`.ci/run` installs them).
//!
//! For the chaos tests it can also be killed with SIGKILL like a crash ([`Postgres::kill9`]),
//! run SQL in a session that stays open in the background ([`Postgres::psql_background`]: a lock
//! held), and sit behind a TCP proxy that can go silent ([`Proxy`]: a network that drops packets).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running private PostgreSQL.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: tempfile::TempDir,
    options: String,
}

/// Where the server binaries are: `/usr/lib/postgresql/<version>/bin`, newest first, else PATH.
fn find_binaries() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn as_postgres(bin: &Path, program: &str, arguments: &[&str]) -> std::process::Output {
    let command = std::iter::once(bin.join(program).display().to_string())
        .chain(arguments.iter().map(|argument| format!("'{argument}'")))
        .collect::<Vec<_>>()
        .join(" ");
    Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &command]).output().expect("su postgres")
}

/// Tests skipped for want of PostgreSQL in this run.
pub static SKIPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Postgres {
    /// Starts one, or returns `None` (after saying why) when PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = find_binaries() else {
            assert!(
                std::env::var("CI").ok().as_deref() != Some("true"),
                "PostgreSQL binaries (initdb, pg_ctl) are missing under CI=true; .ci/run installs them"
            );
            let skipped = SKIPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            // Straight to the process's standard error: the test harness would swallow eprintln.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "SKIPPED ({skipped} so far): PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql; install postgresql to run this test\n"
                )
                .as_bytes(),
            );
            return None;
        };
        let data = tempfile::Builder::new().prefix("kapsel-pg").tempdir().unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let cluster = data.path().join("cluster");
        let cluster_text = cluster.display().to_string();
        let initdb = as_postgres(&bin, "initdb", &["-D", &cluster_text, "-U", "postgres", "-A", "trust", "--no-sync"]);
        assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let options =
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={cluster_text} -c fsync=off");
        let postgres = Postgres { port, bin, data, options };
        postgres.start_server();
        Some(postgres)
    }

    fn cluster(&self) -> String {
        self.data.path().join("cluster").display().to_string()
    }

    /// Starts the server again after [`Postgres::stop_server`] (same port, same data).
    pub fn start_server(&self) {
        let log = self.data.path().join("postgres.log").display().to_string();
        let cluster = self.cluster();
        let started =
            as_postgres(&self.bin, "pg_ctl", &["-D", &cluster, "-o", &self.options, "-l", &log, "-w", "start"]);
        if !started.status.success() {
            let log = std::fs::read_to_string(self.data.path().join("postgres.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            panic!(
                "pg_ctl start: {}; the server's log ends with:\n{}",
                String::from_utf8_lossy(&started.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// Stops the server (fast shutdown: open connections are cut), keeping its data.
    pub fn stop_server(&self) {
        let stopped = as_postgres(&self.bin, "pg_ctl", &["-D", &self.cluster(), "-m", "fast", "-w", "stop"]);
        assert!(stopped.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&stopped.stderr));
    }

    /// The postmaster's process id (the first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.data.path().join("cluster").join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    /// `kill -9` of the postmaster and every process it started, at once, as a crash would; returns
    /// once all are dead. The data stays: [`Postgres::start_server`] then runs crash recovery.
    pub fn kill9(&self) {
        let postmaster = self.postmaster_pid();
        // The postmaster first: were a child killed before it, it would start crash recovery and
        // new children. Its children are found before, as they are reparented once it is dead.
        let mut victims = vec![postmaster];
        victims.extend(children_of(postmaster));
        for pid in &victims {
            // A child may be gone already (it noticed the postmaster's death).
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while victims.iter().any(|pid| alive(*pid)) {
            assert!(Instant::now() < deadline, "PostgreSQL processes survived kill -9: {victims:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Nothing on this machine reaps the dead postmaster (PID 1 is no init), so its zombie keeps
        // the PID that its lock files name, and PostgreSQL would refuse to start ("lock file
        // already exists"). The process is dead; its lock files go, as an operator would remove
        // them.
        let cluster = self.data.path().join("cluster");
        std::fs::remove_file(cluster.join("postmaster.pid")).unwrap();
        let _ = std::fs::remove_file(cluster.join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// Runs `sql` with `psql` in the background (a session that holds a lock while it sleeps, say);
    /// the caller waits for the child.
    pub fn psql_background(&self, database: &str, sql: &str) -> Child {
        Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .stdout(Stdio::null())
            .spawn()
            .expect("psql")
    }

    /// A TCP proxy in front of this server (see [`Proxy`]).
    pub fn proxy(&self) -> Proxy {
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// Creates database `name` and returns its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// A connection URL for database `name` (created on first use by the caller).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL through `psql` and returns its output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

/// The processes whose parent is `parent` (from `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid …`; the command may contain spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else { continue };
        let ppid = after.split_whitespace().nth(1).and_then(|field| field.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// True while `pid` runs (a zombie is dead: it only waits to be reaped).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, after)| after.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A TCP proxy on a free loopback port that forwards to PostgreSQL, and can go silent like a
/// network that loses every packet: [`Proxy::blackhole`] keeps every connection open but forwards
/// nothing in either direction (bytes read are dropped, a close is held back), and connections
/// made meanwhile are accepted and then ignored. [`Proxy::resume`] forwards again: what was
/// dropped stays lost, a close held back goes through, and connections accepted while silent are
/// closed (their handshake never got through). Note that the proxy's own kernel acknowledges every
/// byte, so TCP keepalive and `TCP_USER_TIMEOUT` cannot see this silence: only the client's own
/// timeouts can.
pub struct Proxy {
    pub port: u16,
    shared: Arc<ProxyShared>,
}

struct ProxyShared {
    upstream: SocketAddr,
    silent: AtomicBool,
    closed: AtomicBool,
    /// Every stream the proxy holds, so that dropping it closes them.
    streams: Mutex<Vec<TcpStream>>,
}

impl ProxyShared {
    fn hold(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.streams.lock().unwrap().push(clone);
        }
    }

    /// Returns once the proxy forwards again (or is closed).
    fn wait_while_silent(&self) {
        while self.silent.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            upstream,
            silent: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closed.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                accepting.hold(&client);
                let shared = Arc::clone(&accepting);
                if accepting.silent.load(Ordering::Acquire) {
                    std::thread::spawn(move || ignore_until_resumed(client, &shared));
                    continue;
                }
                let Ok(server) = TcpStream::connect(accepting.upstream) else { continue };
                accepting.hold(&server);
                let (client_reader, server_reader) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let other = Arc::clone(&accepting);
                std::thread::spawn(move || pump(client_reader, server, &shared));
                std::thread::spawn(move || pump(server_reader, client, &other));
            }
        });
        Proxy { port, shared }
    }

    /// A connection URL for database `name` through the proxy.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops forwarding anything, in both directions, on every connection.
    pub fn blackhole(&self) {
        self.shared.silent.store(true, Ordering::Release);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.shared.silent.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread so that it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to`, dropping what arrives while the proxy is silent; an end of stream is
/// passed on once the proxy forwards again.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &ProxyShared) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => {
                shared.wait_while_silent();
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(_) if shared.silent.load(Ordering::Acquire) => {}
            Ok(read) => {
                if to.write_all(&buffer[..read]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// A connection accepted while silent: what it sends is dropped, and it is closed once the proxy
/// forwards again.
fn ignore_until_resumed(mut client: TcpStream, shared: &ProxyShared) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buffer = [0u8; 16 * 1024];
    while shared.silent.load(Ordering::Acquire) && !shared.closed.load(Ordering::Acquire) {
        match client.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    shared.wait_while_silent();
    let _ = client.shutdown(Shutdown::Both);
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl", &["-D", &self.cluster(), "-m", "immediate", "-w", "stop"]);
    }
}
