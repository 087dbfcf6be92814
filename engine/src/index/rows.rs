//! What the index stores of each log record, and how a batch of them becomes SQL.
//!
//! A batch is folded in memory first: an event received and attempted within one batch is
//! inserted once in its final state; later states of older events become one `UPDATE` each.
//! Every statement is an `UNNEST` of column arrays (one round trip per table), and every one is
//! idempotent, so applying a record twice changes nothing — the checkpoint written in the same
//! transaction keeps that from happening anyway.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Transaction;

use crate::model::ids::EventId;
use crate::model::records::{Record, OUTCOME_DELIVERED, OUTCOME_FAILED, OUTCOME_RETRYING};

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
    },
    /// A delivery attempt and the state it left the event in.
    Attempt {
        /// Event id.
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
        /// The outcome (`records::OUTCOME_*`).
        outcome: u8,
        /// When the next attempt is due.
        next_attempt_at_ms: Option<u64>,
    },
    /// An event requeued by an operator.
    Requeued {
        /// Event id.
        event_id: u128,
        /// When.
        at_ms: u64,
    },
    /// A record the index has no row for.
    Nothing,
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
            },
            Record::EndpointDeleted(deleted) => Self::EndpointDeleted { id: deleted.id.clone() },
            Record::EventReceived(event) => Self::event(event),
            Record::Attempt(attempt) => Self::Attempt {
                event_id: attempt.event_id,
                n: attempt.n,
                at_ms: attempt.at_ms,
                status_code: attempt.status_code,
                latency_ms: attempt.latency_ms,
                error_code: attempt.error_code.clone(),
                outcome: attempt.outcome,
                next_attempt_at_ms: attempt.next_attempt_at_ms,
            },
            Record::Requeued(requeued) => Self::Requeued { event_id: requeued.event_id, at_ms: requeued.at_ms },
            // The index has the event already (it is inserted only if it is not there).
            Record::EventCarried(carried) => Self::event(&carried.event),
            Record::Redriven(redriven) => Self::Requeued { event_id: redriven.event.event_id, at_ms: redriven.at_ms },
            // Published events and their deliveries are indexed with the deliveries table
            // (issue 13, in progress).
            Record::Published(_) | Record::Adopted(_) | Record::HandedOff(_) => Self::Nothing,
        }
    }

    /// The index's view of an accepted webhook (without copying its payload).
    pub fn event(event: &crate::model::records::EventReceived) -> Self {
        Self::Event {
            event_id: event.event_id,
            endpoint_id: event.endpoint_id.clone(),
            received_at_ms: event.received_at_ms,
            idempotency_key: event.idempotency_key.clone(),
            payload_bytes: u32::try_from(event.payload.len()).unwrap_or(u32::MAX),
            trace_id: event.traceparent.as_deref().and_then(crate::model::trace::trace_id).map(str::to_string),
        }
    }
}

/// An event's columns as the batch leaves them.
#[derive(Clone, Debug)]
struct EventState {
    status: &'static str,
    attempt_count: u32,
    next_attempt_at_ms: Option<u64>,
    delivered_at_ms: Option<u64>,
    updated_at_ms: u64,
}

