//! A server under test as a child process: spawned with its environment, its address read
//! from its first line of standard output, stopped gracefully on request
//! ([`ServerProcess::terminate`]) and killed when dropped (on every path, errors included).

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::limits;

/// Variables a server could inherit from the shell that would change what is measured: a
/// Postgres index, a config file, TLS. The suite sets what it needs explicitly.
const VARIABLES_REMOVED: [&str; 6] =
    ["DATABASE_URL", "KAPSEL_CONFIG", "KAPSEL_TLS_CERT", "KAPSEL_TLS_KEY", "KAPSEL_ALLOW_DESTINATIONS", "SERVER_ADDR"];

/// A running server process.
pub struct ServerProcess {
    name: String,
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `program` with `variables` set, standard error going to `log`, and waits (at
    /// most [`limits::SERVER_START_TIMEOUT_MS`]) for its first line of standard output,
    /// `… listening on http://ADDR`.
    ///
    /// # Errors
    ///
    /// The process could not start, exited, printed something else, or took too long; the
    /// message ends with the tail of its log.
    pub fn spawn(name: &str, program: &Path, variables: &[(&str, String)], log: &Path) -> Result<Self, String> {
        let log_file = File::create(log).map_err(|error| format!("creating {}: {error}", log.display()))?;
        let mut command = Command::new(program);
        for variable in VARIABLES_REMOVED {
            command.env_remove(variable);
        }
        command.envs(variables.iter().map(|(name, value)| (name, value))).stdin(Stdio::null()).stdout(Stdio::piped());
        let child = command
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|error| format!("starting {}: {error}", program.display()))?;
        let mut process = Self {
            name: name.to_string(),
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
        };
        let first_line = process.first_line()?;
        process.address = parse_listening_line(&first_line)
            .ok_or_else(|| process.failure(&format!("printed `{first_line}` instead of its listening line")))?;
        Ok(process)
    }

    /// Reads the first line of standard output on a helper thread, which then keeps draining
    /// it so that the server never blocks on a full pipe.
    fn first_line(&mut self) -> Result<String, String> {
        let stdout = self.child.stdout.take().ok_or_else(|| self.failure("has no standard output"))?;
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{}-stdout", self.name))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let _ = sender.send(reader.read_line(&mut line).map(|_| line));
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            })
            .map_err(|error| format!("reading the output of {}: {error}", self.name))?;
        match receiver.recv_timeout(Duration::from_millis(limits::SERVER_START_TIMEOUT_MS)) {
            Ok(Ok(line)) if !line.is_empty() => Ok(line.trim_end().to_string()),
            Ok(Ok(_)) => Err(self.failure("exited before listening")),
            Ok(Err(error)) => Err(self.failure(&format!("standard output unreadable: {error}"))),
            Err(_) => Err(self.failure("did not print its listening line in time")),
        }
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Ok` while it runs; an error with its exit status and log tail once it has exited.
    ///
    /// # Errors
    ///
    /// The process exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(&format!("exited ({status})"))),
            Err(error) => Err(self.failure(&format!("cannot be waited for: {error}"))),
        }
    }

    /// Kills it with SIGKILL (a crash: nothing is flushed, nothing given up) and reaps it.
    ///
    /// # Errors
    ///
    /// The signal could not be sent or the process not reaped.
    pub fn kill(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|error| format!("killing {}: {error}", self.name))?;
        self.child.wait().map(|_| ()).map_err(|error| format!("reaping {}: {error}", self.name))
    }

    /// Stops it gracefully: SIGTERM (sent with `kill(1)`, which needs no `unsafe`), then waits
    /// at most [`limits::SERVER_STOP_TIMEOUT_MS`] for it to exit. Returns how long it took.
    /// The child is not reaped before it exits, so its pid cannot have been reused.
    ///
    /// # Errors
    ///
    /// The signal could not be sent, the process did not exit in time (it is killed when
    /// dropped), or it exited with a failure status; with the tail of its log.
    pub fn terminate(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map_err(|error| format!("running kill: {error}"))?;
        if !sent.success() {
            return Err(self.failure(&format!("could not be sent SIGTERM (kill: {sent})")));
        }
        let deadline = started + Duration::from_millis(limits::SERVER_STOP_TIMEOUT_MS);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(started.elapsed()),
                Ok(Some(status)) => return Err(self.failure(&format!("exited ({status}) after SIGTERM"))),
                Ok(None) if Instant::now() >= deadline => {
                    let bound = limits::SERVER_STOP_TIMEOUT_MS / 1000;
                    return Err(self.failure(&format!("did not exit within {bound} s of SIGTERM")));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(limits::SERVER_STOP_POLL_MS)),
                Err(error) => return Err(self.failure(&format!("cannot be waited for: {error}"))),
            }
        }
    }

    /// An error message about this server, with the last lines of its log.
    pub fn failure(&self, what: &str) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("{} {what}; log {}:\n{tail}", self.name, self.log.display())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGKILL: the data directory is thrown away, and a kill cannot hang. After
        // `terminate` the child is already reaped: nothing is signalled, errors are ignored.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `<name> listening on http://ADDR`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let (_, address) = line.split_once(" listening on http://")?;
    address.trim().trim_end_matches('/').parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The suite finds every server's port from this line; Kapsel and the references print it
    // the same way.
    #[test]
    fn listening_line_gives_the_address() {
        assert_eq!(
            parse_listening_line("kapsel listening on http://127.0.0.1:43210"),
            Some("127.0.0.1:43210".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("reference-durable listening on http://127.0.0.1:8080/"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(parse_listening_line("kapsel listening on https://127.0.0.1:1"), None);
        assert_eq!(parse_listening_line("{\"level\":\"info\"}"), None);
    }
}
