//! What the engine writes to its shard's log. Each record kind has its own rkyv body, validated
//! when read back (`kapsel_wal::codec`).

use kapsel_wal::{codec, WalError};

use crate::model::endpoint::Endpoint;

/// Log kind of [`Record::EndpointPut`] as written before endpoints had subscriptions.
pub const KIND_ENDPOINT_PUT_V1: u8 = 1;
/// Log kind of [`Record::EndpointDeleted`].
pub const KIND_ENDPOINT_DELETED: u8 = 2;
/// Log kind of [`Record::EventReceived`] as written before events had a type.
pub const KIND_EVENT_RECEIVED_V1: u8 = 3;
/// Log kind of [`Record::Attempt`].
pub const KIND_ATTEMPT: u8 = 4;
/// Log kind of [`Record::Requeued`].
pub const KIND_REQUEUED: u8 = 5;
/// Log kind of [`Record::EventCarried`] as written before carried events kept their queue place
/// (read as queued at the carried record itself).
pub const KIND_EVENT_CARRIED_V1: u8 = 6;
/// Log kind of [`Record::Redriven`] as written before events had a type.
pub const KIND_REDRIVEN_V1: u8 = 7;
/// Log kind of [`Record::EventCarried`] as written before events had a type.
pub const KIND_EVENT_CARRIED_V2: u8 = 8;
/// Log kind of [`Record::EndpointPut`].
pub const KIND_ENDPOINT_PUT: u8 = 9;
/// Log kind of [`Record::EventReceived`].
pub const KIND_EVENT_RECEIVED: u8 = 10;
/// Log kind of [`Record::EventCarried`].
pub const KIND_EVENT_CARRIED: u8 = 11;
/// Log kind of [`Record::Redriven`].
pub const KIND_REDRIVEN: u8 = 12;
/// Log kind of [`Record::Published`].
pub const KIND_PUBLISHED: u8 = 13;
/// Log kind of [`Record::Adopted`].
pub const KIND_ADOPTED: u8 = 14;
/// Log kind of [`Record::HandedOff`].
pub const KIND_HANDED_OFF: u8 = 15;
/// Log kind of [`Record::TenantPut`].
pub const KIND_TENANT_PUT: u8 = 16;
/// Log kind of [`Record::TenantDeleted`].
pub const KIND_TENANT_DELETED: u8 = 17;
/// Log kind of [`Record::KeyCreated`].
pub const KIND_KEY_CREATED: u8 = 18;
/// Log kind of [`Record::KeyRevoked`].
pub const KIND_KEY_REVOKED: u8 = 19;
/// Log kind of [`Record::EndpointDeleted`] (kind 2 is the older form, without who deleted it).
pub const KIND_ENDPOINT_DELETED_BY: u8 = 20;
/// Log kind of [`Record::Takeover`] (cluster mode only: a partition's new owner, ADR 17).
pub const KIND_TAKEOVER: u8 = 21;

/// The outcome of an attempt, as recorded.
pub const OUTCOME_DELIVERED: u8 = 0;
/// Will be retried at `next_attempt_at_ms`.
pub const OUTCOME_RETRYING: u8 = 1;
/// Given up: the event is failed (the dead-letter state).
pub const OUTCOME_FAILED: u8 = 2;

/// One delivery attempt and the state it left the event in.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Attempt {
    /// The event.
    pub event_id: u128,
    /// Attempt number, from 1.
    pub n: u32,
    /// When the attempt started.
    pub at_ms: u64,
    /// The destination's status, when it answered.
    pub status_code: Option<u16>,
    /// Time to the answer (or the failure).
    pub latency_ms: u32,
    /// E2001–E2004 when it was not a success.
    pub error_code: Option<String>,
    /// The first KiB of the response body.
    pub response_excerpt: Vec<u8>,
    /// [`OUTCOME_DELIVERED`], [`OUTCOME_RETRYING`] or [`OUTCOME_FAILED`].
    pub outcome: u8,
    /// When the next attempt is due (retrying only).
    pub next_attempt_at_ms: Option<u64>,
}

/// A waiting event given a fresh retry budget by an operator (`POST /admin/events/{id}/retry`).
/// A delivered or failed event is redriven with [`Redriven`] instead, which carries the event.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Requeued {
    /// The event.
    pub event_id: u128,
    /// When.
    pub at_ms: u64,
}

