//! Deterministic simulation of cluster mode's lease and fencing protocol (ADR 17) before it runs
//! on NATS: three nodes with skewed clocks take, renew and release partition leases through
//! `model::lease::decide` on a bucket where creating a key is atomic and nothing else is raced
//! (what nats-server 2.9.10 guarantees). Bucket writes land and are acknowledged after random
//! delays (on every other seed at once, so a holder and a taker race within one round); a node
//! believes in a lease only from acknowledgements, a renewal only if acknowledged while the
//! lease it renews still holds, and acts as owner only while `holds` says so. Owner records
//! land in the partition's log after a random delay (also while their writer is paused or dead,
//! now and then after the lease moved). Nodes are paused, killed and brought back, and read the
//! bucket and its heartbeats late.
//!
//! Checked after every step: no two running nodes act as a partition's owner at the same real
//! instant; replaying each partition's log with the fencing rule (an owner record counts only
//! under the latest `Takeover` before it, from that epoch's creator) admits records of one
//! owner at a time in epoch order and never a record written under an epoch that a later
//! `Takeover` superseded. After the faults stop, every partition settles on its preferred node
//! with its `Takeover` in the log. `KAPSEL_SIM_SEEDS`, `KAPSEL_SIM_SEED`, `KAPSEL_SIM_STEPS` as
//! for the other simulations. Each rule was removed once on purpose and a seed failed: the
//! clock-skew margins (seed 1521), a take needing the lease read already lapsed (seeds 174 and
//! 1386), the acknowledgement rule for renewals (seed 310), renewing or releasing only an
//! acknowledged take (seed 7).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use kapsel_engine::lease::{decide, holds, preferred, Action, Entry, Lease, View};
use support::{env_number, Random};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const PARTITIONS: u32 = 8;
const LEASE_MS: u64 = 10_000;
/// Clocks are at most this far from real time, so two of them at most twice as far apart.
const OFFSET_MAX_MS: u64 = 150;
const SKEW_MS: u64 = 2 * OFFSET_MAX_MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Running,
    Paused,
    Dead,
}

/// A record in a partition's log.
#[derive(Clone, Debug)]
enum Record {
    Takeover { epoch: u64, node: usize },
    Owner { epoch: u64, node: usize },
}

struct Node {
    offset_ms: i64,
    status: Status,
    /// What it last read of the bucket (possibly stale), and when by its clock.
    view: Vec<Entry>,
    read_at_ms: u64,
    /// The live nodes as of that read (heartbeats are in the bucket too).
    view_live: Vec<String>,
    /// The leases it believes it holds: from its acknowledged takes and renewals only.
    believed: BTreeMap<u32, Lease>,
}

/// A write to the bucket in flight: it lands (or is refused) later, and its acknowledgement
/// reaches the writer later still.
#[derive(Clone, Debug)]
enum BucketWrite {
    Create { partition: u32, lease: Lease },
    Update { partition: u32, lease: Lease, revision: u64, release: bool },
}

#[derive(Default)]
struct Partition {
    /// Lease keys by epoch: the lease and its revision.
    keys: BTreeMap<u64, (Lease, u64)>,
    log: Vec<Record>,
}

struct World {
    now_ms: u64,
    nodes: Vec<Node>,
    partitions: Vec<Partition>,
    /// Writes in flight: (real time they land, partition, record).
    in_flight: Vec<(u64, u32, Record)>,
    /// Bucket writes in flight: (real time they land, writer, write).
    bucket_in_flight: Vec<(u64, usize, BucketWrite)>,
    /// Acknowledgements in flight: (real time they arrive, node, partition, the lease now
    /// stored, whether it was a take).
    acks_in_flight: Vec<(u64, usize, u32, Lease, bool)>,
    /// Owner records that landed after a newer `Takeover` (fenced).
    fenced: u64,
    takeovers: u64,
    seed: u64,
    /// Bucket writes land and are acknowledged at once (every other seed): the holder and a
    /// taker then race within one round.
    immediate: bool,
}

impl World {
    fn entries(&self) -> Vec<Entry> {
        self.partitions
            .iter()
            .map(|partition| match partition.keys.iter().next_back() {
                Some((_, (lease, revision))) => Entry { lease: Some(lease.clone()), revision: *revision },
                None => Entry { lease: None, revision: 0 },
            })
            .collect()
    }

    fn local_ms(&self, node: usize) -> u64 {
        self.now_ms.saturating_add_signed(self.nodes[node].offset_ms)
    }

