//! A private NATS JetStream cluster for tests: N `nats-server` processes on free loopback ports,
//! each with JetStream on its own store directory in a temporary directory, routed to each other
//! as one cluster, killed when dropped (also when the test panics). When `nats-server` is missing
//! the tests that need it say so loudly and skip, except under `CI=true`, where that is a failure
//! (`.ci/run` installs it).
//!
//! The harness needs no NATS client: it reads the servers' HTTP monitoring endpoints (`/healthz`,
//! `/jsz`, `/routez`) with the tests' own HTTP client. For the chaos tests a server can be killed
//! with SIGKILL ([`NatsCluster::kill`]) and started again on the same ports and store
//! ([`NatsCluster::restart`]), or stopped with SIGSTOP and continued ([`NatsCluster::pause`],
//! [`NatsCluster::resume`]).
//!
//! Timing, as nats-server 2.9 has it (not configurable there): a JetStream Raft group elects a
//! new leader 4 to 9 s after its leader stops answering (the election timeout), so a test that
//! kills or pauses a leader takes that long.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{skip_for_want_of, try_request, WAIT};

/// Where `nats-server` may be besides PATH: Debian's package puts it in `/usr/sbin`, which is not
/// on every user's PATH.
const BINARY_DIRECTORIES: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// Whole-cluster start attempts: another process may take a free port between the moment it is
/// chosen and the moment a server binds it.
const START_ATTEMPTS: usize = 3;

/// JetStream's memory store limit per server; the tests use file storage.
const MEMORY_STORE_MAX: &str = "64MB";

/// JetStream's file store limit per server: room for a load test's partitions, small enough for
/// three servers of several parallel tests on one disk.
const FILE_STORE_MAX: &str = "512MB";

/// Lines of a server's log quoted when it fails.
const LOG_TAIL_LINES: usize = 20;

/// A running cluster of `nats-server` processes with JetStream.
pub struct NatsCluster {
    binary: PathBuf,
    directory: tempfile::TempDir,
    servers: Vec<NatsServer>,
}

/// One server of the cluster: its fixed ports and directory, and its process while it runs.
struct NatsServer {
    name: String,
    client_port: u16,
    route_port: u16,
    monitor_port: u16,
    directory: PathBuf,
    process: Option<Child>,
    paused: bool,
}

/// Why a start or a restart did not give a settled cluster.
struct StartFailure {
    message: String,
    /// A port was taken by someone else: worth another attempt on other ports.
    port_taken: bool,
}

/// Where `nats-server` is: on PATH, else in [`BINARY_DIRECTORIES`].
fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(BINARY_DIRECTORIES.iter().map(PathBuf::from))
        .map(|directory| directory.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// `count` distinct free loopback ports: all bound at once (so none repeats), then released.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|listener| listener.local_addr().unwrap().port()).collect()
}

/// The last [`LOG_TAIL_LINES`] lines of the log file at `path`.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// `GET path` on a monitoring port, as JSON, with the status line when it is not 200.
fn monitor_get(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let response = try_request(address, "GET", path, &[], b"").map_err(|error| format!("GET {path}: {error}"))?;
    if response.status != 200 {
        return Err(format!("GET {path}: {} {}", response.status, String::from_utf8_lossy(&response.body)));
    }
    serde_json::from_slice(&response.body).map_err(|error| format!("GET {path}: not JSON: {error}"))
}

impl NatsServer {
    fn log_path(&self) -> PathBuf {
        self.directory.join("server.log")
    }

    fn config_path(&self) -> PathBuf {
        self.directory.join("nats.conf")
    }

    /// The configured JetStream store directory (JetStream keeps its files under `jetstream/`).
    fn store_directory(&self) -> PathBuf {
        self.directory.join("store")
    }

    /// Running and not stopped: the only servers whose endpoints answer.
    fn answering(&self) -> bool {
        self.process.is_some() && !self.paused
    }

