//! What the index stores of each log record, and how a batch of them becomes SQL.
//!
//! A batch is folded in memory first: an event received and attempted within one batch is
//! inserted once in its final state; later states of older events become one `UPDATE` each.
//! Every statement is an `UNNEST` of column arrays (one round trip per table), and every one is
//! idempotent, so applying a record twice changes nothing — the checkpoint written in the same
//! transaction keeps that from happening anyway.
//!
//! Published events (ADR 13) are one `events` row (no endpoint; type, channel and the number of
//! endpoints) and one `deliveries` row per delivery. The channel's shard's `Published` record
//! names every delivery, so it makes every row; the shard that delivers one makes its row too
//! (its `Adopted` record, or the `Published` record's own deliveries), and its attempts follow
//! in that shard's log. The index applies each shard's records in order but not the shards in
//! step, so a delivery row may come first from either side: a row made from another shard's
//! record is a placeholder (`lsn` NULL, pending) that the delivering shard's record takes over,
//! and every state change is an `UPDATE` keyed by the delivery id after the inserts. Attempts
//! and requeues name an id that is either an event's or a delivery's, never both, so both
//! tables get the same `UPDATE`. After each batch the published events it touched get their
//! deliveries' summary: the worst status (`model::view::status_severity`, `delivered` without
//! deliveries), the earliest next attempt, the last change.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Transaction;

use crate::model::ids::EventId;
use crate::model::records::{
    Delivery, EventReceived, Handoff, Published, Record, OUTCOME_DELIVERED, OUTCOME_FAILED, OUTCOME_RETRYING,
};

/// One log record as the index sees it (payloads are reduced to their size).
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// An endpoint created or replaced.
    EndpointPut {
        /// Endpoint id.
        id: String,
        /// Destination URL.
        url: String,
        /// Whether deliveries run.
        enabled: bool,
        /// Creation time.
        created_at_ms: u64,
        /// Last change.
        updated_at_ms: u64,
        /// The tenant it belongs to.
        tenant_id: String,
    },
    /// An endpoint and its events removed.
    EndpointDeleted {
        /// Endpoint id.
        id: String,
    },
    /// An accepted webhook.
    Event {
        /// Event id.
        event_id: u128,
        /// Its endpoint.
        endpoint_id: String,
        /// When it was accepted.
        received_at_ms: u64,
        /// The sender's idempotency key.
        idempotency_key: Option<String>,
        /// Payload size.
        payload_bytes: u32,
        /// W3C trace id from the sender's `traceparent`.
        trace_id: Option<String>,
        /// Its type.
        event_type: String,
        /// True for the record that accepted it, where its state starts; false for a copy
        /// carried forward, which only makes a row the index lacks and leaves a row's state alone.
        received: bool,
    },
    /// An event published to a channel, with every delivery (the channel's shard's record).
    Published(Box<PublishedRow>),
    /// Deliveries of a published event that this record's shard makes: adopted from the
    /// channel's shard, or one carried forward.
    Deliveries {
        /// The published event's id.
        event_id: u128,
        /// When it was published.
        received_at_ms: u64,
        /// The deliveries.
        deliveries: Vec<Delivery>,
        /// True for the record where their state starts (an adoption); false for a copy
        /// carried forward.
        received: bool,
    },
    /// A delivery attempt and the state it left the event (or delivery) in.
    Attempt {
        /// Event id, or delivery id.
        event_id: u128,
        /// Attempt number.
        n: u32,
        /// Start.
        at_ms: u64,
        /// The destination's status.
        status_code: Option<u16>,
        /// Time to the answer.
        latency_ms: u32,
        /// E-code of a failure.
        error_code: Option<String>,
        /// The start of the destination's answer or of the error (up to 1 KiB), when kept.
        response_excerpt: Option<String>,
        /// The outcome (`records::OUTCOME_*`).
        outcome: u8,
        /// When the next attempt is due.
        next_attempt_at_ms: Option<u64>,
    },
    /// An event (or delivery) requeued by an operator.
    Requeued {
        /// Event id, or delivery id.
        event_id: u128,
        /// When.
        at_ms: u64,
    },
    /// A partition's `Takeover` that the epoch fence admitted (cluster mode): no row, but the
    /// partition's checkpoint keeps the fence's epoch, so reading the stream on from it fences
    /// exactly as the owner did.
    Fence {
        /// The new owner's epoch.
        epoch: u64,
    },
    /// A record the index has no row for.
    Nothing,
}

/// What the index keeps of a `Published` record.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedRow {
    /// The published event's id.
    pub event_id: u128,
    /// The channel.
    pub channel: String,
    /// Its type.
    pub event_type: String,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// The sender's idempotency key (scoped to the channel).
    pub idempotency_key: Option<String>,
    /// Payload size.
    pub payload_bytes: u32,
    /// W3C trace id from the sender's `traceparent`.
    pub trace_id: Option<String>,
    /// The tenant whose channel it is.
    pub tenant_id: String,
    /// The deliveries the channel's shard makes.
    pub deliveries: Vec<Delivery>,
    /// The deliveries other shards make, by shard.
    pub handoffs: Vec<Handoff>,
}

/// A row with the position of its record: the index applies them in LSN order per shard.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The shard whose log holds the record.
    pub shard: usize,
    /// The record's LSN.
    pub lsn: u64,
    /// What it means for the index.
    pub row: Row,
}

