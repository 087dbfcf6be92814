//! Three Kapsel nodes on the private NATS cluster: spawned like the ingest bench's Kapsel (the
//! same variables) plus `KAPSEL_NATS_URL` (every NATS server), `KAPSEL_NODE_ID`,
//! `KAPSEL_PARTITIONS`, `KAPSEL_REPLICAS` = 3, and waited for until every partition has an
//! owner, as the integration tests do (`tests/it/cluster.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::limits;
use crate::nats::NatsCluster;
use crate::payload::request;
use crate::process::ServerProcess;
use crate::setup;
use crate::suite::Suite;

/// The nodes' ids, `KAPSEL_NODE_ID`.
pub(crate) const NAMES: [&str; limits::CLUSTER_NODES] = ["node-a", "node-b", "node-c"];

/// One Kapsel node.
pub(crate) struct Node {
    pub(crate) name: &'static str,
    /// `None` once killed.
    pub(crate) process: Option<ServerProcess>,
    /// Its own data directory (cluster mode keeps its log in NATS; Kapsel still wants one).
    /// Declared after `process`, so deleted after the kill.
    _data: tempfile::TempDir,
}

/// The three nodes.
pub(crate) struct Nodes {
    pub(crate) nodes: Vec<Node>,
    token: String,
}

/// An endpoint's partition: FNV-1a 64 of its id modulo the partitions, as Kapsel places it
/// (`model::ids::owner_shard`; ADR 17).
pub(crate) fn partition_of(endpoint: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in endpoint.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // The remainder is below `partitions`, a u32.
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// A partition as `GET /admin/cluster` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PartitionView {
    /// The holder of a lease that has not lapsed.
    pub(crate) owner: Option<String>,
    /// The latest lease's epoch.
    pub(crate) epoch: u64,
    /// When it lapses (Unix ms, by its holder's clock).
    pub(crate) lease_expires_at_ms: u64,
}

/// What `GET /admin/cluster` shows.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterView {
    pub(crate) lease_ms: u64,
    pub(crate) partitions: Vec<PartitionView>,
    /// Each node the bucket knows: its last heartbeat (Unix ms) and whether it is live.
    pub(crate) nodes: BTreeMap<String, (u64, bool)>,
}

impl ClusterView {
    fn parse(json: &serde_json::Value) -> Self {
        let partitions = json["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| PartitionView {
                owner: entry["owner"].as_str().map(str::to_string),
                epoch: entry["epoch"].as_u64().unwrap_or(0),
                lease_expires_at_ms: entry["lease_expires_at_ms"].as_u64().unwrap_or(0),
            })
            .collect();
        let nodes = json["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| {
                let heartbeat = node["last_heartbeat_ms"].as_u64().unwrap_or(0);
                Some((node["node_id"].as_str()?.to_string(), (heartbeat, node["live"] == true)))
            })
            .collect();
        Self { lease_ms: json["lease_ms"].as_u64().unwrap_or(0), partitions, nodes }
    }

    /// The partitions `node` owns.
    pub(crate) fn owned_by(&self, node: &str) -> Vec<u32> {
        (0..)
            .zip(&self.partitions)
            .filter(|(_, partition)| partition.owner.as_deref() == Some(node))
            .map(|(index, _)| index)
            .collect()
    }

    /// Whether every partition has an owner among `live`, each of `live` is live and owns one.
    fn settled(&self, live: &[&str], partitions: u32) -> bool {
        let complete = self.partitions.len() == partitions as usize
            && self
                .partitions
                .iter()
                .all(|partition| partition.owner.as_deref().is_some_and(|owner| live.contains(&owner)));
        let all_live = live.iter().all(|node| self.nodes.get(*node).is_some_and(|(_, live)| *live));
        let spread = live.iter().all(|node| !self.owned_by(node).is_empty());
        complete && all_live && spread
    }
}

