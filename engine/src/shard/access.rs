//! Tenant and key changes, on shard 0 (which keeps them): each is a record, answered once
//! durable, like an endpoint change.

use serde_json::Value;

use crate::error::EngineError;
use crate::limits;
use crate::model::records::{KeyCreated, KeyRevoked, Record, TenantDeleted, TenantPut};
use crate::model::tenant::{generate_key, key_hash, Scopes, StoredKey, TenantInput, DEFAULT_TENANT};
use crate::shard::Shard;

/// Who made a change: a key id, or `None` for the operator token.
pub type ChangedBy = Option<String>;

impl Shard {
    /// Creates or replaces a tenant; its JSON (without the endpoint count) and whether it was
    /// created.
    pub async fn put_tenant(
        &self,
        id: &str,
        body: &[u8],
        by: ChangedBy,
        now_ms: u64,
    ) -> Result<(Value, bool), EngineError> {
        let input = TenantInput::parse(body).map_err(EngineError::Invalid)?;
        let (tenant, created) = {
            let state = self.core.state.borrow();
            let previous = state.access.tenants.get(id);
            if previous.is_none() && state.access.tenants.len() >= limits::TENANTS_MAX {
                return Err(EngineError::QueueFull(format!(
                    "Kapsel holds {} tenants, as many as it may",
                    limits::TENANTS_MAX
                )));
            }
            (input.into_tenant(id, previous, now_ms), previous.is_none())
        };
        self.append(Record::TenantPut(TenantPut { tenant: tenant.clone(), by }), now_ms).await?;
        Ok((tenant.to_json(0), created))
    }

    /// Removes a tenant and its keys; the caller checked that it has no endpoints.
    pub async fn delete_tenant(&self, id: &str, by: ChangedBy, now_ms: u64) -> Result<(), EngineError> {
        if !self.core.state.borrow().access.tenants.contains_key(id) {
            return Err(tenant_not_found(id));
        }
        self.append(Record::TenantDeleted(TenantDeleted { id: id.to_string(), at_ms: now_ms, by }), now_ms).await?;
        Ok(())
    }

    /// Creates a key for a tenant: `{"key_id","key","scopes"}`, the key shown this once.
    pub async fn create_key(
        &self,
        tenant_id: &str,
        body: &[u8],
        by: ChangedBy,
        now_ms: u64,
    ) -> Result<Value, EngineError> {
        #[derive(serde::Deserialize)]
        struct KeyInput {
            scopes: Vec<String>,
        }
        let input: KeyInput = serde_json::from_slice(body)
            .map_err(|error| EngineError::Invalid(format!("invalid JSON body (`scopes` is required): {error}")))?;
        let scopes = Scopes::parse(&input.scopes).map_err(EngineError::Invalid)?;
        {
            let state = self.core.state.borrow();
            if !state.access.tenants.contains_key(tenant_id) {
                return Err(tenant_not_found(tenant_id));
            }
            if state.access.keys.len() >= limits::KEYS_MAX {
                return Err(EngineError::QueueFull(format!(
                    "Kapsel holds {} keys, as many as it may",
                    limits::KEYS_MAX
                )));
            }
        }
        let new =
            generate_key().map_err(|error| EngineError::Unavailable(format!("cannot generate a key: {error}")))?;
        let key = StoredKey {
            key_id: new.key_id.clone(),
            tenant_id: tenant_id.to_string(),
            scopes: scopes.0,
            hash: key_hash(new.key.as_bytes()),
            created_at_ms: now_ms,
        };
        self.append(Record::KeyCreated(KeyCreated { key, by }), now_ms).await?;
        Ok(serde_json::json!({"key_id": new.key_id, "key": new.key, "scopes": scopes.names(), "tenant_id": tenant_id}))
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, key_id: &str, by: ChangedBy, now_ms: u64) -> Result<(), EngineError> {
        if !self.core.state.borrow().access.keys.contains_key(key_id) {
            return Err(EngineError::NotFound(format!("key {key_id} not found")));
        }
        self.append(Record::KeyRevoked(KeyRevoked { key_id: key_id.to_string(), at_ms: now_ms, by }), now_ms).await?;
        Ok(())
    }
}

/// 404 E1004 for a tenant.
pub fn tenant_not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("tenant {id} not found"))
}

/// Whether `id` is the tenant that always exists.
pub fn is_default(id: &str) -> bool {
    id == DEFAULT_TENANT
}
