//! Cluster mode on NATS JetStream (ADR 17): what a node does beyond its shards. Partitions'
//! streams are logs for [`crate::shard::Shard::open_partition`]; leases on the cluster's bucket
//! decide which node owns which partition ([`leases`]). It imports `shard`'s stream interface
//! and `model`, nothing of `admin` or `runtime`.

pub mod bucket;
pub mod leases;
pub mod nats;
pub mod wire;
