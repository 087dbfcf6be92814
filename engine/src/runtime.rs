//! Starting and stopping the shards: one thread per shard, each with its own monoio runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use kapsel_http::{ServerConfig, Shutdown};
use kapsel_wal::{IoBackend, Options as WalOptions};

use crate::admin::inbox::{inbox, InboxReceiver};
use crate::admin::service::Service;
use crate::admin::shared::Shared;
use crate::clock::now_ms;
use crate::shard::Shard;
use crate::state::StateLimits;

/// Which monoio driver the shards run (`KAPSEL_IO_DRIVER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring; start-up fails where it is unavailable.
    Uring,
    /// epoll (monoio's legacy driver).
    Legacy,
}

impl IoDriver {
    /// Parses `auto`, `uring` or `legacy`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "uring" | "io_uring" => Some(Self::Uring),
            "legacy" | "epoll" => Some(Self::Legacy),
            _ => None,
        }
    }

    fn resolve(self) -> Self {
        match self {
            Self::Auto if monoio::utils::detect_uring() => Self::Uring,
            Self::Auto => Self::Legacy,
            chosen => chosen,
        }
    }
}

/// Everything the engine needs to start.
#[derive(Clone)]
pub struct EngineConfig {
    /// Listen address (`SERVER_ADDR`); port 0 picks a free port, shared by all shards.
    pub listen: SocketAddr,
    /// Data directory (`KAPSEL_DATA_DIR`).
    pub data_directory: PathBuf,
    /// Number of shards (`KAPSEL_SHARDS`).
    pub shards: usize,
    /// monoio driver (`KAPSEL_IO_DRIVER`).
    pub io_driver: IoDriver,
    /// Admin bearer token.
    pub admin_token: String,
    /// HTTP limits and timeouts (the payload limit is `KAPSEL_MAX_PAYLOAD_BYTES`).
    pub server: ServerConfig,
    /// Segment size of each shard's log (`KAPSEL_WAL_SEGMENT_BYTES`).
    pub wal_segment_bytes: u64,
    /// In-memory bounds.
    pub state_limits: StateLimits,
    /// Outbound deliveries: destination policy (`KAPSEL_ALLOW_DESTINATIONS`), TLS roots
    /// (webpki plus `KAPSEL_EXTRA_CA_FILE`), connect timeout, pooling.
    pub client: kapsel_http::ClientConfig,
    /// The Postgres index (`DATABASE_URL`); `None` runs without one.
    pub index: Option<crate::index::IndexConfig>,
    /// How old a sealed segment must be before retention may remove it (`KAPSEL_RETENTION`);
    /// raised to the idempotency window when that is longer.
    pub retention_ms: u64,
    /// Cluster mode on NATS JetStream (`KAPSEL_NATS_URL`, ADR 17); `None` runs alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the listen address failed.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A shard thread could not be started or failed during start-up.
    #[error("shard {shard}: {reason}")]
    Shard {
        /// The shard.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
    /// The index thread could not be started.
    #[error("index thread: {0}")]
    Index(std::io::Error),
    /// Cluster mode could not start: NATS unreachable, or the cluster made with another
    /// partition count.
    #[error("cluster mode: {0}")]
    Cluster(String),
    /// Another process holds the data directory.
    #[error("{0} is in use by another Kapsel process (its lock file is held); two processes must never share a data directory")]
    Locked(PathBuf),
    /// The data directory's lock file could not be created or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The running engine.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    address: SocketAddr,
    index: Option<crate::index::Index>,
    /// Held until the engine is dropped: one process per data directory.
    _lock: std::fs::File,
}

impl Engine {
    /// Binds the listeners and starts every shard. Returns once the threads run; readiness
    /// (every log replayed) is [`Engine::is_ready`].
    pub fn start(mut config: EngineConfig) -> Result<Self, StartError> {
        let lock = lock_data_directory(&config.data_directory)?;
        let (listeners, address) = bind_listeners(config.listen, config.shards)?;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.shards).map(|_| inbox()).unzip();
        let node = match &config.cluster {
            Some(cluster) => Some(join_cluster(cluster, address, config.shards).map_err(StartError::Cluster)?),
            None => None,
        };
        // In cluster mode the index is fed by the owners of the partitions, from their streams.
        let (slots, logs) = match &node {
            Some(node) => (
                node.config.partitions as usize,
                crate::index::Logs::Streams(Arc::new(crate::cluster::nats::IndexSource::new(node.link.clone()))),
            ),
            None => (config.shards, crate::index::Logs::Wal(config.data_directory.clone())),
        };
        let index = match &config.index {
            Some(index_config) => {
                Some(crate::index::Index::start(index_config.clone(), slots, logs).map_err(StartError::Index)?)
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(
            config.shards,
            config.admin_token.clone(),
            senders,
            config.data_directory.clone(),
            config.client.destinations.clone(),
            index.as_ref().map(crate::index::Index::handle),
        ));
        if let Some(node) = node {
            // An event travels in one NATS message (forwarded to its owner, then published):
            // larger bodies are refused up front with 413 E1002 rather than failing there.
            let cap = node.link.max_payload().saturating_sub(crate::limits::CLUSTER_MESSAGE_HEADROOM_BYTES);
            if cap > 0 && config.server.limits.payload_bytes_max > cap {
                tracing::warn!(
                    max_payload_bytes = cap,
                    nats_max_payload = node.link.max_payload(),
                    "cluster mode: ingest bodies are limited by NATS' max_payload; raise it in nats-server's configuration for larger ones"
                );
                config.server.limits = config.server.limits.with_payload_bytes_max(cap);
            }
            let _ = shared.cluster.set(Arc::new(node));
        }
        let driver = config.io_driver.resolve();
        tracing::info!(%address, shards = config.shards, ?driver, "starting shards");
        let mut threads = Vec::with_capacity(config.shards);
        for (index, (listener, receiver)) in listeners.into_iter().zip(receivers).enumerate() {
            let (config, shared_for_thread) = (config.clone(), Arc::clone(&shared));
            let thread = std::thread::Builder::new()
                .name(format!("kapsel-shard-{index}"))
                .spawn(move || run_shard(index, driver, config, shared_for_thread, listener, receiver))
                .map_err(|error| StartError::Shard { shard: index, reason: error.to_string() })?;
            threads.push(thread);
        }
        Ok(Self { shared, threads, address, index, _lock: lock })
    }