/// An accepted webhook: an event ingested for one endpoint, or one delivery of a published event
/// (carried forward or redriven; a publish itself is a [`Published`] record).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventReceived {
    /// The event id (`EventId`'s 128 bits); for a delivery of a published event, the delivery's
    /// own id (see [`PublishRef`]).
    pub event_id: u128,
    /// The endpoint it is for.
    pub endpoint_id: String,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// The sender's `X-Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The sender's `Content-Type`, forwarded with every delivery.
    pub content_type: Option<String>,
    /// The sender's `traceparent`, if it was valid.
    pub traceparent: Option<String>,
    /// The sender's `tracestate`, combined and valid, forwarded with every delivery.
    pub tracestate: Option<String>,
    /// The event type (`X-Event-Type`, the body's `type` or `event`, else `event`).
    pub event_type: String,
    /// For a delivery of a published event: the published event.
    pub publish: Option<PublishRef>,
    /// The body, opaque.
    pub payload: Vec<u8>,
}

impl EventReceived {
    /// The id the destination sees as `webhook-id`: the published event's for a delivery.
    pub fn webhook_id(&self) -> u128 {
        self.publish.as_ref().map_or(self.event_id, |publish| publish.event_id)
    }
}

/// The published event a delivery belongs to.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PublishRef {
    /// The published event's id (every delivery's `webhook-id`).
    pub event_id: u128,
    /// The channel it was published to.
    pub channel: String,
}

/// [`EventReceived`] as kinds 3, 6, 7 and 8 stored it, without a type or trace state.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EventReceivedV1 {
    event_id: u128,
    endpoint_id: String,
    received_at_ms: u64,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    traceparent: Option<String>,
    payload: Vec<u8>,
}

impl From<EventReceivedV1> for EventReceived {
    /// An old event's type is what its body says, as for a new one without `X-Event-Type`.
    fn from(old: EventReceivedV1) -> Self {
        let event_type = crate::model::json_scan::event_type_field(&old.payload)
            .unwrap_or(crate::model::event_type::EVENT_TYPE_DEFAULT)
            .to_string();
        Self {
            event_id: old.event_id,
            endpoint_id: old.endpoint_id,
            received_at_ms: old.received_at_ms,
            idempotency_key: old.idempotency_key,
            content_type: old.content_type,
            traceparent: old.traceparent,
            tracestate: None,
            event_type,
            publish: None,
            payload: old.payload,
        }
    }
}

/// An event published to a channel (`POST /publish/{channel}`), written once, by the shard that
/// owns the channel, with every delivery it makes: the publish is durable for all its endpoints
/// in one record and one fsync, so no crash can leave some of them with it and others without.
/// Deliveries to endpoints of other shards are handed to them afterwards ([`Record::Adopted`],
/// then [`HandedOff`]); see ADR 13.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Published {
    /// The published event's id: every delivery's `webhook-id`. Its deliveries' ids follow it
    /// (`ids::delivery_id`).
    pub event_id: u128,
    /// The channel.
    pub channel: String,
    /// The tenant whose channel it is (a key's, or `default` for the operator token).
    pub tenant: String,
    /// The event type.
    pub event_type: String,
    /// When it was accepted.
    pub received_at_ms: u64,
    /// The sender's `X-Idempotency-Key` (scoped to the channel).
    pub idempotency_key: Option<String>,
    /// The sender's `Content-Type`.
    pub content_type: Option<String>,
    /// The sender's valid `traceparent`.
    pub traceparent: Option<String>,
    /// The sender's valid `tracestate`.
    pub tracestate: Option<String>,
    /// The body, opaque.
    pub payload: Vec<u8>,
    /// The deliveries the shard writing this record makes.
    pub deliveries: Vec<Delivery>,
    /// Deliveries for endpoints of other shards, by shard (the channel's shard only; empty in
    /// an adoption).
    pub handoffs: Vec<Handoff>,
}

/// One delivery of a published event.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Delivery {
    /// The delivery's id (the published event's id plus its number).
    pub delivery_id: u128,
    /// Its endpoint.
    pub endpoint_id: String,
}

/// Deliveries of a published event that another shard makes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Handoff {
    /// The shard owning the endpoints.
    pub shard: u16,
    /// Its deliveries.
    pub deliveries: Vec<Delivery>,
}

