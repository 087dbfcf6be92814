//! A shard's operations on the endpoints and events it owns.
//!
//! Every change is a record: [`Shard::submit`] appends it to the shard's log and queues it; a
//! small task (the applier) waits for each record's fsync in LSN order and then applies it with
//! [`ShardState::apply`], the function replay uses. Operations wait for their record to be
//! applied ([`Shard::durable`]) before they answer, so nothing is answered as done before its
//! fsync, and what the state shows is always what a replay of the log would give.

pub mod access;
mod partition;
pub mod publish;
pub mod readback;
pub mod recovery;
pub mod retention;
pub mod snapshot;
pub mod stats;
pub mod stream;
pub mod tenant_limits;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use kapsel_wal::{Commit, Position, Wal, WalError};
use serde_json::Value;

use crate::error::EngineError;
use crate::index::{Change, IndexHandle, Row};
use crate::limits;
use crate::model::endpoint::EndpointInput;
use crate::model::ids::EventId;
use crate::model::records::{EndpointDeleted, EventReceived, Record, Requeued};
use crate::shard::partition::Ticket;
use crate::shard::readback::{Reader, Source};
use crate::shard::stream::{Outgoing, PartitionStream};
use crate::state::idempotency::Remembered;
use crate::state::{Payload, ReadRequest, ShardState, Writer};

/// An inbound webhook, as the ingest route hands it to the owning shard.
#[derive(Debug)]
pub struct Ingest {
    /// Target endpoint.
    pub endpoint_id: String,
    /// `X-Idempotency-Key`, already validated.
    pub idempotency_key: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The sender's `traceparent`, when valid (W3C Trace Context processing done).
    pub traceparent: Option<String>,
    /// The sender's `tracestate`, combined and valid.
    pub tracestate: Option<String>,
    /// The event type.
    pub event_type: String,
    /// The request's header fields, for the endpoint's inbound signature check.
    pub headers: kapsel_http::ApplicationHeaders,
    /// Who the request's bearer token says it comes from.
    pub bearer: IngestBearer,
    /// The body.
    pub payload: Vec<u8>,
}

/// Who an ingest's `Authorization: Bearer` says it comes from (the admin layer reads it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestBearer {
    /// No token, or one that is neither the operator token nor a live key.
    Nobody,
    /// The operator token.
    Operator,
    /// A tenant's key.
    Key {
        /// Its tenant.
        tenant_id: String,
        /// Whether it has the `ingest` scope.
        ingest: bool,
    },
}

impl IngestBearer {
    /// Whether it may ingest to an endpoint of `tenant` whose `ingest_auth` is `key`.
    fn may_ingest_to(&self, tenant: &str) -> bool {
        match self {
            Self::Operator => true,
            Self::Key { tenant_id, ingest } => *ingest && tenant_id == tenant,
            Self::Nobody => false,
        }
    }
}

/// How an ingest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A new event, durable.
    Received(EventId),
    /// A repeated idempotency key: the first event's id.
    Duplicate(EventId),
}

/// A record appended and waiting for its fsync, to be applied in LSN order.
struct Pending {
    commit: Commit,
    record: Record,
    now_ms: u64,
}

/// A key whose record is on its way to a stream, and, once refused, until when it is kept.
type PendingKey = (Remembered, Option<Uncertain>);

/// Until when a key whose record the stream refused is kept: its record, if stored all the
/// same, lies at or below the stream's last sequence when the refusal came, so once the shard
/// has applied that far the state's table knows the key or nobody does. When that sequence
/// could not be learned, a time.
#[derive(Clone, Copy, Debug)]
struct Uncertain {
    applied: Option<u64>,
    until_ms: u64,
}

/// The appended-but-not-applied records and who waits for them.
struct Applying {
    queue: VecDeque<Pending>,
    /// Stream mode: each published record's ticket (numbered from
    /// [`partition::TICKET_BASE`], as [`Shard::submit`] returns them) until it is applied, or
    /// refused (kept for every waiter; the oldest forgotten past a bound).
    tickets: BTreeMap<u64, Ticket>,
    next_ticket: u64,
    /// Stream mode: the tickets stored and not yet applied, by sequence.
    stored: BTreeMap<u64, u64>,
    /// Stream mode: refused tickets, oldest first.
    refused: VecDeque<u64>,
    /// Stream mode: idempotency keys of records published and not yet applied (the state's
    /// table learns a key only from the record's application, live as on replay).
    /// A key whose record the stream refused stays until the given time (Unix ms): the record
    /// may be stored all the same (an acknowledgement lost), and a repeat meanwhile is told to
    /// retry rather than admitted as a second event.
    pending_keys: std::collections::HashMap<(Rc<str>, Box<str>), PendingKey>,
    /// Stream mode: the sequence of the `Takeover` that deposed this owner; its records after
    /// it are fenced, so none of them counts as done.
    deposed_at: Option<u64>,
    applied_lsn: u64,
    /// The first record whose fsync failed, and why: it and every later one are not durable.
    failed: Option<(u64, String)>,
    /// Counts reopens of the log after a failure: LSNs past `applied_lsn` are given again after
    /// one, so a wait begun before it must not be answered by a record appended after it.
    generation: u64,
    applier: Option<Waker>,
    waiters: Vec<Waker>,
}

/// What the shard and its applier task share.
struct Core {
    state: RefCell<ShardState>,
    applying: RefCell<Applying>,
    scheduler: Cell<Option<Waker>>,
    handoff: Cell<Option<Waker>>,
    /// The tenants' shared bounds, and this shard's number for its reports.
    tenant_limits: RefCell<std::sync::Arc<tenant_limits::TenantLimits>>,
    index: usize,
}

