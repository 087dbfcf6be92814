//! Partition leases in cluster mode (ADR 17), as plain data and one pure decision: given what a
//! node reads of the cluster's key-value bucket (every live node's heartbeat, every partition's
//! latest lease with its revision) and the time, which leases it should take, renew or release.
//! The NATS edge carries a take out as the `create` of the next epoch's key (atomic even on
//! nats-server 2.9.10 with replicas, where an update on a revision is not), so two nodes taking
//! the same epoch cannot both win; renewals and releases are written by the holder alone.
//! Fencing of the owner's records is the log's (each carries its epoch; `apply` ignores those
//! below the latest `Takeover`), not this module's.
//!
//! Placement is rendezvous hashing: a partition's preferred node is the live node with the
//! highest hash of (node, partition). Every node computes the same preference from the same
//! membership, a node joining or leaving moves only the partitions it wins or held, and no
//! coordinator is needed.

/// A partition's lease as the bucket holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The node that holds it.
    pub holder: String,
    /// Raised by one at every change of holder: records written under a lease carry it.
    pub epoch: u64,
    /// When it lapses unless renewed (Unix ms).
    pub expires_at_ms: u64,
}

/// One partition's entry in the bucket: its latest lease (none yet) and that key's revision
/// (what a renewal or release by the holder writes against; a take creates the next epoch's
/// key, which exists for one taker only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The lease, if any.
    pub lease: Option<Lease>,
    /// The key's revision when read.
    pub revision: u64,
}

/// What a node should write for one partition. The edge sends a renewal or a release only
/// for a lease whose take it has had acknowledged (a release decided while the take is in
/// flight would otherwise be undone by the take's late acknowledgement: found by the lease
/// simulation, seed 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take a partition with no live lease at `epoch` (the create of that epoch's key; the
    /// revision read is kept so that tests can model the race).
    Take {
        /// The partition.
        partition: u32,
        /// The revision the write compares with.
        revision: u64,
        /// The new epoch.
        epoch: u64,
    },
    /// Renew a lease this node holds: the update of its epoch's key on the revision read, so a
    /// renewal decided on a stale view (after a release, say) is refused.
    Renew {
        /// The partition.
        partition: u32,
        /// The lease's epoch (its key).
        epoch: u64,
        /// The revision the write compares with.
        revision: u64,
    },
    /// Give a lease up: another live node is preferred for the partition. The node stops
    /// delivering for it first, then writes its key expired, on the revision read.
    Release {
        /// The partition.
        partition: u32,
        /// The lease's epoch (its key).
        epoch: u64,
        /// The revision the write compares with.
        revision: u64,
    },
}

/// What one node sees and knows when it decides.
#[derive(Clone, Debug)]
pub struct View<'a> {
    /// This node's id.
    pub node: &'a str,
    /// Every live node (heartbeat within the lease length), this one included.
    pub live_nodes: &'a [String],
    /// Every partition's entry, by partition number.
    pub entries: &'a [Entry],
    /// Now (Unix ms).
    pub now_ms: u64,
    /// When `entries` were read, by this node's clock: a lease is taken only if it had already
    /// lapsed when it was read. A view read before the holder's last renewal would otherwise
    /// show an older expiry and let a second node take a lease that is live (found by the lease
    /// simulation, seed 174). The read must be the bucket leader's answer, not a replica's.
    pub read_at_ms: u64,
    /// How long a lease lasts; renewed once a fifth of it has passed, so that a live holder's
    /// lease keeps most of its length and rides out a bucket that cannot be written for a while
    /// (a NATS leader election takes 4 to 9 s).
    pub lease_ms: u64,
    /// The most two nodes' clocks may disagree by: a holder stops this long before its lease
    /// lapses by its own clock, a taker waits this long after it lapsed by its own.
    pub skew_ms: u64,
}

/// Whether `node` may act as `lease`'s holder at `now_ms` by its own clock: it holds it and the
/// lease has more than `skew_ms` left, so that no other node, whose clock may be `skew_ms`
/// ahead, can have taken it yet. A renewal counts only once acknowledged while the lease it
/// renews still `holds`: one that lands later may land after another node saw the lease lapse
/// and took the next epoch.
pub fn holds(lease: &Lease, node: &str, now_ms: u64, skew_ms: u64) -> bool {
    lease.holder == node && now_ms.saturating_add(skew_ms) < lease.expires_at_ms
}