impl EventState {
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

struct NewEvent {
    id: String,
    shard: i32,
    lsn: i64,
    endpoint_id: String,
    received_at_ms: u64,
    idempotency_key: Option<String>,
    payload_bytes: u32,
    trace_id: Option<String>,
    state: EventState,
}

struct NewAttempt {
    event_id: String,
    n: u32,
    at_ms: u64,
    status_code: Option<u16>,
    latency_ms: u32,
    error_code: Option<String>,
}

/// Rows gathered for one transaction.
#[derive(Default)]
struct Batch {
    endpoints: HashMap<String, (String, bool, u64, u64)>,
    events: Vec<NewEvent>,
    event_positions: HashMap<u128, usize>,
    updates: HashMap<u128, EventState>,
    attempts: Vec<NewAttempt>,
    checkpoints: HashMap<usize, u64>,
}

impl Batch {
    /// Adds one change (a deletion only moves the checkpoint: [`write`] carries it out).
    fn add(&mut self, change: &Change) {
        self.checkpoints.insert(change.shard, change.lsn);
        match &change.row {
            Row::EndpointPut { id, url, enabled, created_at_ms, updated_at_ms } => {
                self.endpoints.insert(id.clone(), (url.clone(), *enabled, *created_at_ms, *updated_at_ms));
            }
            Row::EndpointDeleted { .. } | Row::Nothing => {}
            Row::Event { event_id, endpoint_id, received_at_ms, idempotency_key, payload_bytes, trace_id } => {
                self.event_positions.insert(*event_id, self.events.len());
                self.events.push(NewEvent {
                    id: EventId(*event_id).to_string(),
                    shard: i32::try_from(change.shard).unwrap_or(i32::MAX),
                    lsn: i64::try_from(change.lsn).unwrap_or(i64::MAX),
                    endpoint_id: endpoint_id.clone(),
                    received_at_ms: *received_at_ms,
                    idempotency_key: idempotency_key.clone(),
                    payload_bytes: *payload_bytes,
                    trace_id: trace_id.clone(),
                    state: EventState {
                        status: "pending",
                        attempt_count: 0,
                        next_attempt_at_ms: None,
                        delivered_at_ms: None,
                        updated_at_ms: *received_at_ms,
                    },
                });
            }
            Row::Attempt { event_id, n, at_ms, status_code, latency_ms, error_code, .. } => {
                self.attempts.push(NewAttempt {
                    event_id: EventId(*event_id).to_string(),
                    n: *n,
                    at_ms: *at_ms,
                    status_code: *status_code,
                    latency_ms: *latency_ms,
                    error_code: error_code.clone(),
                });
                self.update(*event_id, &change.row);
            }
            Row::Requeued { event_id, .. } => self.update(*event_id, &change.row),
        }
    }