    fn live_names(&self) -> Vec<String> {
        NODES
            .iter()
            .zip(&self.nodes)
            .filter(|(_, node)| node.status != Status::Dead)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// One node's round: maybe read the bucket, decide, write, and act as owner.
    fn round(&mut self, node: usize, random: &mut Random, fresh_read: bool) {
        if fresh_read {
            self.nodes[node].view = self.entries();
            self.nodes[node].read_at_ms = self.local_ms(node);
            self.nodes[node].view_live = self.live_names();
        }
        let mut live = self.nodes[node].view_live.clone();
        if !live.iter().any(|name| name == NODES[node]) {
            live.push(NODES[node].to_string());
        }
        let local = self.local_ms(node);
        let view = View {
            node: NODES[node],
            live_nodes: &live,
            entries: &self.nodes[node].view,
            now_ms: local,
            read_at_ms: self.nodes[node].read_at_ms,
            lease_ms: LEASE_MS,
            skew_ms: SKEW_MS,
        };
        for action in decide(&view) {
            self.carry_out(node, &action, local, random);
        }
        if self.immediate {
            self.land_bucket(random);
            self.deliver_acks();
        }
        // Act as owner where it believes it holds the lease by its own clock.
        let acting: Vec<(u32, u64)> = self.nodes[node]
            .believed
            .iter()
            .filter(|(_, lease)| holds(lease, NODES[node], local, SKEW_MS))
            .map(|(partition, lease)| (*partition, lease.epoch))
            .collect();
        for (partition, epoch) in acting {
            if random.chance(0.7) {
                // Mostly soon; now and then late, as a write stuck behind a pause or a slow
                // link lands after the lease has moved.
                let delay = if random.chance(0.1) { random.below(15_000) } else { random.below(3_000) };
                let lands = self.now_ms + delay;
                self.in_flight.push((lands, partition, Record::Owner { epoch, node }));
            }
        }
    }

    /// Lands the bucket writes whose time has come (create: only if the key does not exist;
    /// update: only on the revision read) and sends their acknowledgements.
    fn land_bucket(&mut self, random: &mut Random) {
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.bucket_in_flight.drain(..).partition(|(at, _, _)| *at <= self.now_ms);
        self.bucket_in_flight = waiting;
        for (_, node, write) in due {
            let (take, partition) = match &write {
                BucketWrite::Create { partition, .. } => (true, *partition),
                BucketWrite::Update { partition, .. } => (false, *partition),
            };
            let stored = match write {
                BucketWrite::Create { partition, lease } => {
                    let keys = &mut self.partitions[partition as usize].keys;
                    // Lease keys are never purged, so the next epoch's key exists once any
                    // later one does.
                    if keys.keys().next_back().is_some_and(|latest| *latest >= lease.epoch) {
                        continue;
                    }
                    keys.insert(lease.epoch, (lease.clone(), 1));
                    let lands = self.now_ms + random.below(1_000);
                    self.in_flight.push((lands, partition, Record::Takeover { epoch: lease.epoch, node }));
                    lease
                }
                BucketWrite::Update { partition, lease, revision, release } => {
                    let Some((stored, current)) = self.partitions[partition as usize].keys.get_mut(&lease.epoch) else {
                        continue;
                    };
                    if *current != revision || stored.holder != lease.holder {
                        continue;
                    }
                    *stored = lease.clone();
                    *current += 1;
                    if release {
                        continue;
                    }
                    lease
                }
            };
            let arrives = if self.immediate { self.now_ms } else { self.now_ms + random.below(1_500) };
            self.acks_in_flight.push((arrives, node, partition, stored, take));
        }
    }

    /// Delivers acknowledgements to running nodes (a paused node's wait; a dead node's are lost).
    /// A take is believed when acknowledged; a renewal only if its acknowledgement comes while
    /// the lease it renews still holds: one landing later may have landed after another node
    /// saw the lease lapse and took the next epoch.
    fn deliver_acks(&mut self) {
        let mut waiting = Vec::new();
        for (at, node, partition, lease, take) in std::mem::take(&mut self.acks_in_flight) {
            match self.nodes[node].status {
                Status::Dead => continue,
                Status::Paused => waiting.push((at, node, partition, lease, take)),
                Status::Running if at > self.now_ms => waiting.push((at, node, partition, lease, take)),
                Status::Running => {
                    let local = self.local_ms(node);
                    let believed = &mut self.nodes[node].believed;
                    let renews_a_live_lease = believed
                        .get(&partition)
                        .is_some_and(|old| old.epoch == lease.epoch && holds(old, NODES[node], local, SKEW_MS));
                    // (A renewal's acknowledgement after a release renews nothing.)
                    let fresh_take = take && believed.get(&partition).is_none_or(|old| old.epoch < lease.epoch);
                    if renews_a_live_lease || fresh_take {
                        believed.insert(partition, lease);
                    } else {
                        believed.remove(&partition);
                    }
                }
            }
        }
        self.acks_in_flight = waiting;
    }

    /// Sends the write an action calls for; a release stops the node acting first. A renewal or
    /// release is sent only for a lease whose take this node has had acknowledged: one decided
    /// while the take is in flight would let the take's late acknowledgement make it believe in
    /// a lease it had already given up (found by this simulation, seed 7).
    fn carry_out(&mut self, node: usize, action: &Action, local: u64, random: &mut Random) {
        if let Action::Renew { partition, epoch, .. } | Action::Release { partition, epoch, .. } = *action {
            if self.nodes[node].believed.get(&partition).is_none_or(|lease| lease.epoch != epoch) {
                return;
            }
        }
        let holder = NODES[node].to_string();
        let lands = if self.immediate { self.now_ms } else { self.now_ms + random.below(4_000) };
        let write = match *action {
            Action::Take { partition, epoch, .. } => {
                BucketWrite::Create { partition, lease: Lease { holder, epoch, expires_at_ms: local + LEASE_MS } }
            }
            Action::Renew { partition, epoch, revision } => BucketWrite::Update {
                partition,
                lease: Lease { holder, epoch, expires_at_ms: local + LEASE_MS },
                revision,
                release: false,
            },
            Action::Release { partition, epoch, revision } => {
                self.nodes[node].believed.remove(&partition);
                BucketWrite::Update {
                    partition,
                    lease: Lease { holder, epoch, expires_at_ms: local },
                    revision,
                    release: true,
                }
            }
        };
        self.bucket_in_flight.push((lands, node, write));
    }

    /// Lands the writes whose time has come, in a random order among those due together.
    fn land(&mut self, random: &mut Random) {
        let (mut due, waiting): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(at, _, _)| *at <= self.now_ms);
        self.in_flight = waiting;
        for index in (1..due.len()).rev() {
            due.swap(index, random.below(index as u64 + 1) as usize);
        }
        for (_, partition, record) in due {
            self.partitions[partition as usize].log.push(record);
        }
    }

