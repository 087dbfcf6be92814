//! Each tenant's ingest rate limit (`rate_limit_per_s`), shared by every shard: one token bucket
//! per limited tenant, so a tenant's limit holds over all its endpoints together and one
//! tenant's flood empties only its own bucket. Taken after the request is authenticated, so a
//! stranger cannot spend a tenant's budget.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::state::rate::TokenBucket;

/// The buckets of the tenants that have a rate limit.
#[derive(Debug, Default)]
pub struct TenantLimits {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl TenantLimits {
    /// Follows the tenants' limits: a new or changed limit gets a full bucket, a removed one
    /// goes.
    pub fn set<'a>(&self, limits: impl Iterator<Item = (&'a str, Option<u32>)>, now_ms: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = HashMap::new();
        for (tenant, limit) in limits {
            let Some(per_second) = limit else {
                continue;
            };
            let bucket = match buckets.remove(tenant) {
                Some(bucket) if bucket.per_second() == per_second => bucket,
                _ => TokenBucket::new(per_second, now_ms),
            };
            kept.insert(tenant.to_string(), bucket);
        }
        *buckets = kept;
    }

    /// Takes one request of `tenant`'s budget; `Err` carries the seconds to wait (429 E1003).
    pub fn take(&self, tenant: &str, now_ms: u64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match buckets.get_mut(tenant) {
            Some(bucket) => bucket.take(now_ms),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A tenant's limit is its own: another tenant's requests neither count against it nor are
    // limited by it, and a changed limit starts full.
    #[test]
    fn each_tenant_has_its_own_budget() {
        let limits = TenantLimits::default();
        limits.set([("a", Some(2)), ("b", None)].into_iter(), 0);
        assert_eq!(limits.take("a", 0), Ok(()));
        assert_eq!(limits.take("a", 0), Ok(()));
        assert_eq!(limits.take("a", 0), Err(1));
        for _ in 0..100 {
            assert_eq!(limits.take("b", 0), Ok(()));
        }
        assert_eq!(limits.take("a", 500), Ok(()));
        limits.set([("a", Some(5))].into_iter(), 600);
        for _ in 0..5 {
            assert_eq!(limits.take("a", 600), Ok(()));
        }
        limits.set(std::iter::empty(), 700);
        assert_eq!(limits.take("a", 700), Ok(()));
    }
}
