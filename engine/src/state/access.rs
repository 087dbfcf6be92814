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

/// Configuration changes kept per shard for `GET /admin/audit/changes`, most recent last.
pub const CHANGES_IN_MEMORY_MAX: usize = 10_000;

/// One configuration change as a record of the log says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChange {
    /// The record.
    pub lsn: u64,
    /// When.
    pub at_ms: u64,
    /// `endpoint.put`, `endpoint.deleted`, `tenant.put`, `tenant.deleted`, `key.created`,
    /// `key.revoked`.
    pub kind: &'static str,
    /// The endpoint, tenant or key.
    pub subject: String,
    /// The tenant concerned, when the record says.
    pub tenant: Option<String>,
    /// The key that made it; `None` for the operator token.
    pub by: Option<String>,
}

impl ConfigChange {
    /// The change a record is, if it is one.
    pub fn of(lsn: u64, record: &crate::model::records::Record) -> Option<Self> {
        use crate::model::records::Record;
        let change = |at_ms, kind, subject: &str, tenant: Option<&str>, by: &Option<String>| Self {
            lsn,
            at_ms,
            kind,
            subject: subject.to_string(),
            tenant: tenant.map(str::to_string),
            by: by.clone(),
        };
        Some(match record {
            Record::EndpointPut(endpoint) => change(
                endpoint.updated_at_ms,
                "endpoint.put",
                &endpoint.id,
                Some(endpoint.tenant_id()),
                &endpoint.changed_by,
            ),
            Record::EndpointDeleted(deleted) => {
                change(deleted.at_ms, "endpoint.deleted", &deleted.id, None, &deleted.by)
            }
            Record::TenantPut(put) => {
                change(put.tenant.updated_at_ms, "tenant.put", &put.tenant.id, Some(&put.tenant.id), &put.by)
            }
            Record::TenantDeleted(deleted) => {
                change(deleted.at_ms, "tenant.deleted", &deleted.id, Some(&deleted.id), &deleted.by)
            }
            Record::KeyCreated(created) => change(
                created.key.created_at_ms,
                "key.created",
                &created.key.key_id,
                Some(&created.key.tenant_id),
                &created.by,
            ),
            Record::KeyRevoked(revoked) => change(revoked.at_ms, "key.revoked", &revoked.key_id, None, &revoked.by),
            _ => return None,
        })
    }

    /// The admin JSON.
    pub fn to_json(&self, shard: usize) -> serde_json::Value {
        serde_json::json!({
            "at": crate::clock::rfc3339(self.at_ms),
            "kind": self.kind,
            "subject": self.subject,
            "tenant_id": self.tenant,
            "by": self.by.as_deref().unwrap_or("operator"),
            "shard": shard,
            "lsn": self.lsn,
        })
    }
}