    /// The address the shards listen on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// True once every shard has replayed its log.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// The state shared by the shards.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        self.shared.begin_shutdown();
    }

    /// Waits for every shard to exit; the first shard error, if any.
    pub fn wait(self) -> Result<(), String> {
        let mut outcome = Ok(());
        for (index, thread) in self.threads.into_iter().enumerate() {
            let result = thread.join().unwrap_or_else(|_| Err("the shard thread panicked".into()));
            if let Err(reason) = result {
                tracing::error!(shard = index, %reason, "shard failed");
                if outcome.is_ok() {
                    outcome = Err(format!("shard {index}: {reason}"));
                }
            }
        }
        if let Some(index) = self.index {
            index.stop();
        }
        outcome
    }
}

/// Connects to NATS, creates the cluster's bucket and partition streams if they are missing and
/// checks the partition count: the node, owning nothing yet.
fn join_cluster(
    config: &crate::cluster::ClusterConfig,
    address: SocketAddr,
    threads: usize,
) -> Result<crate::admin::cluster::ClusterNode, String> {
    let options = kapsel_nats::LinkOptions {
        urls: config.urls.clone(),
        name: format!("kapsel-{}", config.node),
        ..kapsel_nats::LinkOptions::default()
    };
    let link = kapsel_nats::Link::connect(options).map_err(|error| error.to_string())?;
    crate::cluster::nats::prepare(&link, config.partitions, config.replicas)?;
    crate::cluster::check_partitions(&link, config.partitions)?;
    tracing::info!(node = %config.node, partitions = config.partitions, replicas = config.replicas, "joined the cluster");
    Ok(crate::admin::cluster::ClusterNode::new(config.clone(), link, address.to_string(), threads))
}

