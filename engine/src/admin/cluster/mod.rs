//! Cluster mode (ADR 17) on a node: which partitions this node owns, on which of its threads,
//! and how a request for a partition reaches its owner.
//!
//! The lease driver runs on thread 0 and records what this node should own (a partition and
//! its epoch); each thread looks at the partitions it hosts (`partition % threads`) every few
//! tens of milliseconds and brings what it runs in line, so no change can be missed. A thread
//! that gains a partition opens it (replay from its
//! stream, then the `Takeover` at the lease's epoch), runs its delivery scheduler and serves
//! `kapsel.rpc.p.<partition>`: requests other nodes forward for it, run exactly as a local
//! request would be. A thread that loses a partition stops all three at once; whatever the old
//! owner still writes is fenced by the epoch in the log.
//!
//! A request for a partition this thread owns runs here; any other one is forwarded over NATS
//! request/reply to whichever node serves the partition, even one owned by another thread of
//! this node. A partition nobody serves (between a node's death and its successor's takeover)
//! answers 503 E3004 with `Retry-After`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kapsel_http::{Request, Response};
use kapsel_nats::{Link, LinkError};
use serde_json::json;

use crate::admin::route::Route;
use crate::admin::shared::Shared;
use crate::cluster::leases::{Change, Seen};
use crate::cluster::nats::{stream_name, NatsFeed, NatsStream};
use crate::cluster::{wire, ClusterConfig};
use crate::error::EngineError;
use crate::shard::Shard;
use crate::state::StateLimits;

mod fanout;
mod follow;

pub use fanout::{adopt_at, deliveries_everywhere};
pub use follow::follow_configuration;

/// Records a partition's feed holds that its shard has not applied yet, at most.
const FEED_CAPACITY: usize = 4096;
/// Forwarded requests a partition's owner queues, at most; more are refused (503 E3002).
const RPC_QUEUE: usize = 1024;
/// How long a forwarded request may take: an ingest waits for its publish acknowledgement,
/// which the link retries through a stream leader's election.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts to open a partition this node holds but could not open.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);
/// How often an owner seals its partitions' complete ranges.
const SEAL_EVERY: Duration = Duration::from_secs(2);
/// How often a thread compares what it runs with what the node should own.
const RECONCILE_EVERY: Duration = Duration::from_millis(50);
/// At shutdown, how long a thread waits for the attempts in flight of the partitions it gives
/// up to be recorded, at most (the process has 8 s in all).
const DRAIN_MAX: Duration = Duration::from_secs(4);

/// The subject a partition's owner serves forwarded requests on.
pub fn rpc_subject(partition: u32) -> String {
    format!("kapsel.rpc.p.{partition}")
}

/// What every thread of a node shares in cluster mode.
pub struct ClusterNode {
    /// The settings.
    pub config: ClusterConfig,
    /// The link to NATS.
    pub link: Link,
    /// Where this node serves HTTP.
    pub address: String,
    /// What the lease driver last read.
    seen: Mutex<Seen>,
    /// What this node knows of each partition, by partition number.
    slots: Vec<Slot>,
    /// At shutdown: threads still finishing their partitions' attempts in flight. The leases
    /// are given up once none is, so the next owner does not make those attempts again.
    draining: std::sync::atomic::AtomicUsize,
}

/// One partition as this node sees it, readable from every thread.
#[derive(Default)]
struct Slot {
    /// The epoch this node holds its lease at (0: not held), as the lease driver last said.
    desired: AtomicU64,
    /// The epoch this node owns it at (0: not here), set once it is open.
    owned: AtomicU64,
    /// Owned here: the last sequence of its stream applied.
    applied: AtomicU64,
    /// Owned here: the stream's last sequence, as last asked (about every second).
    last: AtomicU64,
    /// Until when (Unix ms, by this node's clock) this node may write as its owner; 0 when it
    /// holds no lease of it.
    writable_until: AtomicU64,
    /// The epoch at which this node stopped owning it and saw its attempts in flight recorded
    /// (or gave up waiting): its lease may then be written released.
    drained: AtomicU64,
    /// Owned here: its numbers for `GET /metrics`, refreshed every second by the thread that
    /// runs it (a scrape on any thread reads them).
    report: Mutex<Option<crate::admin::metrics::ShardReport>>,
}

