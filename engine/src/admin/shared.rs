//! What all shards share: the token, every shard's inbox, the destination policy, the resolver,
//! the index handle, the readiness and shutdown flags, and the channel subscriptions. Read-mostly;
//! lock-free but for the subscriptions, read by publishes and written only when endpoints change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use crate::admin::access::AccessTable;

use crate::error::EngineError;
use crate::limits;
use crate::model::subscriptions::Subscriptions;
use crate::shard::recovery::StorageHealth;

/// What all shards share: read-mostly, lock-free.
pub struct Shared {
    /// Number of shards.
    pub shards: usize,
    /// Bearer token for `/admin/*`.
    pub admin_token: String,
    /// Every shard's inbox, by shard index.
    pub inboxes: Vec<crate::admin::inbox::Inbox>,
    /// The data directory (the audit endpoints read the chain files).
    pub data_directory: std::path::PathBuf,
    /// Which destinations deliveries may reach (endpoint URLs with a refused literal IP are
    /// rejected when created).
    pub destinations: kapsel_http::DestinationPolicy,
    /// DNS resolution off the shards, shared by every shard's client.
    pub resolver: kapsel_http::Resolver,
    /// The Postgres index, when `DATABASE_URL` is set.
    pub index: Option<crate::index::IndexHandle>,
    pub(crate) ready_shards: AtomicUsize,
    pub(crate) serving_shards: AtomicUsize,
    shutting_down: AtomicBool,
    /// Each shard's storage health, set once its log is open.
    storage: Vec<OnceLock<Arc<StorageHealth>>>,
    /// Which endpoints each channel's publishes reach, for every shard's endpoints. Written only
    /// when an endpoint changes (by its shard, after the change is durable, and at start before
    /// any shard serves); read by each publish.
    subscriptions: RwLock<Subscriptions>,
    /// Every shard's endpoints by id, with their tenants (a tenant's endpoint count).
    endpoint_tenants: RwLock<HashMap<String, String>>,
    /// Tenants and keys, as shard 0 keeps them (`admin::access`).
    access: RwLock<AccessTable>,
    /// Each tenant's ingest rate limit, shared with every shard.
    pub tenant_limits: Arc<crate::shard::tenant_limits::TenantLimits>,
    /// Cluster mode: the node's link, leases and partitions (ADR 17); unset alone.
    pub(crate) cluster: OnceLock<Arc<crate::admin::cluster::ClusterNode>>,
}

impl Shared {
    pub(crate) fn new(
        shards: usize,
        admin_token: String,
        inboxes: Vec<crate::admin::inbox::Inbox>,
        data_directory: std::path::PathBuf,
        destinations: kapsel_http::DestinationPolicy,
        index: Option<crate::index::IndexHandle>,
    ) -> Self {
        Self {
            shards,
            admin_token,
            inboxes,
            data_directory,
            destinations,
            resolver: kapsel_http::Resolver::new(limits::RESOLVER_THREADS),
            index,
            ready_shards: AtomicUsize::new(0),
            serving_shards: AtomicUsize::new(shards),
            shutting_down: AtomicBool::new(false),
            storage: (0..shards).map(|_| OnceLock::new()).collect(),
            subscriptions: RwLock::new(Subscriptions::default()),
            endpoint_tenants: RwLock::new(HashMap::new()),
            access: RwLock::new(AccessTable::default()),
            tenant_limits: Arc::default(),
            cluster: OnceLock::new(),
        }
    }