/// Takes `<data>/kapsel.lock` exclusively (an advisory lock the kernel drops with the process),
/// so that a second process on the same directory fails instead of corrupting the logs.
fn lock_data_directory(directory: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = directory.join("kapsel.lock");
    let failed = |source| StartError::Lock { path: path.clone(), source };
    kapsel_wal::create_dir_all_durable(directory).map_err(failed)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(directory.to_path_buf())),
        Err(std::fs::TryLockError::Error(error)) => Err(failed(error)),
    }
}

/// One SO_REUSEPORT listener per shard on the same address. With port 0, the first listener
/// picks the port and the others join it.
fn bind_listeners(
    requested: SocketAddr,
    shards: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let mut address = requested;
    if requested.port() != 0 {
        // SO_REUSEPORT lets any process of the same user join an address: a second Kapsel (with
        // another data directory) started on a port in use would silently take a share of the
        // first one's connections. A bind without it fails while anything listens there.
        refuse_if_listened(requested).map_err(|source| StartError::Listen { address, source })?;
    }
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let listener = bind_reuse_port(address).map_err(|source| StartError::Listen { address, source })?;
        address = listener.local_addr().map_err(|source| StartError::Listen { address, source })?;
        listeners.push(listener);
    }
    Ok((listeners, address))
}

/// `Err(AddrInUse)` when a socket listens on `address` already: a bind with SO_REUSEADDR only
/// (which passes over connections in TIME_WAIT, not over a listener), released at once.
fn refuse_if_listened(address: SocketAddr) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())
}

/// A non-blocking listener with SO_REUSEPORT, so every shard can bind the same address and the
/// kernel spreads connections over them.
fn bind_reuse_port(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn run_shard(
    index: usize,
    driver: IoDriver,
    config: EngineConfig,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    receiver: InboxReceiver,
) -> Result<(), String> {
    let serving = Serving { shared: Arc::clone(&shared), done: std::cell::Cell::new(false) };
    let outcome = block_on(driver, shard_main(index, config, Arc::clone(&shared), listener, receiver, &serving));
    if outcome.is_err() {
        // One shard down means the service cannot keep its promises: stop the others too.
        shared.begin_shutdown();
    }
    outcome
}

/// Counts a shard out of `serving_shards` exactly once: when it stops serving, or when its
/// thread ends any other way (an error, a panic). The other shards' inbox loops wait until no
/// shard serves, so a count that is never taken back, or taken back twice, would hang a
/// shutdown. A panicking shard also stops the others: its endpoints are unreachable.
struct Serving {
    shared: Arc<Shared>,
    done: std::cell::Cell<bool>,
}

impl Serving {
    fn finish(&self) {
        if !self.done.replace(true) {
            self.shared.serving_shards.fetch_sub(1, Ordering::AcqRel);
            self.shared.wake_all();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("a shard thread panicked; stopping every shard");
            self.shared.begin_shutdown();
        }
        self.finish();
    }
}

fn block_on<F: Future<Output = Result<(), String>>>(driver: IoDriver, future: F) -> Result<(), String> {
    match driver {
        IoDriver::Uring | IoDriver::Auto => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .map_err(|error| format!("cannot start an io_uring runtime: {error}"))?;
            runtime.block_on(future)
        }
        IoDriver::Legacy => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map_err(|error| format!("cannot start an epoll runtime: {error}"))?;
            runtime.block_on(future)
        }
    }
}