impl ClusterNode {
    /// A node of `threads` threads that owns nothing yet.
    pub fn new(config: ClusterConfig, link: Link, address: String, threads: usize) -> Self {
        let partitions = config.partitions as usize;
        Self {
            config,
            link,
            address,
            seen: Mutex::new(Seen::default()),
            slots: (0..partitions).map(|_| Slot::default()).collect(),
            draining: std::sync::atomic::AtomicUsize::new(threads),
        }
    }

    fn slot(&self, partition: u32) -> Option<&Slot> {
        self.slots.get(partition as usize)
    }

    /// A number of `partition`'s slot (0 for a partition out of range).
    fn load(&self, partition: u32, field: impl Fn(&Slot) -> &AtomicU64) -> u64 {
        self.slot(partition).map_or(0, |slot| field(slot).load(Ordering::Acquire))
    }

    /// Sets a number of `partition`'s slot.
    fn store(&self, partition: u32, field: impl Fn(&Slot) -> &AtomicU64, value: u64) {
        if let Some(slot) = self.slot(partition) {
            field(slot).store(value, Ordering::Release);
        }
    }

    /// Records a change of the leases this node holds.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Gained { partition, epoch } => self.store(partition, |slot| &slot.desired, epoch),
            Change::Lost { partition, epoch } => {
                if let Some(slot) = self.slot(partition) {
                    let _ = slot.desired.compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
                }
            }
        }
    }

    /// Whether this node's lease of `partition` still holds now by its clock.
    pub fn may_write(&self, partition: u32) -> bool {
        crate::clock::now_ms() < self.load(partition, |slot| &slot.writable_until)
    }

    fn desired(&self, partition: u32) -> u64 {
        self.load(partition, |slot| &slot.desired)
    }

    /// The numbers of every partition this node owns, for `GET /metrics`.
    pub fn partition_reports(&self) -> Vec<crate::admin::metrics::ShardReport> {
        self.slots
            .iter()
            .filter_map(|slot| slot.report.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }

    fn set_report(&self, partition: u32, report: Option<crate::admin::metrics::ShardReport>) {
        if let Some(slot) = self.slot(partition) {
            *slot.report.lock().unwrap_or_else(PoisonError::into_inner) = report;
        }
    }

    /// The cluster's own series for `GET /metrics`: what this node owns, what it sees of the
    /// others, and its link to NATS.
    pub fn metrics_text(&self, now_ms: u64) -> String {
        use std::fmt::Write as _;
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let live = seen.nodes.iter().filter(|node| node.at_ms.saturating_add(self.config.lease_ms) > now_ms).count();
        let owned: Vec<(usize, u64)> = self
            .slots
            .iter()
            .enumerate()
            .map(|(partition, slot)| (partition, slot.owned.load(Ordering::Acquire)))
            .filter(|(_, epoch)| *epoch > 0)
            .collect();
        let link = self.link.counters();
        let mut out = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, lines: Vec<(String, u64)>| {
            crate::admin::metrics::header(&mut out, name, kind, help);
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let node = format!("{{node=\"{}\"}}", self.config.node);
        gauge(
            "kapsel_cluster_partitions_owned",
            "gauge",
            "Partitions this node owns.",
            vec![(node.clone(), owned.len() as u64)],
        );
        gauge(
            "kapsel_cluster_nodes_live",
            "gauge",
            "Nodes with a heartbeat within the lease length.",
            vec![(node.clone(), live as u64)],
        );
        let per_partition = |value: &dyn Fn(usize, u64) -> u64| {
            owned
                .iter()
                .map(|(partition, epoch)| (format!("{{partition=\"{partition}\"}}"), value(*partition, *epoch)))
                .collect()
        };
        gauge(
            "kapsel_cluster_partition_epoch",
            "gauge",
            "The lease epoch of each partition this node owns.",
            per_partition(&|_, epoch| epoch),
        );
        gauge(
            "kapsel_cluster_partition_applied_sequence",
            "gauge",
            "The last sequence of each owned partition's stream applied.",
            per_partition(&|partition, _| {
                self.slots.get(partition).map_or(0, |slot| slot.applied.load(Ordering::Acquire))
            }),
        );
        gauge(
            "kapsel_cluster_partition_lag_records",
            "gauge",
            "Records of each owned partition's stream not applied yet (as of the last look at the stream).",
            per_partition(&|partition, _| {
                self.slots.get(partition).map_or(0, |slot| {
                    let applied = slot.applied.load(Ordering::Acquire);
                    slot.last.load(Ordering::Acquire).saturating_sub(applied)
                })
            }),
        );
        gauge(
            "kapsel_nats_connected",
            "gauge",
            "1 while the link to NATS is connected.",
            vec![(node.clone(), u64::from(self.link.is_connected()))],
        );
        for (name, help, value) in [
            ("kapsel_nats_publishes_total", "Publishes to JetStream.", link.publishes),
            ("kapsel_nats_acks_total", "JetStream acknowledgements.", link.acks),
            ("kapsel_nats_retries_total", "Publishes and reads repeated after a transient failure.", link.retries),
            ("kapsel_nats_errors_total", "Calls to NATS that ended in an error.", link.errors),
            ("kapsel_nats_busy_total", "Calls refused because the link's queue was full.", link.busy),
            ("kapsel_nats_reconnects_total", "Connections to NATS made again after a loss.", link.reconnects),
        ] {
            gauge(name, "counter", help, vec![(node.clone(), value)]);
        }
        out
    }

    /// Keeps what the lease driver read, for `GET /admin/cluster`.
    pub fn set_seen(&self, seen: Seen) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
    }

    /// `GET /admin/cluster`: this node, every node the bucket knows (live or not), each
    /// partition's lease, and the partitions this node owns with the sequence each has applied.
    pub fn to_json(&self, now_ms: u64) -> serde_json::Value {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let lease_ms = self.config.lease_ms;
        let nodes: Vec<serde_json::Value> = seen
            .nodes
            .iter()
            .map(|node| {
                let partitions = seen.leases.iter().flatten().filter(|lease| lease.holder == node.node).count();
                json!({
                    "node_id": node.node,
                    "address": node.address,
                    "last_heartbeat_ms": node.at_ms,
                    "live": node.at_ms.saturating_add(lease_ms) > now_ms,
                    "partitions": partitions,
                })
            })
            .collect();
        let partitions: Vec<serde_json::Value> = seen
            .leases
            .iter()
            .enumerate()
            .map(|(partition, lease)| {
                let slot = self.slots.get(partition);
                let here = slot.map_or(0, |slot| slot.owned.load(Ordering::Acquire));
                let mut entry = json!({
                    "partition": partition,
                    "owner": lease.as_ref().filter(|lease| lease.expires_at_ms > now_ms).map(|lease| lease.holder.clone()),
                    "epoch": lease.as_ref().map(|lease| lease.epoch),
                    "lease_expires_at_ms": lease.as_ref().map(|lease| lease.expires_at_ms),
                });
                if here > 0 {
                    let applied = slot.map_or(0, |slot| slot.applied.load(Ordering::Acquire));
                    let last = slot.map_or(0, |slot| slot.last.load(Ordering::Acquire)).max(applied);
                    entry["applied_sequence"] = json!(applied);
                    entry["last_sequence"] = json!(last);
                    entry["lag"] = json!(last - applied);
                }
                entry
            })
            .collect();
        json!({
            "node_id": self.config.node,
            "partitions_count": self.config.partitions,
            "replicas": self.config.replicas,
            "lease_ms": lease_ms,
            "read_at_ms": seen.read_at_ms,
            "error": seen.error,
            "nodes": nodes,
            "partitions": partitions,
        })
    }
}