    fn update(&mut self, event_id: u128, row: &Row) {
        if let Some(position) = self.event_positions.get(&event_id) {
            if let Some(event) = self.events.get_mut(*position) {
                event.state.apply(row);
            }
            return;
        }
        self.updates
            .entry(event_id)
            .or_insert_with(|| EventState {
                status: "pending",
                attempt_count: 0,
                next_attempt_at_ms: None,
                delivered_at_ms: None,
                updated_at_ms: 0,
            })
            .apply(row);
    }
}

/// Writes `changes` (in LSN order per shard) and the shards' new checkpoints in `transaction`.
pub async fn write(transaction: &Transaction<'_>, changes: &[Change]) -> Result<(), tokio_postgres::Error> {
    let mut batch = Batch::default();
    for change in changes {
        if let Row::EndpointDeleted { id } = &change.row {
            // Everything before the deletion is written first, so the deletion removes it.
            flush(transaction, std::mem::take(&mut batch)).await?;
            transaction.execute("DELETE FROM events WHERE endpoint_id = $1", &[id]).await?;
            transaction.execute("UPDATE endpoints SET deleted = TRUE, updated_at = now() WHERE id = $1", &[id]).await?;
        }
        batch.add(change);
    }
    flush(transaction, batch).await
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

async fn flush(transaction: &Transaction<'_>, batch: Batch) -> Result<(), tokio_postgres::Error> {
    if !batch.endpoints.is_empty() {
        let endpoints: Vec<_> = batch.endpoints.iter().collect();
        transaction
            .execute(
                "INSERT INTO endpoints (id, url, enabled, deleted, created_at, updated_at)
                 SELECT id, url, enabled, FALSE, created_at, updated_at
                 FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::timestamptz[], $5::timestamptz[])
                      AS u(id, url, enabled, created_at, updated_at)
                 ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, enabled = EXCLUDED.enabled, deleted = FALSE,
                     created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
                &[
                    &column(&endpoints, |(id, _)| id.as_str()),
                    &column(&endpoints, |(_, (url, ..))| url.as_str()),
                    &column(&endpoints, |(_, (_, enabled, ..))| *enabled),
                    &column(&endpoints, |(_, (_, _, created, _))| time(*created)),
                    &column(&endpoints, |(_, (.., updated))| time(*updated)),
                ],
            )
            .await?;
    }
    if !batch.events.is_empty() {
        let events = &batch.events;
        transaction
            .execute(
                "INSERT INTO events (id, shard, lsn, endpoint_id, idempotency_key, received_at, status,
                     attempt_count, next_attempt_at, delivered_at, updated_at, payload_bytes, trace_id)
                 SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::text[], $8::int4[], $9::timestamptz[], $10::timestamptz[],
                     $11::timestamptz[], $12::int4[], $13::text[])
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &column(events, |event| event.id.as_str()),
                    &column(events, |event| event.shard),
                    &column(events, |event| event.lsn),
                    &column(events, |event| event.endpoint_id.as_str()),
                    &column(events, |event| event.idempotency_key.as_deref()),
                    &column(events, |event| time(event.received_at_ms)),
                    &column(events, |event| event.state.status),
                    &column(events, |event| int(event.state.attempt_count)),
                    &column(events, |event| event.state.next_attempt_at_ms.map(time)),
                    &column(events, |event| event.state.delivered_at_ms.map(time)),
                    &column(events, |event| time(event.state.updated_at_ms)),
                    &column(events, |event| int(event.payload_bytes)),
                    &column(events, |event| event.trace_id.as_deref()),
                ],
            )
            .await?;
    }
    if !batch.updates.is_empty() {
        let updates: Vec<(String, &EventState)> =
            batch.updates.iter().map(|(event_id, state)| (EventId(*event_id).to_string(), state)).collect();
        transaction
            .execute(
                "UPDATE events AS e SET status = u.status,
                     attempt_count = GREATEST(e.attempt_count, u.attempt_count),
                     next_attempt_at = u.next_attempt_at,
                     delivered_at = COALESCE(u.delivered_at, e.delivered_at),
                     updated_at = u.updated_at
                 FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::timestamptz[],
                     $6::timestamptz[]) AS u(id, status, attempt_count, next_attempt_at, delivered_at, updated_at)
                 WHERE e.id = u.id",
                &[
                    &column(&updates, |(id, _)| id.as_str()),
                    &column(&updates, |(_, state)| state.status),
                    &column(&updates, |(_, state)| int(state.attempt_count)),
                    &column(&updates, |(_, state)| state.next_attempt_at_ms.map(time)),
                    &column(&updates, |(_, state)| state.delivered_at_ms.map(time)),
                    &column(&updates, |(_, state)| time(state.updated_at_ms)),
                ],
            )
            .await?;
    }
    if !batch.attempts.is_empty() {
        let attempts = &batch.attempts;
        // An attempt whose event is gone (its endpoint was deleted) is not kept.
        transaction
            .execute(
                "INSERT INTO attempts (event_id, n, at, status_code, latency_ms, error_code)
                 SELECT u.* FROM UNNEST($1::text[], $2::int4[], $3::timestamptz[], $4::int4[], $5::int4[], $6::text[])
                      AS u(event_id, n, at, status_code, latency_ms, error_code)
                 WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = u.event_id)
                 ON CONFLICT (event_id, n) DO NOTHING",
                &[
                    &column(attempts, |attempt| attempt.event_id.as_str()),
                    &column(attempts, |attempt| int(attempt.n)),
                    &column(attempts, |attempt| time(attempt.at_ms)),
                    &column(attempts, |attempt| attempt.status_code.map(i32::from)),
                    &column(attempts, |attempt| int(attempt.latency_ms)),
                    &column(attempts, |attempt| attempt.error_code.as_deref()),
                ],
            )
            .await?;
    }
    if !batch.checkpoints.is_empty() {
        let (shards, lsns): (Vec<i32>, Vec<i64>) = batch
            .checkpoints
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
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::model::records::{Attempt, EventReceived, Requeued};

    fn change(lsn: u64, record: &Record) -> Change {
        Change { shard: 1, lsn, row: Row::from_record(record) }
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
}