async fn shard_main(
    index: usize,
    config: EngineConfig,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    receiver: InboxReceiver,
    serving: &Serving,
) -> Result<(), String> {
    let mut shard = open_shard(index, &config).await?.with_tenant_limits(Arc::clone(&shared.tenant_limits));
    // In cluster mode the index's slots are the partitions, indexed by their owners.
    if let (Some(handle), None) = (&shared.index, shared.cluster.get()) {
        shard = shard.with_index(handle.clone());
    }
    let shard = Rc::new(shard);
    shared.register_storage(index, Arc::clone(shard.storage()));
    let _recovery = monoio::spawn(crate::shard::recovery::run(Rc::clone(&shard)));
    // Tenants and keys (kept by shard 0) are known before any shard authenticates a request.
    if index == crate::admin::access::ACCESS_SHARD {
        shared.set_access(&shard.state().borrow().access);
    }
    if let (Some(node), true) = (shared.cluster.get(), index == crate::admin::access::ACCESS_SHARD) {
        // In a cluster tenants, keys and every endpoint's channels are the cluster's: known
        // before this node serves.
        let caught_up = Rc::new(std::cell::Cell::new(0));
        let (following, partitions) = (Arc::clone(node), node.config.partitions as usize);
        monoio::spawn(crate::admin::cluster::follow_configuration(
            following,
            Arc::clone(&shared),
            Rc::clone(&caught_up),
        ));
        while caught_up.get() < partitions && !shared.is_shutting_down() {
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    warn_open_ingest(index, &shard.state().borrow());
    // Every shard's subscriptions are known before any shard serves a publish.
    for entry in shard.state().borrow().endpoints.values() {
        shared.subscribe(&entry.endpoint);
    }
    shared.ready_shards.fetch_add(1, Ordering::AcqRel);
    let listener = monoio::net::TcpListener::from_std(listener).map_err(|error| format!("listener: {error}"))?;
    let http_shutdown = Shutdown::new();
    let inbox_task = {
        let (shared_for_stop, http_shutdown) = (Arc::clone(&shared), http_shutdown.clone());
        let shard_for_stop = Rc::clone(&shard);
        monoio::spawn(receiver.run(Rc::clone(&shard), Arc::clone(&shared), move || {
            if shared_for_stop.is_shutting_down() {
                http_shutdown.trigger();
                // The scheduler notices at once instead of at its next idle wake-up.
                shard_for_stop.notify_scheduler();
            }
            // Hops keep arriving while any shard still serves; stop only after all are done.
            shared_for_stop.serving_shards.load(Ordering::Acquire) == 0
        }))
    };
    let client = Rc::new(kapsel_http::Client::new(config.client.clone(), shared.resolver.clone()));
    let mut service = Service::new(Rc::clone(&shard), Arc::clone(&shared));
    let (mut leases, mut partitions_task) = (None, None);
    if let Some(node) = shared.cluster.get() {
        let partitions = crate::admin::cluster::Partitions::new(
            Arc::clone(node),
            Arc::clone(&shared),
            Rc::clone(&client),
            config.state_limits,
            config.server.limits,
            config.retention_ms.max(config.state_limits.idempotency_window_ms),
        );
        partitions_task = Some(monoio::spawn(Rc::clone(&partitions).reconcile(index, config.shards)));
        if index == 0 {
            leases = Some(monoio::spawn(crate::admin::cluster::run_leases(Arc::clone(node), Arc::clone(&shared))));
        }
        service = service.with_partitions(partitions);
    }
    let service = Rc::new(service);
    let scheduler = {
        let shared = Arc::clone(&shared);
        let stop: Rc<dyn Fn() -> bool> = Rc::new(move || shared.is_shutting_down());
        monoio::spawn(crate::delivery::run_scheduler(Rc::clone(&shard), client, stop))
    };
    let _handoffs = {
        let shared_for_stop = Arc::clone(&shared);
        let stop: Rc<dyn Fn() -> bool> = Rc::new(move || shared_for_stop.is_shutting_down());
        monoio::spawn(crate::admin::publish::run_handoffs(Rc::clone(&shard), Arc::clone(&shared), stop))
    };
    let _retention = {
        let shared = Arc::clone(&shared);
        let stop: Rc<dyn Fn() -> bool> = Rc::new(move || shared.is_shutting_down());
        let age_ms = config.retention_ms.max(config.state_limits.idempotency_window_ms);
        monoio::spawn(crate::shard::retention::run(
            Rc::clone(&shard),
            crate::shard::retention::RetentionPolicy::new(age_ms),
            stop,
        ))
    };
    kapsel_http::serve(listener, Rc::new(config.server.clone()), service, http_shutdown).await;
    scheduler.await;
    if let Some(partitions) = partitions_task {
        // Stops the partitions this thread owns and lets their attempts in flight finish.
        partitions.await;
    }
    if let Some(leases) = leases {
        // Gives the leases up, so the other nodes take the partitions over at once.
        leases.await;
    }
    serving.finish();
    inbox_task.await;
    // Attempts still in flight finish or are dropped with the runtime; either way what was
    // appended is made durable here, and an attempt without its record is made again later.
    if let Some(wal) = shard.wal() {
        wal.flush().await.map_err(|error| format!("flushing the write-ahead log: {error}"))?;
    }
    tracing::info!(shard = index, "shard stopped");
    Ok(())
}

/// Names the endpoints made before `ingest_auth` existed: they keep open ingest (anyone who
/// reaches the port may send them events) until an operator sets their `ingest_auth`.
fn warn_open_ingest(index: usize, state: &crate::state::ShardState) {
    /// Endpoint ids named in the warning, at most; the count covers the rest.
    const NAMED_MAX: usize = 20;
    let open: Vec<&str> = state
        .endpoints
        .values()
        .filter(|entry| entry.endpoint.ingest_auth.is_none())
        .map(|entry| entry.endpoint.id.as_str())
        .collect();
    if open.is_empty() {
        return;
    }
    let named = open.iter().take(NAMED_MAX).copied().collect::<Vec<_>>().join(", ");
    tracing::warn!(
        shard = index,
        endpoints = open.len(),
        "endpoints made before ingest_auth existed keep open ingest (anyone who reaches Kapsel may send them events): {named}{}; set their ingest_auth (for example {{\"type\":\"key\"}})",
        if open.len() > NAMED_MAX { ", …" } else { "" }
    );
}

/// Opens the shard's log and rebuilds its state by replaying it.
async fn open_shard(index: usize, config: &EngineConfig) -> Result<Shard, String> {
    let directory = config.data_directory.join("wal").join(format!("shard-{index}"));
    let options =
        WalOptions { segment_bytes: config.wal_segment_bytes, backend: IoBackend::default(), ..WalOptions::default() };
    let started = std::time::Instant::now();
    let (shard, opened) = Shard::open(index, &directory, options, config.state_limits, now_ms()).await?;
    let state = shard.state().borrow();
    tracing::info!(
        shard = index,
        records = opened.records,
        endpoints = state.endpoints.len(),
        snapshot_endpoints = opened.snapshot_endpoints,
        events = state.events.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replayed write-ahead log"
    );
    drop(state);
    Ok(shard)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn shared(shards: usize) -> Arc<Shared> {
        let (inboxes, _receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| inbox()).unzip();
        Arc::new(Shared::new(
            shards,
            "token".into(),
            inboxes,
            PathBuf::from("/nonexistent"),
            kapsel_http::DestinationPolicy::default(),
            None,
        ))
    }

    // A shard thread that panics takes itself out of the serving count (the others' inbox
    // loops wait for it to reach zero at shutdown) and stops the other shards.
    #[test]
    fn a_panicking_shard_is_counted_out_and_stops_the_others() {
        let shared = shared(2);
        let for_thread = Arc::clone(&shared);
        let outcome = std::thread::spawn(move || {
            let _serving = Serving { shared: for_thread, done: std::cell::Cell::new(false) };
            panic!("a bug in a shard");
        })
        .join();
        assert!(outcome.is_err());
        assert_eq!(shared.serving_shards.load(Ordering::Acquire), 1);
        assert!(shared.is_shutting_down());
    }

    // A shard that stops serving and then fails (its final flush) is counted out once, not
    // twice: a double decrement wrapped the count and hung every other shard's shutdown.
    #[test]
    fn a_shard_is_counted_out_exactly_once() {
        let shared = shared(2);
        {
            let serving = Serving { shared: Arc::clone(&shared), done: std::cell::Cell::new(false) };
            serving.finish();
            serving.finish();
        }
        assert_eq!(shared.serving_shards.load(Ordering::Acquire), 1);
        assert!(!shared.is_shutting_down());
    }
}