impl Row {
    /// The index's view of a record.
    pub fn from_record(record: &Record) -> Self {
        match record {
            Record::EndpointPut(endpoint) => Self::EndpointPut {
                id: endpoint.id.clone(),
                url: endpoint.url.clone(),
                enabled: endpoint.enabled,
                created_at_ms: endpoint.created_at_ms,
                updated_at_ms: endpoint.updated_at_ms,
                tenant_id: endpoint.tenant_id().to_string(),
            },
            Record::EndpointDeleted(deleted) => Self::EndpointDeleted { id: deleted.id.clone() },
            Record::EventReceived(event) => Self::event(event, true),
            Record::Attempt(attempt) => Self::Attempt {
                event_id: attempt.event_id,
                n: attempt.n,
                at_ms: attempt.at_ms,
                status_code: attempt.status_code,
                latency_ms: attempt.latency_ms,
                error_code: attempt.error_code.clone(),
                response_excerpt: (!attempt.response_excerpt.is_empty())
                    .then(|| String::from_utf8_lossy(&attempt.response_excerpt).into_owned()),
                outcome: attempt.outcome,
                next_attempt_at_ms: attempt.next_attempt_at_ms,
            },
            Record::Requeued(requeued) => Self::Requeued { event_id: requeued.event_id, at_ms: requeued.at_ms },
            // The index has the event already (it is inserted only if it is not there).
            Record::EventCarried(carried) => Self::event(&carried.event, false),
            Record::Redriven(redriven) => Self::Requeued { event_id: redriven.event.event_id, at_ms: redriven.at_ms },
            Record::Published(published) => Self::published(published),
            Record::Adopted(adopted) => Self::Deliveries {
                event_id: adopted.event_id,
                received_at_ms: adopted.received_at_ms,
                deliveries: adopted.deliveries.clone(),
                received: true,
            },
            // The rows of the adopted deliveries come from the `Adopted` record on their shard.
            Record::HandedOff(_) => Self::Nothing,
            Record::Takeover(takeover) => Self::Fence { epoch: takeover.epoch },
            // Tenants and keys are configuration, answered from memory (shard 0 keeps them).
            Record::TenantPut(_) | Record::TenantDeleted(_) | Record::KeyCreated(_) | Record::KeyRevoked(_) => {
                Self::Nothing
            }
        }
    }

    /// The index's view of an accepted webhook (without copying its payload), or of one
    /// delivery of a published event when the record is a delivery's (carried or redriven).
    pub fn event(event: &EventReceived, received: bool) -> Self {
        if let Some(publish) = &event.publish {
            return Self::Deliveries {
                event_id: publish.event_id,
                received_at_ms: event.received_at_ms,
                deliveries: vec![Delivery { delivery_id: event.event_id, endpoint_id: event.endpoint_id.clone() }],
                received,
            };
        }
        Self::Event {
            event_id: event.event_id,
            endpoint_id: event.endpoint_id.clone(),
            received_at_ms: event.received_at_ms,
            idempotency_key: event.idempotency_key.clone(),
            payload_bytes: u32::try_from(event.payload.len()).unwrap_or(u32::MAX),
            trace_id: trace_id(event.traceparent.as_deref()),
            event_type: event.event_type.clone(),
            received,
        }
    }

    /// The index's view of a publish record (without copying its payload).
    fn published(published: &Published) -> Self {
        Self::Published(Box::new(PublishedRow {
            event_id: published.event_id,
            channel: published.channel.clone(),
            event_type: published.event_type.clone(),
            received_at_ms: published.received_at_ms,
            idempotency_key: published.idempotency_key.clone(),
            payload_bytes: u32::try_from(published.payload.len()).unwrap_or(u32::MAX),
            trace_id: trace_id(published.traceparent.as_deref()),
            tenant_id: published.tenant.clone(),
            deliveries: published.deliveries.clone(),
            handoffs: published.handoffs.clone(),
        }))
    }
}

fn trace_id(traceparent: Option<&str>) -> Option<String> {
    traceparent.and_then(crate::model::trace::trace_id).map(str::to_string)
}

/// An event's (or a delivery's) columns as the batch leaves them.
#[derive(Clone, Debug)]
struct EventState {
    status: &'static str,
    attempt_count: u32,
    next_attempt_at_ms: Option<u64>,
    delivered_at_ms: Option<u64>,
    updated_at_ms: u64,
}

impl EventState {
    fn pending(at_ms: u64) -> Self {
        Self {
            status: "pending",
            attempt_count: 0,
            next_attempt_at_ms: None,
            delivered_at_ms: None,
            updated_at_ms: at_ms,
        }
    }

    fn apply(&mut self, row: &Row) {
        match row {
            Row::Attempt { n, at_ms, latency_ms, outcome, next_attempt_at_ms, .. } => {
                let finished = at_ms.saturating_add(u64::from(*latency_ms));
                self.attempt_count = self.attempt_count.max(*n);
                self.updated_at_ms = finished;
                self.next_attempt_at_ms = None;
                match *outcome {
                    OUTCOME_RETRYING => {
                        self.status = "retrying";
                        self.next_attempt_at_ms = *next_attempt_at_ms;
                    }
                    OUTCOME_FAILED => self.status = "failed",
                    OUTCOME_DELIVERED => {
                        self.status = "delivered";
                        self.delivered_at_ms = Some(finished);
                    }
                    _ => {}
                }
            }
            Row::Requeued { at_ms, .. } => {
                self.status = "pending";
                self.next_attempt_at_ms = None;
                self.updated_at_ms = *at_ms;
            }
            _ => {}
        }
    }
}

/// An `events` row to insert: a direct event (with its endpoint) or a published one.
struct NewEvent {
    id: String,
    shard: i32,
    lsn: i64,
    endpoint_id: Option<String>,
    received_at_ms: u64,
    idempotency_key: Option<String>,
    payload_bytes: u32,
    trace_id: Option<String>,
    event_type: String,
    channel: Option<String>,
    endpoints: Option<u32>,
    /// The publisher's tenant; `None` for an ingested event, whose row takes its endpoint's.
    tenant_id: Option<String>,
    state: EventState,
    /// True when the batch's later changes fold into this row (its record is where the state
    /// starts); else they are updates, applied after the insert whether it inserted or not.
    folds: bool,
}