impl Published {
    /// The event of one of this record's deliveries, as a delivery's payload is read back and
    /// carried: its own id and endpoint, the published event's everything else.
    pub fn delivery_event(&self, delivery: &Delivery) -> EventReceived {
        EventReceived {
            event_id: delivery.delivery_id,
            endpoint_id: delivery.endpoint_id.clone(),
            received_at_ms: self.received_at_ms,
            idempotency_key: None,
            content_type: self.content_type.clone(),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            event_type: self.event_type.clone(),
            publish: Some(PublishRef { event_id: self.event_id, channel: self.channel.clone() }),
            payload: self.payload.clone(),
        }
    }

    /// The record another shard writes to adopt its deliveries of this event.
    pub fn adoption(&self, deliveries: Vec<Delivery>) -> Self {
        Self {
            event_id: self.event_id,
            channel: self.channel.clone(),
            tenant: self.tenant.clone(),
            event_type: self.event_type.clone(),
            received_at_ms: self.received_at_ms,
            idempotency_key: None,
            content_type: self.content_type.clone(),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            payload: self.payload.clone(),
            deliveries,
            handoffs: Vec::new(),
        }
    }
}

/// The channel's shard learnt that another shard adopted its deliveries of a published event:
/// the publish record no longer needs to be kept for them.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HandedOff {
    /// The published event.
    pub event_id: u128,
    /// The shard that adopted its deliveries.
    pub shard: u16,
}

/// A waiting event written again at the end of the log, with its delivery progress, so that
/// retention can remove the old segment that held it (see `retention`).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventCarried {
    /// The event as it was received.
    pub event: EventReceived,
    /// Number of the last attempt made.
    pub last_attempt: u32,
    /// Attempts counted against the retry budget.
    pub budget_used: u32,
    /// When the next attempt is due, for a retrying event.
    pub next_attempt_at_ms: Option<u64>,
    /// For a pending event, the LSN of the record that queued it (its place in its endpoint's
    /// queue, which replay keeps even when that record is gone); 0 for none known.
    pub queued_lsn: u64,
    /// Its attempts so far, as memory keeps them (their own records may go with the old segment).
    pub history: History,
}

/// An event's delivery history as memory keeps it, written with a carried or redriven event so
/// that replay rebuilds it when the attempts' own records are gone.
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct History {
    /// The attempts kept in memory, oldest first.
    pub attempts: Vec<AttemptRecap>,
    /// The last response excerpt kept.
    pub last_excerpt: Option<Vec<u8>>,
    /// Last state change.
    pub updated_at_ms: u64,
}

/// One attempt in a [`History`].
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AttemptRecap {
    /// Attempt number.
    pub n: u32,
    /// Start time.
    pub at_ms: u64,
    /// The destination's status.
    pub status_code: Option<u16>,
    /// Latency.
    pub latency_ms: u32,
    /// E-code of a failure.
    pub error_code: Option<String>,
}

/// [`EventCarried`] as kind 6 stored it, without the queue place.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EventCarriedV1 {
    event: EventReceivedV1,
    last_attempt: u32,
    budget_used: u32,
    next_attempt_at_ms: Option<u64>,
}

/// [`EventCarried`] as kind 8 stored it, with an event of kind 3's form.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EventCarriedV2 {
    event: EventReceivedV1,
    last_attempt: u32,
    budget_used: u32,
    next_attempt_at_ms: Option<u64>,
    queued_lsn: u64,
    history: History,
}

/// [`Redriven`] as kind 7 stored it, with an event of kind 3's form.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct RedrivenV1 {
    event: EventReceivedV1,
    last_attempt: u32,
    at_ms: u64,
    history: History,
}

/// A delivered or failed event put back in its queue by an operator, written with the event
/// itself: the redriven event then needs no older record, so retention may remove the segment
/// that first held it at any moment without losing the redrive.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Redriven {
    /// The event as it was received.
    pub event: EventReceived,
    /// Number of the last attempt made.
    pub last_attempt: u32,
    /// When it was redriven.
    pub at_ms: u64,
    /// Its attempts so far.
    pub history: History,
}

/// A tenant created or replaced (on shard 0, which keeps tenants and keys), with the key that
/// made the change (`None`: the operator token), so the Merkle audit covers configuration.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TenantPut {
    /// The tenant as it is now.
    pub tenant: crate::model::tenant::Tenant,
    /// The key that made the change; `None` for the operator token.
    pub by: Option<String>,
}

