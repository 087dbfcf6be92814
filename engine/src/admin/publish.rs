//! Publish and fan-out at the HTTP face: `POST /publish/{channel}` on the channel's shard, the
//! handoff of deliveries to the shards that own their endpoints, and the admin views of a
//! published event (every shard's deliveries gathered into one answer) and its redrives.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kapsel_http::{Request, Response};
use serde_json::{json, Value};

use crate::admin::inbox::Command;
use crate::admin::shared::Shared;
use crate::error::EngineError;
use crate::limits;
use crate::model::ids::{owner_shard, EventId};
use crate::model::records::Published;
use crate::shard::publish::Publish;
use crate::shard::{Accepted, Shard};

/// Publish records read back and handed over per pass of the handoff task, at most.
const HANDOFF_BATCH_MAX: usize = 256;
/// The first pause after a failed handoff; it doubles up to [`HANDOFF_BACKOFF_MAX_MS`].
const HANDOFF_BACKOFF_MIN_MS: u64 = 50;
/// The longest pause between handoff attempts while another shard cannot adopt.
const HANDOFF_BACKOFF_MAX_MS: u64 = 5_000;

/// What a publish record takes besides its payload and endpoint ids, at most: per delivery
/// (its id, the framing) and once (the event's fields, the headers of a NATS message).
const PUBLISH_BYTES_PER_DELIVERY: usize = 32;
const PUBLISH_BYTES_FIXED: usize = 4096;

/// `POST /publish/{channel}`, on the channel's shard.
pub async fn publish(
    shard: &Shard,
    shared: &Shared,
    channel: String,
    tenant: String,
    request: Request,
) -> Result<Response, EngineError> {
    let inbound = crate::admin::service::Inbound::read(&request)?;
    shared
        .tenant_limits
        .take(&tenant, crate::clock::now_ms())
        .map_err(|retry_after_s| EngineError::RateLimited { retry_after_s })?;
    if shard.tenant_full(&tenant) {
        return Err(EngineError::QueueFull(format!(
            "tenant {tenant} has as many events waiting as its events_waiting_max allows"
        )));
    }
    let scoped = crate::state::tenant_channel(&tenant, &channel);
    let (endpoints, more) = shared.subscribers(&scoped, &inbound.event_type, limits::PUBLISH_ENDPOINTS_MAX);
    if more {
        return Err(EngineError::Invalid(format!(
            "more than {} endpoints match this event; narrow their channels or event_types",
            limits::PUBLISH_ENDPOINTS_MAX
        )));
    }
    if let Some(node) = shared.cluster.get() {
        // In a cluster the publish record is one NATS message, deliveries and all.
        let record_bytes: usize = request.body.len()
            + endpoints.iter().map(|id| id.len() + PUBLISH_BYTES_PER_DELIVERY).sum::<usize>()
            + PUBLISH_BYTES_FIXED;
        let cap = node.link.max_payload();
        if record_bytes as u64 > cap {
            return Err(EngineError::TooLarge(format!(
                "this publish to {} endpoints is about {record_bytes} bytes as a record, more than a cluster message \
                 holds ({cap} bytes, NATS max_payload): send a smaller body or narrow the subscriptions",
                endpoints.len()
            )));
        }
    }
    let endpoints = endpoints.into_iter().map(|id| (owner_shard(&id, shared.owners()), id)).collect();
    let publish = Publish {
        channel,
        tenant,
        idempotency_key: inbound.idempotency_key,
        content_type: inbound.content_type,
        traceparent: inbound.trace.traceparent,
        tracestate: inbound.trace.tracestate,
        event_type: inbound.event_type,
        payload: request.body,
        endpoints,
    };
    let outcome = shard.publish(publish, crate::clock::now_ms()).await?;
    let (status, event_id, word) = match outcome.accepted {
        Accepted::Received(event_id) => (202, event_id, "received"),
        Accepted::Duplicate(event_id) => (200, event_id, "duplicate"),
    };
    let body = json!({"event_id": event_id.to_string(), "status": word, "endpoints": outcome.endpoints});
    Ok(Response::json(status, body.to_string().into_bytes()))
}

