//! Publishing to a channel, on the channel's shard, and adopting deliveries handed over by one.
//!
//! A publish is one [`Published`] record on the shard that owns the channel, listing every
//! delivery, this shard's and other shards' alike: once it is durable the publish is durable for
//! every matched endpoint, in one fsync, and the publisher gets its 202. Deliveries to endpoints
//! of other shards are then handed over (`admin::handoff`): the other shard writes them in its
//! own log ([`Shard::adopt`]), and the channel's shard records that with a [`HandedOff`] record.
//! Until then the publish record stays in the log (retention keeps it) and a restart hands the
//! deliveries over again; adopting twice creates nothing twice. ADR 13 has the argument.

use std::sync::Arc;

use crate::error::EngineError;
use crate::limits;
use crate::model::ids::EventId;
use crate::model::records::{Delivery, HandedOff, Handoff, Published, Record};
use crate::shard::{Accepted, Shard};
use crate::state::idempotency::Remembered;
use crate::state::publish_scope;

/// Published events whose deliveries wait to be handed to other shards, at most per shard:
/// beyond it publishes answer 503 E3002 until the other shards catch up.
pub const HANDOFFS_PENDING_MAX: usize = 100_000;

/// A publish, as the publish route hands it to the channel's shard.
#[derive(Debug)]
pub struct Publish {
    /// The channel.
    pub channel: String,
    /// The tenant whose channel it is.
    pub tenant: String,
    /// `X-Idempotency-Key`, already validated (scoped to the channel).
    pub idempotency_key: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The sender's valid `traceparent`.
    pub traceparent: Option<String>,
    /// The sender's valid `tracestate`.
    pub tracestate: Option<String>,
    /// The event type.
    pub event_type: String,
    /// The body.
    pub payload: Vec<u8>,
    /// The endpoints it goes to, with their owner shards.
    pub endpoints: Vec<(usize, Arc<str>)>,
}

/// How a publish ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    /// A new event or a duplicate.
    pub accepted: Accepted,
    /// Endpoints it goes to (for a duplicate, those the first publish went to, when known).
    pub endpoints: u32,
}

impl Shard {
    /// Publishes an event to a channel this shard owns: checks, one record, waits until it is
    /// durable.
    pub async fn publish(&self, publish: Publish, now_ms: u64) -> Result<PublishOutcome, EngineError> {
        let scope = publish_scope(&publish.tenant, &publish.channel);
        if let Some(key) = &publish.idempotency_key {
            let remembered = self.core.state.borrow_mut().idempotency.lookup(&scope, key, now_ms);
            if let Some(remembered) = remembered.or_else(|| self.pending_key(&scope, key, now_ms)) {
                // The first publish may still be waiting for its fsync; answer once it is durable.
                self.durable(remembered.lsn).await?;
                if !self.key_applied(&scope, key, remembered.event_id, now_ms) {
                    return Err(crate::shard::key_unsettled(key));
                }
                let endpoints =
                    self.core.state.borrow().publications.get(&remembered.event_id).map_or(0, |p| p.endpoints);
                return Ok(PublishOutcome { accepted: Accepted::Duplicate(remembered.event_id), endpoints });
            }
        }
        let record = self.publish_record(publish, now_ms)?;
        let event_id = EventId(record.event_id);
        let endpoints =
            record.deliveries.len() + record.handoffs.iter().map(|handoff| handoff.deliveries.len()).sum::<usize>();
        let key = record.idempotency_key.clone();
        let handoffs = !record.handoffs.is_empty();
        let lsn = self.submit(Record::Published(record), now_ms)?;
        if let Some(key) = &key {
            // Remembered before the fsync so that a concurrent repeat finds it and waits.
            self.remember_key(&scope, key, Remembered { event_id, lsn }, now_ms);
        }
        let durable = self.durable(lsn).await;
        if let Some(key) = &key {
            self.settle_key(&scope, key, event_id, durable.is_ok(), now_ms).await;
        }
        durable?;
        self.notify_scheduler();
        if handoffs {
            self.notify_handoff();
        }
        Ok(PublishOutcome {
            accepted: Accepted::Received(event_id),
            endpoints: u32::try_from(endpoints).unwrap_or(u32::MAX),
        })
    }