/// A partition this thread owns.
struct Owned {
    shard: Rc<Shard>,
    epoch: u64,
    stop: Rc<Stop>,
}

/// Tells a partition's tasks to stop, and wakes the one waiting for requests.
#[derive(Default)]
struct Stop {
    stopped: Cell<bool>,
    waker: Cell<Option<std::task::Waker>>,
}

impl Stop {
    fn stop(&self) {
        self.stopped.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The partitions one thread owns, and how it runs them.
pub struct Partitions {
    node: Arc<ClusterNode>,
    shared: Arc<Shared>,
    client: Rc<kapsel_http::Client>,
    limits: StateLimits,
    server_limits: kapsel_http::Limits,
    /// How old a partition's records must be before retention may purge them.
    retention_ms: u64,
    owned: RefCell<BTreeMap<u32, Owned>>,
    /// Partitions being opened, with the epoch.
    opening: RefCell<BTreeMap<u32, u64>>,
}

impl Partitions {
    /// A thread's partitions: none yet.
    pub fn new(
        node: Arc<ClusterNode>,
        shared: Arc<Shared>,
        client: Rc<kapsel_http::Client>,
        limits: StateLimits,
        server_limits: kapsel_http::Limits,
        retention_ms: u64,
    ) -> Rc<Self> {
        Rc::new(Self {
            node,
            shared,
            client,
            limits,
            server_limits,
            retention_ms,
            owned: RefCell::new(BTreeMap::new()),
            opening: RefCell::new(BTreeMap::new()),
        })
    }

    /// The node.
    pub fn node(&self) -> &Arc<ClusterNode> {
        &self.node
    }

    /// Brings the partitions this thread (`thread` of `threads`) runs in line with what the
    /// node should own, until shutdown; then stops them all.
    pub async fn reconcile(self: Rc<Self>, thread: usize, threads: usize) {
        let hosted: Vec<u32> = (0..self.node.config.partitions)
            .filter(|partition| *partition as usize % threads.max(1) == thread)
            .collect();
        let mut rounds = 0u64;
        while !self.shared.is_shutting_down() {
            rounds += 1;
            if rounds.is_multiple_of(20) {
                let now = crate::clock::now_ms();
                for (partition, owned) in self.owned.borrow().iter() {
                    self.node.set_report(*partition, Some(crate::admin::metrics::report(&owned.shard, now)));
                    let applied = owned.shard.state().borrow().applied_lsn();
                    self.node.store(*partition, |slot| &slot.applied, applied);
                    // The stream's end, for the partition's lag.
                    let (node, partition) = (Arc::clone(&self.node), *partition);
                    let state = node.link.stream_state(stream_name(partition));
                    monoio::spawn(async move {
                        if let Ok(state) = state.await {
                            node.store(partition, |slot| &slot.last, state.last_sequence);
                        }
                    });
                }
            }
            for partition in &hosted {
                let desired = self.node.desired(*partition);
                let running = self.owned.borrow().get(partition).map(|owned| owned.epoch);
                if let Some(epoch) = running.filter(|epoch| *epoch != desired) {
                    self.close(*partition, epoch);
                }
                let opening = self.opening.borrow().get(partition).copied();
                if desired != 0 && running != Some(desired) && opening != Some(desired) {
                    self.opening.borrow_mut().insert(*partition, desired);
                    monoio::spawn(Rc::clone(&self).open(*partition, desired));
                }
            }
            monoio::time::sleep(RECONCILE_EVERY).await;
        }
        let owned: Vec<(u32, u64, Rc<Shard>)> = self
            .owned
            .borrow()
            .iter()
            .map(|(partition, owned)| (*partition, owned.epoch, Rc::clone(&owned.shard)))
            .collect();
        for (partition, epoch, _) in &owned {
            self.close(*partition, *epoch);
        }
        for (_, _, shard) in &owned {
            drain(shard).await;
        }
        self.node.draining.fetch_sub(1, Ordering::AcqRel);
    }

    fn still_wanted(&self, partition: u32, epoch: u64) -> bool {
        self.node.desired(partition) == epoch && !self.shared.is_shutting_down()
    }

    fn close(&self, partition: u32, epoch: u64) {
        let mut owned = self.owned.borrow_mut();
        if owned.get(&partition).is_some_and(|open| open.epoch == epoch) {
            if let Some(open) = owned.remove(&partition) {
                open.stop.stop();
                open.shard.release_index();
                open.shard.notify_scheduler();
                self.node.store(partition, |slot| &slot.owned, 0);
                self.node.set_report(partition, None);
                tracing::info!(partition, epoch, "stopped owning the partition");
                let node = Arc::clone(&self.node);
                monoio::spawn(async move {
                    drain(&open.shard).await;
                    node.store(partition, |slot| &slot.drained, epoch);
                });
            }
        }
    }

    /// Opens `partition` as its owner at `epoch`, retrying while the lease is still held.
    async fn open(self: Rc<Self>, partition: u32, epoch: u64) {
        self.open_while_wanted(partition, epoch).await;
        if self.opening.borrow().get(&partition) == Some(&epoch) {
            self.opening.borrow_mut().remove(&partition);
        }
    }

    async fn open_while_wanted(self: &Rc<Self>, partition: u32, epoch: u64) {
        while self.still_wanted(partition, epoch) {
            let started = std::time::Instant::now();
            match self.open_once(partition, epoch).await {
                Ok(shard) => {
                    if !self.still_wanted(partition, epoch) {
                        return;
                    }
                    let records = shard.state().borrow().applied_lsn();
                    tracing::info!(
                        partition,
                        epoch,
                        records,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "owning the partition"
                    );
                    self.run(partition, epoch, Rc::new(shard));
                    return;
                }
                Err(error) => {
                    tracing::warn!(partition, epoch, %error, "cannot open the partition yet");
                    monoio::time::sleep(REOPEN_PAUSE).await;
                }
            }
        }
    }

    async fn open_once(&self, partition: u32, epoch: u64) -> Result<Shard, EngineError> {
        let link = &self.node.link;
        let unavailable = |error: LinkError| EngineError::Unavailable(format!("partition {partition}: {error}"));
        let last = link.stream_state(stream_name(partition)).await.map_err(unavailable)?.last_sequence;
        let feed = NatsFeed::open(link, partition, 1, FEED_CAPACITY).await.map_err(unavailable)?;
        let node = Arc::clone(&self.node);
        let guard: crate::cluster::nats::LeaseGuard = Arc::new(move || node.may_write(partition));
        let stream = Arc::new(NatsStream::new(link.clone(), partition).with_guard(guard));
        let lease = (epoch, self.node.config.node.as_str());
        Shard::open_partition(
            partition as usize,
            stream,
            Box::new(feed),
            last,
            lease,
            self.limits,
            self.shared.index.clone(),
            crate::clock::now_ms(),
        )
        .await
    }

    /// Runs an opened partition: its scheduler and its request server, until it is lost.
    fn run(self: &Rc<Self>, partition: u32, epoch: u64, shard: Rc<Shard>) {
        let stop = Rc::new(Stop::default());
        self.owned.borrow_mut().insert(partition, Owned { shard: Rc::clone(&shard), epoch, stop: Rc::clone(&stop) });
        self.node.store(partition, |slot| &slot.owned, epoch);
        let scheduler_stop: Rc<dyn Fn() -> bool> = {
            // While the lease does not hold (the bucket unreachable for a while) the scheduler
            // pauses (`Shard::writable`); the partition is closed once the lease is lost.
            let (stop, shared) = (Rc::clone(&stop), Arc::clone(&self.shared));
            Rc::new(move || stop.stopped.get() || shared.is_shutting_down())
        };
        monoio::spawn(crate::delivery::run_scheduler(
            Rc::clone(&shard),
            Rc::clone(&self.client),
            Rc::clone(&scheduler_stop),
        ));
        let policy = crate::shard::retention::RetentionPolicy::new(self.retention_ms);
        monoio::spawn(crate::shard::retention::run(Rc::clone(&shard), policy, Rc::clone(&scheduler_stop)));
        monoio::spawn(crate::admin::publish::run_handoffs(
            Rc::clone(&shard),
            Arc::clone(&self.shared),
            Rc::clone(&scheduler_stop),
        ));
        monoio::spawn(seal(self.node.link.clone(), partition, Rc::clone(&shard), scheduler_stop));
        monoio::spawn(Rc::clone(self).serve(partition, shard, stop));
    }

    /// Serves requests other nodes forward for `partition` until it is lost.
    async fn serve(self: Rc<Self>, partition: u32, shard: Rc<Shard>, stop: Rc<Stop>) {
        let mut requests = match self.node.link.serve(rpc_subject(partition), RPC_QUEUE).await {
            Ok(requests) => requests,
            Err(error) => {
                // Forwarded requests find nobody and are told to retry; deliveries go on.
                tracing::error!(partition, %error, "cannot serve the partition's requests");
                return;
            }
        };
        loop {
            let next = std::future::poll_fn(|context| {
                if stop.stopped.get() {
                    return std::task::Poll::Ready(None);
                }
                stop.waker.set(Some(context.waker().clone()));
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut requests), context)
            });
            let Some(forwarded) = next.await else {
                return;
            };
            let (partitions, shard) = (Rc::clone(&self), Rc::clone(&shard));
            monoio::spawn(async move {
                let response = match wire::decode_internal(&forwarded.payload) {
                    Some(Ok(internal)) => fanout::answer(&shard, internal).await,
                    Some(Err(reason)) => EngineError::Invalid(reason).into_response(),
                    None => match wire::decode_request(&forwarded.payload, &partitions.server_limits, peer()) {
                        Ok(request) => partitions.execute_here(&shard, request).await,
                        Err(reason) => EngineError::Invalid(reason).into_response(),
                    },
                };
                forwarded.respond(wire::encode_response(&response));
            });
        }
    }