/// An `endpoints` row to insert or replace.
struct NewEndpoint {
    url: String,
    enabled: bool,
    created_at_ms: u64,
    updated_at_ms: u64,
    tenant_id: String,
}

/// A `deliveries` row to insert.
struct NewDelivery {
    event_id: u128,
    endpoint_id: String,
    /// The shard that delivers it.
    shard: i32,
    /// The delivering shard's record that made it; `None` for a placeholder made from the
    /// channel's shard's record, which the delivering shard's record takes over.
    lsn: Option<i64>,
    state: EventState,
    folds: bool,
}

struct NewAttempt {
    event_id: String,
    n: u32,
    at_ms: u64,
    status_code: Option<u16>,
    latency_ms: u32,
    error_code: Option<String>,
    response_excerpt: Option<String>,
}

/// Rows gathered for one transaction.
#[derive(Default)]
struct Batch {
    endpoints: HashMap<String, NewEndpoint>,
    events: Vec<NewEvent>,
    event_positions: HashMap<u128, usize>,
    /// By delivery id (a delivery made by two records of the batch is one row).
    deliveries: HashMap<u128, NewDelivery>,
    /// State changes of events or deliveries made before the batch (or not by a record where
    /// their state starts), by id.
    updates: HashMap<u128, EventState>,
    attempts: Vec<NewAttempt>,
    /// Published events whose deliveries' summary changes.
    published: HashSet<u128>,
    checkpoints: HashMap<usize, u64>,
    /// Cluster mode: the fence's epoch per partition, where the batch moves it.
    fences: HashMap<usize, u64>,
}

impl Batch {
    /// Adds one change (a deletion only moves the checkpoint: [`write`] carries it out).
    fn add(&mut self, change: &Change) {
        self.checkpoints.insert(change.shard, change.lsn);
        if let Row::Fence { epoch } = &change.row {
            let fence = self.fences.entry(change.shard).or_default();
            *fence = (*fence).max(*epoch);
        }
        let shard = i32::try_from(change.shard).unwrap_or(i32::MAX);
        let lsn = i64::try_from(change.lsn).unwrap_or(i64::MAX);
        match &change.row {
            Row::EndpointPut { id, url, enabled, created_at_ms, updated_at_ms, tenant_id } => {
                let endpoint = NewEndpoint {
                    url: url.clone(),
                    enabled: *enabled,
                    created_at_ms: *created_at_ms,
                    updated_at_ms: *updated_at_ms,
                    tenant_id: tenant_id.clone(),
                };
                self.endpoints.insert(id.clone(), endpoint);
            }
            Row::EndpointDeleted { .. } | Row::Fence { .. } | Row::Nothing => {}
            Row::Event {
                event_id,
                endpoint_id,
                received_at_ms,
                idempotency_key,
                payload_bytes,
                trace_id,
                event_type,
                received,
            } => self.insert_event(
                *event_id,
                NewEvent {
                    id: EventId(*event_id).to_string(),
                    shard,
                    lsn,
                    endpoint_id: Some(endpoint_id.clone()),
                    received_at_ms: *received_at_ms,
                    idempotency_key: idempotency_key.clone(),
                    payload_bytes: *payload_bytes,
                    trace_id: trace_id.clone(),
                    event_type: event_type.clone(),
                    channel: None,
                    endpoints: None,
                    tenant_id: None,
                    state: EventState::pending(*received_at_ms),
                    folds: *received,
                },
            ),
            Row::Published(published) => self.add_published(published, shard, lsn),
            Row::Deliveries { event_id, received_at_ms, deliveries, received } => {
                for delivery in deliveries {
                    self.insert_delivery(*event_id, *received_at_ms, delivery, shard, Some(lsn), *received);
                }
            }
            Row::Attempt { event_id, n, at_ms, status_code, latency_ms, error_code, response_excerpt, .. } => {
                self.attempts.push(NewAttempt {
                    event_id: EventId(*event_id).to_string(),
                    n: *n,
                    at_ms: *at_ms,
                    status_code: *status_code,
                    latency_ms: *latency_ms,
                    error_code: error_code.clone(),
                    response_excerpt: response_excerpt.clone(),
                });
                self.update(*event_id, &change.row);
            }
            Row::Requeued { event_id, .. } => self.update(*event_id, &change.row),
        }
    }

    fn insert_event(&mut self, event_id: u128, event: NewEvent) {
        if self.event_positions.contains_key(&event_id) {
            // A carried copy of an event received in this batch: the first row stands.
            return;
        }
        self.event_positions.insert(event_id, self.events.len());
        self.events.push(event);
    }

    /// The published event's row, its own deliveries' rows, and placeholders for the
    /// deliveries other shards make.
    fn add_published(&mut self, published: &PublishedRow, shard: i32, lsn: i64) {
        let handed: usize = published.handoffs.iter().map(|handoff| handoff.deliveries.len()).sum();
        self.insert_event(
            published.event_id,
            NewEvent {
                id: EventId(published.event_id).to_string(),
                shard,
                lsn,
                endpoint_id: None,
                received_at_ms: published.received_at_ms,
                idempotency_key: published.idempotency_key.clone(),
                payload_bytes: published.payload_bytes,
                trace_id: published.trace_id.clone(),
                event_type: published.event_type.clone(),
                channel: Some(published.channel.clone()),
                endpoints: Some(u32::try_from(published.deliveries.len() + handed).unwrap_or(u32::MAX)),
                tenant_id: Some(published.tenant_id.clone()),
                state: EventState::pending(published.received_at_ms),
                folds: false,
            },
        );
        self.published.insert(published.event_id);
        let at_ms = published.received_at_ms;
        for delivery in &published.deliveries {
            self.insert_delivery(published.event_id, at_ms, delivery, shard, Some(lsn), true);
        }
        for handoff in &published.handoffs {
            for delivery in &handoff.deliveries {
                self.insert_delivery(published.event_id, at_ms, delivery, i32::from(handoff.shard), None, false);
            }
        }
    }

