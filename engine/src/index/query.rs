//! Admin queries served from the index: `GET /admin/events` with its filters and cursor pages,
//! and `GET /admin/events/{id}` for events no longer in the engine's memory. Queries run on the
//! index thread over a small pool of connections, never on the writer's.
//!
//! Each query has a deadline, `INDEX_QUERY_TIMEOUT_MS` after the shard asked: the wait for a
//! free connection, connecting and the statements all count against it, and at the deadline the
//! query answers 503 E3001. A connection a query gave up on is dropped, never reused: an answer
//! may still be on its way, or never come.

use std::collections::HashMap;
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
    /// One event, with its attempts; with a tenant (a key's), only if it is that tenant's.
    Get(EventId, Option<String>),
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
        Query::Get(event_id, tenant_id) => get(&session.client, event_id, tenant_id.as_deref()).await,
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

/// The `events` columns every answer reads, in [`EventRow::read`]'s order.
const EVENT_COLUMNS: &[&str] = &[
    "id",
    "endpoint_id",
    "status",
    "attempt_count",
    "next_attempt_at",
    "received_at",
    "updated_at",
    "delivered_at",
    "payload_bytes",
    "idempotency_key",
    "trace_id",
    "event_type",
    "channel",
    "endpoints",
];

/// [`EVENT_COLUMNS`] of table alias `table`.
fn event_columns(table: &str) -> String {
    EVENT_COLUMNS.iter().map(|name| format!("{table}.{name}")).collect::<Vec<_>>().join(", ")
}

/// `GET /admin/events`: newest first, one entry per event; a published event once, with its
/// deliveries, its status the worst of theirs. `endpoint_id=` matches the events ingested for
/// that endpoint and the published events with a delivery to it.
async fn list(client: &Client, query: &EventQuery) -> Result<Value, tokio_postgres::Error> {
    let mut conditions: Vec<String> = Vec::new();
    let mut parameters: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut add = |condition: &str, value: Box<dyn ToSql + Sync + Send>| {
        parameters.push(value);
        conditions.push(condition.replace('?', &format!("${}", parameters.len())));
    };
    if let Some(status) = query.status {
        add("e.status = ?", Box::new(status.0.to_string()));
    }
    if let Some(key) = &query.idempotency_key {
        add("e.idempotency_key = ?", Box::new(key.clone()));
    }
    if let Some(event_type) = &query.event_type {
        add("e.event_type = ?", Box::new(event_type.clone()));
    }
    if let Some(channel) = &query.channel {
        add("e.channel = ?", Box::new(channel.clone()));
    }
    if let Some(after) = query.received_after_ms {
        add("e.received_at >= ?", Box::new(time(after)));
    }
    if let Some(before) = query.received_before_ms {
        add("e.received_at < ?", Box::new(time(before)));
    }
    if let Some(tenant_id) = &query.tenant_id {
        add(&tenant_condition(tenant_id), Box::new(tenant_id.clone()));
    }
    if let Some(cursor) = query.cursor {
        add("e.id < ?", Box::new(cursor.to_string()));
    }
    let limit = query.limit.saturating_add(1);
    let columns = event_columns("e");
    let statement = match &query.endpoint_id {
        None => {
            let filter =
                if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
            format!("SELECT {columns} FROM events e {filter} ORDER BY e.id DESC LIMIT {limit}")
        }
        Some(endpoint_id) => {
            // Two ordered scans, each stopping at the page's end: the endpoint's own events, and
            // the published events with a delivery to it (one per event and endpoint).
            let filter: String = conditions.iter().map(|condition| format!(" AND {condition}")).collect();
            parameters.push(Box::new(endpoint_id.clone()));
            let endpoint = format!("${}", parameters.len());
            format!(
                "SELECT * FROM (
                     (SELECT {columns} FROM events e WHERE e.endpoint_id = {endpoint}{filter}
                      ORDER BY e.id DESC LIMIT {limit})
                     UNION ALL
                     (SELECT {columns} FROM deliveries d JOIN events e ON e.id = d.event_id
                      WHERE d.endpoint_id = {endpoint}{filter} ORDER BY e.id DESC LIMIT {limit})
                 ) AS found ORDER BY id DESC LIMIT {limit}"
            )
        }
    };
    let borrowed: Vec<&(dyn ToSql + Sync)> =
        parameters.iter().map(|parameter| parameter.as_ref() as &(dyn ToSql + Sync)).collect();
    let mut rows: Vec<EventRow> = client.query(&statement, &borrowed).await?.iter().map(EventRow::read).collect();
    let more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let events = render(client, rows).await?;
    let next_cursor = if more { events.last().map(|event| event["event_id"].clone()) } else { None };
    Ok(json!({"events": events, "next_cursor": next_cursor.unwrap_or(Value::Null), "source": "index"}))
}

