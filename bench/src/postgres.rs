//! A private PostgreSQL for the index bench, started by the bench itself: `initdb` into a
//! directory on the bench's disk and `pg_ctl start` on a free loopback port, run as the
//! `postgres` user (the bench runs as root, and PostgreSQL refuses to), stopped when dropped.
//!
//! Like the test harness (`tests/it/common/postgres.rs`), but durable: the tests turn `fsync` off
//! for speed, while a benchmark of the index must pay for every commit's flush as production
//! does. That one difference, and errors as values instead of assertions, is why the bench
//! does not include the harness's module.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::limits;

/// A running private PostgreSQL.
pub struct Postgres {
    port: u16,
    binaries: PathBuf,
    data: tempfile::TempDir,
    /// The server's options (`pg_ctl -o`), kept to start it again the same way.
    options: String,
}

/// Where the server binaries are: `/usr/lib/postgresql/<version>/bin`, newest first.
fn find_binaries() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|binaries| ["initdb", "pg_ctl", "psql"].iter().all(|name| binaries.join(name).exists()))
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs `program` from `binaries` as the `postgres` user; its standard output.
fn as_postgres(binaries: &Path, program: &str, arguments: &[&str]) -> Result<String, String> {
    // The arguments are single-quoted for `sh -c`; they are the bench's own paths and options.
    if arguments.iter().any(|argument| argument.contains('\'')) {
        return Err(format!("{program}: an argument contains a single quote: {arguments:?}"));
    }
    let command = std::iter::once(binaries.join(program).display().to_string())
        .chain(arguments.iter().map(|argument| format!("'{argument}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", &command])
        .output()
        .map_err(|error| format!("running `su postgres -c {program}`: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Postgres {
    /// Initialises a cluster in a new directory under `directory` and starts it.
    ///
    /// # Errors
    ///
    /// The binaries are missing (with what to install), or `initdb` or `pg_ctl` failed.
    pub fn start(directory: &Path) -> Result<Self, String> {
        let binaries = find_binaries().ok_or(
            "PostgreSQL binaries (initdb, pg_ctl, psql) not found under /usr/lib/postgresql/*/bin; \
             the index bench starts its own PostgreSQL: install it (apt-get install postgresql) and run again",
        )?;
        let data = tempfile::Builder::new()
            .prefix("postgres-")
            .tempdir_in(directory)
            .map_err(|error| format!("creating a PostgreSQL directory in {}: {error}", directory.display()))?;
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777))
            .map_err(|error| format!("opening {} to the postgres user: {error}", data.path().display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| format!("finding a free port: {error}"))?
            .port();
        let cluster = data.path().join("cluster").display().to_string();
        // `--no-sync` only skips initdb's own final flush of the empty cluster; the server then
        // runs with its defaults, `fsync` and `synchronous_commit` on.
        as_postgres(&binaries, "initdb", &["-D", &cluster, "-U", "postgres", "-A", "trust", "--no-sync"])?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={cluster} -c synchronous_commit=on"
        );
        let postgres = Self { port, binaries, data, options };
        postgres.start_again()?;
        Ok(postgres)
    }

    /// Starts the server (again, after [`Postgres::stop_immediately`]: crash recovery first).
    ///
    /// # Errors
    ///
    /// `pg_ctl start` failed or timed out.
    pub fn start_again(&self) -> Result<(), String> {
        let log = self.data.path().join("postgres.log").display().to_string();
        let timeout = (limits::POSTGRES_COMMAND_TIMEOUT_MS / 1000).to_string();
        as_postgres(
            &self.binaries,
            "pg_ctl",
            &["-D", &self.cluster(), "-o", &self.options, "-l", &log, "-w", "-t", &timeout, "start"],
        )
        .map(drop)
    }

    /// Stops the server the way a crash would look to its clients: `pg_ctl stop -m immediate`
    /// (connections cut, no checkpoint; the next start runs crash recovery). The data stays.
    ///
    /// # Errors
    ///
    /// `pg_ctl stop` failed or timed out.
    pub fn stop_immediately(&self) -> Result<(), String> {
        let timeout = (limits::POSTGRES_COMMAND_TIMEOUT_MS / 1000).to_string();
        as_postgres(&self.binaries, "pg_ctl", &["-D", &self.cluster(), "-m", "immediate", "-w", "-t", &timeout, "stop"])
            .map(drop)
    }

    fn cluster(&self) -> String {
        self.data.path().join("cluster").display().to_string()
    }

    /// Where the cluster lives.
    pub fn directory(&self) -> &Path {
        self.data.path()
    }

    /// The postmaster's process id (the first line of `postmaster.pid`), while it runs.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.path().join("cluster").join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// A connection URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Drops `database` if it exists (cutting its sessions) and creates it empty; its URL.
    ///
    /// # Errors
    ///
    /// `psql` failed.
    pub fn fresh_database(&self, database: &str) -> Result<String, String> {
        // Two commands: DROP DATABASE cannot run inside the transaction one `-c` would be.
        self.psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))?;
        self.psql("postgres", &format!("CREATE DATABASE {database}"))?;
        Ok(self.url(database))
    }

    /// `SELECT count(*) FROM {table}` in `database`.
    ///
    /// # Errors
    ///
    /// `psql` failed or printed something else than a number.
    pub fn count_rows(&self, database: &str, table: &str) -> Result<u64, String> {
        let text = self.psql(database, &format!("SELECT count(*) FROM {table}"))?;
        text.parse().map_err(|_| format!("SELECT count(*) FROM {table} printed `{text}`"))
    }

    /// Runs `sql` through `psql` (unaligned, tuples only), bounded by
    /// [`limits::POSTGRES_COMMAND_TIMEOUT_MS`]; its output, trimmed.
    ///
    /// # Errors
    ///
    /// `psql` could not run or failed.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let output = Command::new(self.binaries.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", (limits::POSTGRES_COMMAND_TIMEOUT_MS / 1000).to_string())
            .env("PGOPTIONS", format!("-c statement_timeout={}", limits::POSTGRES_COMMAND_TIMEOUT_MS))
            .output()
            .map_err(|error| format!("running psql: {error}"))?;
        if !output.status.success() {
            return Err(format!("psql `{sql}` failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the cluster is thrown away with its directory.
        let _ = as_postgres(&self.binaries, "pg_ctl", &["-D", &self.cluster(), "-m", "immediate", "-w", "stop"]);
    }
}
