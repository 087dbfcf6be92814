//! A shard's operations on the endpoints and events it owns. Every change is appended to the
//! shard's log and applied to memory only once the log has made it durable; nothing is answered
//! as done before its fsync.

use std::cell::RefCell;
use std::rc::Rc;

use kapsel_wal::{Commit, Wal};
use serde_json::Value;

use crate::clock::now_ms;
use crate::endpoint::EndpointInput;
use crate::error::EngineError;
use crate::idempotency::Remembered;
use crate::ids::EventId;
use crate::index::{Change, IndexHandle, Row};
use crate::limits;
use crate::records::{EndpointDeleted, EventReceived, Record};
use crate::state::{event_json, ShardState};

/// An inbound webhook, as the ingest route hands it to the owning shard.
#[derive(Debug)]
pub struct Ingest {
    /// Target endpoint.
    pub endpoint_id: String,
    /// `X-Idempotency-Key`, already validated.
    pub idempotency_key: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// Standard Webhooks headers: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    pub signature: Option<(String, String, String)>,
    /// The body.
    pub payload: Vec<u8>,
}

/// How an ingest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A new event, durable.
    Received(EventId),
    /// A repeated idempotency key: the first event's id.
    Duplicate(EventId),
}

/// One shard: its log and its state.
pub struct Shard {
    /// Shard number.
    pub index: usize,
    wal: Wal,
    state: RefCell<ShardState>,
    scheduler: std::cell::Cell<Option<std::task::Waker>>,
    indexer: Option<IndexHandle>,
    metrics: crate::metrics::ShardMetrics,
}

impl Shard {
    /// A shard over an opened log and the state replayed from it.
    pub fn new(index: usize, wal: Wal, state: ShardState) -> Self {
        Self {
            index,
            wal,
            state: RefCell::new(state),
            scheduler: std::cell::Cell::new(None),
            indexer: None,
            metrics: crate::metrics::ShardMetrics::default(),
        }
    }

    /// Feeds every record this shard appends to the Postgres index.
    pub fn with_index(mut self, index: IndexHandle) -> Self {
        index.register(self.index, self.wal.durable_watermark());
        self.indexer = Some(index);
        self
    }

    /// What this shard counts for `GET /metrics`.
    pub fn metrics(&self) -> &crate::metrics::ShardMetrics {
        &self.metrics
    }

    /// The index, when `DATABASE_URL` is set.
    pub fn index_handle(&self) -> Option<&IndexHandle> {
        self.indexer.as_ref()
    }

    /// Appends a record (not yet durable: await the commit) and offers it to the index.
    pub fn append_record(&self, record: &Record) -> Result<Commit, EngineError> {
        let (kind, body) = record.encode()?;
        let commit = self.wal.append(kind, &body)?;
        if let Some(index) = &self.indexer {
            index.feed(Change { shard: self.index, lsn: commit.lsn(), row: Row::from_record(record) });
        }
        Ok(commit)
    }

    /// The shard's log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The shard's state (the delivery scheduler reads and updates it).
    pub fn state(&self) -> &RefCell<ShardState> {
        &self.state
    }

    /// Wakes the delivery scheduler: there may be new work.
    pub fn notify_scheduler(&self) {
        if let Some(waker) = self.scheduler.take() {
            waker.wake();
        }
    }

    /// Registers the scheduler's waker.
    pub fn park_scheduler(&self, waker: &std::task::Waker) {
        self.scheduler.set(Some(waker.clone()));
    }

    /// Gives up the shard for its log (at shutdown, to close it).
    pub fn into_wal(self) -> Wal {
        self.wal
    }

    /// Appends a record and waits for its fsync.
    pub async fn append(&self, record: &Record) -> Result<u64, EngineError> {
        Ok(self.append_record(record)?.await?)
    }

    /// Accepts a webhook: checks, appends, waits for durability.
    pub async fn ingest(&self, ingest: Ingest) -> Result<Accepted, EngineError> {
        let now = now_ms();
        let (endpoint, duplicate) = self.admit(&ingest, now)?;
        if let Some(remembered) = duplicate {
            // The first request may still be waiting for its fsync; answer only once it is durable.
            if self.wal.durable_lsn() < remembered.lsn {
                self.wal.flush().await?;
            }
            return Ok(Accepted::Duplicate(remembered.event_id));
        }
        let event_id = self.state.borrow_mut().ids.next(now);
        let event = EventReceived {
            event_id: event_id.0,
            endpoint_id: ingest.endpoint_id,
            received_at_ms: now,
            idempotency_key: ingest.idempotency_key,
            content_type: ingest.content_type,
            traceparent: ingest.traceparent,
            payload: ingest.payload,
        };
        let (kind, body) = Record::encode_event(&event)?;
        let commit = self.wal.append(kind, &body)?;
        if let Some(index) = &self.indexer {
            index.feed(Change { shard: self.index, lsn: commit.lsn(), row: Row::event(&event) });
        }
        if let Some(key) = &event.idempotency_key {
            // Remembered before the fsync so that a concurrent repeat finds it and waits.
            let remembered = Remembered { event_id, lsn: commit.lsn() };
            self.state.borrow_mut().idempotency.remember(&endpoint, key, remembered, now, now);
        }
        let lsn = commit.await?;
        self.state.borrow_mut().accept_event(event_id, &endpoint, event, lsn);
        self.notify_scheduler();
        Ok(Accepted::Received(event_id))
    }