    /// The record of a new publish: its id, and its deliveries numbered in endpoint order,
    /// this shard's in the record itself and the others' by shard.
    fn publish_record(&self, publish: Publish, now_ms: u64) -> Result<Published, EngineError> {
        let mut state = self.core.state.borrow_mut();
        if publish.endpoints.len() > limits::PUBLISH_ENDPOINTS_MAX {
            return Err(EngineError::Invalid(format!(
                "more than {} endpoints match this event; narrow their channels or event_types",
                limits::PUBLISH_ENDPOINTS_MAX
            )));
        }
        let local = publish.endpoints.iter().filter(|(shard, _)| *shard == self.index).count();
        if local > 0 && state.events_full() {
            return Err(EngineError::QueueFull("the shard tracks as many events as it may".into()));
        }
        if state.publications.pending_count() >= HANDOFFS_PENDING_MAX {
            return Err(EngineError::QueueFull("published events wait to be handed to other shards".into()));
        }
        let event_id = state.ids.next_published(now_ms);
        let mut deliveries = Vec::with_capacity(local);
        let mut handoffs: Vec<Handoff> = Vec::new();
        for (number, (shard, endpoint_id)) in (1u32..).zip(&publish.endpoints) {
            let delivery = Delivery { delivery_id: event_id.delivery(number).0, endpoint_id: endpoint_id.to_string() };
            if *shard == self.index {
                deliveries.push(delivery);
                continue;
            }
            let shard = u16::try_from(*shard).map_err(|_| EngineError::Unavailable("too many shards".into()))?;
            match handoffs.iter_mut().find(|handoff| handoff.shard == shard) {
                Some(handoff) => handoff.deliveries.push(delivery),
                None => handoffs.push(Handoff { shard, deliveries: vec![delivery] }),
            }
        }
        Ok(Published {
            event_id: event_id.0,
            channel: publish.channel,
            tenant: publish.tenant,
            event_type: publish.event_type,
            received_at_ms: now_ms,
            idempotency_key: publish.idempotency_key,
            content_type: publish.content_type,
            traceparent: publish.traceparent,
            tracestate: publish.tracestate,
            payload: publish.payload,
            deliveries,
            handoffs,
        })
    }

    /// Adopts deliveries another shard's publish records hand to this shard: writes each record
    /// with the deliveries this shard does not have yet and waits until they are durable. A
    /// repeat after a restart adds nothing: the channel's shard hands over in id order, so a
    /// published id at or below the highest adopted from that shard was adopted already
    /// (`ShardState::was_adopted`, kept in the endpoint snapshot across retention), and a
    /// delivery still known is known. Deliveries to endpoints deleted meanwhile are dropped
    /// (as an ingest racing its endpoint's deletion is).
    ///
    /// On a partition's stream each record is stored or refused on its own, so there the
    /// adoptions are written one at a time, each awaited before the next: a later one stored
    /// after an earlier one failed would make `was_adopted` take the failed one as adopted.
    pub async fn adopt(&self, records: Vec<Published>, now_ms: u64) -> Result<(), EngineError> {
        let one_at_a_time = self.stream().is_some();
        let mut last = None;
        for mut record in records {
            {
                let state = self.core.state.borrow();
                if state.was_adopted(EventId(record.event_id)) {
                    // Handed over again after the channel's shard lost its HandedOff record (a
                    // crash): adopted before, whether or not its deliveries are still known.
                    continue;
                }
                record.deliveries.retain(|delivery| {
                    state.endpoints.contains_key(delivery.endpoint_id.as_str())
                        && !state.events.contains_key(&EventId(delivery.delivery_id))
                });
                if record.deliveries.is_empty() {
                    continue;
                }
                if state.events_full() {
                    return Err(EngineError::QueueFull("the shard tracks as many events as it may".into()));
                }
            }
            let lsn = self.submit(Record::Adopted(record), now_ms)?;
            if one_at_a_time {
                self.durable(lsn).await?;
            }
            last = Some(lsn);
        }
        if let Some(lsn) = last {
            self.durable(lsn).await?;
            self.notify_scheduler();
        }
        Ok(())
    }

