//! Every node follows every partition's configuration (ADR 17): endpoint changes, and on
//! partition 0 tenants and keys, are records on each partition's `cfg` subject, written by
//! whichever node made the change. Each node reads them all from the partition's latest
//! snapshot on, so that it authenticates every request with the cluster's tenants and keys (a
//! key revoked through any node is refused by every node within the consumer's latency) and
//! knows every endpoint's channels, which a publish to a channel is matched against on the
//! channel's owner, whichever partition the endpoint lives in.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use super::{ClusterNode, FEED_CAPACITY, REOPEN_PAUSE};
use crate::admin::shared::Shared;
use crate::cluster::nats::{record_of, stream_name, subject, NatsFeed};
use crate::model::records::Record;
use crate::shard::stream::Feed;

/// Follows every partition's configuration until shutdown; `caught_up` counts the partitions
/// whose configuration has been read up to where it was when the node started (the node is
/// ready once all have: no key is refused, and no endpoint left out of a publish, for being
/// unknown yet). Each partition retries for ever when its stream cannot be read.
pub async fn follow_configuration(node: Arc<ClusterNode>, shared: Arc<Shared>, caught_up: Rc<Cell<usize>>) {
    for partition in 0..node.config.partitions {
        monoio::spawn(follow_partition(Arc::clone(&node), Arc::clone(&shared), partition, Rc::clone(&caught_up)));
    }
}

/// What a partition's configuration held when last read: its endpoints, and (partition 0)
/// tenants and keys.
struct Followed {
    endpoints: BTreeSet<String>,
    access: crate::state::Access,
}

async fn follow_partition(node: Arc<ClusterNode>, shared: Arc<Shared>, partition: u32, caught_up: Rc<Cell<usize>>) {
    let mut counted = false;
    // The endpoints the previous reading knew: those gone when a new reading catches up were
    // deleted meanwhile (their deletion may have been purged with the records around it).
    let mut known: BTreeSet<String> = BTreeSet::new();
    while !shared.is_shutting_down() {
        match read_partition(&node, &shared, partition, &mut known, &mut counted, &caught_up).await {
            Ok(()) => tracing::warn!(partition, "the partition's configuration feed ended; reading it again"),
            Err(error) => tracing::warn!(partition, %error, "cannot follow the partition's configuration yet"),
        }
        monoio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// One reading of a partition's configuration: its latest snapshot, then its `cfg` subject from
/// the sequence after the snapshot's, for as long as the feed lasts.
async fn read_partition(
    node: &ClusterNode,
    shared: &Shared,
    partition: u32,
    known: &mut BTreeSet<String>,
    counted: &mut bool,
    caught_up: &Cell<usize>,
) -> Result<(), String> {
    let stream = stream_name(partition);
    let link = &node.link;
    let target = link
        .last_on_subject(stream.clone(), subject(partition, "cfg"))
        .await
        .map_err(|error| error.to_string())?
        .map_or(0, |message| message.sequence);
    let snapshot = link.last_on_subject(stream.clone(), subject(partition, "snap")).await.map_err(|e| e.to_string())?;
    let mut followed = Followed { endpoints: BTreeSet::new(), access: crate::state::Access::new() };
    let mut from = 1;
    if let Some(message) = snapshot {
        let record = record_of(message);
        let snapshot = crate::shard::snapshot::decode(&record.body, &format!("of partition {partition}"))?;
        from = snapshot.applied_lsn + 1;
        for (endpoint, _) in snapshot.endpoints {
            shared.subscribe(&endpoint);
            followed.endpoints.insert(endpoint.id);
        }
        for tenant in snapshot.tenants {
            followed.access.tenants.insert(tenant.id.clone(), tenant);
        }
        for key in snapshot.keys {
            followed.access.keys.insert(key.key_id.clone(), key);
        }
    }
    let mut feed =
        NatsFeed::open_subject(link, partition, "cfg", from, FEED_CAPACITY).await.map_err(|e| e.to_string())?;
    // Purged past the snapshot read (a newer one was written meanwhile): read again.
    let first = link.stream_state(stream).await.map_err(|error| error.to_string())?.first_sequence;
    if first > from {
        return Err(format!("the stream was purged to {first} past the snapshot read; reading the newer one"));
    }
    let access = partition == crate::admin::access::ACCESS_SHARD as u32;
    let mut read_up = from > target;
    let mut caught_up_now = |followed: &Followed, known: &mut BTreeSet<String>| {
        for gone in known.difference(&followed.endpoints) {
            shared.unsubscribe(gone);
        }
        known.clone_from(&followed.endpoints);
        if access {
            shared.set_access(&followed.access);
        }
        if !*counted {
            *counted = true;
            caught_up.set(caught_up.get() + 1);
        }
    };
    if read_up {
        caught_up_now(&followed, known);
    }
    loop {
        let Some(record) = std::future::poll_fn(|context| feed.poll_record(context)).await else {
            return Ok(());
        };
        let changed = match Record::decode(record.kind, &record.body) {
            Ok(Record::EndpointPut(endpoint)) => {
                shared.subscribe(&endpoint);
                followed.endpoints.insert(endpoint.id);
                false
            }
            Ok(Record::EndpointDeleted(deleted)) => {
                shared.unsubscribe(&deleted.id);
                followed.endpoints.remove(&deleted.id);
                false
            }
            Ok(Record::TenantPut(put)) => {
                followed.access.put_tenant(put);
                true
            }
            Ok(Record::TenantDeleted(deleted)) => {
                followed.access.delete_tenant(&deleted);
                true
            }
            Ok(Record::KeyCreated(created)) => {
                followed.access.create_key(created);
                true
            }
            Ok(Record::KeyRevoked(revoked)) => {
                followed.access.revoke_key(&revoked);
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::error!(partition, sequence = record.sequence, %error, "a configuration record does not decode; skipped");
                false
            }
        };
        if !read_up && record.sequence >= target {
            read_up = true;
            caught_up_now(&followed, known);
        } else if read_up {
            known.clone_from(&followed.endpoints);
            if changed && access {
                shared.set_access(&followed.access);
            }
        }
    }
}
