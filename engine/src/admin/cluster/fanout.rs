//! Publishing to channels across partitions (ADR 13 in cluster mode, ADR 17): the channel's
//! partition owner writes the one `Published` record and answers 202 once its stream stored it;
//! its handoff task then asks the owner of each other partition involved to adopt its
//! deliveries ([`adopt_at`]), which that owner writes as its own `Adopted` record before it
//! answers, and records `HandedOff` in the channel's partition. The admin view of a published
//! event gathers the deliveries from every partition ([`deliveries_everywhere`]). Both are
//! [`Internal`] requests on the partitions' request subjects, answered by [`answer`].

use kapsel_http::Response;
use kapsel_nats::LinkError;
use serde_json::Value;

use super::{rpc_subject, ClusterNode, RPC_TIMEOUT};
use crate::cluster::wire::{self, Internal};
use crate::error::EngineError;
use crate::model::ids::EventId;
use crate::model::records::Published;
use crate::shard::Shard;

/// Runs an internal request on the partition's owner.
pub(super) async fn answer(shard: &Shard, internal: Internal) -> Response {
    let outcome = match internal {
        Internal::Adopt(records) => shard.adopt(records, crate::clock::now_ms()).await.map(|()| Value::Bool(true)),
        Internal::Deliveries { event_id, retry } => {
            crate::admin::publish::deliveries_here(shard, EventId(event_id), retry).await.map(Value::Array)
        }
    };
    match outcome {
        Ok(json) => Response::json(200, json.to_string().into_bytes()),
        Err(error) => error.into_response(),
    }
}

/// Sends `internal` to `partition`'s owner (this node's included): the call is made at once,
/// the answer's body (a 200's) awaited by the caller.
fn ask(
    node: &ClusterNode,
    partition: u32,
    internal: &Internal,
) -> Result<impl std::future::Future<Output = Result<Vec<u8>, EngineError>>, EngineError> {
    let payload = wire::encode_internal(internal).map_err(EngineError::Storage)?;
    let reply = node.link.request(rpc_subject(partition), payload, RPC_TIMEOUT);
    Ok(async move {
        let unavailable = |detail: String| {
            EngineError::Unavailable(format!("partition {partition}'s owner did not answer: {detail}"))
        };
        let bytes = reply.await.map_err(|error| match error {
            LinkError::NoResponders { .. } => unavailable("it has no owner at the moment".into()),
            other => unavailable(other.to_string()),
        })?;
        let response = wire::decode_response(&bytes).map_err(unavailable)?;
        if response.status != 200 {
            let body = String::from_utf8_lossy(&response.body).into_owned();
            return Err(unavailable(format!("{} {body}", response.status)));
        }
        Ok(response.body)
    })
}

/// Hands deliveries to `partition`'s owner to adopt; `Ok` once they are durable there. Sent in
/// as many requests as NATS' `max_payload` needs (each record fits in one: its publish record,
/// larger, did).
pub async fn adopt_at(node: &ClusterNode, partition: usize, records: Vec<Published>) -> Result<(), EngineError> {
    let partition = u32::try_from(partition).map_err(|_| EngineError::Invalid("no such partition".into()))?;
    let room = usize::try_from(node.link.max_payload()).unwrap_or(usize::MAX).saturating_sub(ADOPTION_FRAMING);
    let mut chunk: Vec<Published> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = record.payload.len()
            + record.deliveries.iter().map(|delivery| delivery.endpoint_id.len() + 32).sum::<usize>()
            + ADOPTION_FRAMING;
        if !chunk.is_empty() && bytes + size > room {
            ask(node, partition, &Internal::Adopt(std::mem::take(&mut chunk)))?.await?;
            bytes = 0;
        }
        bytes += size;
        chunk.push(record);
    }
    if !chunk.is_empty() {
        ask(node, partition, &Internal::Adopt(chunk))?.await?;
    }
    Ok(())
}

/// What an adoption takes besides its payload and deliveries, at most (the event's fields, the
/// framing, a NATS message's headers).
const ADOPTION_FRAMING: usize = 4096;

/// Every partition's part of published event `event_id`: its deliveries' views, or, with
/// `retry`, how many it redrove (one number per partition). Asked of all owners at once; a
/// partition without an owner at the moment fails the whole answer (503 E3004: retry).
pub async fn deliveries_everywhere(
    node: &ClusterNode,
    event_id: EventId,
    retry: bool,
) -> Result<Vec<Value>, EngineError> {
    let internal = Internal::Deliveries { event_id: event_id.0, retry };
    let asked: Vec<_> =
        (0..node.config.partitions).map(|partition| ask(node, partition, &internal)).collect::<Result<_, _>>()?;
    let mut gathered = Vec::new();
    for answer in asked {
        let body = answer.await?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(values)) => gathered.extend(values),
            _ => return Err(EngineError::Unavailable("a partition's deliveries do not parse".into())),
        }
    }
    Ok(gathered)
}