/// A tenant removed (it had no endpoints).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TenantDeleted {
    /// Its id.
    pub id: String,
    /// When.
    pub at_ms: u64,
    /// The key that made the change; `None` for the operator token.
    pub by: Option<String>,
}

/// A key created (its hash only).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeyCreated {
    /// The key as stored.
    pub key: crate::model::tenant::StoredKey,
    /// The key that made the change; `None` for the operator token.
    pub by: Option<String>,
}

/// A key revoked.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeyRevoked {
    /// Its id.
    pub key_id: String,
    /// When.
    pub at_ms: u64,
    /// The key that made the change; `None` for the operator token.
    pub by: Option<String>,
}

/// An endpoint removed.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EndpointDeleted {
    /// Its id.
    pub id: String,
    /// When.
    pub at_ms: u64,
    /// The key that deleted it; `None` for the operator token.
    pub by: Option<String>,
}

/// [`EndpointDeleted`] as kind 2 stored it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EndpointDeletedV1 {
    id: String,
    at_ms: u64,
}

/// A partition's new owner, at the epoch of the lease it took (cluster mode, ADR 17): the first
/// record it writes. Records written under a lower epoch after it change nothing (the fence).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Takeover {
    /// The lease's epoch.
    pub epoch: u64,
    /// The node that took it.
    pub node: String,
    /// When, by that node's clock.
    pub at_ms: u64,
}

/// A decoded engine record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// An endpoint created or replaced.
    EndpointPut(Endpoint),
    /// An endpoint removed.
    EndpointDeleted(EndpointDeleted),
    /// A webhook accepted.
    EventReceived(EventReceived),
    /// A delivery attempt.
    Attempt(Attempt),
    /// An event requeued by an operator.
    Requeued(Requeued),
    /// A waiting event moved forward by retention.
    EventCarried(EventCarried),
    /// A terminal event redriven, with the event.
    Redriven(Redriven),
    /// An event published to a channel, by the channel's shard, with all its deliveries.
    Published(Published),
    /// The deliveries of a published event that this shard makes, handed over by the channel's
    /// shard.
    Adopted(Published),
    /// Another shard adopted its deliveries of a published event.
    HandedOff(HandedOff),
    /// A tenant created or replaced.
    TenantPut(TenantPut),
    /// A tenant removed.
    TenantDeleted(TenantDeleted),
    /// A key created.
    KeyCreated(KeyCreated),
    /// A key revoked.
    KeyRevoked(KeyRevoked),
    /// A partition's new owner (cluster mode).
    Takeover(Takeover),
}

impl Record {
    /// The log kind and encoded body.
    pub fn encode(&self) -> Result<(u8, rkyv::util::AlignedVec), WalError> {
        match self {
            Self::EndpointPut(endpoint) => Ok((KIND_ENDPOINT_PUT, codec::encode(endpoint)?)),
            Self::EndpointDeleted(deleted) => Ok((KIND_ENDPOINT_DELETED_BY, codec::encode(deleted)?)),
            Self::EventReceived(event) => Self::encode_event(event),
            Self::Attempt(attempt) => Ok((KIND_ATTEMPT, codec::encode(attempt)?)),
            Self::Requeued(requeued) => Ok((KIND_REQUEUED, codec::encode(requeued)?)),
            Self::EventCarried(carried) => Ok((KIND_EVENT_CARRIED, codec::encode(carried)?)),
            Self::Redriven(redriven) => Ok((KIND_REDRIVEN, codec::encode(redriven)?)),
            Self::Published(published) => Ok((KIND_PUBLISHED, codec::encode(published)?)),
            Self::Adopted(adopted) => Ok((KIND_ADOPTED, codec::encode(adopted)?)),
            Self::HandedOff(handed_off) => Ok((KIND_HANDED_OFF, codec::encode(handed_off)?)),
            Self::TenantPut(put) => Ok((KIND_TENANT_PUT, codec::encode(put)?)),
            Self::TenantDeleted(deleted) => Ok((KIND_TENANT_DELETED, codec::encode(deleted)?)),
            Self::KeyCreated(created) => Ok((KIND_KEY_CREATED, codec::encode(created)?)),
            Self::KeyRevoked(revoked) => Ok((KIND_KEY_REVOKED, codec::encode(revoked)?)),
            Self::Takeover(takeover) => Ok((KIND_TAKEOVER, codec::encode(takeover)?)),
        }
    }