impl Core {
    /// Tells the other shards how many events of each bounded tenant wait here.
    fn report_waiting(&self) {
        let limits = self.tenant_limits.borrow();
        let tenants = limits.bounded();
        if tenants.is_empty() {
            return;
        }
        let state = self.state.borrow();
        for tenant in tenants {
            limits.report(&tenant, self.index, state.tenant_waiting(&tenant) as u64);
        }
    }

    /// After an applier applied records: wakes whoever waits for them, reports the tenants'
    /// waiting events and wakes the scheduler.
    fn records_applied(&self) {
        for waker in self.applying.borrow_mut().waiters.drain(..) {
            waker.wake();
        }
        self.report_waiting();
        self.notify_scheduler();
    }

    fn notify_scheduler(&self) {
        if let Some(waker) = self.scheduler.take() {
            waker.wake();
        }
    }
}

/// How long a stream shard keeps an idempotency key whose record the stream refused, when the
/// stream's end could not be learned: a repeat meanwhile is told to retry (the record may be
/// stored all the same and come back applied).
pub const KEY_UNCERTAIN_MS: u64 = 5_000;

impl Uncertain {
    /// Whether the key's record would have been applied by now, had it been stored.
    fn settled(&self, applied_lsn: u64, now_ms: u64) -> bool {
        match self.applied {
            Some(last) => applied_lsn >= last,
            None => now_ms >= self.until_ms,
        }
    }
}

/// A repeat of a key whose first record is not known to be stored yet.
pub(crate) fn key_unsettled(key: &str) -> EngineError {
    EngineError::Unavailable(format!(
        "the first request with idempotency key {key} has no known outcome yet; retry in a few seconds"
    ))
}

/// Where a shard's records go.
enum Log {
    /// The local write-ahead log (single-node mode).
    Local(Wal),
    /// A partition's stream (cluster mode), written as the owner of the lease at `epoch`.
    Stream {
        stream: std::sync::Arc<dyn PartitionStream>,
        epoch: u64,
        /// The partition.
        partition: usize,
    },
}

/// One shard: its log and its state. In cluster mode, one owned partition: its stream and its
/// state ([`Shard::open_partition`]).
pub struct Shard {
    /// Shard number (in cluster mode, the partition's).
    pub index: usize,
    log: Log,
    core: Rc<Core>,
    indexer: Option<IndexHandle>,
    /// Cluster mode: the partition registered with the index while this shard owns it.
    registration: Option<crate::index::Registration>,
    metrics: crate::shard::stats::ShardMetrics,
    reader: Reader,
    storage: std::sync::Arc<recovery::StorageHealth>,
}

/// What opening a shard found.
#[derive(Clone, Debug)]
pub struct Opened {
    /// Records replayed.
    pub records: u64,
    /// Endpoints the endpoint snapshot held.
    pub snapshot_endpoints: usize,
}

impl Shard {
    /// Opens shard `index`'s log in `directory` and rebuilds its state: the endpoint snapshot
    /// first, then every record through [`ShardState::apply`], as the live shard applied them.
    pub async fn open(
        index: usize,
        directory: &std::path::Path,
        options: kapsel_wal::Options,
        limits: crate::state::StateLimits,
        now_ms: u64,
    ) -> Result<(Self, Opened), String> {
        let shard_number = u16::try_from(index).map_err(|_| "too many shards".to_string())?;
        let mut state = ShardState::new(shard_number, limits);
        let snapshot_endpoints = crate::shard::snapshot::load_into(&mut state, directory)?;
        state.set_replaying(true);
        let mut replay_error = None;
        let (wal, recovery) = Wal::open(directory, options, |record| match Record::decode(record.kind, record.body) {
            Ok(decoded) => state.apply(record.lsn, record.position, decoded, now_ms),
            Err(error) => {
                replay_error
                    .get_or_insert_with(|| format!("record {} in {}: {error}", record.lsn, directory.display()));
            }
        })
        .await
        .map_err(|error| format!("opening the write-ahead log: {error}"))?;
        if let Some(error) = replay_error {
            return Err(error);
        }
        state.set_replaying(false);
        let shard = Self::new(index, wal, state).map_err(|error| error.to_string())?;
        Ok((shard, Opened { records: recovery.records, snapshot_endpoints }))
    }

    /// A shard over an opened log and the state replayed from it. Starts the applier task on
    /// the current monoio runtime and the shard's reader thread.
    pub fn new(index: usize, wal: Wal, state: ShardState) -> Result<Self, EngineError> {
        let reader = Reader::spawn(Source::Directory(wal.directory().to_path_buf()), &format!("kapsel-read-{index}"))
            .map_err(|error| EngineError::Unavailable(format!("cannot start the reader thread: {error}")))?;
        let applied_lsn = wal.durable_lsn();
        let shard = Self::assemble(index, Log::Local(wal), state, reader, applied_lsn);
        monoio::spawn(run_applier(Rc::clone(&shard.core)));
        Ok(shard)
    }