/// The condition that an event of alias `e` is `tenant_id`'s (each `?` is its one parameter). Rows
/// indexed before events had tenants have none: they are the default tenant's. Each branch can
/// use `events_by_tenant`.
fn tenant_condition(tenant_id: &str) -> String {
    if tenant_id == crate::model::tenant::DEFAULT_TENANT {
        "(e.tenant_id = ? OR e.tenant_id IS NULL)".to_string()
    } else {
        "e.tenant_id = ?".to_string()
    }
}

/// `GET /admin/events/{id}`: an event, a published event with its deliveries, or one delivery
/// of a published event (as the engine shows a delivery it holds: under the published event's
/// id, with its endpoint). Another tenant's event is not found, exactly as a missing one.
async fn get(client: &Client, event_id: EventId, tenant_id: Option<&str>) -> Result<Value, tokio_postgres::Error> {
    let id = event_id.to_string();
    let tenant = tenant_id.map_or_else(|| "TRUE".to_string(), |tenant| tenant_condition(tenant).replace('?', "$2"));
    let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&id];
    if let Some(tenant_id) = &tenant_id {
        parameters.push(tenant_id);
    }
    let statement = format!("SELECT {} FROM events e WHERE e.id = $1 AND {tenant}", event_columns("e"));
    if let Some(row) = client.query_opt(&statement, &parameters).await? {
        return Ok(render(client, vec![EventRow::read(&row)]).await?.pop().unwrap_or(Value::Null));
    }
    let delivery = client
        .query_opt(
            &format!(
                "SELECT d.endpoint_id, d.status, d.attempt_count, d.next_attempt_at, d.updated_at, d.delivered_at,
                        e.id, e.received_at, e.payload_bytes, e.trace_id, e.event_type, e.channel
                 FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.delivery_id = $1 AND {tenant}"
            ),
            &parameters,
        )
        .await?;
    let Some(delivery) = delivery else {
        return Ok(Value::Null);
    };
    let mut attempts = attempts_of(client, std::slice::from_ref(&id)).await?;
    let row = EventRow {
        id: delivery.get(6),
        endpoint_id: Some(delivery.get(0)),
        status: delivery.get(1),
        attempt_count: delivery.get(2),
        next_attempt_at: delivery.get(3),
        received_at: delivery.get(7),
        updated_at: delivery.get(4),
        delivered_at: delivery.get(5),
        payload_bytes: delivery.get(8),
        idempotency_key: None,
        trace_id: delivery.get(9),
        event_type: delivery.get(10),
        channel: delivery.get(11),
        endpoints: None,
    };
    Ok(row.view(attempts.remove(&id).unwrap_or_default()))
}

/// What the index holds of an event.
struct EventRow {
    id: String,
    /// `None` for a published event.
    endpoint_id: Option<String>,
    status: String,
    attempt_count: i32,
    next_attempt_at: Option<SystemTime>,
    received_at: SystemTime,
    updated_at: SystemTime,
    delivered_at: Option<SystemTime>,
    payload_bytes: i32,
    idempotency_key: Option<String>,
    trace_id: Option<String>,
    event_type: Option<String>,
    channel: Option<String>,
    endpoints: Option<i32>,
}

impl EventRow {
    /// Reads a row of [`EVENT_COLUMNS`].
    fn read(row: &Row) -> Self {
        Self {
            id: row.get(0),
            endpoint_id: row.get(1),
            status: row.get(2),
            attempt_count: row.get(3),
            next_attempt_at: row.get(4),
            received_at: row.get(5),
            updated_at: row.get(6),
            delivered_at: row.get(7),
            payload_bytes: row.get(8),
            idempotency_key: row.get(9),
            trace_id: row.get(10),
            event_type: row.get(11),
            channel: row.get(12),
            endpoints: row.get(13),
        }
    }

    /// The engine's event view ([`crate::model::view::EventView`]), plus `delivered_at` and
    /// `trace_id` which the index keeps; what only the engine's memory knows (the waiting
    /// reason, the last response excerpt) is null.
    fn view(&self, attempts: Vec<Value>) -> Value {
        let mut json = crate::model::view::EventView {
            event_id: &self.id,
            endpoint_id: self.endpoint_id.as_deref().unwrap_or_default(),
            status: &self.status,
            attempts,
            attempt_count: u32::try_from(self.attempt_count).unwrap_or(0),
            next_attempt_at_ms: self.next_attempt_at.map(unix_ms),
            waiting_reason: None,
            last_response_excerpt: None,
            received_at_ms: unix_ms(self.received_at),
            updated_at_ms: unix_ms(self.updated_at),
            payload_bytes: u32::try_from(self.payload_bytes).unwrap_or(0),
            idempotency_key: self.idempotency_key.as_deref(),
            event_type: self.event_type.as_deref(),
            channel: self.channel.as_deref(),
        }
        .to_json();
        json["delivered_at"] = json!(self.delivered_at.map(|at| rfc3339(unix_ms(at))));
        json["trace_id"] = json!(self.trace_id);
        json
    }