/// Asks every shard (this one directly) for its part of published event `event_id`: its
/// deliveries' views, or, with `retry`, to redrive them; the answers in shard order.
async fn ask_every_shard(
    shard: &Shard,
    shared: &Shared,
    event_id: EventId,
    retry: bool,
) -> Result<Vec<Value>, EngineError> {
    if let Some(node) = shared.cluster.get() {
        // The partitions' owners, this one's included, over NATS.
        return crate::admin::cluster::deliveries_everywhere(node, event_id, retry).await;
    }
    let now = crate::clock::now_ms();
    let mut gathered = if retry {
        let count = shard.retry_deliveries(event_id, None, now).await?;
        vec![json!(count)]
    } else {
        shard.deliveries_json(event_id, now)
    };
    let mut answers = Vec::with_capacity(shared.shards);
    for (index, inbox) in shared.inboxes.iter().enumerate() {
        if index == shard.index {
            continue;
        }
        let (reply, answer) = futures_channel::oneshot::channel();
        inbox
            .send(Command::Deliveries { event_id, retry, reply })
            .map_err(|_| EngineError::QueueFull("a shard's inbox is full".into()))?;
        answers.push(answer);
    }
    for answer in answers {
        gathered.extend(answer.await.map_err(|_| EngineError::Unavailable("a shard stopped".into()))??);
    }
    Ok(gathered)
}

/// This shard's part of [`ask_every_shard`], run on it for another shard.
pub async fn deliveries_here(shard: &Shard, event_id: EventId, retry: bool) -> Result<Vec<Value>, EngineError> {
    let now = crate::clock::now_ms();
    if retry {
        let count = shard.retry_deliveries(event_id, None, now).await?;
        return Ok(vec![json!(count)]);
    }
    Ok(shard.deliveries_json(event_id, now))
}