    /// Whether only a partition's owner writes records of this kind in cluster mode (ADR 17):
    /// everything but events and configuration (endpoints, tenants, keys), which any node
    /// writes and every node may follow.
    pub fn is_owners(&self) -> bool {
        !matches!(
            self,
            Self::EventReceived(_)
                | Self::EndpointPut(_)
                | Self::EndpointDeleted(_)
                | Self::TenantPut(_)
                | Self::TenantDeleted(_)
                | Self::KeyCreated(_)
                | Self::KeyRevoked(_)
        )
    }

    /// Whether `kind` is a configuration record (an endpoint, tenant or key change): in cluster
    /// mode these go on a partition's `cfg` subject, which nodes that do not own it follow.
    pub fn is_config_kind(kind: u8) -> bool {
        matches!(
            kind,
            KIND_ENDPOINT_PUT
                | KIND_ENDPOINT_PUT_V1
                | KIND_ENDPOINT_DELETED
                | KIND_ENDPOINT_DELETED_BY
                | KIND_TENANT_PUT
                | KIND_TENANT_DELETED
                | KIND_KEY_CREATED
                | KIND_KEY_REVOKED
        )
    }

    /// Encodes an event record without wrapping it (the ingest hot path keeps the event).
    pub fn encode_event(event: &EventReceived) -> Result<(u8, rkyv::util::AlignedVec), WalError> {
        Ok((KIND_EVENT_RECEIVED, codec::encode(event)?))
    }

    /// The event `event_id` of a record that holds events (received, carried, redriven, or a
    /// delivery of a published or adopted one): where a payload is read back from.
    pub fn into_event(self, event_id: u128) -> Option<EventReceived> {
        let event = match self {
            Self::EventReceived(event) => event,
            Self::EventCarried(carried) => carried.event,
            Self::Redriven(redriven) => redriven.event,
            Self::Published(published) | Self::Adopted(published) => {
                let delivery = published.deliveries.iter().find(|delivery| delivery.delivery_id == event_id)?;
                published.delivery_event(delivery)
            }
            _ => return None,
        };
        (event.event_id == event_id).then_some(event)
    }

