//! Each tenant's own bounds, shared by every shard: its ingest rate limit (`rate_limit_per_s`,
//! one token bucket per limited tenant, so the limit holds over all its endpoints together and
//! one tenant's flood empties only its own bucket; taken after the request is authenticated, so a
//! stranger cannot spend a tenant's budget), and its waiting-event bound (`events_waiting_max`:
//! each shard reports its count of the bounded tenants' waiting events after every batch of
//! records it applies, and admission adds the other shards' last reports to its own count). A
//! tenant whose destination is dead fills its own bound, not the shards' (503 E3002 for it only).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::state::rate::TokenBucket;

/// The buckets of the tenants that have a rate limit.
#[derive(Debug, Default)]
pub struct TenantLimits {
    buckets: Mutex<HashMap<String, TokenBucket>>,
    waiting: Mutex<HashMap<String, Bound>>,
    /// Whether any tenant has a rate limit, or a waiting bound: without, the ingest path takes
    /// no lock.
    any_rate: AtomicBool,
    any_bound: AtomicBool,
}

/// A tenant's waiting-event bound and each shard's last count.
#[derive(Debug, Default)]
struct Bound {
    max: u64,
    by_shard: HashMap<usize, u64>,
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
        self.any_rate.store(!kept.is_empty(), Ordering::Release);
        *buckets = kept;
    }

    /// Follows the tenants' waiting-event bounds (shards' counts of tenants still bounded are kept).
    pub fn set_bounds<'a>(&self, bounds: impl Iterator<Item = (&'a str, Option<u64>)>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = HashMap::new();
        for (tenant, max) in bounds {
            let Some(max) = max else {
                continue;
            };
            let mut bound = waiting.remove(tenant).unwrap_or_default();
            bound.max = max;
            kept.insert(tenant.to_string(), bound);
        }
        self.any_bound.store(!kept.is_empty(), Ordering::Release);
        *waiting = kept;
    }

    /// The tenants with a waiting-event bound (what each shard reports on).
    pub fn bounded(&self) -> Vec<String> {
        if !self.any_bound.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Shard `shard` has `count` of `tenant`'s events waiting.
    pub fn report(&self, tenant: &str, shard: usize, count: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bound) = waiting.get_mut(tenant) {
            bound.by_shard.insert(shard, count);
        }
    }

    /// Whether `tenant` is at its bound, counting `local` on shard `shard` and the others' reports.
    pub fn full(&self, tenant: &str, shard: usize, local: u64) -> bool {
        if !self.any_bound.load(Ordering::Acquire) {
            return false;
        }
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bound) = waiting.get(tenant) else {
            return false;
        };
        let others: u64 = bound.by_shard.iter().filter(|(other, _)| **other != shard).map(|(_, count)| *count).sum();
        others.saturating_add(local) >= bound.max
    }

    /// Takes one request of `tenant`'s budget; `Err` carries the seconds to wait (429 E1003).
    pub fn take(&self, tenant: &str, now_ms: u64) -> Result<(), u64> {
        if !self.any_rate.load(Ordering::Acquire) {
            return Ok(());
        }
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

    // A tenant's waiting bound counts every shard's events of it, and only its own.
    #[test]
    fn the_waiting_bound_adds_up_the_shards() {
        let limits = TenantLimits::default();
        limits.set_bounds([("a", Some(10)), ("b", None)].into_iter());
        assert_eq!(limits.bounded(), ["a"]);
        limits.report("a", 1, 6);
        assert!(!limits.full("a", 0, 3));
        assert!(limits.full("a", 0, 4));
        assert!(!limits.full("a", 1, 9), "a shard's own report is replaced by its live count");
        assert!(!limits.full("b", 0, 1_000_000));
        limits.set_bounds([("a", Some(20))].into_iter());
        assert!(!limits.full("a", 0, 4), "a raised bound keeps the shards' counts");
    }
}
