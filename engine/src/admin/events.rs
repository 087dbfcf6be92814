//! The event listing from memory: this shard's matches for a query, and the merge of every
//! shard's answers into one page.

use serde_json::Value;

use crate::model::ids::EventId;
use crate::model::query::{Candidate, EventQuery};
use crate::shard::Shard;

/// This shard's matches: up to `limit + 1` newest events older than the cursor.
pub fn list_local(shard: &Shard, query: &EventQuery) -> Vec<(EventId, Value)> {
    let state = shard.state().borrow();
    let now = crate::clock::now_ms();
    state
        .events
        .newest_before(query.cursor)
        .filter(|(_, event)| {
            let tenant = |wanted: &String| {
                state.endpoints.at(event.endpoint).is_some_and(|entry| entry.endpoint.tenant_id() == wanted)
            };
            query.tenant_id.as_ref().is_none_or(tenant)
        })
        .filter(|(event_id, event)| {
            query.matches(&Candidate {
                endpoint_id: state.endpoint_of(event),
                status: event.shown_status().as_str(),
                idempotency_key: event.idempotency_key(),
                received_at_ms: event_id.unix_ms(),
                event_type: state.names.get(event.event_type),
                channel: state.names.get(event.channel),
            })
        })
        .take(query.limit + 1)
        .filter_map(|(event_id, _)| Some((*event_id, state.event_json(*event_id, now)?)))
        .collect()
}

/// This shard's endpoints for a page of `GET /admin/endpoints`: up to `limit + 1` after the
/// cursor, in id order.
pub fn endpoints_local(shard: &Shard, query: &crate::admin::route::EndpointQuery) -> Vec<(String, Value)> {
    let mut found =
        shard.list_endpoints(query.cursor.as_deref(), query.tenant_id.as_deref(), query.limit, crate::clock::now_ms());
    if !query.secrets {
        for (_, json) in &mut found {
            crate::model::endpoint::Endpoint::hide_secrets(json);
        }
    }
    found
}

/// Merges the shards' endpoints into one page: `{"endpoints":[…],"next_cursor":…}`, in id order.
pub fn endpoints_page(mut matches: Vec<(String, Value)>, limit: usize) -> Value {
    matches.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    let more = matches.len() > limit;
    matches.truncate(limit);
    let next_cursor = if more { matches.last().map(|(id, _)| Value::String(id.clone())) } else { None };
    serde_json::json!({
        "endpoints": matches.into_iter().map(|(_, json)| json).collect::<Vec<_>>(),
        "next_cursor": next_cursor.unwrap_or(Value::Null),
    })
}

/// Merges the shards' answers into one page: `{"events":[…],"next_cursor":…}`.
pub fn page(mut matches: Vec<(EventId, Value)>, limit: usize) -> Value {
    matches.sort_unstable_by_key(|(event_id, _)| std::cmp::Reverse(*event_id));
    let more = matches.len() > limit;
    matches.truncate(limit);
    let next_cursor = if more { matches.last().map(|(event_id, _)| Value::String(event_id.to_string())) } else { None };
    serde_json::json!({
        "events": matches.into_iter().map(|(_, json)| json).collect::<Vec<_>>(),
        "next_cursor": next_cursor.unwrap_or(Value::Null),
        "source": "memory",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Pages are newest first and the cursor continues exactly where the page ended.
    #[test]
    fn pages_merge_newest_first() {
        let matches: Vec<(EventId, Value)> =
            [3u64, 9, 1, 7, 5].iter().map(|n| (EventId::new(*n, 0, 0), Value::from(*n))).collect();
        let first = page(matches, 3);
        assert_eq!(first["events"], serde_json::json!([9, 7, 5]));
        assert_eq!(first["next_cursor"], EventId::new(5, 0, 0).to_string());
        let last = page(vec![(EventId::new(1, 0, 0), Value::from(1))], 3);
        assert!(last["next_cursor"].is_null());
    }
}