    /// Decodes and validates a record read back from the log.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, WalError> {
        match kind {
            KIND_ENDPOINT_PUT => codec::decode(body).map(Self::EndpointPut),
            KIND_ENDPOINT_PUT_V1 => {
                codec::decode::<crate::model::endpoint::EndpointV1>(body).map(|old| Self::EndpointPut(old.into()))
            }
            KIND_ENDPOINT_DELETED_BY => codec::decode(body).map(Self::EndpointDeleted),
            KIND_ENDPOINT_DELETED => codec::decode::<EndpointDeletedV1>(body)
                .map(|old| Self::EndpointDeleted(EndpointDeleted { id: old.id, at_ms: old.at_ms, by: None })),
            KIND_EVENT_RECEIVED => codec::decode(body).map(Self::EventReceived),
            KIND_EVENT_RECEIVED_V1 => codec::decode::<EventReceivedV1>(body).map(|old| Self::EventReceived(old.into())),
            KIND_ATTEMPT => codec::decode(body).map(Self::Attempt),
            KIND_REQUEUED => codec::decode(body).map(Self::Requeued),
            KIND_EVENT_CARRIED => codec::decode(body).map(Self::EventCarried),
            KIND_EVENT_CARRIED_V2 => codec::decode::<EventCarriedV2>(body).map(|old| {
                Self::EventCarried(EventCarried {
                    event: old.event.into(),
                    last_attempt: old.last_attempt,
                    budget_used: old.budget_used,
                    next_attempt_at_ms: old.next_attempt_at_ms,
                    queued_lsn: old.queued_lsn,
                    history: old.history,
                })
            }),
            KIND_EVENT_CARRIED_V1 => codec::decode::<EventCarriedV1>(body).map(|old| {
                Self::EventCarried(EventCarried {
                    event: old.event.into(),
                    last_attempt: old.last_attempt,
                    budget_used: old.budget_used,
                    next_attempt_at_ms: old.next_attempt_at_ms,
                    queued_lsn: 0,
                    history: History::default(),
                })
            }),
            KIND_REDRIVEN => codec::decode(body).map(Self::Redriven),
            KIND_REDRIVEN_V1 => codec::decode::<RedrivenV1>(body).map(|old| {
                Self::Redriven(Redriven {
                    event: old.event.into(),
                    last_attempt: old.last_attempt,
                    at_ms: old.at_ms,
                    history: old.history,
                })
            }),
            KIND_PUBLISHED => codec::decode(body).map(Self::Published),
            KIND_ADOPTED => codec::decode(body).map(Self::Adopted),
            KIND_HANDED_OFF => codec::decode(body).map(Self::HandedOff),
            KIND_TENANT_PUT => codec::decode(body).map(Self::TenantPut),
            KIND_TENANT_DELETED => codec::decode(body).map(Self::TenantDeleted),
            KIND_KEY_CREATED => codec::decode(body).map(Self::KeyCreated),
            KIND_KEY_REVOKED => codec::decode(body).map(Self::KeyRevoked),
            KIND_TAKEOVER => codec::decode(body).map(Self::Takeover),
            other => Err(WalError::Decode(format!("unknown engine record kind {other}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Every record must survive the trip through bytes exactly, or replay rebuilds wrong state.
    #[test]
    fn records_round_trip() {
        let event = Record::EventReceived(EventReceived {
            event_id: 42,
            endpoint_id: "ep".into(),
            received_at_ms: 7,
            idempotency_key: Some("k".into()),
            content_type: Some("application/json".into()),
            traceparent: None,
            tracestate: Some("vendor=value".into()),
            event_type: "order.created".into(),
            publish: None,
            payload: b"{}".to_vec(),
        });
        let (kind, body) = event.encode().unwrap();
        assert_eq!(Record::decode(kind, &body).unwrap(), event);
        assert!(Record::decode(99, &body).is_err());
        assert!(Record::decode(KIND_ENDPOINT_PUT, &body[..body.len() / 2]).is_err());
        let published = Published {
            event_id: 1 << 20,
            channel: "orders".into(),
            tenant: "default".into(),
            event_type: "order.created".into(),
            received_at_ms: 7,
            idempotency_key: Some("k".into()),
            content_type: None,
            traceparent: None,
            tracestate: None,
            payload: b"{}".to_vec(),
            deliveries: vec![Delivery { delivery_id: (1 << 20) + 1, endpoint_id: "a".into() }],
            handoffs: vec![Handoff {
                shard: 1,
                deliveries: vec![Delivery { delivery_id: (1 << 20) + 2, endpoint_id: "b".into() }],
            }],
        };
        for record in [
            Record::Published(published.clone()),
            Record::Adopted(published.adoption(vec![])),
            Record::HandedOff(HandedOff { event_id: 1 << 20, shard: 1 }),
            Record::Takeover(Takeover { epoch: 7, node: "node-a".into(), at_ms: 9 }),
        ] {
            let (kind, body) = record.encode().unwrap();
            assert_eq!(Record::decode(kind, &body).unwrap(), record);
        }
        let delivery = Record::Published(published).into_event((1 << 20) + 1).unwrap();
        assert_eq!((delivery.endpoint_id.as_str(), delivery.webhook_id()), ("a", 1 << 20));
    }

    // Data directories written before events had a type must still replay: the old kinds decode
    // into today's records, the type read from the body as a new event's would be.
    #[test]
    fn old_event_records_decode() {
        let old = EventReceivedV1 {
            event_id: 42,
            endpoint_id: "ep".into(),
            received_at_ms: 7,
            idempotency_key: None,
            content_type: None,
            traceparent: None,
            payload: br#"{"event":"payment.completed"}"#.to_vec(),
        };
        let body = codec::encode(&old).unwrap();
        let Record::EventReceived(event) = Record::decode(KIND_EVENT_RECEIVED_V1, &body).unwrap() else {
            panic!("not an event");
        };
        assert_eq!((event.event_id, event.event_type.as_str(), event.publish), (42, "payment.completed", None));
        let redriven = RedrivenV1 { event: old, last_attempt: 3, at_ms: 9, history: History::default() };
        let body = codec::encode(&redriven).unwrap();
        assert!(matches!(Record::decode(KIND_REDRIVEN_V1, &body).unwrap(), Record::Redriven(r) if r.last_attempt == 3));
    }
}