    /// Records that `shard` adopted its deliveries of `event_id`; the record's LSN (until it is
    /// durable a restart only hands them over again, which adds nothing).
    pub fn handed_off(&self, event_id: EventId, shard: u16, now_ms: u64) -> Result<u64, EngineError> {
        self.submit(Record::HandedOff(HandedOff { event_id: event_id.0, shard }), now_ms)
    }

    /// Published events with handoffs pending, oldest first, at most `count_max`: their ids,
    /// records' places and the shards still to adopt.
    pub fn handoffs_pending(&self, count_max: usize) -> Vec<(EventId, kapsel_wal::Position, Vec<u16>)> {
        self.core
            .state
            .borrow()
            .publications
            .pending()
            .take(count_max)
            .map(|(event_id, publication)| {
                let shards = publication.handoffs.iter().map(|(shard, _)| *shard).collect();
                (event_id, publication.position, shards)
            })
            .collect()
    }

    /// Reads publish records back from the log (off the shard thread).
    pub async fn read_published(
        &self,
        records: Vec<(EventId, kapsel_wal::Position)>,
    ) -> Vec<(EventId, Result<Published, String>)> {
        self.reader.read_published(records).await
    }
}

impl Shard {
    /// The deliveries of published event `event_id` this shard makes, as the admin API shows
    /// them (one entry per endpoint), in endpoint order.
    pub fn deliveries_json(&self, event_id: EventId, now_ms: u64) -> Vec<serde_json::Value> {
        let state = self.core.state.borrow();
        let mut deliveries: Vec<serde_json::Value> = state
            .deliveries_of(event_id)
            .into_iter()
            .filter_map(|delivery| state.event_json(delivery, now_ms))
            .map(|event| {
                let field = |name: &str| event.get(name).cloned().unwrap_or(serde_json::Value::Null);
                serde_json::json!({
                    "endpoint_id": field("endpoint_id"),
                    "status": field("status"),
                    "attempts": field("attempts"),
                    "attempt_count": field("attempt_count"),
                    "next_attempt_at": field("next_attempt_at"),
                    "waiting_reason": field("waiting_reason"),
                    "last_response_excerpt": field("last_response_excerpt"),
                    "updated_at": field("updated_at"),
                    "type": field("type"),
                    "channel": field("channel"),
                    "payload_bytes": field("payload_bytes"),
                })
            })
            .collect();
        deliveries.sort_by(|a, b| a["endpoint_id"].as_str().cmp(&b["endpoint_id"].as_str()));
        deliveries
    }

    /// Redrives this shard's deliveries of published event `event_id` (only the one to
    /// `endpoint_id` when given); how many.
    pub async fn retry_deliveries(
        &self,
        event_id: EventId,
        endpoint_id: Option<&str>,
        now_ms: u64,
    ) -> Result<usize, EngineError> {
        let deliveries: Vec<EventId> = {
            let state = self.core.state.borrow();
            state
                .deliveries_of(event_id)
                .into_iter()
                .filter(|delivery| {
                    let endpoint = state.events.get(delivery).map(|event| state.endpoint_of(event));
                    endpoint_id.is_none_or(|wanted| endpoint == Some(wanted))
                })
                .collect()
        };
        for delivery in &deliveries {
            self.retry_event(*delivery, now_ms).await?;
        }
        Ok(deliveries.len())
    }
}