    fn insert_delivery(
        &mut self,
        event_id: u128,
        received_at_ms: u64,
        delivery: &Delivery,
        shard: i32,
        lsn: Option<i64>,
        folds: bool,
    ) {
        self.published.insert(event_id);
        let new = NewDelivery {
            event_id,
            endpoint_id: delivery.endpoint_id.clone(),
            shard,
            lsn,
            state: EventState::pending(received_at_ms),
            folds,
        };
        match self.deliveries.get_mut(&delivery.delivery_id) {
            None => {
                self.deliveries.insert(delivery.delivery_id, new);
            }
            // The delivering shard's record takes a placeholder over (nothing was folded into
            // a placeholder, so its state is the initial one).
            Some(existing) if existing.lsn.is_none() && lsn.is_some() => *existing = new,
            Some(_) => {}
        }
    }

    fn update(&mut self, event_id: u128, row: &Row) {
        if let Some(delivery) = self.deliveries.get_mut(&event_id).filter(|delivery| delivery.folds) {
            delivery.state.apply(row);
            return;
        }
        let position = self.event_positions.get(&event_id).copied();
        if let Some(event) = position.and_then(|position| self.events.get_mut(position)).filter(|event| event.folds) {
            event.state.apply(row);
            return;
        }
        self.updates.entry(event_id).or_insert_with(|| EventState::pending(0)).apply(row);
    }
}

/// The status of a published event from its deliveries' (`model::view::status_severity`, in
/// SQL): the worst first.
fn severity_sql(column: &str) -> String {
    let cases: Vec<String> = ["failed", "retrying", "pending", "delivering", "delivered"]
        .iter()
        .map(|status| format!("WHEN '{status}' THEN {}", crate::model::view::status_severity(status)))
        .collect();
    format!("CASE {column} {} ELSE 0 END", cases.join(" "))
}

/// Whose checkpoints a batch moves: a node's shards' (single-node mode: `checkpoints`, by shard
/// and LSN) or a cluster's partitions' (`partition_checkpoints`, by partition and stream
/// sequence, with the fence's epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ledger {
    /// Single-node mode: `Change::shard` is a shard, `Change::lsn` an LSN of its log.
    Shards,
    /// Cluster mode: `Change::shard` is a partition, `Change::lsn` a sequence of its stream.
    Partitions,
}

/// Writes `changes` (in LSN order per shard) and the shards' new checkpoints in `transaction`.
pub async fn write(
    transaction: &Transaction<'_>,
    changes: &[Change],
    ledger: Ledger,
) -> Result<(), tokio_postgres::Error> {
    let mut batch = Batch::default();
    for change in changes {
        if let Row::EndpointDeleted { id } = &change.row {
            // Everything before the deletion is written first, so the deletion removes it.
            flush(transaction, std::mem::take(&mut batch), ledger).await?;
            delete_endpoint(transaction, id).await?;
        }
        batch.add(change);
    }
    flush(transaction, batch, ledger).await
}

/// Removes an endpoint's events, its deliveries of published events (which then show the
/// deliveries left), and their attempts; the endpoint's row stays, marked deleted.
async fn delete_endpoint(transaction: &Transaction<'_>, id: &String) -> Result<(), tokio_postgres::Error> {
    transaction
        .execute("DELETE FROM attempts WHERE event_id IN (SELECT id FROM events WHERE endpoint_id = $1)", &[id])
        .await?;
    transaction.execute("DELETE FROM events WHERE endpoint_id = $1", &[id]).await?;
    let published = transaction
        .query(
            "WITH gone AS (DELETE FROM deliveries WHERE endpoint_id = $1 RETURNING delivery_id, event_id),
                  gone_attempts AS (DELETE FROM attempts WHERE event_id IN (SELECT delivery_id FROM gone))
             SELECT DISTINCT event_id FROM gone",
            &[id],
        )
        .await?;
    let published: Vec<String> = published.iter().map(|row| row.get(0)).collect();
    summarize(transaction, &published).await?;
    transaction.execute("UPDATE endpoints SET deleted = TRUE, updated_at = now() WHERE id = $1", &[id]).await?;
    Ok(())
}

fn time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// One column of an `UNNEST` statement.
fn column<'a, T, U>(rows: &'a [T], pick: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(pick).collect()
}

/// Writes a batch: rows first, then the state changes of rows made earlier (or not by the
/// record where their state starts), the attempts, the published events' summaries, and the
/// checkpoints.
async fn flush(transaction: &Transaction<'_>, batch: Batch, ledger: Ledger) -> Result<(), tokio_postgres::Error> {
    write_endpoints(transaction, &batch).await?;
    write_events(transaction, &batch.events).await?;
    write_deliveries(transaction, &batch.deliveries).await?;
    let mut published: HashSet<String> = batch.published.iter().map(|id| EventId(*id).to_string()).collect();
    published.extend(write_updates(transaction, &batch.updates).await?);
    write_attempts(transaction, &batch.attempts).await?;
    summarize(transaction, &published.into_iter().collect::<Vec<_>>()).await?;
    match ledger {
        Ledger::Shards => write_checkpoints(transaction, &batch.checkpoints).await,
        Ledger::Partitions => write_partition_checkpoints(transaction, &batch.checkpoints, &batch.fences).await,
    }
}

