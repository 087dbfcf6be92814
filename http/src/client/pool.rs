//! The client's keep-alive pool: idle connections per destination, bounded per destination and
//! in total, dropped once idle for too long. Pure: generic over what it holds, and the time is
//! an argument, so its rules are tested without sockets or sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::target::{Scheme, Target};

/// A destination connections are kept for: connections to the same scheme, host and port are
/// interchangeable. The host is the name, not the address it resolved to, so a pooled
/// connection follows the name's address at the time it was opened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl PoolKey {
    pub(super) fn of(target: &Target) -> Self {
        Self { scheme: target.scheme, host: target.host.clone(), port: target.port }
    }
}

struct Idle<T> {
    connection: T,
    since: Instant,
}

/// Idle connections by destination.
pub(super) struct Pool<T> {
    idle: HashMap<PoolKey, Vec<Idle<T>>>,
    per_destination_max: usize,
    total_max: usize,
    idle_timeout: Duration,
    total: usize,
}

impl<T> Pool<T> {
    pub(super) fn new(per_destination_max: usize, total_max: usize, idle_timeout: Duration) -> Self {
        Self { idle: HashMap::new(), per_destination_max, total_max, idle_timeout, total: 0 }
    }

    /// Idle connections held, over all destinations.
    pub(super) fn len(&self) -> usize {
        self.total
    }

    /// The most recently returned connection to `key` that is not too old at `now`. The most
    /// recent is the most likely to be still open on the server's side; older ones of the
    /// same destination that have expired are dropped on the way.
    pub(super) fn take(&mut self, key: &PoolKey, now: Instant) -> Option<T> {
        let idle = self.idle.get_mut(key)?;
        let before = idle.len();
        idle.retain(|entry| !expired(entry.since, now, self.idle_timeout));
        let taken = idle.pop();
        let after = idle.len();
        if idle.is_empty() {
            self.idle.remove(key);
        }
        self.total -= before - after;
        taken.map(|entry| entry.connection)
    }

    /// Keeps `connection` for reuse, unless the destination's or the pool's bound is reached;
    /// then it is handed back, for the caller to close.
    pub(super) fn put(&mut self, key: PoolKey, connection: T, now: Instant) -> Result<(), T> {
        if self.total >= self.total_max {
            return Err(connection);
        }
        let idle = self.idle.entry(key).or_default();
        if idle.len() >= self.per_destination_max {
            if idle.is_empty() {
                // A bound of zero: the entry was just created for nothing.
                self.idle.retain(|_, idle| !idle.is_empty());
            }
            return Err(connection);
        }
        idle.push(Idle { connection, since: now });
        self.total += 1;
        debug_assert!(self.total <= self.total_max);
        Ok(())
    }

    /// Drops every idle connection to `key`; returns how many. For when one of them turned out
    /// to be closed by the server: [`Pool::take`] hands out the newest first, so the others
    /// have been idle longer and were most likely closed too (an idle timeout, a restart).
    pub(super) fn discard(&mut self, key: &PoolKey) -> usize {
        let dropped = self.idle.remove(key).map_or(0, |idle| idle.len());
        self.total -= dropped;
        dropped
    }

    /// Drops every connection idle for longer than the idle timeout at `now`.
    pub(super) fn sweep(&mut self, now: Instant) {
        let timeout = self.idle_timeout;
        let mut dropped = 0;
        self.idle.retain(|_, idle| {
            let before = idle.len();
            idle.retain(|entry| !expired(entry.since, now, timeout));
            dropped += before - idle.len();
            !idle.is_empty()
        });
        self.total -= dropped;
    }
}

fn expired(since: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(since) >= timeout
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(host: &str) -> PoolKey {
        PoolKey::of(&Target::parse(&format!("http://{host}/")).unwrap())
    }

    #[test]
    fn the_newest_idle_connection_is_reused_first() {
        // The newest connection is the least likely to have been closed by the server.
        let start = Instant::now();
        let mut pool = Pool::new(4, 16, Duration::from_secs(10));
        pool.put(key("a"), 1, start).unwrap();
        pool.put(key("a"), 2, start + Duration::from_secs(1)).unwrap();
        pool.put(key("b"), 3, start).unwrap();
        assert_eq!(pool.take(&key("a"), start + Duration::from_secs(2)), Some(2));
        assert_eq!(pool.take(&key("a"), start + Duration::from_secs(2)), Some(1));
        assert_eq!(pool.take(&key("a"), start + Duration::from_secs(2)), None);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.take(&key("b"), start), Some(3));
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn bounds_hand_connections_back() {
        // Every queue is bounded: a burst of deliveries to one destination, or to many, must
        // not leave an unbounded number of sockets open.
        let now = Instant::now();
        let mut pool = Pool::new(2, 3, Duration::from_secs(10));
        assert_eq!(pool.put(key("a"), 1, now), Ok(()));
        assert_eq!(pool.put(key("a"), 2, now), Ok(()));
        assert_eq!(pool.put(key("a"), 3, now), Err(3));
        assert_eq!(pool.put(key("b"), 4, now), Ok(()));
        assert_eq!(pool.put(key("c"), 5, now), Err(5));
        assert_eq!(pool.len(), 3);
        let mut disabled = Pool::new(0, 3, Duration::from_secs(10));
        assert_eq!(disabled.put(key("a"), 1, now), Err(1));
        assert!(disabled.idle.is_empty());
    }

    #[test]
    fn a_destination_can_be_emptied_at_once() {
        // When the newest idle connection to a destination was closed by it, the older ones
        // were too (a restart, an idle timeout): trying each in turn would cost a stale
        // exchange per delivery.
        let now = Instant::now();
        let mut pool = Pool::new(4, 16, Duration::from_secs(10));
        pool.put(key("a"), 1, now).unwrap();
        pool.put(key("a"), 2, now).unwrap();
        pool.put(key("b"), 3, now).unwrap();
        assert_eq!(pool.discard(&key("a")), 2);
        assert_eq!(pool.discard(&key("a")), 0);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.take(&key("a"), now), None);
        assert_eq!(pool.take(&key("b"), now), Some(3));
    }

    #[test]
    fn idle_connections_expire() {
        // A connection idle past the timeout has likely been closed by the server; reusing it
        // would cost a failed write and a retry.
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut pool = Pool::new(4, 16, timeout);
        pool.put(key("a"), 1, start).unwrap();
        pool.put(key("a"), 2, start + Duration::from_secs(5)).unwrap();
        pool.put(key("b"), 3, start).unwrap();
        assert_eq!(pool.take(&key("a"), start + timeout), Some(2));
        assert_eq!(pool.len(), 1);
        pool.sweep(start + timeout);
        assert_eq!(pool.len(), 0);
        assert!(pool.idle.is_empty());
    }
}