/// The rendezvous weight of `node` for `partition`: FNV-1a of the node id, the partition number
/// mixed in, then a final avalanche so neighbouring partitions spread.
pub fn weight(node: &str, partition: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain(partition.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The live node preferred for `partition` (ties, which need equal hashes, go to the smaller
/// id), or `None` without live nodes.
pub fn preferred(live_nodes: &[String], partition: u32) -> Option<&str> {
    live_nodes
        .iter()
        .max_by(|a, b| weight(a, partition).cmp(&weight(b, partition)).then_with(|| b.cmp(a)))
        .map(String::as_str)
}

/// What this node should do, partition by partition:
/// - renew every lease it holds that has less than four fifths of its length left, unless
///   another live node is preferred for it and the lease is its to give up (then release);
/// - take every partition it is preferred for whose lease has lapsed or does not exist;
/// - take a lapsed partition it is not preferred for only when the preferred node is not live
///   (it is, by definition, so this happens only while views differ: left to the next round).
///
/// A node never takes a lease that has not lapsed, whoever holds it: an owner paused past its
/// lease loses it only once it has lapsed, and its writes are then fenced by the log.
pub fn decide(view: &View<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    for (index, entry) in view.entries.iter().enumerate() {
        let Ok(partition) = u32::try_from(index) else { break };
        let preferred = preferred(view.live_nodes, partition);
        let wanted = preferred == Some(view.node);
        match &entry.lease {
            Some(lease) if holds(lease, view.node, view.now_ms, view.skew_ms) => {
                let (epoch, revision) = (lease.epoch, entry.revision);
                if !wanted && preferred.is_some() {
                    actions.push(Action::Release { partition, epoch, revision });
                } else if lease.expires_at_ms.saturating_sub(view.now_ms) < view.lease_ms - view.lease_ms / 5 {
                    actions.push(Action::Renew { partition, epoch, revision });
                }
            }
            // Live for someone: its holder's, or ours too close to its end to renew (it lapses
            // for everyone first, then whoever is preferred takes the next epoch).
            Some(lease) if view.read_at_ms < lease.expires_at_ms.saturating_add(view.skew_ms) => {}
            lapsed if wanted => {
                let epoch = lapsed.as_ref().map_or(1, |lease| lease.epoch + 1);
                actions.push(Action::Take { partition, revision: entry.revision, epoch });
            }
            _ => {}
        }
    }
    actions
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const LEASE_MS: u64 = 5_000;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    /// Runs rounds of every live node deciding on the bucket and the bucket applying each
    /// write as a compare-and-set (a write on a stale revision fails), until nothing changes.
    fn settle(entries: &mut [Entry], live: &[String], now_ms: u64) {
        for _ in 0..10 {
            let mut changed = false;
            for node in live {
                let view = View {
                    node,
                    live_nodes: live,
                    entries,
                    now_ms,
                    read_at_ms: now_ms,
                    lease_ms: LEASE_MS,
                    skew_ms: 0,
                };
                for action in decide(&view) {
                    changed |= apply(entries, node, &action, now_ms);
                }
            }
            if !changed {
                return;
            }
        }
        panic!("leases never settled");
    }

    fn apply(entries: &mut [Entry], node: &str, action: &Action, now_ms: u64) -> bool {
        let (partition, revision) = match action {
            Action::Take { partition, revision, .. }
            | Action::Renew { partition, revision, .. }
            | Action::Release { partition, revision, .. } => (*partition as usize, *revision),
        };
        let entry = &mut entries[partition];
        if entry.revision != revision {
            return false;
        }
        entry.revision += 1;
        entry.lease = match action {
            Action::Take { epoch, .. } => {
                Some(Lease { holder: node.to_string(), epoch: *epoch, expires_at_ms: now_ms + LEASE_MS })
            }
            Action::Renew { .. } => {
                entry.lease.clone().map(|lease| Lease { expires_at_ms: now_ms + LEASE_MS, ..lease })
            }
            Action::Release { .. } => None,
        };
        true
    }

    fn holders(entries: &[Entry]) -> Vec<Option<String>> {
        entries.iter().map(|entry| entry.lease.as_ref().map(|lease| lease.holder.clone())).collect()
    }

    // Three nodes settle on every partition owned once, each by its preferred node, close to a
    // third each.
    #[test]
    fn live_nodes_share_the_partitions() {
        let live = nodes(&["a", "b", "c"]);
        let mut entries = vec![Entry { lease: None, revision: 0 }; 64];
        settle(&mut entries, &live, 1_000);
        let owners = holders(&entries);
        for (partition, owner) in owners.iter().enumerate() {
            assert_eq!(owner.as_deref(), preferred(&live, partition as u32), "partition {partition}");
        }
        for node in &live {
            let count = owners.iter().filter(|owner| owner.as_ref() == Some(node)).count();
            assert!((10..=33).contains(&count), "{node} holds {count} of 64");
        }
    }

    // A dead node's partitions move only once its leases lapse, each to its new preferred node,
    // with a higher epoch; nothing else moves.
    #[test]
    fn a_dead_nodes_partitions_move_after_its_leases_lapse() {
        let all = nodes(&["a", "b", "c"]);
        let mut entries = vec![Entry { lease: None, revision: 0 }; 64];
        settle(&mut entries, &all, 1_000);
        let before = holders(&entries);
        let survivors = nodes(&["a", "c"]);
        // Within the lease, nobody takes b's partitions.
        settle(&mut entries, &survivors, 1_000 + LEASE_MS - 1);
        let after_b_died: Vec<_> = holders(&entries);
        assert_eq!(
            after_b_died.iter().filter(|owner| owner.as_deref() == Some("b")).count(),
            before.iter().filter(|owner| owner.as_deref() == Some("b")).count()
        );
        // Once they lapse they move; a's and c's, renewed along the way, stay where they were.
        settle(&mut entries, &survivors, 1_000 + LEASE_MS);
        settle(&mut entries, &survivors, 1_000 + 2 * LEASE_MS - 1_000);
        for (partition, (was, entry)) in before.iter().zip(&entries).enumerate() {
            let lease = entry.lease.as_ref().unwrap();
            assert_ne!(lease.holder, "b", "partition {partition}");
            if was.as_deref() == Some("b") {
                assert_eq!(lease.epoch, 2, "partition {partition} moved once");
            } else {
                assert_eq!(Some(lease.holder.as_str()), was.as_deref(), "partition {partition} stayed");
                assert_eq!(lease.epoch, 1);
            }
        }
    }

    // A node that joins is handed its preferred partitions: their holders release them, it
    // takes them; the others stay.
    #[test]
    fn a_joining_node_gets_its_share() {
        let two = nodes(&["a", "b"]);
        let mut entries = vec![Entry { lease: None, revision: 0 }; 64];
        settle(&mut entries, &two, 1_000);
        let three = nodes(&["a", "b", "c"]);
        settle(&mut entries, &three, 2_000);
        let owners = holders(&entries);
        let gained = owners.iter().filter(|owner| owner.as_deref() == Some("c")).count();
        assert!(gained >= 10, "c holds {gained}");
        for (partition, owner) in owners.iter().enumerate() {
            assert_eq!(owner.as_deref(), preferred(&three, partition as u32));
        }
    }

    // A lease that has not lapsed is never taken, whoever prefers the partition: the paused
    // owner's case.
    #[test]
    fn a_live_lease_is_never_taken() {
        let entries = vec![Entry {
            lease: Some(Lease { holder: "paused".into(), epoch: 3, expires_at_ms: 10_000 }),
            revision: 7,
        }];
        let live = nodes(&["a"]);
        let view = View {
            node: "a",
            live_nodes: &live,
            entries: &entries,
            now_ms: 9_999,
            read_at_ms: 9_999,
            lease_ms: LEASE_MS,
            skew_ms: 0,
        };
        assert!(decide(&view).is_empty());
        let view = View { now_ms: 10_000, read_at_ms: 10_000, ..view };
        assert_eq!(decide(&view), vec![Action::Take { partition: 0, revision: 7, epoch: 4 }]);
    }

    proptest::proptest! {
        // Whatever the membership, the clock and which nodes act on which views: a lease that
        // has not lapsed is changed only by its holder, and epochs only grow. Then, with every
        // node live and acting, each partition ends with its preferred node.
        #[test]
        fn only_lapsed_leases_change_hands(
            steps in proptest::collection::vec((0u64..4_000, 0u8..8, 0u8..8), 1..60),
        ) {
            let all = nodes(&["a", "b", "c"]);
            let mut entries = vec![Entry { lease: None, revision: 0 }; 16];
            let mut now_ms = 1_000;
            for (advance, alive, acting) in steps {
                now_ms += advance;
                let live: Vec<String> =
                    all.iter().enumerate().filter(|(n, _)| alive & (1 << n) != 0).map(|(_, node)| node.clone()).collect();
                // A node acts on a view it read before others wrote (a stale revision fails).
                let snapshot = entries.clone();
                for (n, node) in all.iter().enumerate() {
                    if acting & (1 << n) == 0 {
                        continue;
                    }
                    let mut view_nodes = live.clone();
                    if !view_nodes.contains(node) {
                        view_nodes.push(node.clone());
                    }
                    let view = View { node, live_nodes: &view_nodes, entries: &snapshot, now_ms, read_at_ms: now_ms, lease_ms: LEASE_MS, skew_ms: 0 };
                    for action in decide(&view) {
                        let partition = match &action {
                            Action::Take { partition, .. } | Action::Renew { partition, .. } | Action::Release { partition, .. } => *partition as usize,
                        };
                        let before = entries[partition].lease.clone();
                        if apply(&mut entries, node, &action, now_ms) {
                            if let Some(before) = before {
                                proptest::prop_assert!(
                                    before.holder == *node || before.expires_at_ms <= now_ms,
                                    "{node} changed {}'s live lease of partition {partition}", before.holder
                                );
                                if let Some(after) = &entries[partition].lease {
                                    proptest::prop_assert!(after.epoch >= before.epoch);
                                }
                            }
                        }
                    }
                }
            }
            settle(&mut entries, &all, now_ms + 2 * LEASE_MS);
            for (partition, owner) in holders(&entries).iter().enumerate() {
                proptest::prop_assert_eq!(owner.as_deref(), preferred(&all, partition as u32));
            }
        }
    }
}
