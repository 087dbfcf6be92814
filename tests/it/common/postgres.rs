//! A private PostgreSQL for tests: `initdb` into a temporary directory and `pg_ctl start` on a
//! free loopback port, run as the `postgres` user (tests run as root, and PostgreSQL refuses to
//! run as root), stopped when dropped. When the binaries are missing the tests that need it say
//! so loudly and skip, except under `CI=true`, where that is a failure (`.ci/run` installs them).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

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
        assert!(started.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&started.stderr));
    }

    /// Stops the server (fast shutdown: open connections are cut), keeping its data.
    pub fn stop_server(&self) {
        let stopped = as_postgres(&self.bin, "pg_ctl", &["-D", &self.cluster(), "-m", "fast", "-w", "stop"]);
        assert!(stopped.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&stopped.stderr));
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

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl", &["-D", &self.cluster(), "-m", "immediate", "-w", "stop"]);
    }
}
