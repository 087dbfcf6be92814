//! Who is asking: the operator token or a tenant's key, and what each may do. Every shard
//! authenticates against [`AccessTable`], a copy of shard 0's tenants and keys in `Shared`,
//! replaced after each change is durable there: a revoked key is refused by the next request on
//! any shard. A key's last use is an atomic per key (no log write per request).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kapsel_http::{HeaderName, Request, RequestHead, Response};

use crate::admin::route::Route;
use crate::admin::shared::Shared;
use crate::error::EngineError;
use crate::model::signature::constant_time_equal;
use crate::model::tenant::{key_hash, looks_like_key, Scope, Scopes, StoredKey, Tenant};
use crate::shard::Shard;
use crate::state::Access;

/// The shard that keeps tenants and keys.
pub const ACCESS_SHARD: usize = 0;

/// A key as every shard knows it.
#[derive(Debug)]
pub struct KeyAccess {
    /// `key_…`.
    pub key_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// What it may do.
    pub scopes: Scopes,
    /// The stored hash, compared in constant time after the lookup.
    hash: [u8; 32],
    /// Last use (Unix ms; 0: never).
    last_used_ms: AtomicU64,
}

/// Who a request comes from.
#[derive(Clone, Debug)]
pub enum Principal {
    /// The operator token: everything.
    Operator,
    /// A tenant's key: its tenant only, within its scopes.
    Key(Arc<KeyAccess>),
}

impl Principal {
    /// The key id that makes a change (`None` for the operator), for the audit records.
    pub fn changed_by(&self) -> Option<String> {
        match self {
            Self::Operator => None,
            Self::Key(key) => Some(key.key_id.clone()),
        }
    }
}

/// Tenants and keys as every shard reads them.
#[derive(Debug, Default)]
pub struct AccessTable {
    tenants: BTreeMap<String, Tenant>,
    by_hash: HashMap<[u8; 32], Arc<KeyAccess>>,
    by_id: BTreeMap<String, (StoredKey, Arc<KeyAccess>)>,
}

impl AccessTable {
    /// The table for shard 0's registry, keeping the last-use times of keys it already had.
    pub fn of(access: &Access, previous: &AccessTable) -> Self {
        let mut table = Self { tenants: access.tenants.clone(), ..Self::default() };
        for key in access.keys.values() {
            let last_used_ms =
                previous.by_id.get(&key.key_id).map_or(0, |(_, known)| known.last_used_ms.load(Ordering::Relaxed));
            let entry = Arc::new(KeyAccess {
                key_id: key.key_id.clone(),
                tenant_id: key.tenant_id.clone(),
                scopes: Scopes(key.scopes),
                hash: key.hash,
                last_used_ms: AtomicU64::new(last_used_ms),
            });
            table.by_hash.insert(key.hash, Arc::clone(&entry));
            table.by_id.insert(key.key_id.clone(), (key.clone(), entry));
        }
        table
    }

    /// The key a bearer token is, if any; notes its use.
    fn key(&self, token: &[u8], now_ms: u64) -> Option<Arc<KeyAccess>> {
        let hash = key_hash(token);
        let found = self.by_hash.get(&hash)?;
        if !constant_time_equal(&found.hash, &hash) {
            return None;
        }
        found.last_used_ms.store(now_ms, Ordering::Relaxed);
        Some(Arc::clone(found))
    }

