//! A private NATS JetStream cluster for the cluster bench, started by the bench itself: N
//! `nats-server` processes on free loopback ports, JetStream with file storage in a directory on
//! the bench's disk, routed to each other as one cluster, killed when dropped.
//!
//! Like the test harness (`tests/it/common/nats.rs`, whose configuration it copies), but with
//! errors as values instead of assertions, no pause or restart, and a store on the real disk
//! (not in the system's temporary directory) so that JetStream's writes cost what they cost.
//! The harness reads the servers' HTTP monitoring endpoints (`/healthz`, `/routez`, `/jsz`); so
//! does this, with the bench's blocking GET.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::limits;
use crate::setup;

/// Where `nats-server` may be besides PATH: Debian's package puts it in `/usr/sbin`, which is not
/// on every user's PATH.
const BINARY_DIRECTORIES: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// JetStream's memory store limit per server; the bench uses file storage.
const MEMORY_STORE_MAX: &str = "64MB";

/// JetStream's file store limit per server: a minute of the closed loop at a few thousand 1 KiB
/// events per second is a few hundred MB per server.
const FILE_STORE_MAX: &str = "4GB";

/// Lines of a server's log quoted when it fails.
const LOG_TAIL_LINES: usize = 20;

/// Where `nats-server` is: on PATH, else in `/usr/sbin`, `/usr/local/sbin` or `/usr/local/bin`;
/// `None` when not installed.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(BINARY_DIRECTORIES.iter().map(PathBuf::from))
        .map(|directory| directory.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// `nats-server --version`, trimmed (`nats-server: v2.9.10`).
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|error| format!("unknown ({error})"))
}

/// One server of the cluster: its ports, log and process.
struct NatsServer {
    name: String,
    client_port: u16,
    monitor_port: u16,
    log: PathBuf,
    process: Child,
}

/// A running cluster of `nats-server` processes with JetStream.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

/// `count` distinct free loopback ports: all bound at once (so none repeats), then released.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("finding free ports: {error}"))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("finding free ports: {error}"))
}

/// The last [`LOG_TAIL_LINES`] lines of the log file at `path`.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The configuration file of server `name` (nats-server 2.9 syntax), routed to `others`.
fn config(name: &str, ports: (u16, u16, u16), store: &Path, others: &[u16]) -> String {
    let (client, route, monitor) = ports;
    let routes: Vec<String> = others.iter().map(|port| format!("\"nats-route://127.0.0.1:{port}\"")).collect();
    format!(
        "# Written by kapsel-bench (bench/src/nats.rs).\n\
         server_name: \"{name}\"\n\
         listen: \"127.0.0.1:{client}\"\n\
         http: \"127.0.0.1:{monitor}\"\n\
         jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: {MEMORY_STORE_MAX}\n  \
         max_file_store: {FILE_STORE_MAX}\n}}\n\
         cluster {{\n  name: \"kapsel-bench\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
        store = store.display(),
        routes = routes.join(", "),
    )
}

/// `GET path` on a monitoring port, as JSON.
fn monitor_get(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_millis(limits::CLUSTER_POLL_TIMEOUT_MS);
    match setup::get_blocking(address, path, timeout)? {
        (200, body) => serde_json::from_slice(&body).map_err(|error| format!("GET {path}: not JSON: {error}")),
        (status, body) => Err(format!("GET {path}: {status} {}", String::from_utf8_lossy(&body))),
    }
}