async fn write_endpoints(transaction: &Transaction<'_>, batch: &Batch) -> Result<(), tokio_postgres::Error> {
    if batch.endpoints.is_empty() {
        return Ok(());
    }
    let endpoints: Vec<_> = batch.endpoints.iter().collect();
    transaction
        .execute(
            "INSERT INTO endpoints (id, url, enabled, deleted, created_at, updated_at, tenant_id)
             SELECT id, url, enabled, FALSE, created_at, updated_at, tenant_id
             FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::timestamptz[], $5::timestamptz[], $6::text[])
                  AS u(id, url, enabled, created_at, updated_at, tenant_id)
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, enabled = EXCLUDED.enabled, deleted = FALSE,
                 created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, tenant_id = EXCLUDED.tenant_id",
            &[
                &column(&endpoints, |(id, _)| id.as_str()),
                &column(&endpoints, |(_, endpoint)| endpoint.url.as_str()),
                &column(&endpoints, |(_, endpoint)| endpoint.enabled),
                &column(&endpoints, |(_, endpoint)| time(endpoint.created_at_ms)),
                &column(&endpoints, |(_, endpoint)| time(endpoint.updated_at_ms)),
                &column(&endpoints, |(_, endpoint)| endpoint.tenant_id.as_str()),
            ],
        )
        .await?;
    Ok(())
}

async fn write_events(transaction: &Transaction<'_>, events: &[NewEvent]) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    transaction
        .execute(
            // An ingested event's tenant is its endpoint's, which is indexed before it: the
            // endpoint's record precedes its events in the same shard's log, and a batch writes
            // its endpoints first.
            "INSERT INTO events (id, shard, lsn, endpoint_id, idempotency_key, received_at, status,
                 attempt_count, next_attempt_at, delivered_at, updated_at, payload_bytes, trace_id,
                 event_type, channel, endpoints, tenant_id)
             SELECT u.id, u.shard, u.lsn, u.endpoint_id, u.idempotency_key, u.received_at, u.status,
                 u.attempt_count, u.next_attempt_at, u.delivered_at, u.updated_at, u.payload_bytes, u.trace_id,
                 u.event_type, u.channel, u.endpoints, COALESCE(u.tenant_id, ep.tenant_id)
             FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::text[], $5::text[],
                 $6::timestamptz[], $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[],
                 $11::timestamptz[], $12::int4[], $13::text[], $14::text[], $15::text[], $16::int4[], $17::text[])
                 AS u(id, shard, lsn, endpoint_id, idempotency_key, received_at, status, attempt_count,
                      next_attempt_at, delivered_at, updated_at, payload_bytes, trace_id, event_type, channel,
                      endpoints, tenant_id)
             LEFT JOIN endpoints ep ON ep.id = u.endpoint_id
             ON CONFLICT (id) DO NOTHING",
            &[
                &column(events, |event| event.id.as_str()),
                &column(events, |event| event.shard),
                &column(events, |event| event.lsn),
                &column(events, |event| event.endpoint_id.as_deref()),
                &column(events, |event| event.idempotency_key.as_deref()),
                &column(events, |event| time(event.received_at_ms)),
                &column(events, |event| event.state.status),
                &column(events, |event| int(event.state.attempt_count)),
                &column(events, |event| event.state.next_attempt_at_ms.map(time)),
                &column(events, |event| event.state.delivered_at_ms.map(time)),
                &column(events, |event| time(event.state.updated_at_ms)),
                &column(events, |event| int(event.payload_bytes)),
                &column(events, |event| event.trace_id.as_deref()),
                &column(events, |event| event.event_type.as_str()),
                &column(events, |event| event.channel.as_deref()),
                &column(events, |event| event.endpoints.map(int)),
                &column(events, |event| event.tenant_id.as_deref()),
            ],
        )
        .await?;
    Ok(())
}

/// Inserts delivery rows. A row that exists stays as it is, unless it is a placeholder and this
/// one comes from the delivering shard's record: that one takes it over with its state. A
/// delivery to an endpoint the index knows as deleted gets no row (the engine makes none for
/// an endpoint deleted before the record; one deleted after removes it).
async fn write_deliveries(
    transaction: &Transaction<'_>,
    deliveries: &HashMap<u128, NewDelivery>,
) -> Result<(), tokio_postgres::Error> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, &NewDelivery)> =
        deliveries.iter().map(|(id, delivery)| (EventId(*id).to_string(), delivery)).collect();
    transaction
        .execute(
            "INSERT INTO deliveries (delivery_id, event_id, endpoint_id, shard, lsn, status, attempt_count,
                 next_attempt_at, delivered_at, updated_at)
             SELECT u.* FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::text[],
                 $7::int4[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
                 AS u(delivery_id, event_id, endpoint_id, shard, lsn, status, attempt_count, next_attempt_at,
                      delivered_at, updated_at)
             WHERE NOT EXISTS (SELECT 1 FROM endpoints p WHERE p.id = u.endpoint_id AND p.deleted)
             ON CONFLICT (delivery_id) DO UPDATE SET shard = EXCLUDED.shard, lsn = EXCLUDED.lsn,
                 status = EXCLUDED.status, attempt_count = EXCLUDED.attempt_count,
                 next_attempt_at = EXCLUDED.next_attempt_at, delivered_at = EXCLUDED.delivered_at,
                 updated_at = EXCLUDED.updated_at
             WHERE deliveries.lsn IS NULL AND EXCLUDED.lsn IS NOT NULL",
            &[
                &column(&rows, |(id, _)| id.as_str()),
                &column(&rows, |(_, delivery)| EventId(delivery.event_id).to_string()),
                &column(&rows, |(_, delivery)| delivery.endpoint_id.as_str()),
                &column(&rows, |(_, delivery)| delivery.shard),
                &column(&rows, |(_, delivery)| delivery.lsn),
                &column(&rows, |(_, delivery)| delivery.state.status),
                &column(&rows, |(_, delivery)| int(delivery.state.attempt_count)),
                &column(&rows, |(_, delivery)| delivery.state.next_attempt_at_ms.map(time)),
                &column(&rows, |(_, delivery)| delivery.state.delivered_at_ms.map(time)),
                &column(&rows, |(_, delivery)| time(delivery.state.updated_at_ms)),
            ],
        )
        .await?;
    Ok(())
}