    /// The checks before an append: endpoint, signature, rate limit, idempotency, capacity.
    fn admit(&self, ingest: &Ingest, now: u64) -> Result<(Rc<str>, Option<Remembered>), EngineError> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let Some(entry) = state.endpoints.get_mut(ingest.endpoint_id.as_str()) else {
            return Err(EngineError::NotFound(format!("endpoint {} not found", ingest.endpoint_id)));
        };
        if let Some(secret) = &entry.ingest_secret {
            let valid = ingest.signature.as_ref().is_some_and(|(id, timestamp, signatures)| {
                secret.verify(id, timestamp, signatures, &ingest.payload, now)
            });
            if !valid {
                return Err(EngineError::Unauthorized("missing or invalid webhook signature".into()));
            }
        }
        let endpoint = Rc::clone(&entry.id);
        if let Some(key) = &ingest.idempotency_key {
            if let Some(remembered) = state.idempotency.lookup(&endpoint, key, now) {
                return Ok((endpoint, Some(remembered)));
            }
        }
        if let Some(bucket) = entry.bucket.as_mut() {
            bucket.take(now).map_err(|retry_after_s| EngineError::RateLimited { retry_after_s })?;
        }
        if state.events_full() {
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
    ) -> Result<(Value, bool), EngineError> {
        let now = now_ms();
        let input = EndpointInput::parse(body).map_err(|error| EngineError::Invalid(error.0))?;
        let endpoint = {
            let state = self.state.borrow();
            let previous = state.endpoints.get(id).map(|entry| &entry.endpoint);
            if previous.is_none() && state.endpoints.len() >= limits::ENDPOINTS_PER_SHARD_MAX {
                return Err(EngineError::QueueFull("the shard holds as many endpoints as it may".into()));
            }
            input.into_endpoint(id, previous, now).map_err(|error| EngineError::Invalid(error.0))?
        };
        let target = kapsel_http::Target::parse(&endpoint.url)
            .map_err(|error| EngineError::Invalid(format!("`url` cannot be delivered to: {error}")))?;
        if destinations.refuses_literal(&target.host) {
            return Err(EngineError::Invalid(format!(
                "`url` points at {}, a private, loopback, link-local, multicast or unspecified address; allow it with KAPSEL_ALLOW_DESTINATIONS",
                target.host
            )));
        }
        self.append(&Record::EndpointPut(endpoint.clone())).await?;
        let mut state = self.state.borrow_mut();
        let created = !state.endpoints.contains_key(id);
        state.put_endpoint(endpoint.clone(), now);
        let json = endpoint.to_json(&state.live(id, now));
        drop(state);
        self.notify_scheduler();
        Ok((json, created))
    }

    /// The endpoint's configuration and live state.
    pub fn get_endpoint(&self, id: &str) -> Result<Value, EngineError> {
        let state = self.state.borrow();
        let entry = state.endpoints.get(id).ok_or_else(|| endpoint_not_found(id))?;
        Ok(entry.endpoint.to_json(&state.live(id, now_ms())))
    }