    /// No two nodes act as owner of a partition at this real instant.
    fn check_one_owner(&self) {
        for (number, partition) in self.partitions.iter().enumerate() {
            let acting: Vec<usize> = (0..NODES.len())
                .filter(|node| self.nodes[*node].status == Status::Running)
                .filter(|node| {
                    self.nodes[*node]
                        .believed
                        .get(&(number as u32))
                        .is_some_and(|lease| holds(lease, NODES[*node], self.local_ms(*node), SKEW_MS))
                })
                .collect();
            let locals: Vec<u64> = (0..NODES.len()).map(|node| self.local_ms(node)).collect();
            assert!(
                acting.len() <= 1,
                "partition {number}: nodes {acting:?} act as owner at {} ms (seed {}); clocks {locals:?}, leases {:?}, believed {:?}",
                self.now_ms,
                self.seed,
                partition.keys,
                acting.iter().map(|node| self.nodes[*node].believed.get(&(number as u32))).collect::<Vec<_>>()
            );
        }
    }

    /// Replays each log with the fencing rule and checks what it admits.
    fn check_fencing(&mut self) {
        let mut fenced = 0;
        for (number, partition) in self.partitions.iter().enumerate() {
            let mut current: Option<(u64, usize)> = None;
            let mut admitted_epoch = 0;
            for record in &partition.log {
                match *record {
                    Record::Takeover { epoch, node } => {
                        if current.is_none_or(|(latest, _)| epoch > latest) {
                            current = Some((epoch, node));
                        }
                    }
                    Record::Owner { epoch, node } => {
                        if current == Some((epoch, node)) {
                            assert!(
                                epoch >= admitted_epoch,
                                "partition {number}: epoch {epoch} admitted after {admitted_epoch}"
                            );
                            admitted_epoch = epoch;
                            let creator = partition.keys.get(&epoch).map(|(lease, _)| lease.holder.as_str());
                            assert_eq!(
                                creator,
                                Some(NODES[node]),
                                "partition {number}: a record of epoch {epoch} from its non-creator"
                            );
                        } else if current.is_some_and(|(latest, _)| latest > epoch) {
                            fenced += 1;
                        }
                    }
                }
            }
        }
        self.fenced = fenced;
        self.takeovers = self.partitions.iter().map(|partition| partition.keys.len() as u64).sum();
    }
}