    /// The shard around its log, state and reader; its applier is started by the caller.
    fn assemble(index: usize, log: Log, state: ShardState, reader: Reader, applied_lsn: u64) -> Self {
        let applying = Applying {
            queue: VecDeque::new(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            stored: BTreeMap::new(),
            refused: VecDeque::new(),
            pending_keys: std::collections::HashMap::new(),
            deposed_at: None,
            applied_lsn,
            failed: None,
            generation: 0,
            applier: None,
            waiters: Vec::new(),
        };
        let core = Rc::new(Core {
            state: RefCell::new(state),
            applying: RefCell::new(applying),
            scheduler: Cell::new(None),
            handoff: Cell::new(None),
            tenant_limits: RefCell::default(),
            index,
        });
        Self {
            index,
            log,
            core,
            indexer: None,
            registration: None,
            metrics: crate::shard::stats::ShardMetrics::default(),
            reader,
            storage: std::sync::Arc::default(),
        }
    }

    /// Feeds every record this shard appends to the Postgres index (a partition's shard is
    /// given the index when it is opened: [`Shard::open_partition`]).
    pub fn with_index(mut self, index: IndexHandle) -> Self {
        let Log::Local(wal) = &self.log else {
            return self;
        };
        index.register(self.index, wal.durable_watermark());
        self.indexer = Some(index);
        self
    }

    /// Shares the tenants' rate limits with the other shards.
    pub fn with_tenant_limits(self, limits: std::sync::Arc<tenant_limits::TenantLimits>) -> Self {
        *self.core.tenant_limits.borrow_mut() = limits;
        self.core.report_waiting();
        self
    }

    /// Whether `tenant` has as many events waiting as its `events_waiting_max` allows.
    pub fn tenant_full(&self, tenant: &str) -> bool {
        let local = self.core.state.borrow().tenant_waiting(tenant) as u64;
        self.core.tenant_limits.borrow().full(tenant, self.index, local)
    }

    /// What this shard counts for `GET /metrics`.
    pub fn metrics(&self) -> &crate::shard::stats::ShardMetrics {
        &self.metrics
    }

    /// Whether the shard's log can write now, for `/readyz` and `/metrics` on any thread.
    pub fn storage(&self) -> &std::sync::Arc<recovery::StorageHealth> {
        &self.storage
    }

    /// The index, when `DATABASE_URL` is set.
    pub fn index_handle(&self) -> Option<&IndexHandle> {
        self.indexer.as_ref()
    }

    /// Cluster mode: stops indexing this partition here (it moved to another node, which goes
    /// on from the index's checkpoint).
    pub fn release_index(&self) {
        if let Some(registration) = &self.registration {
            registration.release();
        }
    }

    /// The partition's stream (cluster mode); `None` for a local log.
    pub fn stream(&self) -> Option<&std::sync::Arc<dyn PartitionStream>> {
        match &self.log {
            Log::Local(_) => None,
            Log::Stream { stream, .. } => Some(stream),
        }
    }

    /// The shard's local log; `None` for a partition's stream (cluster mode).
    pub fn wal(&self) -> Option<&Wal> {
        match &self.log {
            Log::Local(wal) => Some(wal),
            Log::Stream { .. } => None,
        }
    }

    /// Whether the shard may make attempts now: its log takes records (not poisoned after a
    /// storage failure) and, for a partition, it is still the owner and its lease holds by this
    /// node's clock (an attempt whose outcome cannot be recorded would be made again and again).
    pub fn writable(&self) -> bool {
        match &self.log {
            Log::Local(wal) => !wal.is_poisoned(),
            Log::Stream { stream, .. } => self.core.applying.borrow().deposed_at.is_none() && stream.writable(),
        }
    }

    /// For a partition's stream: the lease epoch it writes under, and whether a later owner's
    /// `Takeover` has deposed it.
    pub fn ownership(&self) -> Option<(u64, bool)> {
        match &self.log {
            Log::Local(_) => None,
            Log::Stream { epoch, .. } => Some((*epoch, self.core.applying.borrow().deposed_at.is_some())),
        }
    }

    /// The shard's state.
    pub fn state(&self) -> &RefCell<ShardState> {
        &self.core.state
    }

    /// Wakes the delivery scheduler: there may be new work.
    pub fn notify_scheduler(&self) {
        self.core.notify_scheduler();
    }

    /// Registers the scheduler's waker.
    pub fn park_scheduler(&self, waker: &Waker) {
        self.core.scheduler.set(Some(waker.clone()));
    }

    /// Wakes the handoff task: a publish has deliveries for other shards.
    pub fn notify_handoff(&self) {
        if let Some(waker) = self.core.handoff.take() {
            waker.wake();
        }
    }

    /// Registers the handoff task's waker.
    pub fn park_handoff(&self, waker: &Waker) {
        self.core.handoff.set(Some(waker.clone()));
    }

    /// Gives up the shard for its local log (at shutdown, to close it); `None` for a stream.
    pub fn into_wal(self) -> Option<Wal> {
        match self.log {
            Log::Local(wal) => Some(wal),
            Log::Stream { .. } => None,
        }
    }

    /// Appends a record and queues it to be applied once durable; its LSN (for a partition's
    /// stream, a ticket: the sequence is known once the stream acknowledged it). Not durable
    /// yet: await [`Shard::durable`].
    pub fn submit(&self, record: Record, now_ms: u64) -> Result<u64, EngineError> {
        let (kind, body) = record.encode()?;
        let wal = match &self.log {
            Log::Local(wal) => wal,
            Log::Stream { stream, epoch, partition } => {
                let writer = if record.is_owners() { Writer::Owner { epoch: *epoch } } else { Writer::Anyone };
                return self.publish_to_stream(
                    stream.as_ref(),
                    Outgoing { writer, kind, body: body.to_vec() },
                    *partition,
                );
            }
        };
        let commit = wal.append(kind, &body)?;
        let lsn = commit.lsn();
        if let Some(index) = &self.indexer {
            index.feed(Change { shard: self.index, lsn, row: Row::from_record(&record) });
        }
        let mut applying = self.core.applying.borrow_mut();
        applying.queue.push_back(Pending { commit, record, now_ms });
        if let Some(waker) = applying.applier.take() {
            waker.wake();
        }
        Ok(lsn)
    }

    /// Waits until the record at `lsn` is durable and applied; an error if its fsync failed.
    /// Call it right after [`Shard::submit`] gave `lsn`, with no await in between: a log
    /// reopened after a failure gives the LSNs of the failed records again. For a partition's
    /// stream `lsn` is the ticket: an error if the stream did not store the record or a later
    /// owner's `Takeover` came before it (it was fenced).
    pub fn durable(&self, lsn: u64) -> impl Future<Output = Result<(), EngineError>> + '_ {
        let generation = self.core.applying.borrow().generation;
        poll_fn(move |context| {
            let mut applying = self.core.applying.borrow_mut();
            if let Log::Stream { partition, .. } = &self.log {
                return partition::poll_ticket(&mut applying, lsn, *partition, context);
            }
            if applying.generation != generation {
                return Poll::Ready(Err(EngineError::Storage(
                    "the write-ahead log failed and was reopened while this record waited for its fsync".into(),
                )));
            }
            if let Some((failed_from, reason)) = &applying.failed {
                if lsn >= *failed_from {
                    return Poll::Ready(Err(EngineError::from(WalError::Poisoned { reason: reason.clone() })));
                }
            }
            if applying.applied_lsn >= lsn {
                return Poll::Ready(Ok(()));
            }
            applying.waiters.push(context.waker().clone());
            Poll::Pending
        })
    }