    /// A published event's view, as `admin::publish::published_json` gives it from memory:
    /// no endpoint and no attempts of its own, its deliveries (by endpoint id) instead.
    fn published_view(&self, mut deliveries: Vec<Value>) -> Value {
        deliveries.sort_by(|a, b| a["endpoint_id"].as_str().cmp(&b["endpoint_id"].as_str()));
        let mut json = self.view(Vec::new());
        json["endpoint_id"] = Value::Null;
        json["endpoints"] = json!(self.endpoints.unwrap_or(0));
        json["deliveries"] = Value::Array(deliveries);
        json
    }
}

/// The answers for `rows`, in their order: published events with their deliveries, every
/// event or delivery with its attempts.
async fn render(client: &Client, rows: Vec<EventRow>) -> Result<Vec<Value>, tokio_postgres::Error> {
    let published: Vec<String> =
        rows.iter().filter(|row| row.endpoint_id.is_none()).map(|row| row.id.clone()).collect();
    let deliveries = if published.is_empty() {
        Vec::new()
    } else {
        client
            .query(
                "SELECT event_id, delivery_id, endpoint_id, status, attempt_count, next_attempt_at, updated_at
                 FROM deliveries WHERE event_id = ANY($1)",
                &[&published],
            )
            .await?
    };
    let mut ids: Vec<String> = rows.iter().filter(|row| row.endpoint_id.is_some()).map(|row| row.id.clone()).collect();
    ids.extend(deliveries.iter().map(|delivery| delivery.get::<_, String>(1)));
    let mut attempts = attempts_of(client, &ids).await?;
    let events: HashMap<&str, &EventRow> = rows.iter().map(|row| (row.id.as_str(), row)).collect();
    let mut by_event: HashMap<String, Vec<Value>> = HashMap::new();
    for delivery in &deliveries {
        let event_id: String = delivery.get(0);
        let Some(event) = events.get(event_id.as_str()) else { continue };
        let attempt_count: i32 = delivery.get(4);
        let next_attempt_at: Option<SystemTime> = delivery.get(5);
        by_event.entry(event_id.clone()).or_default().push(json!({
            "endpoint_id": delivery.get::<_, String>(2),
            "status": delivery.get::<_, String>(3),
            "attempts": attempts.remove(&delivery.get::<_, String>(1)).unwrap_or_default(),
            "attempt_count": attempt_count,
            "next_attempt_at": next_attempt_at.map(|at| rfc3339(unix_ms(at))),
            "waiting_reason": null,
            "last_response_excerpt": null,
            "updated_at": rfc3339(unix_ms(delivery.get(6))),
            "type": event.event_type,
            "channel": event.channel,
            "payload_bytes": event.payload_bytes,
        }));
    }
    Ok(rows
        .iter()
        .map(|row| match row.endpoint_id {
            Some(_) => row.view(attempts.remove(&row.id).unwrap_or_default()),
            None => row.published_view(by_event.remove(&row.id).unwrap_or_default()),
        })
        .collect())
}

async fn attempts_of(client: &Client, ids: &[String]) -> Result<HashMap<String, Vec<Value>>, tokio_postgres::Error> {
    let mut by_event: HashMap<String, Vec<Value>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_event);
    }
    let rows = client
        .query(
            "SELECT event_id, n, at, status_code, latency_ms, error_code, response_excerpt FROM attempts
             WHERE event_id = ANY($1) ORDER BY event_id, n",
            &[&ids],
        )
        .await?;
    for row in rows {
        let (n, status_code, latency_ms): (i32, Option<i32>, i32) = (row.get(1), row.get(3), row.get(4));
        let (error_code, excerpt): (Option<String>, Option<String>) = (row.get(5), row.get(6));
        let mut attempt = crate::model::view::attempt_json(
            u32::try_from(n).unwrap_or(0),
            unix_ms(row.get(2)),
            status_code.and_then(|code| u16::try_from(code).ok()),
            u32::try_from(latency_ms).unwrap_or(0),
            error_code.as_deref(),
        );
        // Only the index keeps every attempt's excerpt; memory keeps the last failed one's.
        attempt["response_excerpt"] = excerpt.into();
        by_event.entry(row.get(0)).or_default().push(attempt);
    }
    Ok(by_event)
}

fn time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}