fn run_seed(seed: u64, steps: u64) -> (u64, u64) {
    let mut random = Random(seed);
    let nodes = NODES
        .iter()
        .map(|_| Node {
            offset_ms: random.below(2 * OFFSET_MAX_MS + 1) as i64 - OFFSET_MAX_MS as i64,
            status: Status::Running,
            view: Vec::new(),
            read_at_ms: 0,
            view_live: Vec::new(),
            believed: BTreeMap::new(),
        })
        .collect();
    let partitions = (0..PARTITIONS).map(|_| Partition::default()).collect();
    let mut world = World {
        now_ms: 1_000_000,
        nodes,
        partitions,
        in_flight: Vec::new(),
        bucket_in_flight: Vec::new(),
        acks_in_flight: Vec::new(),
        fenced: 0,
        takeovers: 0,
        seed,
        immediate: seed.is_multiple_of(2),
    };
    for node in 0..NODES.len() {
        world.nodes[node].view = world.entries();
        world.nodes[node].read_at_ms = world.local_ms(node);
        world.nodes[node].view_live = world.live_names();
    }
    for _ in 0..steps {
        world.now_ms += random.below(2_500);
        // Faults: pause, kill, bring back.
        let node = random.below(NODES.len() as u64) as usize;
        if random.chance(0.15) {
            world.nodes[node].status = match world.nodes[node].status {
                Status::Running if random.chance(0.5) => Status::Paused,
                Status::Running => Status::Dead,
                _ => Status::Running,
            };
            // A process that died starts again knowing nothing.
            if world.nodes[node].status == Status::Dead {
                world.nodes[node].believed.clear();
            }
        }
        world.land(&mut random);
        world.land_bucket(&mut random);
        world.deliver_acks();
        for node in 0..NODES.len() {
            if world.nodes[node].status == Status::Running {
                let fresh = random.chance(0.8);
                world.round(node, &mut random, fresh);
            }
        }
        world.check_one_owner();
        world.check_fencing();
    }
    // Quiet: everyone back and reading fresh; writes land; every partition settles.
    for node in &mut world.nodes {
        node.status = Status::Running;
    }
    for _ in 0..20 {
        world.now_ms += LEASE_MS / 4;
        world.land(&mut random);
        world.land_bucket(&mut random);
        world.deliver_acks();
        for node in 0..NODES.len() {
            world.round(node, &mut random, true);
        }
        world.check_one_owner();
    }
    // Everything in flight lands: bucket writes (whose takes send their `Takeover`), then the
    // log's.
    world.now_ms += 5_000;
    world.land_bucket(&mut random);
    world.now_ms += 5_000;
    world.land(&mut random);
    world.check_fencing();
    let all: Vec<String> = NODES.iter().map(|name| name.to_string()).collect();
    for (number, partition) in world.partitions.iter().enumerate() {
        let (epoch, (lease, _)) =
            partition.keys.iter().next_back().unwrap_or_else(|| panic!("seed {seed}: partition {number} never taken"));
        assert_eq!(Some(lease.holder.as_str()), preferred(&all, number as u32), "seed {seed}: partition {number}");
        let node = NODES.iter().position(|name| *name == lease.holder).unwrap_or(usize::MAX);
        let in_log = partition
            .log
            .iter()
            .any(|record| matches!(record, Record::Takeover { epoch: e, node: n } if e == epoch && *n == node));
        assert!(in_log, "seed {seed}: partition {number}'s takeover at epoch {epoch} is not in its log");
    }
    (world.fenced, world.takeovers)
}

#[test]
fn leases_and_fencing_keep_one_owner_per_partition() {
    let steps = env_number("KAPSEL_SIM_STEPS").unwrap_or(300);
    let seeds: Vec<u64> = match env_number("KAPSEL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_number("KAPSEL_SIM_SEEDS").unwrap_or(64)).collect(),
    };
    let started = std::time::Instant::now();
    let (mut fenced, mut takeovers) = (0, 0);
    for seed in &seeds {
        let (seed_fenced, seed_takeovers) = run_seed(*seed, steps);
        fenced += seed_fenced;
        takeovers += seed_takeovers;
    }
    // The scenario the fencing exists for must have happened: stale writes landing late.
    assert!(fenced > 0 || seeds.len() < 16, "no stale owner write was ever fenced: the simulation misses the case");
    eprintln!(
        "{} seeds, {steps} steps each, passed in {:.1} s: {takeovers} lease epochs taken, {fenced} stale owner records fenced",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}
