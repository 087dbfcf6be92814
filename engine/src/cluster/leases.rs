//! The lease driver: [`crate::lease::decide`] carried out on the cluster's bucket (ADR 17).
//!
//! Each round a node writes its heartbeat (`node.<id>`), reads every lease and heartbeat from
//! the bucket's leader, decides, and writes: a take is the `create` of the next epoch's key
//! `lease.p.<partition>.e.<epoch>` (one creator wins), a renewal or a release the update of its
//! own key on the revision read. What the node may believe follows the rules the lease
//! simulation found (`engine/tests/lease_simulation.rs`):
//! - a lease is held only once its take was acknowledged, or once the bucket shows, live, the
//!   very value a take whose outcome was unknown (a timeout) wrote: never a lease renewed since;
//! - a renewal counts only if acknowledged while the lease it renews still holds; one
//!   acknowledged later is written expired in the next round (it may have extended a lease this
//!   node no longer acts on, which would keep the partition ownerless until it lapsed);
//! - the node stops acting as owner the moment a lease stops holding by its clock (the skew
//!   margin before the lease lapses), whether or not anything was read;
//! - a release is written only in the round after the partition was reported lost, so the
//!   node has stopped delivering for it before anyone can take it.
//!
//! The driver reports what changed ([`Change`]); the runtime opens a partition (replay, then the
//! `Takeover` at the epoch) when it is gained and stops it when it is lost. Fencing by epochs in
//! the log makes a late write of a stopped owner harmless; the lease only keeps owners from
//! overlapping in the common case.

use std::collections::BTreeMap;

use serde_json::json;

use crate::cluster::bucket::{Bucket, BucketError, KeyValue};
use crate::model::lease::{decide, holds, Action, Entry, Lease, View};

/// What the driver needs to know.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// This node's id (`KAPSEL_NODE_ID`).
    pub node: String,
    /// Where this node serves HTTP, shown to the others (`GET /admin/cluster`).
    pub address: String,
    /// Partitions (`KAPSEL_PARTITIONS`).
    pub partitions: u32,
    /// How long a lease lasts.
    pub lease_ms: u64,
    /// The most two nodes' clocks may disagree by.
    pub skew_ms: u64,
}

/// A change of this node's ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// This node holds `partition` at `epoch`: open it and write the `Takeover`.
    Gained {
        /// The partition.
        partition: u32,
        /// The lease's epoch.
        epoch: u64,
    },
    /// This node no longer holds `partition`: stop delivering for it at once.
    Lost {
        /// The partition.
        partition: u32,
        /// The epoch it held.
        epoch: u64,
    },
}

/// A lease this node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    epoch: u64,
    revision: u64,
    expires_at_ms: u64,
}

/// A node as its heartbeat shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSeen {
    /// Its id.
    pub node: String,
    /// Where it serves HTTP.
    pub address: String,
    /// Its last heartbeat (Unix ms, by its clock).
    pub at_ms: u64,
}

/// What the last round read: for `GET /admin/cluster`.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// When it was read (Unix ms).
    pub read_at_ms: u64,
    /// Every node with a heartbeat in the bucket, live or not.
    pub nodes: Vec<NodeSeen>,
    /// Each partition's latest lease.
    pub leases: Vec<Option<Lease>>,
    /// The last round's failure, if it failed.
    pub error: Option<String>,
}

/// One node's lease driver.
pub struct LeaseDriver<B: Bucket> {
    bucket: B,
    config: LeaseConfig,
    held: BTreeMap<u32, Held>,
    /// Reported lost, to be written released: each with whether it still holds for this node
    /// until then (a lease given up to a preferred node does, one renewed too late does not).
    releasing: Vec<(u32, Held, bool)>,
    /// Whether a partition given up may be written released now (its attempts in flight are
    /// recorded); unset: at once.
    release_gate: Option<Box<dyn Fn(u32, u64) -> bool>>,
    /// Takes whose outcome is unknown (no acknowledgement): the epoch and the expiry written.
    unknown_takes: BTreeMap<u32, (u64, u64)>,
    seen: Seen,
}

/// The key of `partition`'s lease at `epoch` (zero-padded, so keys sort by epoch).
pub fn lease_key(partition: u32, epoch: u64) -> String {
    format!("lease.p.{partition}.e.{epoch:020}")
}

