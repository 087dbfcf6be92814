//! Tenants and keys as shard 0's log holds them: the durable registry every shard's
//! authentication reads a copy of (`admin::shared`). Applied from records, live and at replay,
//! and kept in the endpoint snapshot so retention may remove the records.

use std::collections::BTreeMap;

use crate::model::records::{KeyCreated, KeyRevoked, TenantDeleted, TenantPut};
use crate::model::tenant::{StoredKey, Tenant, DEFAULT_TENANT};

/// Tenants and keys by id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Access {
    /// Tenants by id (`default` is there even when nobody stored it).
    pub tenants: BTreeMap<String, Tenant>,
    /// Keys by id, as stored (hashes only).
    pub keys: BTreeMap<String, StoredKey>,
}

impl Access {
    /// A registry with the `default` tenant only.
    pub fn new() -> Self {
        let mut access = Self::default();
        access.tenants.insert(DEFAULT_TENANT.into(), Tenant::default_tenant());
        access
    }

    /// A tenant created or replaced.
    pub fn put_tenant(&mut self, put: TenantPut) {
        self.tenants.insert(put.tenant.id.clone(), put.tenant);
    }

    /// A tenant removed, with its keys (`default` always exists: removing it resets it).
    pub fn delete_tenant(&mut self, deleted: &TenantDeleted) {
        self.tenants.remove(&deleted.id);
        self.keys.retain(|_, key| key.tenant_id != deleted.id);
        if deleted.id == DEFAULT_TENANT {
            self.tenants.insert(DEFAULT_TENANT.into(), Tenant::default_tenant());
        }
    }

    /// A key created.
    pub fn create_key(&mut self, created: KeyCreated) {
        self.keys.insert(created.key.key_id.clone(), created.key);
    }

    /// A key revoked.
    pub fn revoke_key(&mut self, revoked: &KeyRevoked) {
        self.keys.remove(&revoked.key_id);
    }
}