/// Applies state changes by id to events and deliveries alike (an id is one or the other);
/// returns the published events whose deliveries changed.
async fn write_updates(
    transaction: &Transaction<'_>,
    updates: &HashMap<u128, EventState>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    let updates: Vec<(String, &EventState)> =
        updates.iter().map(|(event_id, state)| (EventId(*event_id).to_string(), state)).collect();
    let ids = column(&updates, |(id, _)| id.as_str());
    let statuses = column(&updates, |(_, state)| state.status);
    let attempt_counts = column(&updates, |(_, state)| int(state.attempt_count));
    let next_attempts = column(&updates, |(_, state)| state.next_attempt_at_ms.map(time));
    let delivered = column(&updates, |(_, state)| state.delivered_at_ms.map(time));
    let updated = column(&updates, |(_, state)| time(state.updated_at_ms));
    let values = "UNNEST($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[])
                  AS u(id, status, attempt_count, next_attempt_at, delivered_at, updated_at)";
    let set = "status = u.status, attempt_count = GREATEST(r.attempt_count, u.attempt_count),
               next_attempt_at = u.next_attempt_at, delivered_at = COALESCE(u.delivered_at, r.delivered_at),
               updated_at = u.updated_at";
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&ids, &statuses, &attempt_counts, &next_attempts, &delivered, &updated];
    transaction.execute(&format!("UPDATE events AS r SET {set} FROM {values} WHERE r.id = u.id"), &parameters).await?;
    let published = transaction
        .query(
            &format!("UPDATE deliveries AS r SET {set} FROM {values} WHERE r.delivery_id = u.id RETURNING r.event_id"),
            &parameters,
        )
        .await?;
    Ok(published.iter().map(|row| row.get(0)).collect())
}

async fn write_attempts(transaction: &Transaction<'_>, attempts: &[NewAttempt]) -> Result<(), tokio_postgres::Error> {
    if attempts.is_empty() {
        return Ok(());
    }
    // An attempt whose event or delivery is gone (its endpoint was deleted) is not kept.
    transaction
        .execute(
            "INSERT INTO attempts (event_id, n, at, status_code, latency_ms, error_code, response_excerpt)
             SELECT u.* FROM UNNEST($1::text[], $2::int4[], $3::timestamptz[], $4::int4[], $5::int4[], $6::text[], $7::text[])
                  AS u(event_id, n, at, status_code, latency_ms, error_code, response_excerpt)
             WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = u.event_id)
                OR EXISTS (SELECT 1 FROM deliveries d WHERE d.delivery_id = u.event_id)
             ON CONFLICT (event_id, n) DO NOTHING",
            &[
                &column(attempts, |attempt| attempt.event_id.as_str()),
                &column(attempts, |attempt| int(attempt.n)),
                &column(attempts, |attempt| time(attempt.at_ms)),
                &column(attempts, |attempt| attempt.status_code.map(i32::from)),
                &column(attempts, |attempt| int(attempt.latency_ms)),
                &column(attempts, |attempt| attempt.error_code.as_deref()),
                &column(attempts, |attempt| attempt.response_excerpt.as_deref()),
            ],
        )
        .await?;
    Ok(())
}

/// Sets each published event's status, next attempt, delivery time and last change from its
/// deliveries, as the engine shows them: the worst status (`delivered` with none), the earliest
/// next attempt, the last change (its publication when nothing happened since), and when every
/// delivery is delivered, the last of those deliveries.
async fn summarize(transaction: &Transaction<'_>, published: &[String]) -> Result<(), tokio_postgres::Error> {
    if published.is_empty() {
        return Ok(());
    }
    let statement = format!(
        "UPDATE events AS e SET status = COALESCE(s.status, 'delivered'), next_attempt_at = s.next_attempt_at,
             delivered_at = s.delivered_at, updated_at = GREATEST(e.received_at, COALESCE(s.updated_at, e.received_at))
         FROM (SELECT u.id, (array_agg(d.status ORDER BY {} DESC))[1], min(d.next_attempt_at), max(d.updated_at),
                      CASE WHEN bool_and(d.status = 'delivered') THEN max(d.delivered_at) END
               FROM UNNEST($1::text[]) AS u(id) LEFT JOIN deliveries d ON d.event_id = u.id
               GROUP BY u.id) AS s(id, status, next_attempt_at, updated_at, delivered_at)
         WHERE e.id = s.id AND e.channel IS NOT NULL",
        severity_sql("d.status")
    );
    transaction.execute(&statement, &[&published]).await?;
    Ok(())
}

async fn write_checkpoints(
    transaction: &Transaction<'_>,
    checkpoints: &HashMap<usize, u64>,
) -> Result<(), tokio_postgres::Error> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let (shards, lsns): (Vec<i32>, Vec<i64>) = checkpoints
        .iter()
        .map(|(shard, lsn)| (i32::try_from(*shard).unwrap_or(i32::MAX), i64::try_from(*lsn).unwrap_or(i64::MAX)))
        .unzip();
    transaction
        .execute(
            "INSERT INTO checkpoints (shard, lsn, updated_at)
             SELECT shard, lsn, now() FROM UNNEST($1::int4[], $2::int8[]) AS u(shard, lsn)
             ON CONFLICT (shard) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now()",
            &[&shards, &lsns],
        )
        .await?;
    Ok(())
}