    /// Reads the tenants and keys.
    pub fn access<T>(&self, read: impl FnOnce(&AccessTable) -> T) -> T {
        read(&self.access.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the tenants and keys with shard 0's registry (after a change is durable there,
    /// and at start before any shard serves).
    pub fn set_access(&self, access: &crate::state::Access) {
        let mut table = self.access.write().unwrap_or_else(PoisonError::into_inner);
        let fresh = AccessTable::of(access, &table);
        *table = fresh;
        let limits = access.tenants.values().map(|tenant| (tenant.id.as_str(), tenant.rate_limit_per_s));
        self.tenant_limits.set(limits, crate::clock::now_ms());
        self.tenant_limits
            .set_bounds(access.tenants.values().map(|tenant| (tenant.id.as_str(), tenant.events_waiting_max)));
    }

    /// Endpoints of a tenant, on every shard.
    pub fn endpoints_of(&self, tenant_id: &str) -> usize {
        let endpoints = self.endpoint_tenants.read().unwrap_or_else(PoisonError::into_inner);
        endpoints.values().filter(|tenant| tenant.as_str() == tenant_id).count()
    }

    /// Notes an endpoint's subscriptions (after its change is durable, or at start).
    pub fn subscribe(&self, endpoint: &crate::model::endpoint::Endpoint) {
        // A panic while the lock was held leaves an index that is still whole (each change is one
        // call), so a poisoned lock is used as it is.
        let mut subscriptions = self.subscriptions.write().unwrap_or_else(PoisonError::into_inner);
        // Channels belong to a tenant: an endpoint subscribes to its tenant's.
        let channels: Vec<String> = endpoint
            .channels
            .iter()
            .map(|channel| crate::state::tenant_channel(endpoint.tenant_id(), channel))
            .collect();
        subscriptions.set(&endpoint.id, &channels, &endpoint.event_types);
        drop(subscriptions);
        let mut tenants = self.endpoint_tenants.write().unwrap_or_else(PoisonError::into_inner);
        tenants.insert(endpoint.id.clone(), endpoint.tenant_id().to_string());
    }

    /// Forgets a deleted endpoint's subscriptions.
    pub fn unsubscribe(&self, endpoint_id: &str) {
        self.subscriptions.write().unwrap_or_else(PoisonError::into_inner).remove(endpoint_id);
        self.endpoint_tenants.write().unwrap_or_else(PoisonError::into_inner).remove(endpoint_id);
    }

    /// How many logs endpoints are spread over by their ids' hash: the shards, or in cluster
    /// mode the partitions.
    pub fn owners(&self) -> usize {
        self.cluster.get().map_or(self.shards, |node| node.config.partitions as usize)
    }

    /// The endpoints a publish of `event_type` to `channel` reaches (at most `limit`; `true` when
    /// more match).
    pub fn subscribers(&self, channel: &str, event_type: &str, limit: usize) -> (Vec<Arc<str>>, bool) {
        self.subscriptions.read().unwrap_or_else(PoisonError::into_inner).matching(channel, event_type, limit)
    }

    /// `Ok` while every shard has recovered and none is shutting down; otherwise E3004.
    pub fn check_serving(&self) -> Result<(), EngineError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable("shutting down".into()));
        }
        if self.ready_shards.load(Ordering::Acquire) < self.shards {
            return Err(EngineError::Unavailable("recovering the write-ahead log".into()));
        }
        Ok(())
    }

    /// Registers shard `index`'s storage health once its log is open.
    pub(crate) fn register_storage(&self, index: usize, health: Arc<StorageHealth>) {
        if let Some(slot) = self.storage.get(index) {
            let _ = slot.set(health);
        }
    }

    /// `Err` (503 E3003) naming every shard whose log cannot write now, and why.
    pub fn check_storage(&self) -> Result<(), EngineError> {
        let failed: Vec<String> = self
            .storage
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let failure = slot.get()?.failure()?;
                Some(format!("shard {index} ({}: {})", failure.kind, failure.reason))
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(EngineError::Storage(format!(
            "the write-ahead log cannot write on {}; new events for those shards' endpoints get 503 E3003 until it is reopened (retried automatically)",
            failed.join(", ")
        )))
    }

    /// True once every shard has replayed its log.
    pub fn is_ready(&self) -> bool {
        self.ready_shards.load(Ordering::Acquire) >= self.shards
    }

    /// Starts a graceful shutdown: every shard stops accepting, finishes in-flight requests,
    /// flushes its log and exits.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wake_all();
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn wake_all(&self) {
        for inbox in &self.inboxes {
            inbox.wake();
        }
    }
}
