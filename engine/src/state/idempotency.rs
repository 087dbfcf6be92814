//! The idempotency table of one shard: `(endpoint, key) → first event`, for a window of time,
//! within a bounded number of keys. Pure: time is passed in.
//!
//! Memory: each key costs its bytes plus about 100 bytes of map and queue overhead. When the
//! table is full, the oldest keys are forgotten before their window ends (so a very late retry
//! of such a key would be accepted as new), and the count of early evictions is kept for metrics.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::model::ids::EventId;

/// What the table remembers of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remembered {
    /// The event the key was first used for.
    pub event_id: EventId,
    /// LSN of that event's record (a duplicate answer waits until it is durable).
    pub lsn: u64,
}

type Key = (Rc<str>, Box<str>);

/// A bounded, windowed idempotency table.
#[derive(Debug)]
pub struct IdempotencyTable {
    entries: HashMap<Key, (Remembered, u64)>,
    /// Keys in insertion (time) order, for expiry and eviction.
    order: VecDeque<(u64, Key)>,
    window_ms: u64,
    capacity: usize,
    evicted_early: u64,
}

impl IdempotencyTable {
    /// A table remembering keys for `window_ms`, at most `capacity` of them.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), window_ms, capacity: capacity.max(1), evicted_early: 0 }
    }

    /// The first event for this key, if the key is still remembered at `now_ms`.
    pub fn lookup(&mut self, endpoint: &Rc<str>, key: &str, now_ms: u64) -> Option<Remembered> {
        self.expire(now_ms);
        self.entries.get(&(Rc::clone(endpoint), Box::from(key))).map(|(remembered, _)| *remembered)
    }

    /// Remembers a key first used at `at_ms` (also during replay, with the record's time).
    pub fn remember(&mut self, endpoint: &Rc<str>, key: &str, remembered: Remembered, at_ms: u64, now_ms: u64) {
        if at_ms.saturating_add(self.window_ms) <= now_ms {
            return;
        }
        self.expire(now_ms);
        let entry_key: Key = (Rc::clone(endpoint), Box::from(key));
        if self.entries.contains_key(&entry_key) {
            return;
        }
        while self.entries.len() >= self.capacity {
            if !self.pop_oldest() {
                break;
            }
            self.evicted_early += 1;
        }
        self.order.push_back((at_ms, entry_key.clone()));
        self.entries.insert(entry_key, (remembered, at_ms));
        self.assert_consistent();
    }

    /// Each remembered key has exactly one place in the expiry order, and the bound holds.
    fn assert_consistent(&self) {
        debug_assert_eq!(self.order.len(), self.entries.len(), "expiry order and keys disagree");
        debug_assert!(
            self.entries.len() <= self.capacity,
            "{} keys over the bound {}",
            self.entries.len(),
            self.capacity
        );
    }

    /// Forgets every key of an endpoint (when it is deleted).
    pub fn forget_endpoint(&mut self, endpoint: &str) {
        self.entries.retain(|(owner, _), _| &**owner != endpoint);
        self.order.retain(|(_, (owner, _))| &**owner != endpoint);
        self.assert_consistent();
    }

    /// Forgets every key whose event's record is after `lsn` (records a storage failure refused
    /// before they were durable).
    pub fn forget_after(&mut self, lsn: u64) {
        self.entries.retain(|_, (remembered, _)| remembered.lsn <= lsn);
        let entries = &self.entries;
        self.order.retain(|(_, key)| entries.contains_key(key));
        self.assert_consistent();
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((at_ms, _)) = self.order.front() {
            if at_ms.saturating_add(self.window_ms) > now_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some((at_ms, key)) => {
                // Every place in the order has its key: a key is added once, with its place,
                // and both go together.
                let removed = self.entries.remove(&key);
                debug_assert!(
                    removed.is_some_and(|(_, stored_at)| stored_at == at_ms),
                    "an expiry place without its key"
                );
                true
            }
            None => false,
        }
    }

    /// Every key remembered: endpoint, key, what it maps to and when it was first used.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, Remembered, u64)> {
        self.entries.iter().map(|((endpoint, key), (remembered, at_ms))| (&**endpoint, &**key, *remembered, *at_ms))
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys forgotten before their window ended because the table was full.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

pub use crate::model::ids::valid_idempotency_key as valid_key;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn remembered(sequence: u64) -> Remembered {
        Remembered { event_id: EventId::new(1, 0, sequence), lsn: sequence }
    }

    // Within the window a key maps to its first event; after it, the key is new again.
    #[test]
    fn keys_expire_after_the_window() {
        let endpoint: Rc<str> = Rc::from("ep");
        let mut table = IdempotencyTable::new(1000, 10);
        table.remember(&endpoint, "k", remembered(1), 0, 0);
        table.remember(&endpoint, "k", remembered(2), 10, 10);
        assert_eq!(table.lookup(&endpoint, "k", 999), Some(remembered(1)));
        assert_eq!(table.lookup(&Rc::from("other"), "k", 999), None, "keys are per endpoint");
        assert_eq!(table.lookup(&endpoint, "k", 1000), None);
        assert!(table.is_empty());
    }

    // Memory is bounded: beyond capacity the oldest keys go first, and that is counted.
    #[test]
    fn capacity_evicts_oldest_first() {
        let endpoint: Rc<str> = Rc::from("ep");
        let mut table = IdempotencyTable::new(1_000_000, 3);
        for index in 0..5u64 {
            table.remember(&endpoint, &format!("k{index}"), remembered(index), index, index);
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted_early(), 2);
        assert_eq!(table.lookup(&endpoint, "k0", 10), None);
        assert_eq!(table.lookup(&endpoint, "k4", 10), Some(remembered(4)));
    }

    // Replay of records older than the window must not resurrect their keys.
    #[test]
    fn replayed_keys_outside_the_window_are_ignored() {
        let endpoint: Rc<str> = Rc::from("ep");
        let mut table = IdempotencyTable::new(100, 10);
        table.remember(&endpoint, "old", remembered(1), 0, 500);
        assert!(table.is_empty());
    }

    // Keys of records a storage failure refused are forgotten; the others stay, in order.
    #[test]
    fn forget_after_drops_keys_of_records_past_the_lsn() {
        let endpoint: Rc<str> = Rc::from("ep");
        let mut table = IdempotencyTable::new(1_000_000, 10);
        for index in 1..=5u64 {
            table.remember(&endpoint, &format!("k{index}"), remembered(index), index, index);
        }
        table.forget_after(3);
        assert_eq!(table.len(), 3);
        assert_eq!(table.lookup(&endpoint, "k3", 10), Some(remembered(3)));
        assert_eq!(table.lookup(&endpoint, "k4", 10), None);
        table.remember(&endpoint, "k4", remembered(6), 6, 6);
        assert_eq!(table.lookup(&endpoint, "k4", 10), Some(remembered(6)), "a retry is a new event");
    }

    // Only visible ASCII up to 255 bytes is a key.
    #[test]
    fn key_validation() {
        assert!(valid_key(b"order-123"));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key(&[b'a'; 256]));
        assert!(valid_key(&[b'a'; 255]));
        assert!(!valid_key("é".as_bytes()));
    }
}