/// `GET /admin/events/{id}` of a published event, from memory: `None` when no shard knows it.
pub async fn published_json(shard: &Shard, shared: &Shared, event_id: EventId) -> Result<Option<Value>, EngineError> {
    let publication = {
        let state = shard.state().borrow();
        state.publications.get(&event_id).map(|publication| {
            let name = |number| state.names.get(number).map(str::to_string);
            let waiting: Vec<String> = publication
                .handoffs
                .iter()
                .flat_map(|(_, endpoints)| endpoints.iter().map(|id| id.to_string()))
                .collect();
            (
                (
                    name(publication.channel),
                    name(publication.event_type),
                    publication.endpoints,
                    publication.payload_bytes,
                    publication.idempotency_key.as_deref().map(str::to_string),
                ),
                waiting,
            )
        })
    };
    let (publication, handing_over) = match publication {
        Some((publication, waiting)) => (Some(publication), waiting),
        None => (None, Vec::new()),
    };
    let mut deliveries = ask_every_shard(shard, shared, event_id, false).await?;
    // Deliveries not adopted yet by their shard are pending there in all but name.
    for endpoint_id in handing_over {
        if !deliveries.iter().any(|delivery| delivery["endpoint_id"] == endpoint_id.as_str()) {
            let (channel, event_type, payload_bytes) =
                publication.as_ref().map_or((None, None, 0), |(channel, event_type, _, bytes, _)| {
                    (channel.clone(), event_type.clone(), *bytes)
                });
            deliveries.push(json!({
                "endpoint_id": endpoint_id,
                "status": "pending",
                "attempts": [],
                "attempt_count": 0,
                "next_attempt_at": null,
                "waiting_reason": null,
                "last_response_excerpt": null,
                "updated_at": crate::clock::rfc3339(event_id.unix_ms()),
                "type": event_type,
                "channel": channel,
                "payload_bytes": payload_bytes,
            }));
        }
    }
    deliveries.sort_by(|a, b| a["endpoint_id"].as_str().cmp(&b["endpoint_id"].as_str()));
    if publication.is_none() && deliveries.is_empty() {
        return Ok(None);
    }
    // Memory holds part of it only (the publication, or some deliveries, left its windows): the
    // index, when there is one, has all of it.
    let whole = publication.as_ref().is_some_and(|(_, _, endpoints, _, _)| deliveries.len() >= *endpoints as usize);
    if !whole && shard.index_handle().is_some() {
        return Ok(None);
    }
    let first = deliveries.first();
    let from_delivery = |name: &str| first.and_then(|delivery| delivery[name].as_str()).map(str::to_string);
    let (channel, event_type, endpoints, payload_bytes, idempotency_key) = publication.unwrap_or_else(|| {
        let payload_bytes = first.and_then(|delivery| delivery["payload_bytes"].as_u64()).unwrap_or(0);
        (
            from_delivery("channel"),
            from_delivery("type"),
            u32::try_from(deliveries.len()).unwrap_or(u32::MAX),
            u32::try_from(payload_bytes).unwrap_or(u32::MAX),
            None,
        )
    });
    let status = deliveries
        .iter()
        .filter_map(|delivery| delivery["status"].as_str())
        .max_by_key(|status| crate::model::view::status_severity(status))
        .unwrap_or("delivered");
    let next_attempt_at = deliveries.iter().filter_map(|delivery| delivery["next_attempt_at"].as_str()).min();
    let received_at = crate::clock::rfc3339(event_id.unix_ms());
    let updated_at =
        deliveries.iter().filter_map(|delivery| delivery["updated_at"].as_str()).max().unwrap_or(&received_at);
    Ok(Some(json!({
        "event_id": event_id.to_string(),
        "endpoint_id": null,
        "type": event_type,
        "channel": channel,
        "status": status,
        "endpoints": endpoints,
        "deliveries": deliveries,
        "attempts": [],
        "attempt_count": 0,
        "next_attempt_at": next_attempt_at,
        "waiting_reason": null,
        "last_response_excerpt": null,
        "received_at": received_at,
        "created_at": received_at,
        "updated_at": updated_at,
        "payload_bytes": payload_bytes,
        "idempotency_key": idempotency_key,
    })))
}

/// `POST /admin/events/{id}/retry[?endpoint_id=]` of a published event. With an endpoint it runs
/// on that endpoint's shard and redrives that one delivery; without, on the event's shard, and
/// redrives every delivery.
pub async fn retry_published(
    shard: &Shard,
    shared: &Shared,
    event_id: EventId,
    endpoint_id: Option<&str>,
) -> Result<Response, EngineError> {
    let redriven = match endpoint_id {
        Some(endpoint_id) => shard.retry_deliveries(event_id, Some(endpoint_id), crate::clock::now_ms()).await?,
        None => ask_every_shard(shard, shared, event_id, true)
            .await?
            .iter()
            .filter_map(Value::as_u64)
            .map(|count| usize::try_from(count).unwrap_or(0))
            .sum(),
    };
    if redriven == 0 {
        let what = endpoint_id.map_or_else(String::new, |id| format!(" to endpoint {id}"));
        return Err(EngineError::NotFound(format!("event {event_id} has no delivery{what} here")));
    }
    let body = json!({"event_id": event_id.to_string(), "status": "pending", "deliveries": redriven});
    Ok(Response::json(202, body.to_string().into_bytes()))
}

/// The handoff task of a shard: hands the deliveries of its published events to the shards that
/// own their endpoints, in publish order, until every one is adopted; after a refusal (a full
/// inbox or log, a storage failure there) it tries again with backoff. Runs until `stop`.
pub async fn run_handoffs(shard: Rc<Shard>, shared: Arc<Shared>, stop: Rc<dyn Fn() -> bool>) {
    let mut backoff_ms = HANDOFF_BACKOFF_MIN_MS;
    while !stop() {
        let pending = shard.handoffs_pending(HANDOFF_BATCH_MAX);
        if pending.is_empty() {
            wait_for_work(&shard, limits::SCHEDULER_IDLE_MS).await;
            continue;
        }
        match hand_over(&shard, &shared, pending).await {
            Ok(()) => backoff_ms = HANDOFF_BACKOFF_MIN_MS,
            Err(error) => {
                tracing::warn!(shard = shard.index, %error, retry_in_ms = backoff_ms, "could not hand published deliveries to another shard");
                monoio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(HANDOFF_BACKOFF_MAX_MS);
            }
        }
    }
}

