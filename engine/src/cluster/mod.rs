//! Cluster mode on NATS JetStream (ADR 17): what a node does beyond its shards. Partitions'
//! streams are logs for [`crate::shard::Shard::open_partition`]; leases on the cluster's bucket
//! decide which node owns which partition ([`leases`]). It imports `shard`'s stream interface
//! and `model`, nothing of `admin` or `runtime`.

pub mod bucket;
pub mod leases;
pub mod nats;
pub mod seal;
pub mod wire;

/// How a node joins a cluster (`KAPSEL_NATS_URL` and the settings beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs (`KAPSEL_NATS_URL`, comma-separated).
    pub urls: Vec<String>,
    /// This node's id (`KAPSEL_NODE_ID`), unique in the cluster.
    pub node: String,
    /// Partitions of the event log (`KAPSEL_PARTITIONS`), fixed when the cluster is created.
    pub partitions: u32,
    /// Replicas of each partition's stream (`KAPSEL_REPLICAS`).
    pub replicas: usize,
    /// How long a partition lease lasts: above the 4 to 9 s a NATS stream takes to elect a new
    /// leader, so a partition does not move merely because NATS is electing.
    pub lease_ms: u64,
    /// The most two nodes' clocks may disagree by.
    pub skew_ms: u64,
}

/// `KAPSEL_PARTITIONS` when unset.
pub const PARTITIONS_DEFAULT: u32 = 64;
/// The most partitions a cluster may have (a partition's number is an event id's 16-bit shard).
pub const PARTITIONS_MAX: u32 = 1024;
/// `KAPSEL_REPLICAS` when unset.
pub const REPLICAS_DEFAULT: usize = 3;
/// A partition lease's length.
pub const LEASE_MS_DEFAULT: u64 = 10_000;
/// The clock skew allowed between nodes.
pub const SKEW_MS_DEFAULT: u64 = 1_000;

/// Checks that the cluster was created with `partitions` partitions (the first node to start
/// records its count; a node with another count refuses to start: events would be looked for
/// in the wrong partition). Blocks: called at start.
pub fn check_partitions(link: &kapsel_nats::Link, partitions: u32) -> Result<(), String> {
    use crate::cluster::nats::{block_on, BUCKET};
    let recorded = match block_on(link.kv_create(BUCKET, "partitions", partitions.to_string().into_bytes())) {
        Ok(_) => return Ok(()),
        Err(kapsel_nats::KvError::Exists { .. }) => block_on(link.kv_get(BUCKET, "partitions"))
            .map_err(|error| format!("reading the cluster's partition count: {error}"))?,
        Err(error) => return Err(format!("recording the cluster's partition count: {error}")),
    };
    let recorded: Option<u32> =
        recorded.and_then(|entry| String::from_utf8(entry.value).ok()).and_then(|text| text.parse().ok());
    match recorded {
        Some(count) if count == partitions => Ok(()),
        Some(count) => Err(format!(
            "the cluster has {count} partitions and KAPSEL_PARTITIONS is {partitions}: the count is fixed when the cluster is created"
        )),
        None => Err("the cluster's recorded partition count is unreadable".into()),
    }
}