impl Nodes {
    /// Spawns the three nodes with `shards` shards each on `nats`, then waits until they have
    /// settled (see [`Nodes::wait_settled`]).
    ///
    /// # Errors
    ///
    /// A node did not start or the cluster did not settle; with a log tail.
    pub(crate) fn start(suite: &Suite, nats: &NatsCluster, shards: usize) -> Result<Self, String> {
        let mut nodes = Vec::with_capacity(NAMES.len());
        for name in NAMES {
            let data = tempfile::Builder::new()
                .prefix(&format!("kapsel-{name}-"))
                .tempdir_in(&suite.data_directory)
                .map_err(|error| format!("creating a data directory in {}: {error}", suite.data_directory.display()))?;
            let mut variables = setup::kapsel_variables(shards, suite.driver, data.path(), &suite.admin_token);
            variables.extend([
                ("KAPSEL_NATS_URL", nats.urls()),
                ("KAPSEL_NODE_ID", name.to_string()),
                ("KAPSEL_PARTITIONS", limits::CLUSTER_PARTITIONS.to_string()),
                ("KAPSEL_REPLICAS", limits::CLUSTER_NODES.to_string()),
            ]);
            let log = suite.paths.log_directory.join(format!("cluster-kapsel-{name}.log"));
            let process = ServerProcess::spawn(name, &suite.paths.binaries.join("kapsel"), &variables, &log)?;
            nodes.push(Node { name, process: Some(process), _data: data });
        }
        let nodes = Self { nodes, token: suite.admin_token.clone() };
        nodes.wait_settled(&NAMES)?;
        Ok(nodes)
    }

    /// Node `index`'s address and process id, while it runs.
    pub(crate) fn running(&self, index: usize) -> Option<(SocketAddr, u32)> {
        let process = self.nodes.get(index)?.process.as_ref()?;
        Some((process.address(), process.pid()))
    }

    /// Every running node's name and process id.
    pub(crate) fn processes(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .filter_map(|node| node.process.as_ref().map(|process| (format!("kapsel {}", node.name), process.pid())))
            .collect()
    }

    /// `SIGKILL` of node `index`; the instant it was sent.
    ///
    /// # Errors
    ///
    /// It is not running, or the signal failed.
    pub(crate) fn kill(&mut self, index: usize) -> Result<(), String> {
        let node = self.nodes.get_mut(index).ok_or("no such node")?;
        let mut process = node.process.take().ok_or_else(|| format!("{} is not running", node.name))?;
        process.kill()
    }