    /// Its configuration file (nats-server 2.9 syntax), with routes to every other server.
    fn config(&self, cluster_routes: &[u16]) -> String {
        let mut text = format!(
            "# Written by tests/it/common/nats.rs.\n\
             server_name: \"{name}\"\n\
             listen: \"127.0.0.1:{client}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: {MEMORY_STORE_MAX}\n  \
             max_file_store: {FILE_STORE_MAX}\n}}\n",
            name = self.name,
            client = self.client_port,
            monitor = self.monitor_port,
            store = self.store_directory().display(),
        );
        // A lone server runs JetStream without a cluster: 2.9 refuses a cluster block without
        // routes ("JetStream cluster requires configured routes").
        let others: Vec<String> = cluster_routes
            .iter()
            .filter(|port| **port != self.route_port)
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();
        if !others.is_empty() {
            text.push_str(&format!(
                "cluster {{\n  name: \"kapsel-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                self.route_port,
                others.join(", ")
            ));
        }
        text
    }

    /// Starts the process on its configuration, its output appended to its log.
    fn spawn(&mut self, binary: &Path) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let log = File::options().create(true).append(true).open(self.log_path()).unwrap();
        let process = Command::new(binary)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", binary.display()));
        self.process = Some(process);
        self.paused = false;
    }

    /// An error when the process has exited, with its log's tail.
    fn check_running(&mut self) -> Result<(), StartFailure> {
        let Some(process) = self.process.as_mut() else { return Ok(()) };
        let Some(status) = process.try_wait().unwrap() else { return Ok(()) };
        self.process = None;
        let tail = log_tail(&self.log_path());
        Err(StartFailure {
            port_taken: tail.contains("address already in use"),
            message: format!("{} exited ({status}); its log ends with:\n{tail}", self.name),
        })
    }

    /// SIGKILL and reap (a stopped process dies as well).
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        self.paused = false;
    }

    fn signal(&self, name: &str) {
        let process = self.process.as_ref().unwrap_or_else(|| panic!("{} is not running", self.name));
        let status = Command::new("kill").arg(format!("-{name}")).arg(process.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} {}", self.name);
    }
}

impl NatsCluster {
    /// Starts `servers` servers as one JetStream cluster (a lone server when 1) and waits until
    /// it has settled (see [`NatsCluster::wait_settled`]); `None`, after saying why, when
    /// `nats-server` is not installed. Panics with the servers' logs when it does not start.
    pub fn start(servers: usize) -> Option<NatsCluster> {
        assert!(servers >= 1, "a cluster of no server");
        let Some(binary) = find_binary() else {
            skip_for_want_of("nats-server (Debian package nats-server) on PATH or in /usr/sbin");
            return None;
        };
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::create(binary.clone(), servers);
            for index in 0..servers {
                cluster.servers[index].spawn(&cluster.binary);
            }
            match cluster.settle() {
                Ok(_) => return Some(cluster),
                Err(failure) if failure.port_taken && attempt < START_ATTEMPTS => continue,
                Err(failure) => panic!("the NATS cluster did not start: {}", failure.message),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The directory, ports and configuration files of a cluster that does not run yet.
    fn create(binary: PathBuf, count: usize) -> NatsCluster {
        let directory = tempfile::Builder::new().prefix("kapsel-nats").tempdir().unwrap();
        let ports = free_ports(3 * count);
        let servers: Vec<NatsServer> = (0..count)
            .map(|index| NatsServer {
                name: format!("nats-{index}"),
                client_port: ports[3 * index],
                route_port: ports[3 * index + 1],
                monitor_port: ports[3 * index + 2],
                directory: directory.path().join(format!("nats-{index}")),
                process: None,
                paused: false,
            })
            .collect();
        let routes: Vec<u16> = servers.iter().map(|server| server.route_port).collect();
        for server in &servers {
            std::fs::create_dir_all(server.store_directory()).unwrap();
            std::fs::write(server.config_path(), server.config(&routes)).unwrap();
        }
        NatsCluster { binary, directory, servers }
    }

    /// Comma-separated client URLs of every server, for `KAPSEL_NATS_URL`.
    pub fn urls(&self) -> String {
        (0..self.servers.len()).map(|index| self.url(index)).collect::<Vec<_>>().join(",")
    }

    /// A NATS link (the engine's client) to every server, named `name`.
    pub fn link(&self, name: &str) -> kapsel_nats::Link {
        let urls = (0..self.servers.len()).map(|index| self.url(index)).collect();
        let options = kapsel_nats::LinkOptions { urls, name: name.to_string(), ..kapsel_nats::LinkOptions::default() };
        kapsel_nats::Link::connect(options).unwrap()
    }

    /// The client URL of server `index`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[index].client_port)
    }

    /// How many servers the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Server `index`'s name (`nats-<index>`), as `/jsz` and the logs name it.
    pub fn name(&self, index: usize) -> &str {
        &self.servers[index].name
    }

    /// The index of the server called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|server| server.name == name)
    }