    /// Runs a request forwarded to this partition's owner as the node that took it would have.
    async fn execute_here(&self, shard: &Shard, request: Request) -> Response {
        if let Some(refused) = lapsed(shard) {
            return refused;
        }
        match crate::admin::service::route_request(&self.shared, &request.head) {
            Ok(route) => crate::admin::service::execute(shard, &self.shared, route, request).await,
            Err(error) => error.into_response(),
        }
    }

    /// The partition's shard, when this thread owns it.
    pub fn local(&self, partition: u32) -> Option<Rc<Shard>> {
        self.owned.borrow().get(&partition).map(|owned| Rc::clone(&owned.shard))
    }

    /// Runs a request for `partition`: here when this thread owns it, else at its owner.
    pub async fn run_request(&self, partition: u32, route: Route, request: Request) -> Response {
        if let Some(shard) = self.local(partition) {
            if let Some(refused) = lapsed(&shard) {
                return refused;
            }
            return crate::admin::service::execute(&shard, &self.shared, route, request).await;
        }
        let asked = self.node.link.request(rpc_subject(partition), wire::encode_request(&request), RPC_TIMEOUT).await;
        let no_owner = |detail: &str| {
            EngineError::Unavailable(format!(
                "partition {partition} has no owner at the moment ({detail}); another node takes it over within the lease time, retry"
            ))
            .into_response()
        };
        match asked {
            Ok(bytes) => {
                wire::decode_response(&bytes).unwrap_or_else(|reason| EngineError::Unavailable(reason).into_response())
            }
            Err(LinkError::NoResponders { .. }) => no_owner("nobody serves it"),
            Err(LinkError::RemoteBusy { .. } | LinkError::Busy) => {
                EngineError::QueueFull(format!("partition {partition}'s owner is busy")).into_response()
            }
            Err(error) => no_owner(&error.to_string()),
        }
    }
}