impl NatsCluster {
    /// Starts `count` (at least 2) servers of `binary` as one JetStream cluster, each in
    /// `<directory>/nats-<index>` (configuration, store; its log in `log_directory` as
    /// `cluster-nats-<index>.log`), and waits until it has settled (see
    /// [`NatsCluster::settle`]).
    ///
    /// # Errors
    ///
    /// A server could not be configured or started, exited, or the cluster did not settle in
    /// time; with the servers' log tails.
    pub fn start(binary: &Path, count: usize, directory: &Path, log_directory: &Path) -> Result<Self, String> {
        if count < 2 {
            return Err(format!("a JetStream cluster needs at least 2 servers, not {count}"));
        }
        let ports = free_ports(3 * count)?;
        let routes: Vec<u16> = (0..count).filter_map(|index| ports.get(3 * index + 1).copied()).collect();
        let mut cluster = Self { servers: Vec::with_capacity(count) };
        for (index, chunk) in ports.chunks_exact(3).enumerate() {
            let [client_port, route_port, monitor_port] = [chunk[0], chunk[1], chunk[2]];
            let name = format!("nats-{index}");
            let server_directory = directory.join(&name);
            let store = server_directory.join("store");
            std::fs::create_dir_all(&store).map_err(|error| format!("creating {}: {error}", store.display()))?;
            let others: Vec<u16> = routes.iter().copied().filter(|port| *port != route_port).collect();
            let config_path = server_directory.join("nats.conf");
            std::fs::write(&config_path, config(&name, (client_port, route_port, monitor_port), &store, &others))
                .map_err(|error| format!("writing {}: {error}", config_path.display()))?;
            let log = log_directory.join(format!("cluster-{name}.log"));
            let log_file = File::create(&log).map_err(|error| format!("creating {}: {error}", log.display()))?;
            let log_copy = log_file.try_clone().map_err(|error| format!("{}: {error}", log.display()))?;
            let process = Command::new(binary)
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_copy))
                .stderr(Stdio::from(log_file))
                .spawn()
                .map_err(|error| format!("starting {}: {error}", binary.display()))?;
            cluster.servers.push(NatsServer { name, client_port, monitor_port, log, process });
        }
        cluster.settle()?;
        Ok(cluster)
    }

    /// Comma-separated client URLs of every server, for `KAPSEL_NATS_URL`.
    pub fn urls(&self) -> String {
        let urls: Vec<String> =
            self.servers.iter().map(|server| format!("nats://127.0.0.1:{}", server.client_port)).collect();
        urls.join(",")
    }

    /// Each server's name (`nats-<index>`) and process id.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.servers.iter().map(|server| (server.name.clone(), server.process.id())).collect()
    }

    /// An error when a server has exited, with its log's tail.
    ///
    /// # Errors
    ///
    /// A server exited (or cannot be waited for).
    pub fn check_running(&mut self) -> Result<(), String> {
        for server in &mut self.servers {
            match server.process.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    return Err(format!(
                        "{} exited ({status}); its log {} ends with:\n{}",
                        server.name,
                        server.log.display(),
                        log_tail(&server.log)
                    ));
                }
                Err(error) => return Err(format!("{} cannot be waited for: {error}", server.name)),
            }
        }
        Ok(())
    }

    /// Waits (at most [`limits::CLUSTER_SETTLE_MS_MAX`]) until every server is healthy
    /// (`/healthz`: JetStream has a meta leader and is current with it), routed to every other
    /// (`/routez`), and all name the same meta leader (`/jsz`); returns its name.
    ///
    /// # Errors
    ///
    /// A server exited, or the cluster did not settle in time; with every server's log tail.
    pub fn settle(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_millis(limits::CLUSTER_SETTLE_MS_MAX);
        loop {
            self.check_running()?;
            let why = match self.settled() {
                Ok(leader) => return Ok(leader),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .servers
                    .iter()
                    .map(|server| format!("-- {} ({}):\n{}", server.name, server.log.display(), log_tail(&server.log)))
                    .collect();
                return Err(format!(
                    "the NATS cluster did not settle within {} ms: {why}; the servers' logs end with:\n{}",
                    limits::CLUSTER_SETTLE_MS_MAX,
                    logs.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(limits::CLUSTER_POLL_MS));
        }
    }

    /// One look at the cluster: the meta leader's name if it has settled, else why not.
    fn settled(&self) -> Result<String, String> {
        let mut leaders = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            let port = server.monitor_port;
            let health = monitor_get(port, "/healthz").map_err(|error| format!("{}: {error}", server.name))?;
            if health["status"] != "ok" {
                return Err(format!("{} is not healthy: {health}", server.name));
            }
            let routes = monitor_get(port, "/routez").map_err(|error| format!("{}: {error}", server.name))?;
            let routed = routes["num_routes"].as_u64().unwrap_or(0);
            if routed + 1 < self.servers.len() as u64 {
                return Err(format!("{} has {routed} routes", server.name));
            }
            let jsz = monitor_get(port, "/jsz").map_err(|error| format!("{}: {error}", server.name))?;
            leaders.push(jsz["meta_cluster"]["leader"].as_str().unwrap_or_default().to_string());
        }
        match leaders.first() {
            Some(leader) if !leader.is_empty() && leaders.iter().all(|other| other == leader) => Ok(leader.clone()),
            _ => Err(format!("the servers name different or no meta leaders: {leaders:?}")),
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // SIGKILL: the store is thrown away with the bench's directory, and a kill cannot hang.
        for server in &mut self.servers {
            let _ = server.process.kill();
            let _ = server.process.wait();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The servers only form one cluster if each names the others' route ports and not its own,
    // and JetStream stores on the bench's disk only if the store directory is the one given.
    #[test]
    fn config_routes_to_the_others_and_stores_where_told() {
        let text = config("nats-1", (4222, 6222, 8222), Path::new("/data/nats-1/store"), &[6221, 6223]);
        assert!(text.contains("server_name: \"nats-1\"\n"));
        assert!(text.contains("listen: \"127.0.0.1:4222\"\n"));
        assert!(text.contains("http: \"127.0.0.1:8222\"\n"));
        assert!(text.contains("store_dir: \"/data/nats-1/store\""));
        assert!(text.contains("listen: \"127.0.0.1:6222\"\n"));
        assert!(text.contains("routes: [\"nats-route://127.0.0.1:6221\", \"nats-route://127.0.0.1:6223\"]"));
        assert!(!text.contains("nats-route://127.0.0.1:6222"));
    }
}