/// The key of `node`'s heartbeat.
pub fn node_key(node: &str) -> String {
    format!("node.{node}")
}

impl<B: Bucket> LeaseDriver<B> {
    /// A driver holding nothing yet.
    pub fn new(bucket: B, config: LeaseConfig) -> Self {
        Self {
            bucket,
            config,
            held: BTreeMap::new(),
            releasing: Vec::new(),
            release_gate: None,
            unknown_takes: BTreeMap::new(),
            seen: Seen::default(),
        }
    }

    /// A lease given up to a preferred node is written released only once `gate(partition,
    /// epoch)` says the partition's attempts in flight are recorded (or the lease stops holding
    /// anyway): the next owner then has nothing to make again.
    pub fn with_release_gate(mut self, gate: Box<dyn Fn(u32, u64) -> bool>) -> Self {
        self.release_gate = Some(gate);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// What the last round read.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Until when this node may still write as `partition`'s owner by its clock: its lease's
    /// expiry less the skew margin (`None`: it holds no lease of it).
    pub fn writable_until(&self, partition: u32) -> Option<u64> {
        let giving_up = self.releasing.iter().find(|(given, _, holds)| *given == partition && *holds);
        let held = self.held.get(&partition).or(giving_up.map(|(_, held, _)| held));
        held.map(|held| held.expires_at_ms.saturating_sub(self.config.skew_ms))
    }

    /// The partitions this node holds now, with their epochs.
    pub fn held(&self) -> Vec<(u32, u64)> {
        self.held.iter().map(|(partition, held)| (*partition, held.epoch)).collect()
    }

    /// Gives every lease up at once (shutdown): reported lost, then written expired, so the
    /// other nodes take the partitions without waiting for them to lapse.
    pub async fn release_all(&mut self, now_ms: u64) -> Vec<Change> {
        let changes = self
            .held
            .iter()
            .map(|(partition, held)| Change::Lost { partition: *partition, epoch: held.epoch })
            .collect();
        self.releasing
            .extend(std::mem::take(&mut self.held).into_iter().map(|(partition, held)| (partition, held, true)));
        self.write_releases(now_ms, true).await;
        // Without its heartbeat the node is not live for the others at once: they are then
        // preferred for its partitions and take them as soon as the releases are read.
        if let Err(error) = self.bucket.delete(&node_key(&self.config.node)).await {
            tracing::warn!(%error, "could not remove this node's heartbeat; the others wait for it to age");
        }
        changes
    }

    /// One round at `clock()`: expire, release, heartbeat, read, decide, write. Returns what
    /// changed for this node; a bucket failure is kept in [`LeaseDriver::seen`] and the leases
    /// simply lapse if it lasts.
    pub async fn round(&mut self, clock: &dyn Fn() -> u64) -> Vec<Change> {
        let mut changes = self.expire(clock());
        self.write_releases(clock(), false).await;
        let outcome = self.read_and_act(clock, &mut changes).await;
        self.seen.error = outcome.err().map(|error| error.to_string());
        changes.extend(self.expire(clock()));
        changes
    }

    /// Drops every held lease that no longer holds by `now_ms`.
    fn expire(&mut self, now_ms: u64) -> Vec<Change> {
        let (node, skew_ms) = (self.config.node.as_str(), self.config.skew_ms);
        let mut lost = Vec::new();
        self.held.retain(|partition, held| {
            let lease = Lease { holder: node.to_string(), epoch: held.epoch, expires_at_ms: held.expires_at_ms };
            let keep = holds(&lease, node, now_ms, skew_ms);
            if !keep {
                lost.push(Change::Lost { partition: *partition, epoch: held.epoch });
            }
            keep
        });
        lost
    }

    /// Writes expired the leases given up whose gate is open (all of them when `force`); a
    /// lease that stopped holding meanwhile is written too (it lapses anyway).
    async fn write_releases(&mut self, now_ms: u64, force: bool) {
        for (partition, held, holds_until_then) in std::mem::take(&mut self.releasing) {
            let lease =
                Lease { holder: self.config.node.clone(), epoch: held.epoch, expires_at_ms: held.expires_at_ms };
            let still_holds = holds_until_then && holds(&lease, &self.config.node, now_ms, self.config.skew_ms);
            let open = force || self.release_gate.as_ref().is_none_or(|gate| gate(partition, held.epoch));
            if still_holds && !open {
                self.releasing.push((partition, held, holds_until_then));
                continue;
            }
            let value = self.lease_value(held.epoch, now_ms);
            // Refused or lost: the lease lapses on its own.
            if let Err(error) = self.bucket.update(&lease_key(partition, held.epoch), value, held.revision).await {
                tracing::warn!(partition, epoch = held.epoch, %error, "could not release a lease; it lapses on its own");
            }
        }
    }

    fn lease_value(&self, epoch: u64, expires_at_ms: u64) -> Vec<u8> {
        json!({"holder": self.config.node, "epoch": epoch, "expires_at_ms": expires_at_ms}).to_string().into_bytes()
    }

    async fn read_and_act(&mut self, clock: &dyn Fn() -> u64, changes: &mut Vec<Change>) -> Result<(), BucketError> {
        let heartbeat = json!({"node": self.config.node, "address": self.config.address, "at_ms": clock()});
        self.bucket.put(&node_key(&self.config.node), heartbeat.to_string().into_bytes()).await?;
        let read_at_ms = clock();
        let leases = self.bucket.entries("lease.p.").await?;
        let nodes = self.bucket.entries("node.").await?;
        let entries = latest_leases(&leases, self.config.partitions);
        let nodes: Vec<NodeSeen> = nodes.iter().filter_map(node_seen).collect();
        let mut live: Vec<String> = nodes
            .iter()
            .filter(|seen| seen.at_ms.saturating_add(self.config.lease_ms) > read_at_ms)
            .map(|seen| seen.node.clone())
            .collect();
        if !live.contains(&self.config.node) {
            live.push(self.config.node.clone());
        }
        self.seen =
            Seen { read_at_ms, nodes, leases: entries.iter().map(|entry| entry.lease.clone()).collect(), error: None };
        self.adopt(&entries, clock(), changes);
        let view = View {
            node: &self.config.node,
            live_nodes: &live,
            entries: &entries,
            now_ms: clock(),
            read_at_ms,
            lease_ms: self.config.lease_ms,
            skew_ms: self.config.skew_ms,
        };
        for action in decide(&view) {
            self.act(action, clock, changes).await?;
        }
        self.forget_old_epochs(&leases).await;
        Ok(())
    }

    /// Takes as held a live lease whose take's outcome was unknown, when the bucket shows it as
    /// that take wrote it (same epoch, same expiry: not renewed since) and as the latest epoch.
    /// Reading it means the take is applied, so no late acknowledgement can undo anything
    /// decided from here on; and since it was never renewed, its expiry is the one every taker
    /// judges by.
    fn adopt(&mut self, entries: &[Entry], now_ms: u64, changes: &mut Vec<Change>) {
        let unknown = std::mem::take(&mut self.unknown_takes);
        for (partition, (epoch, expires_at_ms)) in unknown {
            let Some(entry) = entries.get(partition as usize) else { continue };
            let Some(lease) = &entry.lease else {
                // Not applied yet, or never: ask again next round while it could still hold.
                if now_ms < expires_at_ms {
                    self.unknown_takes.insert(partition, (epoch, expires_at_ms));
                }
                continue;
            };
            let ours = lease.epoch == epoch && lease.expires_at_ms == expires_at_ms && lease.holder == self.config.node;
            if !ours
                || self.held.contains_key(&partition)
                || !holds(lease, &self.config.node, now_ms, self.config.skew_ms)
            {
                if lease.epoch < epoch && now_ms < expires_at_ms {
                    self.unknown_takes.insert(partition, (epoch, expires_at_ms));
                }
                continue;
            }
            let held = Held { epoch: lease.epoch, revision: entry.revision, expires_at_ms: lease.expires_at_ms };
            self.held.insert(partition, held);
            changes.push(Change::Gained { partition, epoch: lease.epoch });
        }
    }

    async fn act(
        &mut self,
        action: Action,
        clock: &dyn Fn() -> u64,
        changes: &mut Vec<Change>,
    ) -> Result<(), BucketError> {
        match action {
            Action::Take { partition, epoch, .. } => {
                let expires_at_ms = clock().saturating_add(self.config.lease_ms);
                let value = self.lease_value(epoch, expires_at_ms);
                match self.bucket.create(&lease_key(partition, epoch), value).await {
                    Ok(revision) => {
                        let held = Held { epoch, revision, expires_at_ms };
                        let lease = Lease { holder: self.config.node.clone(), epoch, expires_at_ms };
                        if holds(&lease, &self.config.node, clock(), self.config.skew_ms) {
                            self.held.insert(partition, held);
                            changes.push(Change::Gained { partition, epoch });
                        } else {
                            // Acknowledged too late to act on: expired next round, so the
                            // partition need not wait for it to lapse.
                            self.releasing.push((partition, held, false));
                        }
                    }
                    // Another node created this epoch first.
                    Err(BucketError::Exists) => {}
                    Err(error) => {
                        self.unknown_takes.insert(partition, (epoch, expires_at_ms));
                        return Err(error);
                    }
                }
            }
            Action::Renew { partition, epoch, revision } => {
                let Some(held) = self.held.get(&partition).copied().filter(|held| held.epoch == epoch) else {
                    return Ok(());
                };
                let expires_at_ms = clock().saturating_add(self.config.lease_ms);
                let value = self.lease_value(epoch, expires_at_ms);
                match self.bucket.update(&lease_key(partition, epoch), value, revision).await {
                    Ok(revision) => {
                        let old = Lease { holder: self.config.node.clone(), epoch, expires_at_ms: held.expires_at_ms };
                        // Acknowledged after the old lease stopped holding: it may have landed
                        // after a taker saw the lease lapse; the expiry deadline stands, and the
                        // lease it extended is written expired next round.
                        let renewed = Held { epoch, revision, expires_at_ms };
                        if holds(&old, &self.config.node, clock(), self.config.skew_ms) {
                            self.held.insert(partition, renewed);
                        } else {
                            self.releasing.push((partition, renewed, false));
                        }
                    }
                    Err(BucketError::WrongRevision(_) | BucketError::Exists) => {}
                    Err(error) => return Err(error),
                }
            }
            Action::Release { partition, epoch, .. } => {
                if let Some(held) = self.held.get(&partition).copied().filter(|held| held.epoch == epoch) {
                    self.held.remove(&partition);
                    changes.push(Change::Lost { partition, epoch });
                    self.releasing.push((partition, held, true));
                }
            }
        }
        Ok(())
    }

    /// Removes the keys of epochs two or more below a partition's latest (the bucket keeps one
    /// key per epoch; the latest and the one before are enough to decide and to show).
    async fn forget_old_epochs(&self, leases: &[KeyValue]) {
        let mut latest: BTreeMap<u32, u64> = BTreeMap::new();
        for (partition, epoch) in leases.iter().filter_map(|entry| parse_lease_key(&entry.key)) {
            let slot = latest.entry(partition).or_insert(epoch);
            *slot = (*slot).max(epoch);
        }
        for (partition, epoch) in leases.iter().filter_map(|entry| parse_lease_key(&entry.key)) {
            // Only the holder of the latest epoch tidies, so one node does it.
            let mine = self.held.get(&partition).is_some_and(|held| Some(&held.epoch) == latest.get(&partition));
            if mine && latest.get(&partition).is_some_and(|last| epoch + 2 <= *last) {
                let _ = self.bucket.delete(&lease_key(partition, epoch)).await;
            }
        }
    }
}

/// `(partition, epoch)` of a lease key.
fn parse_lease_key(key: &str) -> Option<(u32, u64)> {
    let rest = key.strip_prefix("lease.p.")?;
    let (partition, epoch) = rest.split_once(".e.")?;
    Some((partition.parse().ok()?, epoch.parse().ok()?))
}

/// Each partition's latest lease from the lease keys read.
fn latest_leases(leases: &[KeyValue], partitions: u32) -> Vec<Entry> {
    let mut entries = vec![Entry { lease: None, revision: 0 }; partitions as usize];
    for entry in leases {
        let Some((partition, epoch)) = parse_lease_key(&entry.key) else {
            continue;
        };
        let Some(slot) = entries.get_mut(partition as usize) else {
            continue;
        };
        if slot.lease.as_ref().is_some_and(|lease| lease.epoch >= epoch) {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&entry.value) else {
            continue;
        };
        let holder = value["holder"].as_str().unwrap_or_default().to_string();
        let expires_at_ms = value["expires_at_ms"].as_u64().unwrap_or(0);
        *slot = Entry { lease: Some(Lease { holder, epoch, expires_at_ms }), revision: entry.revision };
    }
    entries
}

fn node_seen(entry: &KeyValue) -> Option<NodeSeen> {
    let value: serde_json::Value = serde_json::from_slice(&entry.value).ok()?;
    Some(NodeSeen {
        node: value["node"].as_str()?.to_string(),
        address: value["address"].as_str().unwrap_or_default().to_string(),
        at_ms: value["at_ms"].as_u64()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeSet;

    use super::*;
    use crate::cluster::bucket::{Answer, MemoryBucket};
    use crate::model::lease::preferred;

    const LEASE_MS: u64 = 10_000;
    const PARTITIONS: u32 = 16;

    fn driver(bucket: &MemoryBucket, node: &str) -> LeaseDriver<MemoryBucket> {
        let config = LeaseConfig {
            node: node.into(),
            address: format!("{node}:8080"),
            partitions: PARTITIONS,
            lease_ms: LEASE_MS,
            skew_ms: 300,
        };
        LeaseDriver::new(bucket.clone(), config)
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("the memory bucket answers at once"),
        }
    }

    /// Ownership as the nodes believe it, tracked from their changes; a node that stopped
    /// running keeps its stale belief until it runs again.
    #[derive(Default)]
    struct Owners(BTreeMap<u32, (String, u64)>, BTreeSet<String>);

    impl Owners {
        fn apply(&mut self, node: &str, changes: &[Change]) {
            for change in changes {
                match *change {
                    Change::Gained { partition, epoch } => {
                        let before = self.0.insert(partition, (node.to_string(), epoch));
                        assert!(
                            before.as_ref().is_none_or(|(_, old)| *old < epoch),
                            "{node} gained {partition} at {epoch} over {before:?}"
                        );
                        if let Some((holder, _)) = &before {
                            assert!(
                                holder == node || self.1.contains(holder),
                                "{node} gained {partition} while {holder}, running, still held it"
                            );
                        }
                    }
                    Change::Lost { partition, epoch } => {
                        if self.0.get(&partition) == Some(&(node.to_string(), epoch)) {
                            self.0.remove(&partition);
                        }
                    }
                }
            }
        }
    }

    /// Rounds of `nodes` every `step_ms` from `now` for `duration_ms`, keeping `owners`.
    fn rounds(drivers: &mut [&mut LeaseDriver<MemoryBucket>], owners: &mut Owners, now: &Cell<u64>, duration_ms: u64) {
        let end = now.get() + duration_ms;
        while now.get() < end {
            for driver in drivers.iter_mut() {
                let changes = run(driver.round(&|| now.get()));
                let node = driver.config().node.clone();
                owners.apply(&node, &changes);
            }
            now.set(now.get() + 1_000);
        }
    }

    // Three nodes settle on every partition held once, by its preferred node; a node that dies
    // loses nothing to the others until its leases lapse, then each of its partitions moves at
    // the next epoch; it comes back, hears at once that it holds nothing, and its preferred
    // partitions come back to it through releases.
    #[test]
    fn leases_settle_move_after_a_death_and_come_back() {
        let bucket = MemoryBucket::new();
        let (mut a, mut b, mut c) = (driver(&bucket, "a"), driver(&bucket, "b"), driver(&bucket, "c"));
        let now = Cell::new(1_000_000);
        let mut owners = Owners::default();
        rounds(&mut [&mut a, &mut b, &mut c], &mut owners, &now, 20_000);
        let live: Vec<String> = ["a", "b", "c"].iter().map(|node| node.to_string()).collect();
        for partition in 0..PARTITIONS {
            assert_eq!(owners.0.get(&partition).map(|(node, _)| node.as_str()), preferred(&live, partition));
        }
        let all: BTreeSet<u32> =
            a.held().iter().chain(b.held().iter()).chain(c.held().iter()).map(|(p, _)| *p).collect();
        assert_eq!(all.len(), PARTITIONS as usize);
        let of_b: Vec<(u32, u64)> = b.held();
        assert!(!of_b.is_empty());

        // b stops (dead or paused). Within its lease nobody takes its partitions.
        owners.1.insert("b".into());
        rounds(&mut [&mut a, &mut c], &mut owners, &now, LEASE_MS - 3_000);
        for (partition, epoch) in &of_b {
            assert_eq!(owners.0.get(partition), Some(&("b".to_string(), *epoch)));
        }
        rounds(&mut [&mut a, &mut c], &mut owners, &now, 5_000);
        for (partition, epoch) in &of_b {
            let (holder, new_epoch) = owners.0.get(partition).cloned().unwrap();
            assert!(holder != "b" && new_epoch == epoch + 1, "partition {partition}: {holder} at {new_epoch}");
        }
        // b wakes: its first round reports every lease lost before anything else.
        owners.1.clear();
        let changes = run(b.round(&|| now.get()));
        let lost: Vec<u32> = changes
            .iter()
            .take_while(|change| matches!(change, Change::Lost { .. }))
            .map(|change| match change {
                Change::Lost { partition, .. } => *partition,
                Change::Gained { partition, .. } => *partition,
            })
            .collect();
        assert_eq!(lost, of_b.iter().map(|(partition, _)| *partition).collect::<Vec<_>>());
        owners.apply("b", &changes);
        rounds(&mut [&mut a, &mut b, &mut c], &mut owners, &now, 30_000);
        for partition in 0..PARTITIONS {
            assert_eq!(owners.0.get(&partition).map(|(node, _)| node.as_str()), preferred(&live, partition));
        }
        for (partition, epoch) in &of_b {
            assert_eq!(owners.0.get(partition), Some(&("b".to_string(), epoch + 2)));
        }
    }

    // A holder that cannot reach the bucket loses its leases by its own deadline, before any
    // other node may take them.
    #[test]
    fn an_unreachable_bucket_loses_the_leases_by_the_deadline() {
        let bucket = MemoryBucket::new();
        let mut a = driver(&bucket, "a");
        let now = Cell::new(1_000_000);
        let mut owners = Owners::default();
        rounds(&mut [&mut a], &mut owners, &now, 3_000);
        assert_eq!(a.held().len(), PARTITIONS as usize);
        let taken_at = now.get() - 3_000;
        bucket.refuse(true);
        let mut lost_at = None;
        while lost_at.is_none() {
            let changes = run(a.round(&|| now.get()));
            assert!(a.seen().error.is_some());
            if changes.iter().any(|change| matches!(change, Change::Lost { .. })) {
                lost_at = Some(now.get());
            }
            now.set(now.get() + 500);
        }
        assert!(a.held().is_empty());
        // Its last renewal was before the bucket went away; it stopped by then + lease - skew.
        let lost_at = lost_at.unwrap();
        assert!(lost_at < taken_at + 3_000 + LEASE_MS, "lost at {lost_at}");
    }

    /// A bucket between a node and the memory bucket: each answer can come `delay` late (the
    /// clock moves on while the write is in flight) or be lost after the write was made.
    struct Slow {
        bucket: MemoryBucket,
        now: std::rc::Rc<Cell<u64>>,
        delay_ms: Cell<u64>,
        lose_answers: Cell<bool>,
    }

    impl Slow {
        fn answer<T: 'static>(&self, answer: Answer<T>) -> Answer<T> {
            let outcome = run(answer);
            self.now.set(self.now.get() + self.delay_ms.get());
            let outcome = match outcome {
                Ok(_) if self.lose_answers.get() => Err(BucketError::Unavailable("no answer".into())),
                outcome => outcome,
            };
            Box::pin(std::future::ready(outcome))
        }
    }

    impl Bucket for std::rc::Rc<Slow> {
        fn create(&self, key: &str, value: Vec<u8>) -> Answer<u64> {
            self.answer(self.bucket.create(key, value))
        }
        fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> Answer<u64> {
            self.answer(self.bucket.update(key, value, revision))
        }
        fn put(&self, key: &str, value: Vec<u8>) -> Answer<u64> {
            self.bucket.put(key, value)
        }
        fn entries(&self, prefix: &str) -> Answer<Vec<KeyValue>> {
            self.bucket.entries(prefix)
        }
        fn delete(&self, key: &str) -> Answer<()> {
            self.bucket.delete(key)
        }
    }

    fn slow_driver(
        bucket: &MemoryBucket,
        node: &str,
        now: &std::rc::Rc<Cell<u64>>,
    ) -> (LeaseDriver<std::rc::Rc<Slow>>, std::rc::Rc<Slow>) {
        let slow = std::rc::Rc::new(Slow {
            bucket: bucket.clone(),
            now: std::rc::Rc::clone(now),
            delay_ms: Cell::new(0),
            lose_answers: Cell::new(false),
        });
        let config = LeaseConfig { partitions: 1, ..driver(bucket, node).config };
        (LeaseDriver::new(std::rc::Rc::clone(&slow), config), slow)
    }

    // A renewal acknowledged only after the lease it renewed stopped holding does not count:
    // the holder stops by its deadline, writes the lease expired, and the partition is taken
    // again at the next epoch without waiting for the late renewal's expiry.
    #[test]
    fn a_late_renewal_is_given_up_not_kept() {
        let bucket = MemoryBucket::new();
        let now = std::rc::Rc::new(Cell::new(1_000_000));
        let (mut a, slow) = slow_driver(&bucket, "a", &now);
        let clock = || now.get();
        let taken_at = now.get();
        assert_eq!(run(a.round(&clock)), vec![Change::Gained { partition: 0, epoch: 1 }]);
        // Renewed 8 s in, acknowledged 3 s later: after the lease stopped holding, though the
        // renewal made it good until 18 s in.
        now.set(taken_at + 8_000);
        slow.delay_ms.set(3_000);
        let changes = run(a.round(&clock));
        assert_eq!(changes, vec![Change::Lost { partition: 0, epoch: 1 }]);
        slow.delay_ms.set(0);
        // The next round writes the renewed lease expired; a round after the skew takes it.
        let mut changes = Vec::new();
        for _ in 0..3 {
            changes.extend(run(a.round(&clock)));
            now.set(now.get() + 400);
        }
        assert_eq!(changes, vec![Change::Gained { partition: 0, epoch: 2 }], "taken again without waiting");
        assert!(now.get() < taken_at + 13_000, "taken again before the late renewal lapsed");
    }

    // A take whose answer was lost is adopted when the bucket shows the value it wrote; a lease
    // renewed since (by nobody else, here) would not be.
    #[test]
    fn a_take_with_a_lost_answer_is_adopted_as_written() {
        let bucket = MemoryBucket::new();
        let now = std::rc::Rc::new(Cell::new(1_000_000));
        let (mut a, slow) = slow_driver(&bucket, "a", &now);
        let clock = || now.get();
        slow.lose_answers.set(true);
        assert_eq!(run(a.round(&clock)), vec![]);
        assert!(a.seen().error.is_some());
        slow.lose_answers.set(false);
        now.set(now.get() + 1_000);
        assert_eq!(run(a.round(&clock)), vec![Change::Gained { partition: 0, epoch: 1 }]);
        assert_eq!(a.held(), vec![(0, 1)]);
    }

    // Keys of old epochs are removed by the latest holder, so the bucket stays bounded.
    #[test]
    fn old_epochs_are_forgotten() {
        let bucket = MemoryBucket::new();
        let now = Cell::new(1_000_000);
        let mut owners = Owners::default();
        let mut a = driver(&bucket, "a");
        for _ in 0..4 {
            rounds(&mut [&mut a], &mut owners, &now, 2_000);
            // a pauses past its lease; it comes back and takes again at the next epoch.
            now.set(now.get() + 2 * LEASE_MS);
        }
        rounds(&mut [&mut a], &mut owners, &now, 2_000);
        let keys = run(bucket.entries("lease.p.0.")).unwrap();
        assert!(keys.len() <= 2, "{:?}", keys.iter().map(|key| &key.key).collect::<Vec<_>>());
        assert_eq!(a.held().iter().find(|(partition, _)| *partition == 0).map(|(_, epoch)| *epoch), Some(5));
    }
}