    /// Waits until every record of `lsns` is durable and applied: on a local log the last one's
    /// fsync covers the others, but a partition's stream stores or refuses each on its own.
    pub async fn durable_all(&self, lsns: &[u64]) -> Result<(), EngineError> {
        for lsn in lsns {
            self.durable(*lsn).await?;
        }
        Ok(())
    }

    /// Waits until the state has applied every record up to `lsn` (for a partition, every
    /// record of its stream up to that sequence, whoever wrote it); an error if the log or the
    /// feed failed before it.
    pub async fn applied(&self, lsn: u64) -> Result<(), EngineError> {
        poll_fn(|context| {
            let mut applying = self.core.applying.borrow_mut();
            if applying.applied_lsn >= lsn {
                return Poll::Ready(Ok(()));
            }
            if let Some((_, reason)) = &applying.failed {
                return Poll::Ready(Err(EngineError::Storage(reason.clone())));
            }
            applying.waiters.push(context.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Appends a record and waits until it is durable and applied; its LSN.
    pub async fn append(&self, record: Record, now_ms: u64) -> Result<u64, EngineError> {
        let lsn = self.submit(record, now_ms)?;
        self.durable(lsn).await?;
        Ok(lsn)
    }

    /// Brings the shard's log back after a storage failure ([`Wal::reopen`]: the failed batch is
    /// cut off, the directory recovered as at start-up) and resumes: nothing acknowledged is
    /// lost, and nothing the failure refused is kept. The state needs no replay: it holds
    /// exactly the records applied, which are exactly the durable ones. Keys remembered for
    /// ingests whose records failed are forgotten, so a retry of such a request is a new event.
    pub async fn recover_log(&self) -> Result<(), EngineError> {
        // Every commit of the failed log resolves at once; wait until the applier took them all.
        poll_fn(|context| {
            let mut applying = self.core.applying.borrow_mut();
            if applying.queue.is_empty() {
                return Poll::Ready(());
            }
            applying.waiters.push(context.waker().clone());
            Poll::Pending
        })
        .await;
        let Log::Local(wal) = &self.log else {
            return Err(EngineError::Unavailable("a partition's stream is not reopened in place".into()));
        };
        wal.reopen().await?;
        let applied_lsn = {
            let mut applying = self.core.applying.borrow_mut();
            debug_assert!(applying.queue.is_empty(), "records appended to a poisoned log");
            debug_assert_eq!(applying.applied_lsn, wal.durable_lsn(), "applied and durable disagree after a reopen");
            applying.failed = None;
            applying.generation += 1;
            for waker in applying.waiters.drain(..) {
                waker.wake();
            }
            applying.applied_lsn
        };
        self.core.state.borrow_mut().idempotency.forget_after(applied_lsn);
        self.notify_scheduler();
        Ok(())
    }

    /// Accepts a webhook: checks, appends, waits until it is durable.
    pub async fn ingest(&self, ingest: Ingest, now_ms: u64) -> Result<Accepted, EngineError> {
        let (endpoint, duplicate) = self.admit(&ingest, now_ms)?;
        if let Some(remembered) = duplicate {
            // The first request may still be waiting for its fsync; answer only once it is durable.
            self.durable(remembered.lsn).await?;
            if let Some(key) = &ingest.idempotency_key {
                if !self.key_applied(&endpoint, key, remembered.event_id, now_ms) {
                    return Err(key_unsettled(key));
                }
            }
            return Ok(Accepted::Duplicate(remembered.event_id));
        }
        let event_id = self.core.state.borrow_mut().ids.next(now_ms);
        let key = ingest.idempotency_key.clone();
        let event = EventReceived {
            event_id: event_id.0,
            endpoint_id: ingest.endpoint_id,
            received_at_ms: now_ms,
            idempotency_key: ingest.idempotency_key,
            content_type: ingest.content_type,
            traceparent: ingest.traceparent,
            tracestate: ingest.tracestate,
            event_type: ingest.event_type,
            publish: None,
            payload: ingest.payload,
        };
        let lsn = self.submit(Record::EventReceived(event), now_ms)?;
        if let Some(key) = &key {
            // Remembered before the fsync so that a concurrent repeat finds it and waits.
            self.remember_key(&endpoint, key, Remembered { event_id, lsn }, now_ms);
        }
        let durable = self.durable(lsn).await;
        if let Some(key) = &key {
            self.settle_key(&endpoint, key, event_id, durable.is_ok(), now_ms).await;
        }
        durable?;
        if !self.core.state.borrow().events.contains_key(&event_id) {
            // The endpoint was deleted before the event's record was applied.
            return Err(endpoint_not_found(&endpoint));
        }
        self.notify_scheduler();
        Ok(Accepted::Received(event_id))
    }

    /// Notes idempotency key `key`'s first event in `scope` while its record is on its way, so
    /// that a concurrent repeat finds it and waits: in the state's table for a local log (applied
    /// in order, so live and replay agree); for a stream, aside until the record comes back
    /// applied, when the state's table learns it as a replay does (a record the stream refused
    /// never reaches the table).
    pub(crate) fn remember_key(&self, scope: &Rc<str>, key: &str, remembered: Remembered, now_ms: u64) {
        if let Log::Local(_) = &self.log {
            self.core.state.borrow_mut().idempotency.remember(scope, key, remembered, now_ms, now_ms);
            return;
        }
        let mut applying = self.core.applying.borrow_mut();
        if applying.pending_keys.len() >= partition::TICKETS_MAX {
            // Keys whose waiter went away (their tickets settled), and refused ones whose time
            // is up.
            let Applying { tickets, pending_keys, applied_lsn, .. } = &mut *applying;
            pending_keys.retain(|_, (pending, uncertain)| match uncertain {
                Some(uncertain) => !uncertain.settled(*applied_lsn, now_ms),
                None => tickets.contains_key(&pending.lsn),
            });
        }
        applying.pending_keys.insert((Rc::clone(scope), Box::from(key)), (remembered, None));
    }

    /// A key's record was applied (`stored`), or not known to be stored: no longer on its way
    /// (stream shards). A refused one is kept until the shard has applied the stream up to its
    /// last sequence as of now (or, that unknown, for [`KEY_UNCERTAIN_MS`]): if the stream stored
    /// the record all the same it is applied by then, and the state's table answers repeats.
    pub(crate) async fn settle_key(&self, scope: &Rc<str>, key: &str, event_id: EventId, stored: bool, now_ms: u64) {
        let entry = (Rc::clone(scope), Box::from(key));
        if stored {
            let mut applying = self.core.applying.borrow_mut();
            if applying.pending_keys.get(&entry).is_some_and(|(pending, _)| pending.event_id == event_id) {
                applying.pending_keys.remove(&entry);
            }
            return;
        }
        let last = match self.stream() {
            Some(stream) => stream.extent().await.ok().map(|(_, last)| last),
            None => return,
        };
        let mut applying = self.core.applying.borrow_mut();
        if let Some((pending, uncertain)) = applying.pending_keys.get_mut(&entry) {
            if pending.event_id == event_id {
                *uncertain = Some(Uncertain { applied: last, until_ms: now_ms.saturating_add(KEY_UNCERTAIN_MS) });
            }
        }
    }

    /// A key whose record is on its way to the stream, or was refused moments ago (stream
    /// shards).
    pub(crate) fn pending_key(&self, scope: &Rc<str>, key: &str, now_ms: u64) -> Option<Remembered> {
        let mut applying = self.core.applying.borrow_mut();
        let entry = (Rc::clone(scope), Box::from(key));
        match applying.pending_keys.get(&entry).copied() {
            Some((_, Some(uncertain))) if uncertain.settled(applying.applied_lsn, now_ms) => {
                applying.pending_keys.remove(&entry);
                None
            }
            Some((remembered, _)) => Some(remembered),
            None => None,
        }
    }

    /// For a stream shard, whether a duplicate's first event is known to the state: its key in
    /// the state's table (the record applied), as the answer needs.
    pub(crate) fn key_applied(&self, scope: &Rc<str>, key: &str, event_id: EventId, now_ms: u64) -> bool {
        if self.stream().is_none() {
            return true;
        }
        let mut state = self.core.state.borrow_mut();
        state.idempotency.lookup(scope, key, now_ms).is_some_and(|remembered| remembered.event_id == event_id)
    }

    /// The checks before an append: endpoint, signature, rate limit, idempotency, capacity.
    fn admit(&self, ingest: &Ingest, now_ms: u64) -> Result<(Rc<str>, Option<Remembered>), EngineError> {
        let mut state = self.core.state.borrow_mut();
        let full = state.events_full();
        let limits = self.core.tenant_limits.borrow();
        let tenant_full = state.endpoints.get(ingest.endpoint_id.as_str()).is_some_and(|entry| {
            let tenant = entry.endpoint.tenant_id();
            limits.full(tenant, self.index, state.tenant_waiting(tenant) as u64)
        });
        let state = &mut *state;
        let Some(entry) = state.endpoints.get_mut(ingest.endpoint_id.as_str()) else {
            return Err(endpoint_not_found(&ingest.endpoint_id));
        };
        authenticate_ingest(&entry.endpoint, ingest, now_ms)?;
        let tenant = entry.endpoint.tenant_id();
        limits.take(tenant, now_ms).map_err(|retry_after_s| EngineError::RateLimited { retry_after_s })?;
        let endpoint = Rc::clone(&entry.id);
        if let Some(key) = &ingest.idempotency_key {
            if let Some(remembered) = state.idempotency.lookup(&endpoint, key, now_ms) {
                return Ok((endpoint, Some(remembered)));
            }
            if let Some(remembered) = self.pending_key(&endpoint, key, now_ms) {
                return Ok((endpoint, Some(remembered)));
            }
        }
        let Some(entry) = state.endpoints.get_mut(ingest.endpoint_id.as_str()) else {
            return Err(endpoint_not_found(&ingest.endpoint_id));
        };
        if let Some(bucket) = entry.bucket.as_mut() {
            bucket.take(now_ms).map_err(|retry_after_s| EngineError::RateLimited { retry_after_s })?;
        }
        if tenant_full {
            let tenant = entry.endpoint.tenant_id();
            return Err(EngineError::QueueFull(format!(
                "tenant {tenant} has as many events waiting as its events_waiting_max allows"
            )));
        }
        if full {
            return Err(EngineError::QueueFull("the shard tracks as many events as it may".into()));
        }
        Ok((endpoint, None))
    }

    /// Creates or replaces an endpoint; `true` when it was created.
    pub async fn put_endpoint(
        &self,
        id: &str,
        body: &[u8],
        destinations: &kapsel_http::DestinationPolicy,
        now_ms: u64,
    ) -> Result<(Value, bool), EngineError> {
        let input = EndpointInput::parse(body).map_err(|error| EngineError::Invalid(error.0))?;
        self.put_endpoint_input(id, input, destinations, None, now_ms).await
    }

    /// [`Shard::put_endpoint`] of a parsed body (the admin layer reads its tenant first).
    pub async fn put_endpoint_input(
        &self,
        id: &str,
        input: EndpointInput,
        destinations: &kapsel_http::DestinationPolicy,
        by: Option<String>,
        now_ms: u64,
    ) -> Result<(Value, bool), EngineError> {
        let (mut endpoint, created) = {
            let state = self.core.state.borrow();
            let previous = state.endpoints.get(id).map(|entry| &entry.endpoint);
            if previous.is_none() && state.endpoints.len() >= limits::ENDPOINTS_PER_SHARD_MAX {
                return Err(EngineError::QueueFull("the shard holds as many endpoints as it may".into()));
            }
            let endpoint = input.into_endpoint(id, previous, now_ms).map_err(|error| EngineError::Invalid(error.0))?;
            (endpoint, previous.is_none())
        };
        let target = kapsel_http::Target::parse(&endpoint.url)
            .map_err(|error| EngineError::Invalid(format!("`url` cannot be delivered to: {error}")))?;
        if destinations.refuses_literal(&target.host) {
            return Err(EngineError::Invalid(format!(
                "`url` points at {}, a private, loopback, link-local, multicast or unspecified address; allow it with KAPSEL_ALLOW_DESTINATIONS",
                target.host
            )));
        }
        endpoint.changed_by = by;
        self.append(Record::EndpointPut(endpoint), now_ms).await?;
        let json = self.get_endpoint(id, now_ms)?;
        self.notify_scheduler();
        Ok((json, created))
    }

    /// The endpoint's configuration and live state.
    pub fn get_endpoint(&self, id: &str, now_ms: u64) -> Result<Value, EngineError> {
        let state = self.core.state.borrow();
        let entry = state.endpoints.get(id).ok_or_else(|| endpoint_not_found(id))?;
        Ok(self.endpoint_json(&state, entry, now_ms))
    }

    /// An endpoint as the admin API shows it: configuration, live state and the tally of its
    /// attempts since the start (`stats`).
    pub fn endpoint_json(&self, state: &ShardState, entry: &crate::state::EndpointEntry, now_ms: u64) -> Value {
        let id = entry.endpoint.id.as_str();
        let mut json = entry.endpoint.to_json(&state.live(id, now_ms));
        json["stats"] = self.metrics().endpoint(id).to_json(self.metrics().since_ms);
        json
    }

    /// Up to `limit + 1` of this shard's endpoints with ids after `after`, in id order, as the
    /// admin API shows them; only `tenant`'s when given.
    pub fn list_endpoints(
        &self,
        after: Option<&str>,
        tenant: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Vec<(String, Value)> {
        let state = self.core.state.borrow();
        let mut found: Vec<&crate::state::EndpointEntry> = state
            .endpoints
            .values()
            .filter(|entry| after.is_none_or(|after| entry.endpoint.id.as_str() > after))
            .filter(|entry| tenant.is_none_or(|tenant| entry.endpoint.tenant_id() == tenant))
            .collect();
        // Only the first `limit + 1` by id are wanted: select them, then sort only those.
        if found.len() > limit + 1 {
            found.select_nth_unstable_by(limit, |a, b| a.endpoint.id.cmp(&b.endpoint.id));
            found.truncate(limit + 1);
        }
        found.sort_unstable_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
        found.into_iter().map(|entry| (entry.endpoint.id.clone(), self.endpoint_json(&state, entry, now_ms))).collect()
    }

    /// Deletes an endpoint.
    pub async fn delete_endpoint(&self, id: &str, now_ms: u64) -> Result<(), EngineError> {
        self.delete_endpoint_by(id, None, now_ms).await
    }

    /// Deletes an endpoint, recording the key that did (`None`: the operator token).
    pub async fn delete_endpoint_by(&self, id: &str, by: Option<String>, now_ms: u64) -> Result<(), EngineError> {
        if !self.core.state.borrow().endpoints.contains_key(id) {
            return Err(endpoint_not_found(id));
        }
        self.append(Record::EndpointDeleted(EndpointDeleted { id: id.to_string(), at_ms: now_ms, by }), now_ms).await?;
        self.metrics().forget_endpoint(id);
        Ok(())
    }

    /// Enables or disables deliveries to an endpoint.
    pub async fn set_enabled(&self, id: &str, enabled: bool, now_ms: u64) -> Result<Value, EngineError> {
        self.set_enabled_by(id, enabled, None, now_ms).await
    }

    /// [`Shard::set_enabled`], recording the key that did it (`None`: the operator token).
    pub async fn set_enabled_by(
        &self,
        id: &str,
        enabled: bool,
        by: Option<String>,
        now_ms: u64,
    ) -> Result<Value, EngineError> {
        let endpoint = {
            let state = self.core.state.borrow();
            let entry = state.endpoints.get(id).ok_or_else(|| endpoint_not_found(id))?;
            let mut endpoint = entry.endpoint.clone();
            endpoint.enabled = enabled;
            endpoint.updated_at_ms = now_ms;
            endpoint.changed_by = by;
            endpoint
        };
        self.append(Record::EndpointPut(endpoint), now_ms).await?;
        let json = self.get_endpoint(id, now_ms)?;
        self.notify_scheduler();
        Ok(json)
    }

    /// Redelivers an event, `failed` ones included, with a fresh retry budget. A waiting event
    /// gets a [`Requeued`] record; a delivered or failed one a [`crate::model::records::Redriven`] record that carries
    /// the event (read back from the log), so the redrive never depends on an older segment.
    pub async fn retry_event(&self, event_id: EventId, now_ms: u64) -> Result<Value, EngineError> {
        let (terminal, position) = {
            let state = self.core.state.borrow();
            let event = state.events.get(&event_id).ok_or_else(|| event_not_found(event_id))?;
            if event.in_flight {
                return Ok(serde_json::json!({"event_id": event_id.to_string(), "status": "delivering"}));
            }
            (event.status.is_terminal(), event.position)
        };
        if !terminal {
            self.append(Record::Requeued(Requeued { event_id: event_id.0, at_ms: now_ms }), now_ms).await?;
        } else {
            let mut loaded = self.reader.read(vec![(event_id, position)]).await;
            let event = match loaded.pop() {
                Some((_, Ok(event))) => event,
                Some((_, Err(reason))) => return Err(payload_gone(event_id, &reason)),
                None => return Err(payload_gone(event_id, "no answer")),
            };
            let Some(redriven) = self.core.state.borrow().redrive(event, now_ms) else {
                // It changed while its record was read back (deleted, or redriven already).
                return Err(event_not_found(event_id));
            };
            self.append(Record::Redriven(redriven), now_ms).await?;
        }
        self.notify_scheduler();
        Ok(serde_json::json!({"event_id": event_id.to_string(), "status": "pending"}))
    }

    /// Redrives every failed event of an endpoint.
    pub async fn retry_failed(&self, id: &str, now_ms: u64) -> Result<Value, EngineError> {
        let failed = {
            let state = self.core.state.borrow();
            if !state.endpoints.contains_key(id) {
                return Err(endpoint_not_found(id));
            }
            state.failed_events(id)
        };
        let mut requeued = 0;
        for chunk in failed.chunks(limits::REDRIVE_CHUNK_EVENTS_MAX) {
            let loaded = self.reader.read(chunk.to_vec()).await;
            let mut submitted = Vec::new();
            for (_, result) in loaded {
                // A payload removed by retention cannot be delivered again.
                let Ok(event) = result else {
                    continue;
                };
                let Some(redriven) = self.core.state.borrow().redrive(event, now_ms) else {
                    continue;
                };
                let record = Record::Redriven(redriven);
                let lsn = match self.submit(record.clone(), now_ms) {
                    // The log's queue is full of this chunk's payloads: let it drain, then go on.
                    Err(EngineError::QueueFull(_)) if !submitted.is_empty() => {
                        self.durable_all(&submitted).await?;
                        self.submit(record, now_ms)?
                    }
                    outcome => outcome?,
                };
                submitted.push(lsn);
                requeued += 1;
            }
            self.durable_all(&submitted).await?;
        }
        self.notify_scheduler();
        Ok(serde_json::json!({"endpoint_id": id, "requeued": requeued, "expired": failed.len() - requeued}))
    }

    /// Reads payloads back for the scheduler and hands them to the state; failures are counted
    /// and logged, and the state retries them after a pause.
    pub async fn read_back(&self, request: ReadRequest) {
        let loaded = self.reader.read(request.events.clone()).await;
        self.complete_read_back(request, loaded, crate::clock::now_ms());
    }

    /// Hands a read-back's results to the state (the second half of [`Shard::read_back`]; the
    /// simulation reads with [`crate::shard::readback::load`] and calls this itself).
    pub fn complete_read_back(&self, request: ReadRequest, loaded: Vec<crate::shard::readback::Loaded>, now_ms: u64) {
        let events = loaded.len();
        let mut first_error = None;
        let results = loaded
            .into_iter()
            .map(|(event_id, result)| {
                let payload = result.map(Payload::of);
                if let Err(reason) = &payload {
                    first_error.get_or_insert_with(|| reason.clone());
                }
                (event_id, payload)
            })
            .collect();
        let failures = self.core.state.borrow_mut().complete_read(request, results, now_ms);
        self.metrics.read_back(events, failures);
        if let Some(reason) = first_error {
            tracing::warn!(shard = self.index, failures, %reason, "could not read payloads back from the write-ahead log; retrying");
        }
        self.notify_scheduler();
    }

    /// Reads events' records back from the log (off the shard thread).
    pub async fn read_events(&self, events: Vec<(EventId, Position)>) -> Vec<crate::shard::readback::Loaded> {
        self.reader.read(events).await
    }

    /// An RFC 6962 inclusion proof of an event's record in its sealed segment. Reading the
    /// segment happens on a helper thread so the shard keeps serving.
    pub async fn prove_event(&self, event_id: EventId) -> Result<kapsel_wal::audit::InclusionProof, EngineError> {
        let lsn = {
            let state = self.core.state.borrow();
            // A published event's proof is of its publish record.
            let publication = state.publications.get(&event_id).map(|publication| publication.lsn);
            let event = state.events.get(&event_id).map(|event| event.lsn);
            event.or(publication).ok_or_else(|| event_not_found(event_id))?
        };
        let Log::Local(wal) = &self.log else {
            return Err(EngineError::NotFound(format!(
                "event {event_id} is in a cluster partition; proofs of partitions are not sealed yet"
            )));
        };
        let directory = wal.directory().to_path_buf();
        let proof = off_shard("kapsel-proof", move || kapsel_wal::audit::prove(&directory, lsn)).await?;
        match proof {
            Ok(proof) => Ok(proof),
            Err(kapsel_wal::WalError::NotSealed { .. }) => Err(EngineError::NotFound(format!(
                "event {event_id} is not in a sealed segment yet; its segment is sealed when it reaches KAPSEL_WAL_SEGMENT_BYTES"
            ))),
            Err(error) => Err(EngineError::Storage(error.to_string())),
        }
    }

    /// An event's state.
    pub fn get_event(&self, event_id: EventId, now_ms: u64) -> Result<Value, EngineError> {
        self.core.state.borrow().event_json(event_id, now_ms).ok_or_else(|| event_not_found(event_id))
    }
}

/// Applies appended records in LSN order as their fsyncs complete, then wakes whoever waits for
/// them and the scheduler. Runs for the life of the runtime.
async fn run_applier(core: Rc<Core>) {
    poll_fn(|context| {
        let mut advanced = false;
        loop {
            let mut applying = core.applying.borrow_mut();
            let Some(front) = applying.queue.front_mut() else {
                applying.applier = Some(context.waker().clone());
                break;
            };
            let outcome = match Pin::new(&mut front.commit).poll(context) {
                Poll::Pending => break,
                Poll::Ready(outcome) => outcome,
            };
            let Some(Pending { commit, record, now_ms }) = applying.queue.pop_front() else {
                break;
            };
            advanced = true;
            match (outcome, commit.position()) {
                (Ok(lsn), Some(position)) => {
                    applying.applied_lsn = lsn;
                    drop(applying);
                    core.state.borrow_mut().apply(lsn, position, record, now_ms);
                }
                (Ok(lsn), None) => {
                    // A commit resolves only after its batch was placed; this cannot happen.
                    debug_assert!(false, "durable record {lsn} without a position");
                    applying.failed.get_or_insert((lsn, "a durable record without a position".into()));
                }
                (Err(error), _) => {
                    applying.failed.get_or_insert((commit.lsn(), error.to_string()));
                }
            }
        }
        if advanced {
            core.records_applied();
        }
        Poll::<()>::Pending
    })
    .await;
}

/// The endpoint's `ingest_auth` against the request: a key of its tenant (or the operator
/// token), a provider's signature over the raw body, or nothing for an open endpoint. A refusal
/// is 401 E1001; its reason names no secret.
fn authenticate_ingest(
    endpoint: &crate::model::endpoint::Endpoint,
    ingest: &Ingest,
    now_ms: u64,
) -> Result<(), EngineError> {
    use crate::model::ingest_auth::IngestAuth;
    match &endpoint.ingest_auth {
        None | Some(IngestAuth::None) => Ok(()),
        Some(IngestAuth::Key) if ingest.bearer.may_ingest_to(endpoint.tenant_id()) => Ok(()),
        // Another tenant's key finds another tenant's endpoint exactly as a missing one.
        Some(IngestAuth::Key) if matches!(&ingest.bearer, IngestBearer::Key { tenant_id, .. } if tenant_id != endpoint.tenant_id()) => {
            Err(endpoint_not_found(&endpoint.id))
        }
        Some(IngestAuth::Key) => Err(EngineError::Unauthorized(
            "this endpoint takes events with a key of its tenant that has the ingest scope, or the operator token"
                .into(),
        )),
        Some(auth) => {
            let headers = &ingest.headers;
            let lookup = |name: &str| -> Option<&[u8]> {
                kapsel_http::HeaderName::ALL
                    .iter()
                    .find(|known| known.as_str() == name)
                    .map_or_else(|| headers.get_other(name), |known| headers.get(*known))
            };
            auth.verify(&lookup, &ingest.payload, now_ms)
                .map_err(|failure| EngineError::Unauthorized(format!("inbound signature refused: {failure}")))
        }
    }
}

fn endpoint_not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("endpoint {id} not found"))
}

fn event_not_found(event_id: EventId) -> EngineError {
    EngineError::NotFound(format!("event {event_id} not found"))
}

fn payload_gone(event_id: EventId, reason: &str) -> EngineError {
    EngineError::NotFound(format!(
        "event {event_id}'s payload is no longer in the log (removed by retention, KAPSEL_RETENTION): {reason}"
    ))
}

/// Runs blocking work (reading whole segments) on a short-lived helper thread and awaits its
/// result, so the shard keeps serving meanwhile.
pub(crate) async fn off_shard<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    let (sender, receiver) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = sender.send(work());
        })
        .map_err(|error| EngineError::Unavailable(format!("cannot start a helper thread: {error}")))?;
    receiver.await.map_err(|_| EngineError::Unavailable("a helper thread stopped".into()))
}