/// Seals the partition's complete ranges of sequences while this node owns it (audit,
/// `cluster::seal`): every few seconds, up to what the shard has applied. A failure is logged
/// once per kind and tried again next time; retention never purges what is not sealed.
async fn seal(link: Link, partition: u32, shard: Rc<Shard>, stop: Rc<dyn Fn() -> bool>) {
    let mut last_error: Option<String> = None;
    loop {
        monoio::time::sleep(SEAL_EVERY).await;
        if stop() {
            return;
        }
        let applied = shard.state().borrow().applied_lsn();
        match crate::cluster::seal::seal_up_to(&link, partition, applied, crate::cluster::seal::SEAL_RANGE).await {
            Ok(sealed) => {
                for seal in &sealed {
                    tracing::info!(
                        partition,
                        range = seal.range_index,
                        records = seal.records,
                        "sealed a range of the partition"
                    );
                }
                last_error = None;
            }
            Err(error) if last_error.as_deref() != Some(error.as_str()) => {
                tracing::error!(partition, %error, "cannot seal the partition's ranges yet");
                last_error = Some(error);
            }
            Err(_) => {}
        }
    }
}

/// Waits until a stopped partition's attempts in flight have finished and been recorded (its
/// lease still holds meanwhile), at most [`DRAIN_MAX`].
async fn drain(shard: &Shard) {
    let in_flight = || shard.state().borrow().endpoints.values().map(|entry| u64::from(entry.in_flight)).sum::<u64>();
    let started = std::time::Instant::now();
    while started.elapsed() < DRAIN_MAX && in_flight() > 0 {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Partitions {
    /// A listing over every partition (`GET /admin/endpoints`, `GET /admin/events` without an
    /// endpoint): each partition's owner answers its own page, and the pages are merged into
    /// one, as the shards' pages are merged alone. A partition without an owner fails the whole
    /// listing with 503 E3004 rather than answering an incomplete page as if it were whole.
    pub async fn list_everywhere(&self, route: Route, request: Request) -> Response {
        let (key, limit) = match &route {
            Route::ListEndpoints(query) => ("endpoints", query.limit),
            Route::ListEvents(query) => ("events", query.limit),
            _ => return EngineError::NotFound("not a listing".into()).into_response(),
        };
        let mut items = Vec::new();
        let mut more = false;
        for partition in 0..self.node.config.partitions {
            let response = self.run_request(partition, route.clone(), request.clone()).await;
            if response.status != 200 {
                return response;
            }
            let Ok(page) = serde_json::from_slice::<serde_json::Value>(&response.body) else {
                return EngineError::Unavailable(format!("partition {partition}'s page does not parse"))
                    .into_response();
            };
            more |= !page["next_cursor"].is_null();
            if let Some(found) = page[key].as_array() {
                items.extend(found.iter().cloned());
            }
        }
        let mut page = if key == "endpoints" {
            let matches = items.into_iter().filter_map(|json| Some((json["id"].as_str()?.to_string(), json))).collect();
            crate::admin::events::endpoints_page(matches, limit)
        } else {
            let matches = items
                .into_iter()
                .filter_map(|json| Some((crate::model::ids::EventId::parse(json["event_id"].as_str()?)?, json)))
                .collect();
            crate::admin::events::page(matches, limit)
        };
        // A partition with more than it showed: the merged page ends where the next one starts.
        if more && page["next_cursor"].is_null() {
            let last = page[key].as_array().and_then(|items| items.last()).cloned();
            let cursor = last
                .and_then(|json| json[if key == "endpoints" { "id" } else { "event_id" }].as_str().map(str::to_string));
            page["next_cursor"] = cursor.map_or(serde_json::Value::Null, serde_json::Value::String);
        }
        Response::json(200, page.to_string().into_bytes())
    }
}

/// A partition whose lease does not hold by this node's clock, or whose `Takeover` by another
/// node this one has seen, takes no request: an owner woken from a pause past its lease would
/// otherwise accept an ingest (with a key its successor may have accepted meanwhile) before it
/// learns it was deposed. 503 E3004: the client retries and reaches the owner.
fn lapsed(shard: &Shard) -> Option<Response> {
    (!shard.writable()).then(|| {
        EngineError::Unavailable(format!(
            "partition {} is between owners (its lease here lapsed or moved); retry",
            shard.index
        ))
        .into_response()
    })
}

/// The peer a forwarded request is recorded with: the owner did not see the client.
fn peer() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs the lease driver for this node until shutdown, recording what the node should own;
/// at shutdown gives every lease up so that the others take over at once.
pub async fn run_leases(node: Arc<ClusterNode>, shared: Arc<Shared>) {
    let config = crate::cluster::leases::LeaseConfig {
        node: node.config.node.clone(),
        address: node.address.clone(),
        partitions: node.config.partitions,
        lease_ms: node.config.lease_ms,
        skew_ms: node.config.skew_ms,
    };
    let drained = Arc::clone(&node);
    let gate = move |partition: u32, epoch: u64| drained.load(partition, |slot| &slot.drained) == epoch;
    let mut driver =
        crate::cluster::leases::LeaseDriver::new(crate::cluster::nats::NatsBucket::new(node.link.clone()), config)
            .with_release_gate(Box::new(gate));
    let round = Duration::from_millis((node.config.lease_ms / 10).max(100));
    let clock = crate::clock::now_ms;
    while !shared.is_shutting_down() {
        let changes = driver.round(&clock).await;
        // First how long each lease holds, then what is owned: a thread that opens a partition
        // it now holds finds its lease writable.
        for partition in 0..node.config.partitions {
            node.store(partition, |slot| &slot.writable_until, driver.writable_until(partition).unwrap_or(0));
        }
        for change in changes {
            node.apply(change);
        }
        node.set_seen(driver.seen().clone());
        let mut waited = Duration::ZERO;
        while waited < round && !shared.is_shutting_down() {
            monoio::time::sleep(RECONCILE_EVERY).await;
            waited += RECONCILE_EVERY;
        }
    }
    // Every thread first finishes the attempts in flight of the partitions it gives up.
    let started = std::time::Instant::now();
    while node.draining.load(Ordering::Acquire) > 0 && started.elapsed() < DRAIN_MAX + Duration::from_secs(1) {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    for slot in &node.slots {
        slot.writable_until.store(0, Ordering::Release);
    }
    for change in driver.release_all(clock()).await {
        node.apply(change);
    }
}