    /// Server `index`'s directory: `nats.conf`, `server.log` (all its runs) and `store/`.
    pub fn directory(&self, index: usize) -> &Path {
        &self.servers[index].directory
    }

    /// The process id of server `index` while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.servers[index].process.as_ref().map(Child::id)
    }

    /// The HTTP monitoring port of server `index`.
    pub fn monitor_port(&self, index: usize) -> u16 {
        self.servers[index].monitor_port
    }

    /// The tail of server `index`'s log.
    pub fn log_tail(&self, index: usize) -> String {
        log_tail(&self.servers[index].log_path())
    }

    /// `GET path` on server `index`'s monitoring port, as JSON (`/varz`, `/routez`, `/jsz?…`).
    /// Panics when the server is paused (its kernel accepts the connection, nobody answers).
    pub fn monitor(&self, index: usize, path: &str) -> serde_json::Value {
        let server = &self.servers[index];
        assert!(!server.paused, "{} is paused and would not answer {path}", server.name);
        monitor_get(server.monitor_port, path).unwrap_or_else(|error| panic!("{}: {error}", server.name))
    }

    /// Server `index`'s `/jsz`: its JetStream usage and, under `meta_cluster`, the meta group's
    /// leader and size (and, only on the leader, `replicas`: each other server's `current`,
    /// `active` nanoseconds since last heard from, `lag`).
    pub fn jsz(&self, index: usize) -> serde_json::Value {
        self.monitor(index, "/jsz")
    }

    /// The JetStream meta leader's name, when every running, unpaused server names the same one
    /// (`None` while they disagree, have none, or for a lone server, which has no meta group).
    /// Right after a leader is killed the others still name it until they elect another.
    pub fn meta_leader(&self) -> Option<String> {
        let named: Vec<Option<String>> = self
            .servers
            .iter()
            .filter(|server| server.answering())
            .map(|server| monitor_get(server.monitor_port, "/jsz").ok().as_ref().and_then(meta_leader_of))
            .collect();
        let leader = named.first()?.clone()?;
        named.iter().all(|name| name.as_deref() == Some(leader.as_str())).then_some(leader)
    }

    /// SIGKILL server `index` (a crash: its store stays as the crash left it).
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
    }

    /// Starts server `index` again after [`NatsCluster::kill`], on the same ports and store, and
    /// waits until it is back in the cluster (see [`NatsCluster::wait_settled`]).
    pub fn restart(&mut self, index: usize) {
        let server = &mut self.servers[index];
        server.spawn(&self.binary);
        if let Err(failure) = self.settle() {
            panic!("{} did not rejoin the cluster: {}", self.servers[index].name, failure.message);
        }
    }

    /// SIGSTOP server `index`: it holds its connections but answers nothing, like a long pause.
    pub fn pause(&mut self, index: usize) {
        self.servers[index].signal("STOP");
        self.servers[index].paused = true;
    }

    /// SIGCONT server `index` after [`NatsCluster::pause`], and waits until it is back in the
    /// cluster (see [`NatsCluster::wait_settled`]).
    pub fn resume(&mut self, index: usize) {
        self.servers[index].signal("CONT");
        self.servers[index].paused = false;
        if let Err(failure) = self.settle() {
            panic!("{} did not rejoin the cluster after SIGCONT: {}", self.servers[index].name, failure.message);
        }
    }

    /// Waits (up to [`WAIT`]) until the running, unpaused servers form a settled cluster, and
    /// returns the meta leader's name (a lone server's own name): each is healthy (`/healthz`:
    /// JetStream has a meta leader and is current with it), routed to every other, and names
    /// the same meta leader, one of them, whose `/jsz` shows every one of them current.
    pub fn wait_settled(&mut self) -> String {
        self.settle().unwrap_or_else(|failure| panic!("the NATS cluster did not settle: {}", failure.message))
    }

    /// [`NatsCluster::wait_settled`] as a result, failing early when a server exits.
    fn settle(&mut self) -> Result<String, StartFailure> {
        let deadline = Instant::now() + WAIT;
        loop {
            for server in &mut self.servers {
                server.check_running()?;
            }
            let observation = self.settled();
            match observation {
                Ok(leader) => return Ok(leader),
                Err(why) if Instant::now() >= deadline => {
                    let logs: Vec<String> = self
                        .servers
                        .iter()
                        .map(|server| format!("-- {}:\n{}", server.name, log_tail(&server.log_path())))
                        .collect();
                    let message = format!("after {WAIT:?}: {why}; the servers' logs end with:\n{}", logs.join("\n"));
                    return Err(StartFailure { message, port_taken: false });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// One look at the cluster: the meta leader's name if it has settled, else why not.
    fn settled(&self) -> Result<String, String> {
        let answering: Vec<&NatsServer> = self.servers.iter().filter(|server| server.answering()).collect();
        assert!(!answering.is_empty(), "no server of the cluster is running");
        let mut leaders = Vec::new();
        for server in &answering {
            let health = monitor_get(server.monitor_port, "/healthz").map_err(|e| format!("{}: {e}", server.name))?;
            if health["status"] != "ok" {
                return Err(format!("{} is not healthy: {health}", server.name));
            }
            let routes = monitor_get(server.monitor_port, "/routez").map_err(|e| format!("{}: {e}", server.name))?;
            let routed = routes["num_routes"].as_u64().unwrap_or(0);
            if routed + 1 < answering.len() as u64 {
                return Err(format!("{} has {routed} routes", server.name));
            }
            let jsz = monitor_get(server.monitor_port, "/jsz").map_err(|e| format!("{}: {e}", server.name))?;
            leaders.push(meta_leader_of(&jsz));
        }
        if self.servers.len() == 1 {
            return Ok(self.servers[0].name.clone());
        }
        let Some(Some(leader)) = leaders.first().cloned() else { return Err("no meta leader yet".into()) };
        if leaders.iter().any(|other| other.as_deref() != Some(leader.as_str())) {
            return Err(format!("the servers name different meta leaders: {leaders:?}"));
        }
        let Some(leader_server) = answering.iter().find(|server| server.name == leader) else {
            return Err(format!("the meta leader {leader} is not running"));
        };
        let jsz = monitor_get(leader_server.monitor_port, "/jsz").map_err(|e| format!("{leader}: {e}"))?;
        for server in answering.iter().filter(|server| server.name != leader) {
            if !meta_replica_current(&jsz, &server.name) {
                return Err(format!("the meta leader {leader} does not see {} current: {}", server.name, jsz));
            }
        }
        Ok(leader)
    }
}

/// The meta leader a `/jsz` names (`None` for none yet, or no meta group).
pub fn meta_leader_of(jsz: &serde_json::Value) -> Option<String> {
    jsz["meta_cluster"]["leader"].as_str().filter(|leader| !leader.is_empty()).map(str::to_string)
}

/// Whether the meta leader's `/jsz` lists server `name` as a current replica (only the leader's
/// `/jsz` lists replicas).
pub fn meta_replica_current(leader_jsz: &serde_json::Value, name: &str) -> bool {
    meta_replica(leader_jsz, name).is_some_and(|replica| replica["current"] == true)
}

/// Server `name`'s entry in the meta leader's `/jsz` replicas.
pub fn meta_replica<'a>(leader_jsz: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    leader_jsz["meta_cluster"]["replicas"].as_array()?.iter().find(|replica| replica["name"] == name)
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // Runs on a panic's unwinding too, so a failed test leaves no server behind.
        for server in &mut self.servers {
            server.kill();
        }
    }
}