    /// A tenant.
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.get(id)
    }

    /// A tenant's keys as the admin API lists them.
    pub fn keys_json(&self, tenant_id: &str) -> Vec<serde_json::Value> {
        self.by_id
            .values()
            .filter(|(key, _)| key.tenant_id == tenant_id)
            .map(|(key, access)| key.to_json(access.last_used_ms.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Who sent `head`'s `Authorization: Bearer …`: the operator token, a key, or nobody known.
pub fn authenticate(shared: &Shared, head: &RequestHead) -> Option<Principal> {
    let token = head.headers.get(HeaderName::Authorization)?.strip_prefix(b"Bearer ")?;
    if constant_time_equal(token, shared.admin_token.as_bytes()) {
        return Some(Principal::Operator);
    }
    if !looks_like_key(token) {
        return None;
    }
    shared.access(|table| table.key(token, crate::clock::now_ms())).map(Principal::Key)
}

/// Whether `principal` may run `route` at all (before any resource is looked at): tenant and key
/// management is the operator's; a key needs `read` for reads and `write` for changes and
/// redrives. `Err` is 401 E1001.
pub fn permit(principal: &Principal, route: &Route) -> Result<(), EngineError> {
    let Principal::Key(key) = principal else {
        return Ok(());
    };
    let needed = match route {
        Route::PutTenant { .. }
        | Route::GetTenant { .. }
        | Route::DeleteTenant { .. }
        | Route::CreateKey { .. }
        | Route::ListKeys { .. }
        | Route::RevokeKey { .. }
        | Route::AuditChanges { .. }
        | Route::Cluster => {
            return Err(EngineError::Unauthorized(
                "tenants, keys, the audit of changes and the cluster's state are the operator token's".into(),
            ))
        }
        // Any key may ask what it is (so a client can tell a key without `read` what it lacks).
        Route::Session => return Ok(()),
        Route::Ingest { .. } | Route::Publish { .. } => Scope::Ingest,
        Route::GetEndpoint { .. }
        | Route::ListEndpoints(_)
        | Route::GetEvent { .. }
        | Route::EventProof { .. }
        | Route::EventPayload { .. }
        | Route::ListEvents(_)
        | Route::OpenApi
        | Route::Ui { .. }
        | Route::AuditSegments
        | Route::Health
        | Route::Ready
        | Route::Metrics => Scope::Read,
        Route::PutEndpoint { .. }
        | Route::CreateEndpoint { .. }
        | Route::DeleteEndpoint { .. }
        | Route::RetryEvent { .. }
        | Route::RetryFailed { .. }
        | Route::SetEnabled { .. } => Scope::Write,
    };
    if key.scopes.has(needed) {
        Ok(())
    } else {
        Err(EngineError::Unauthorized(format!("this key has no `{}` scope", needed.as_str())))
    }
}

/// `GET /admin/session`: who the bearer is and what it may do (the dashboard shows only the
/// actions it may take).
pub fn session_json(principal: &Principal) -> serde_json::Value {
    match principal {
        Principal::Operator => serde_json::json!({
            "principal": "operator",
            "tenant_id": null,
            "key_id": null,
            "scopes": Scope::ALL.iter().map(|scope| scope.as_str()).collect::<Vec<_>>(),
        }),
        Principal::Key(key) => serde_json::json!({
            "principal": "key",
            "tenant_id": key.tenant_id,
            "key_id": key.key_id,
            "scopes": key.scopes.names(),
        }),
    }
}

/// Runs a tenant or key route (on shard 0).
pub async fn execute(shard: &Shard, shared: &Shared, route: Route, request: Request, by: Option<String>) -> Response {
    let now = crate::clock::now_ms();
    let outcome = match route {
        Route::PutTenant { id } => shard.put_tenant(&id, &request.body, by, now).await.map(|(mut json, created)| {
            json["endpoints"] = shared.endpoints_of(&id).into();
            Response::json(if created { 201 } else { 200 }, json.to_string().into_bytes())
        }),
        Route::GetTenant { id } => shared
            .access(|table| table.tenant(&id).map(|tenant| tenant.to_json(shared.endpoints_of(&id))))
            .map(|json| Response::json(200, json.to_string().into_bytes()))
            .ok_or_else(|| crate::shard::access::tenant_not_found(&id)),
        Route::DeleteTenant { id } => delete_tenant(shard, shared, &id, by, now).await,
        Route::CreateKey { tenant_id } => shard
            .create_key(&tenant_id, &request.body, by, now)
            .await
            .map(|json| Response::json(201, json.to_string().into_bytes())),
        Route::ListKeys { tenant_id } => match shared.access(|table| table.tenant(&tenant_id).is_some()) {
            true => {
                let keys = shared.access(|table| table.keys_json(&tenant_id));
                Ok(Response::json(200, serde_json::json!({"keys": keys}).to_string().into_bytes()))
            }
            false => Err(crate::shard::access::tenant_not_found(&tenant_id)),
        },
        Route::RevokeKey { key_id } => shard.revoke_key(&key_id, by, now).await.map(|()| Response::empty(204)),
        _ => Err(EngineError::NotFound("not a tenant or key operation".into())),
    };
    // The table follows the registry after any change, whatever the answer: a change whose
    // answer failed may still be durable.
    shared.set_access(&shard.state().borrow().access);
    outcome.unwrap_or_else(EngineError::into_response)
}

async fn delete_tenant(
    shard: &Shard,
    shared: &Shared,
    id: &str,
    by: Option<String>,
    now: u64,
) -> Result<Response, EngineError> {
    let endpoints = shared.endpoints_of(id);
    if endpoints > 0 {
        return Err(EngineError::Invalid(format!("tenant {id} still has {endpoints} endpoints; delete them first")));
    }
    shard.delete_tenant(id, by, now).await.map(|()| Response::empty(204))
}

/// This shard's configuration changes, with their times.
pub fn changes_here(shard: &Shard) -> Vec<(u64, serde_json::Value)> {
    let state = shard.state().borrow();
    state.changes.iter().map(|change| (change.at_ms, change.to_json(shard.index))).collect()
}

/// `GET /admin/audit/changes`: every shard's most recent configuration changes, newest first.
pub async fn changes_everywhere(shard: &Shard, shared: &Shared, limit: usize) -> Response {
    let mut changes = changes_here(shard);
    match crate::admin::inbox::ask_others(shard.index, shared, |reply| crate::admin::inbox::Command::Changes { reply })
        .await
    {
        Ok(found) => changes.extend(found.into_iter().flatten()),
        Err(error) => return error.into_response(),
    }
    // Newest first; changes of one instant in shard and log order.
    changes.sort_by(|(at_a, a), (at_b, b)| {
        at_b.cmp(at_a)
            .then_with(|| b["shard"].as_u64().cmp(&a["shard"].as_u64()))
            .then_with(|| b["lsn"].as_u64().cmp(&a["lsn"].as_u64()))
    });
    changes.truncate(limit);
    let changes: Vec<serde_json::Value> = changes.into_iter().map(|(_, json)| json).collect();
    Response::json(200, serde_json::json!({ "changes": changes }).to_string().into_bytes())
}