/// A cluster's partitions' checkpoints: the last sequence indexed and the fence's epoch there
/// (kept where the batch has no `Takeover`).
async fn write_partition_checkpoints(
    transaction: &Transaction<'_>,
    checkpoints: &HashMap<usize, u64>,
    fences: &HashMap<usize, u64>,
) -> Result<(), tokio_postgres::Error> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let mut partitions = Vec::with_capacity(checkpoints.len());
    let mut sequences = Vec::with_capacity(checkpoints.len());
    let mut epochs = Vec::with_capacity(checkpoints.len());
    for (partition, sequence) in checkpoints {
        partitions.push(i32::try_from(*partition).unwrap_or(i32::MAX));
        sequences.push(i64::try_from(*sequence).unwrap_or(i64::MAX));
        epochs.push(i64::try_from(fences.get(partition).copied().unwrap_or(0)).unwrap_or(i64::MAX));
    }
    transaction
        .execute(
            "INSERT INTO partition_checkpoints (partition, sequence, fence_epoch, updated_at)
             SELECT partition, sequence, fence_epoch, now()
               FROM UNNEST($1::int4[], $2::int8[], $3::int8[]) AS u(partition, sequence, fence_epoch)
             ON CONFLICT (partition) DO UPDATE SET sequence = EXCLUDED.sequence,
                 fence_epoch = GREATEST(partition_checkpoints.fence_epoch, EXCLUDED.fence_epoch), updated_at = now()",
            &[&partitions, &sequences, &epochs],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::model::records::{Attempt, EventCarried, History, Requeued};

    fn change(lsn: u64, record: &Record) -> Change {
        change_on(1, lsn, record)
    }

    fn change_on(shard: usize, lsn: u64, record: &Record) -> Change {
        Change { shard, lsn, row: Row::from_record(record) }
    }

    fn received(id: u128) -> Record {
        Record::EventReceived(EventReceived {
            event_id: id,
            endpoint_id: "orders".into(),
            received_at_ms: 1_000,
            idempotency_key: Some("k".into()),
            content_type: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
            event_type: "event".into(),
            publish: None,
            payload: vec![0; 42],
        })
    }

    fn attempt(id: u128, n: u32, at_ms: u64, outcome: u8) -> Record {
        Record::Attempt(Attempt {
            event_id: id,
            n,
            at_ms,
            status_code: Some(if outcome == OUTCOME_DELIVERED { 200 } else { 503 }),
            latency_ms: 5,
            error_code: (outcome != OUTCOME_DELIVERED).then(|| "E2003".into()),
            response_excerpt: b"excerpt".to_vec(),
            outcome,
            next_attempt_at_ms: (outcome == OUTCOME_RETRYING).then_some(at_ms + 1_000),
        })
    }

    // A batch folds what happened to an event within it into the row it inserts, and what
    // happened to an event inserted earlier into one update: the index must end as the engine.
    #[test]
    fn a_batch_folds_each_events_changes_into_one_row() {
        let mut batch = Batch::default();
        batch.add(&change(1, &received(7)));
        batch.add(&change(2, &attempt(7, 1, 2_000, OUTCOME_RETRYING)));
        batch.add(&change(3, &attempt(7, 2, 3_000, OUTCOME_DELIVERED)));
        batch.add(&change(4, &attempt(9, 4, 4_000, OUTCOME_FAILED)));
        batch.add(&change(5, &Record::Requeued(Requeued { event_id: 9, at_ms: 5_000 })));
        assert_eq!(batch.events.len(), 1, "one insert for the new event");
        let event = &batch.events[0];
        assert_eq!((event.payload_bytes, event.trace_id.as_deref()), (42, Some("4bf92f3577b34da6a3ce929d0e0e4736")));
        let state = &event.state;
        assert_eq!((state.status, state.attempt_count, state.delivered_at_ms), ("delivered", 2, Some(3_005)));
        assert_eq!(state.next_attempt_at_ms, None, "a delivery clears the retry time");
        assert_eq!(batch.attempts.len(), 3, "every attempt is its own row");
        let earlier = &batch.updates[&9];
        assert_eq!((earlier.status, earlier.attempt_count, earlier.updated_at_ms), ("pending", 4, 5_000));
        assert_eq!(batch.checkpoints[&1], 5, "the checkpoint is the last LSN of the shard");
    }

    // The index sees what a record means, never its payload.
    #[test]
    fn rows_carry_sizes_not_payloads() {
        let Row::Event { payload_bytes, idempotency_key, .. } = Row::from_record(&received(1)) else {
            panic!("an event row");
        };
        assert_eq!((payload_bytes, idempotency_key.as_deref()), (42, Some("k")));
    }

    /// A publish on shard 0 at 5_000: `a` delivered by shard 0, `b` and `c` handed to shard 1.
    fn published(id: u128) -> Published {
        let delivery = |number: u32, endpoint: &str| Delivery {
            delivery_id: EventId(id).delivery(number).0,
            endpoint_id: endpoint.into(),
        };
        Published {
            event_id: id,
            channel: "orders".into(),
            tenant: "default".into(),
            event_type: "order.created".into(),
            received_at_ms: 5_000,
            idempotency_key: Some("p".into()),
            content_type: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
            payload: vec![0; 7],
            deliveries: vec![delivery(1, "a")],
            handoffs: vec![Handoff { shard: 1, deliveries: vec![delivery(2, "b"), delivery(3, "c")] }],
        }
    }

    // The channel's shard's publish record names every delivery: it makes the event's row (no
    // endpoint; its type, channel and endpoint count) and a row for each delivery, its own ones
    // where their state starts, the other shards' as placeholders those shards take over.
    #[test]
    fn a_published_record_folds_into_its_event_and_every_delivery() {
        let id = EventId::new(5_000, 0, 1 << 14).0;
        let record = Record::Published(published(id));
        let mut batch = Batch::default();
        batch.add(&change_on(0, 10, &record));
        assert_eq!(batch.events.len(), 1);
        let event = &batch.events[0];
        assert_eq!((event.endpoint_id.as_deref(), event.channel.as_deref()), (None, Some("orders")));
        assert_eq!((event.event_type.as_str(), event.endpoints, event.payload_bytes), ("order.created", Some(3), 7));
        assert_eq!(event.tenant_id.as_deref(), Some("default"), "a published event is its publisher's tenant's");
        assert_eq!(
            (event.idempotency_key.as_deref(), event.trace_id.as_deref()),
            (Some("p"), Some("4bf92f3577b34da6a3ce929d0e0e4736"))
        );
        assert_eq!(batch.deliveries.len(), 3, "one row per delivery, this shard's and the others'");
        let own = &batch.deliveries[&EventId(id).delivery(1).0];
        assert_eq!((own.endpoint_id.as_str(), own.shard, own.lsn, own.folds), ("a", 0, Some(10), true));
        let handed = &batch.deliveries[&EventId(id).delivery(2).0];
        assert_eq!((handed.endpoint_id.as_str(), handed.shard, handed.lsn, handed.folds), ("b", 1, None, false));
        assert_eq!(handed.state.updated_at_ms, 5_000, "a delivery's last change is its publication until it has one");
        // The own delivery's attempt folds into its row; the handed one's (shard 1's log) is an
        // update, applied after the insert whichever of the two shards' rows came first.
        batch.add(&change_on(0, 11, &attempt(EventId(id).delivery(1).0, 1, 6_000, OUTCOME_DELIVERED)));
        batch.add(&change_on(1, 4, &attempt(EventId(id).delivery(2).0, 1, 6_000, OUTCOME_RETRYING)));
        assert_eq!(batch.deliveries[&EventId(id).delivery(1).0].state.status, "delivered");
        assert_eq!(batch.updates[&EventId(id).delivery(2).0].status, "retrying");
        assert_eq!(batch.published, HashSet::from([id]), "its summary is refreshed");
        assert_eq!((batch.checkpoints[&0], batch.checkpoints[&1]), (11, 4));
    }

    // The adopting shard's record takes the placeholder over, and its attempts then fold into
    // the row; a second adoption of the same delivery adds nothing.
    #[test]
    fn an_adoption_takes_a_placeholder_over() {
        let id = EventId::new(5_000, 0, 1 << 14).0;
        let record = published(id);
        let adopted = Record::Adopted(record.adoption(record.handoffs[0].deliveries.clone()));
        let delivery = EventId(id).delivery(3).0;
        for order in [[0, 1], [1, 0]] {
            let mut batch = Batch::default();
            for side in order {
                match side {
                    0 => batch.add(&change_on(0, 10, &Record::Published(record.clone()))),
                    _ => batch.add(&change_on(1, 20, &adopted)),
                }
            }
            batch.add(&change_on(1, 21, &attempt(delivery, 1, 6_000, OUTCOME_FAILED)));
            batch.add(&change_on(1, 22, &adopted));
            let row = &batch.deliveries[&delivery];
            assert_eq!((row.shard, row.lsn, row.folds, row.state.status), (1, Some(20), true, "failed"), "{order:?}");
            assert!(batch.updates.is_empty(), "{order:?}");
        }
    }

    // Regression: an event carried forward and attempted within one batch lost the attempt's
    // state (it was folded into the carried copy's insert, which does nothing when the row
    // exists). A carried copy only makes a missing row; state changes stay updates.
    #[test]
    fn a_carried_copy_leaves_state_changes_as_updates() {
        let Record::EventReceived(event) = received(7) else { unreachable!() };
        let carried = Record::EventCarried(EventCarried {
            event,
            last_attempt: 1,
            budget_used: 1,
            next_attempt_at_ms: Some(2_000),
            queued_lsn: 1,
            history: History::default(),
        });
        let mut batch = Batch::default();
        batch.add(&change(8, &carried));
        batch.add(&change(9, &attempt(7, 2, 3_000, OUTCOME_DELIVERED)));
        assert_eq!(batch.events.len(), 1, "the row is made if missing");
        assert_eq!(batch.updates[&7].status, "delivered");
    }

    // A delivery's records carry their published event: a carried delivery is a delivery row of
    // that event, never an event row under the delivery's id.
    #[test]
    fn a_carried_delivery_is_a_delivery_row() {
        let id = EventId::new(5_000, 0, 1 << 14).0;
        let record = published(id);
        let mut event = record.delivery_event(&record.handoffs[0].deliveries[0]);
        event.payload = vec![0; 7];
        let carried = Record::EventCarried(EventCarried {
            event,
            last_attempt: 0,
            budget_used: 0,
            next_attempt_at_ms: None,
            queued_lsn: 1,
            history: History::default(),
        });
        let Row::Deliveries { event_id, deliveries, received, .. } = Row::from_record(&carried) else {
            panic!("a delivery row");
        };
        assert_eq!((event_id, received), (id, false));
        assert_eq!(deliveries, vec![Delivery { delivery_id: EventId(id).delivery(2).0, endpoint_id: "b".into() }]);
    }

    // The SQL order of statuses is the engine's.
    #[test]
    fn the_worst_status_in_sql_follows_the_engine() {
        let sql = severity_sql("d.status");
        assert!(sql.contains("WHEN 'failed' THEN 4") && sql.contains("WHEN 'delivered' THEN 0"), "{sql}");
    }
}