/// Waits until a publish wakes the task, or `idle_ms`.
async fn wait_for_work(shard: &Shard, idle_ms: u64) {
    let woken = std::future::poll_fn(|context| {
        // Registered before the pending list is looked at again, so a wake-up is never missed.
        shard.park_handoff(context.waker());
        if shard.handoffs_pending(1).is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    });
    let idle = monoio::time::sleep(Duration::from_millis(idle_ms));
    futures_util_select(woken, idle).await;
}

/// Resolves when either future does.
async fn futures_util_select(
    first: impl std::future::Future<Output = ()>,
    second: impl std::future::Future<Output = ()>,
) {
    let mut first = std::pin::pin!(first);
    let mut second = std::pin::pin!(second);
    std::future::poll_fn(|context| {
        if first.as_mut().poll(context).is_ready() || second.as_mut().poll(context).is_ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// One pass: reads the publish records back, sends each shard its deliveries in one command,
/// and records every adoption that succeeded.
async fn hand_over(
    shard: &Shard,
    shared: &Shared,
    pending: Vec<(EventId, kapsel_wal::Position, Vec<u16>)>,
) -> Result<(), EngineError> {
    let places = pending.iter().map(|(event_id, position, _)| (*event_id, *position)).collect();
    let loaded = shard.read_published(places).await;
    let mut by_shard: Vec<Vec<Published>> = vec![Vec::new(); shared.owners()];
    for ((_, _, shards), (event_id, record)) in pending.iter().zip(loaded) {
        let record = record.map_err(|reason| {
            EngineError::Storage(format!("cannot read the publish record of {event_id} back: {reason}"))
        })?;
        for handoff in record.handoffs.iter().filter(|handoff| shards.contains(&handoff.shard)) {
            if let Some(records) = by_shard.get_mut(usize::from(handoff.shard)) {
                records.push(record.adoption(handoff.deliveries.clone()));
            }
        }
    }
    let mut first_error = None;
    for (target, records) in by_shard.into_iter().enumerate() {
        if records.is_empty() {
            continue;
        }
        let ids: Vec<EventId> = records.iter().map(|record| EventId(record.event_id)).collect();
        let adopted = if target == shard.index {
            // Cannot happen (a shard's own deliveries are in its publish record); adopt anyway.
            shard.adopt(records, crate::clock::now_ms()).await
        } else if let Some(node) = shared.cluster.get() {
            crate::admin::cluster::adopt_at(node, target, records).await
        } else {
            ask_to_adopt(shared, target, records).await
        };
        match adopted {
            Ok(()) => {
                let target = u16::try_from(target).unwrap_or(u16::MAX);
                let mut recorded = Vec::with_capacity(ids.len());
                for event_id in ids {
                    recorded.push(shard.handed_off(event_id, target, crate::clock::now_ms())?);
                }
                // Applied before the next pass looks at what is pending, so nothing is sent twice
                // (each awaited: on a partition's stream each record is stored on its own).
                shard.durable_all(&recorded).await?;
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(error) => Err(error),
    }
}

async fn ask_to_adopt(shared: &Shared, target: usize, records: Vec<Published>) -> Result<(), EngineError> {
    let inbox = shared.inboxes.get(target).ok_or_else(|| EngineError::Unavailable("no such shard".into()))?;
    let (reply, answer) = futures_channel::oneshot::channel();
    inbox
        .send(Command::Adopt { records, reply })
        .map_err(|_| EngineError::QueueFull(format!("shard {target}'s inbox is full")))?;
    answer.await.map_err(|_| EngineError::Unavailable(format!("shard {target} stopped")))?
}
