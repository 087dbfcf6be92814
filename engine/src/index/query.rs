//! Admin queries served from the index: `GET /admin/events` with its filters and cursor pages,
//! and `GET /admin/events/{id}` for events no longer in the engine's memory. Queries run on the
//! index thread over a small pool of connections, never on the writer's.
//!
//! Each query has a deadline, `INDEX_QUERY_TIMEOUT_MS` after the shard asked: the wait for a
//! free connection, connecting and the statements all count against it, and at the deadline the
//! query answers 503 E3001. A connection a query gave up on is dropped, never reused: an answer
//! may still be on its way, or never come.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row};

use super::session::{describe, Role, Session};
use crate::clock::rfc3339;
use crate::error::EngineError;
use crate::limits::INDEX_QUERY_TIMEOUT_MS;
use crate::model::ids::EventId;
use crate::model::query::EventQuery;

/// What a shard asks the index.
#[derive(Clone, Debug)]
pub enum Query {
    /// A page of events.
    List(EventQuery),
    /// One event, with its attempts.
    Get(EventId),
}

/// A query and where its answer goes.
pub struct QueryRequest {
    /// The query.
    pub query: Query,
    /// The answer: JSON, or the error to answer with.
    pub reply: futures_channel::oneshot::Sender<Result<Value, EngineError>>,
    /// When the query must have answered (503 E3001 if Postgres has not by then).
    pub deadline: std::time::Instant,
}

/// Connections for queries, opened on first use and again after a failure.
pub struct Pool {
    config: Config,
    slots: Vec<Mutex<Option<Session>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    /// A pool of `size` connections to `config`.
    pub fn new(config: Config, size: usize) -> Self {
        Self { config, slots: (0..size).map(|_| Mutex::new(None)).collect(), next: Default::default() }
    }

    async fn run(&self, query: Query, deadline: Instant) -> Result<Value, EngineError> {
        // A free slot first (the caller holds one of as many permits as there are slots).
        let free = self.slots.iter().find_map(|slot| slot.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => {
                let index = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.slots.len().max(1);
                let Some(slot) = self.slots.get(index) else {
                    return Err(EngineError::IndexUnavailable("no connections configured".into()));
                };
                tokio::time::timeout_at(deadline, slot.lock()).await.map_err(|_| timed_out())?
            }
        };
        match tokio::time::timeout_at(deadline, run_on(&self.config, &mut slot, query, deadline)).await {
            Ok(outcome) => {
                if outcome.is_err() && slot.as_ref().is_some_and(Session::is_closed) {
                    *slot = None;
                }
                outcome
            }
            Err(_) => {
                // Its state is unknown: an answer may still come, or never.
                *slot = None;
                Err(timed_out())
            }
        }
    }
}

/// Opens the slot's connection if it has none, then runs the query on it.
async fn run_on(
    config: &Config,
    slot: &mut Option<Session>,
    query: Query,
    deadline: Instant,
) -> Result<Value, EngineError> {
    if slot.as_ref().is_none_or(Session::is_closed) {
        *slot = None;
        let session = Session::open(config, Role::Query, deadline.saturating_duration_since(Instant::now()))
            .await
            .map_err(EngineError::IndexUnavailable)?;
        session.apply_settings(Role::Query).await.map_err(unavailable)?;
        *slot = Some(session);
    }
    let Some(session) = slot.as_ref() else {
        return Err(EngineError::IndexUnavailable("no connection".into()));
    };
    match query {
        Query::List(query) => list(&session.client, &query).await,
        Query::Get(event_id) => get(&session.client, event_id).await,
    }
    .map_err(unavailable)
}

fn unavailable(error: tokio_postgres::Error) -> EngineError {
    EngineError::IndexUnavailable(describe(&error))
}

fn timed_out() -> EngineError {
    EngineError::IndexUnavailable(format!(
        "the index did not answer within {INDEX_QUERY_TIMEOUT_MS} ms (Postgres unreachable, or a lock held)"
    ))
}

/// Answers queries until the shards' side is dropped; each query is its own task, as many at
/// once as the pool has connections, each answered by its deadline.
pub async fn serve(mut requests: tokio::sync::mpsc::Receiver<QueryRequest>, pool: Arc<Pool>) {
    let running = Arc::new(tokio::sync::Semaphore::new(pool.slots.len().max(1)));
    while let Some(request) = requests.recv().await {
        let deadline = Instant::from_std(request.deadline);
        // Waiting for a free connection counts against the query's time.
        let permit = match tokio::time::timeout_at(deadline, Arc::clone(&running).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = request.reply.send(Err(timed_out()));
                continue;
            }
        };
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            let answer = pool.run(request.query, deadline).await;
            let _ = request.reply.send(answer);
            drop(permit);
        });
    }
}

const EVENT_COLUMNS: &str = "id, endpoint_id, status, attempt_count, next_attempt_at, received_at, updated_at, \
                             delivered_at, payload_bytes, idempotency_key, trace_id";