    /// An error when a running node has exited, with its log tail.
    ///
    /// # Errors
    ///
    /// A node exited.
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
        self.nodes.iter_mut().filter_map(|node| node.process.as_mut()).try_for_each(ServerProcess::check_running)
    }

    /// `method path` with the operator token and `body` (JSON) on node `index`, blocking.
    ///
    /// # Errors
    ///
    /// The node is not running or the request failed.
    pub(crate) fn admin(
        &self,
        index: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let (address, _) = self.running(index).ok_or_else(|| format!("node {index} is not running"))?;
        let authorization = format!("Bearer {}", self.token);
        let bytes = request(method, path, address, &[("Authorization", &authorization)], body.map(str::as_bytes));
        let timeout = Duration::from_millis(limits::CLUSTER_POLL_TIMEOUT_MS);
        let (status, answer) =
            setup::request_blocking(address, &bytes, timeout).map_err(|error| format!("{method} {path}: {error}"))?;
        Ok((status, String::from_utf8_lossy(&answer).into_owned()))
    }

    /// `GET /admin/cluster` on node `index`.
    ///
    /// # Errors
    ///
    /// The request failed or did not answer 200 with JSON.
    pub(crate) fn view(&self, index: usize) -> Result<ClusterView, String> {
        match self.admin(index, "GET", "/admin/cluster", None)? {
            (200, body) => serde_json::from_str(&body)
                .map(|json| ClusterView::parse(&json))
                .map_err(|error| format!("GET /admin/cluster: not JSON: {error}")),
            (status, body) => Err(format!("GET /admin/cluster answered {status}: {body}")),
        }
    }

    /// Waits (at most [`limits::CLUSTER_SETTLE_MS_MAX`]) until every running node shows every
    /// partition owned by one of `live`, each of them live and owning at least one, and all
    /// show the same owners. A partition's owner serves it only once it has replayed it, so a
    /// first ingest may still be answered 503 for a moment (see [`Nodes::ingest_until_accepted`]).
    ///
    /// # Errors
    ///
    /// A node exited, or the cluster did not settle in time (with the last views).
    pub(crate) fn wait_settled(&self, live: &[&str]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(limits::CLUSTER_SETTLE_MS_MAX);
        loop {
            let running: Vec<usize> = (0..self.nodes.len()).filter(|index| self.running(*index).is_some()).collect();
            let views: Vec<Result<ClusterView, String>> = running.iter().map(|index| self.view(*index)).collect();
            let owners = |view: &ClusterView| view.partitions.iter().map(|p| p.owner.clone()).collect::<Vec<_>>();
            let settled =
                views.iter().all(|view| view.as_ref().is_ok_and(|view| view.settled(live, limits::CLUSTER_PARTITIONS)));
            let agreed = views.windows(2).all(|pair| match (&pair[0], &pair[1]) {
                (Ok(a), Ok(b)) => owners(a) == owners(b),
                _ => false,
            });
            if settled && agreed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the Kapsel nodes did not settle within {} ms (every partition owned by one of {live:?}); last views: {views:?}",
                    limits::CLUSTER_SETTLE_MS_MAX
                ));
            }
            std::thread::sleep(Duration::from_millis(limits::CLUSTER_POLL_MS * 10));
        }
    }

    /// Sends `ingest` (a whole request for `endpoint`) to node `index` until it is answered 202:
    /// a 503 (the partition between owners, or not yet replayed) is retried every
    /// [`limits::CLUSTER_POLL_MS`] for at most [`limits::CLUSTER_INGEST_RETRY_MS_MAX`].
    ///
    /// # Errors
    ///
    /// Another answer, or still 503 at the deadline.
    pub(crate) fn ingest_until_accepted(&self, index: usize, endpoint: &str, ingest: &[u8]) -> Result<(), String> {
        let (address, _) = self.running(index).ok_or_else(|| format!("node {index} is not running"))?;
        let deadline = Instant::now() + Duration::from_millis(limits::CLUSTER_INGEST_RETRY_MS_MAX);
        let timeout = Duration::from_millis(limits::REQUEST_TIMEOUT_MS);
        loop {
            let answer = setup::request_blocking(address, ingest, timeout)
                .map_err(|error| format!("POST /ingest/{endpoint}: {error}"))?;
            match answer {
                (202, _) => return Ok(()),
                (503, _) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(limits::CLUSTER_POLL_MS));
                }
                (status, body) => {
                    let body = String::from_utf8_lossy(&body);
                    return Err(format!("POST /ingest/{endpoint} through {address} answered {status}: {body}"));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The fail-over picks an endpoint by the partition Kapsel puts it in: the hash must be
    // Kapsel's own, pinned to the values its tests pin (`model::ids`).
    #[test]
    fn partition_is_kapsels_fnv1a() {
        assert_eq!(partition_of("abc", 4), 3);
        assert_eq!(partition_of("abc", 7), 5);
        assert_eq!(partition_of("orders", 7), 4);
        assert_eq!(partition_of("endpoint-0", 2), 1);
        assert_eq!(partition_of("bench-0", 7), 3);
        assert_eq!(partition_of("abc", 1), 0);
    }

    // The fail-over's lease figures are read from this view: owners, epochs and expiries by
    // partition, and each node's heartbeat.
    #[test]
    fn reads_the_cluster_view() {
        let json = serde_json::json!({
            "lease_ms": 10000,
            "nodes": [{"node_id": "node-a", "last_heartbeat_ms": 5, "live": true},
                      {"node_id": "node-b", "last_heartbeat_ms": 4, "live": false}],
            "partitions": [{"partition": 0, "owner": "node-a", "epoch": 3, "lease_expires_at_ms": 99},
                           {"partition": 1, "owner": null, "epoch": 2, "lease_expires_at_ms": 7}],
        });
        let view = ClusterView::parse(&json);
        assert_eq!(view.lease_ms, 10_000);
        assert_eq!(view.owned_by("node-a"), [0]);
        assert_eq!(view.partitions[1], PartitionView { owner: None, epoch: 2, lease_expires_at_ms: 7 });
        assert_eq!(view.nodes.get("node-b"), Some(&(4, false)));
        assert!(!view.settled(&["node-a"], 2));
    }
}