    /// Deletes an endpoint.
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), EngineError> {
        if !self.state.borrow().endpoints.contains_key(id) {
            return Err(endpoint_not_found(id));
        }
        self.append(&Record::EndpointDeleted(EndpointDeleted { id: id.to_string(), at_ms: now_ms() })).await?;
        self.state.borrow_mut().delete_endpoint(id);
        Ok(())
    }

    /// Enables or disables deliveries to an endpoint.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<Value, EngineError> {
        let now = now_ms();
        let endpoint = {
            let state = self.state.borrow();
            let entry = state.endpoints.get(id).ok_or_else(|| endpoint_not_found(id))?;
            let mut endpoint = entry.endpoint.clone();
            endpoint.enabled = enabled;
            endpoint.updated_at_ms = now;
            endpoint
        };
        self.append(&Record::EndpointPut(endpoint.clone())).await?;
        let mut state = self.state.borrow_mut();
        state.put_endpoint(endpoint.clone(), now);
        let json = endpoint.to_json(&state.live(id, now));
        drop(state);
        self.notify_scheduler();
        Ok(json)
    }

    /// Redelivers an event, `failed` ones included, with a fresh retry budget.
    pub async fn retry_event(&self, event_id: EventId) -> Result<Value, EngineError> {
        let lsn = {
            let state = self.state.borrow();
            let summary = state.events.get(&event_id).ok_or_else(|| event_not_found(event_id))?;
            if summary.status == crate::state::EventStatus::Delivering {
                return Ok(serde_json::json!({"event_id": event_id.to_string(), "status": "delivering"}));
            }
            summary.payload.is_none().then_some(summary.lsn)
        };
        if let Some(lsn) = lsn {
            self.reload_payloads(&[(event_id, lsn)]).await?;
            if !self.has_payload(event_id) {
                return Err(EngineError::NotFound(format!(
                    "event {event_id}'s payload is no longer in the log (removed by retention, KAPSEL_RETENTION)"
                )));
            }
        }
        self.append(&Record::Requeued(crate::records::Requeued { event_id: event_id.0, at_ms: now_ms() })).await?;
        crate::delivery::requeue_now(self, event_id);
        Ok(serde_json::json!({"event_id": event_id.to_string(), "status": "pending"}))
    }

    /// Redrives every failed event of an endpoint.
    pub async fn retry_failed(&self, id: &str) -> Result<Value, EngineError> {
        let failed = {
            let state = self.state.borrow();
            if !state.endpoints.contains_key(id) {
                return Err(endpoint_not_found(id));
            }
            state.failed_events(id)
        };
        let missing: Vec<(EventId, u64)> = {
            let state = self.state.borrow();
            failed
                .iter()
                .filter(|(event_id, _)| state.events.get(event_id).is_some_and(|summary| summary.payload.is_none()))
                .copied()
                .collect()
        };
        self.reload_payloads(&missing).await?;
        let now = now_ms();
        let mut requeued = 0;
        for (event_id, _) in &failed {
            // A payload removed by retention cannot be delivered again.
            if !self.has_payload(*event_id) {
                continue;
            }
            self.append(&Record::Requeued(crate::records::Requeued { event_id: event_id.0, at_ms: now })).await?;
            crate::delivery::requeue_now(self, *event_id);
            requeued += 1;
        }
        Ok(serde_json::json!({"endpoint_id": id, "requeued": requeued, "expired": failed.len() - requeued}))
    }

    /// Reads payloads back from the log (on a helper thread): terminal events to be requeued, and
    /// waiting events whose payload did not fit the memory budget.
    pub async fn reload_payloads(&self, events: &[(EventId, u64)]) -> Result<(), EngineError> {
        if events.is_empty() {
            return Ok(());
        }
        let directory = self.wal.directory().to_path_buf();
        let lsns: Vec<u64> = events.iter().map(|(_, lsn)| *lsn).collect();
        let records = off_shard("kapsel-reload", move || kapsel_wal::audit::read_records(&directory, &lsns)).await?;
        let records = records.map_err(|error| EngineError::Storage(error.to_string()))?;
        let mut state = self.state.borrow_mut();
        for (_, kind, body) in records {
            if let Some(event) = Record::decode(kind, &body).ok().and_then(Record::into_event) {
                state.restore_payload(EventId(event.event_id), event);
            }
        }
        Ok(())
    }

    /// An RFC 6962 inclusion proof of an event's record in its sealed segment. Reading the
    /// segment happens on a helper thread so the shard keeps serving.
    pub async fn prove_event(&self, event_id: EventId) -> Result<Value, EngineError> {
        let lsn = {
            let state = self.state.borrow();
            let summary = state.events.get(&event_id).ok_or_else(|| event_not_found(event_id))?;
            summary.lsn
        };
        let directory = self.wal.directory().to_path_buf();
        let proof = off_shard("kapsel-proof", move || kapsel_wal::audit::prove(&directory, lsn)).await?;
        match proof {
            Ok(proof) => Ok(crate::audit::proof_json(event_id, self.index, &proof)),
            Err(kapsel_wal::WalError::NotSealed { .. }) => Err(EngineError::NotFound(format!(
                "event {event_id} is not in a sealed segment yet; its segment is sealed when it reaches KAPSEL_WAL_SEGMENT_BYTES"
            ))),
            Err(error) => Err(EngineError::Storage(error.to_string())),
        }
    }

    fn has_payload(&self, event_id: EventId) -> bool {
        self.state.borrow().events.get(&event_id).is_some_and(|summary| summary.payload.is_some())
    }

    /// An event's state.
    pub fn get_event(&self, event_id: EventId) -> Result<Value, EngineError> {
        let state = self.state.borrow();
        let summary = state.events.get(&event_id).ok_or_else(|| event_not_found(event_id))?;
        Ok(event_json(event_id, summary))
    }
}

fn endpoint_not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("endpoint {id} not found"))
}

fn event_not_found(event_id: EventId) -> EngineError {
    EngineError::NotFound(format!("event {event_id} not found"))
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