async fn list(client: &Client, query: &EventQuery) -> Result<Value, tokio_postgres::Error> {
    let mut conditions: Vec<String> = Vec::new();
    let mut parameters: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut add = |condition: &str, value: Box<dyn ToSql + Sync + Send>| {
        parameters.push(value);
        conditions.push(condition.replace('?', &format!("${}", parameters.len())));
    };
    if let Some(endpoint_id) = &query.endpoint_id {
        add("endpoint_id = ?", Box::new(endpoint_id.clone()));
    }
    if let Some(status) = query.status {
        add("status = ?", Box::new(status.0.to_string()));
    }
    if let Some(key) = &query.idempotency_key {
        add("idempotency_key = ?", Box::new(key.clone()));
    }
    if let Some(after) = query.received_after_ms {
        add("received_at >= ?", Box::new(time(after)));
    }
    if let Some(before) = query.received_before_ms {
        add("received_at < ?", Box::new(time(before)));
    }
    if let Some(cursor) = query.cursor {
        add("id < ?", Box::new(cursor.to_string()));
    }
    let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let statement =
        format!("SELECT {EVENT_COLUMNS} FROM events {filter} ORDER BY id DESC LIMIT {}", query.limit.saturating_add(1));
    let borrowed: Vec<&(dyn ToSql + Sync)> =
        parameters.iter().map(|parameter| parameter.as_ref() as &(dyn ToSql + Sync)).collect();
    let mut rows = client.query(&statement, &borrowed).await?;
    let more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let ids: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let mut attempts = attempts_of(client, &ids).await?;
    let events: Vec<Value> =
        rows.iter().map(|row| event_json(row, attempts.remove(&row.get::<_, String>(0)))).collect();
    let next_cursor = if more { ids.last().map(|id| Value::String(id.clone())) } else { None };
    Ok(json!({"events": events, "next_cursor": next_cursor.unwrap_or(Value::Null), "source": "index"}))
}

async fn get(client: &Client, event_id: EventId) -> Result<Value, tokio_postgres::Error> {
    let id = event_id.to_string();
    let statement = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
    let Some(row) = client.query_opt(&statement, &[&id]).await? else {
        return Ok(Value::Null);
    };
    let mut attempts = attempts_of(client, std::slice::from_ref(&id)).await?;
    Ok(event_json(&row, attempts.remove(&id)))
}

async fn attempts_of(
    client: &Client,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<Value>>, tokio_postgres::Error> {
    let mut by_event: std::collections::HashMap<String, Vec<Value>> = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(by_event);
    }
    let rows = client
        .query(
            "SELECT event_id, n, at, status_code, latency_ms, error_code FROM attempts
             WHERE event_id = ANY($1) ORDER BY event_id, n",
            &[&ids],
        )
        .await?;
    for row in rows {
        let (n, status_code, latency_ms): (i32, Option<i32>, i32) = (row.get(1), row.get(3), row.get(4));
        let error_code: Option<String> = row.get(5);
        by_event.entry(row.get(0)).or_default().push(crate::model::view::attempt_json(
            u32::try_from(n).unwrap_or(0),
            unix_ms(row.get(2)),
            status_code.and_then(|code| u16::try_from(code).ok()),
            u32::try_from(latency_ms).unwrap_or(0),
            error_code.as_deref(),
        ));
    }
    Ok(by_event)
}

/// The engine's event view ([`crate::model::view::EventView`]), plus `delivered_at` and `trace_id`
/// which the index keeps; what only the engine's memory knows (the waiting reason, the last
/// response excerpt) is null.
fn event_json(row: &Row, attempts: Option<Vec<Value>>) -> Value {
    let (id, endpoint_id, status): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let attempt_count: i32 = row.get(3);
    let next_attempt_at: Option<SystemTime> = row.get(4);
    let delivered_at: Option<SystemTime> = row.get(7);
    let payload_bytes: i32 = row.get(8);
    let idempotency_key: Option<String> = row.get(9);
    let trace_id: Option<String> = row.get(10);
    let mut json = crate::model::view::EventView {
        event_id: &id,
        endpoint_id: &endpoint_id,
        status: &status,
        attempts: attempts.unwrap_or_default(),
        attempt_count: u32::try_from(attempt_count).unwrap_or(0),
        next_attempt_at_ms: next_attempt_at.map(unix_ms),
        waiting_reason: None,
        last_response_excerpt: None,
        received_at_ms: unix_ms(row.get(5)),
        updated_at_ms: unix_ms(row.get(6)),
        payload_bytes: u32::try_from(payload_bytes).unwrap_or(0),
        idempotency_key: idempotency_key.as_deref(),
        // The index gains types and channels with its deliveries table (issue 13, in progress).
        event_type: None,
        channel: None,
    }
    .to_json();
    json["delivered_at"] = json!(delivered_at.map(|at| rfc3339(unix_ms(at))));
    json["trace_id"] = json!(trace_id);
    json
}

fn time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}
