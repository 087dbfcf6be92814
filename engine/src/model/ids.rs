//! Typed identifiers. Event ids are time-ordered and unique across shards and restarts; they
//! carry the owning shard so that any shard can route a lookup.

use std::fmt;

use crate::limits;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// An event id: 48 bits of Unix milliseconds, 16 bits of shard, 64 bits of per-shard sequence.
/// Rendered `evt_` + 26 Crockford base32 characters, so ids sort by time as strings too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub u128);

impl EventId {
    /// Composes an id.
    pub fn new(unix_ms: u64, shard: u16, sequence: u64) -> Self {
        Self((u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80) | (u128::from(shard) << 64) | u128::from(sequence))
    }

    /// Milliseconds since the Unix epoch when the event was received.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    /// The shard that owns the event.
    pub fn shard(self) -> u16 {
        (self.0 >> 64) as u16
    }

    /// The per-shard sequence number.
    pub fn sequence(self) -> u64 {
        self.0 as u64
    }

    /// The id of delivery `number` (from 1) of the published event with this id.
    pub fn delivery(self, number: u32) -> Self {
        debug_assert!(number >= 1 && u128::from(number) <= DELIVERY_NUMBER_MASK, "delivery number {number}");
        Self(self.0 | (u128::from(number) & DELIVERY_NUMBER_MASK))
    }

    /// The published event a delivery's id belongs to.
    pub fn published(self) -> Self {
        Self(self.0 & !DELIVERY_NUMBER_MASK)
    }

    /// The last id a published event's deliveries may have: they lie in `(self, last]`.
    pub fn last_delivery(self) -> Self {
        Self(self.0 | DELIVERY_NUMBER_MASK)
    }

    /// Parses `evt_…`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix("evt_")?;
        if digits.len() != 26 {
            return None;
        }
        let mut value: u128 = 0;
        for (index, byte) in digits.bytes().enumerate() {
            let digit = CROCKFORD.iter().position(|candidate| *candidate == byte.to_ascii_uppercase())? as u128;
            // The first character holds only the top 3 bits (26 × 5 = 130 bits).
            if index == 0 && digit > 7 {
                return None;
            }
            value = (value << 5) | digit;
        }
        Some(Self(value))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 26];
        for (index, slot) in text.iter_mut().enumerate() {
            let shift = 5 * (25 - index);
            *slot = CROCKFORD[((self.0 >> shift) & 0x1F) as usize];
        }
        // Crockford characters are ASCII.
        formatter.write_str("evt_")?;
        formatter.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Low bits of a published event's id that number its deliveries: a published event's id has
/// them all zero, and its deliveries' ids are the ids that follow it (`id + n`, n from 1). The
/// generator reserves the whole block, so no other id falls inside it.
pub const DELIVERY_NUMBER_BITS: u32 = 14;
const DELIVERY_NUMBER_MASK: u128 = (1 << DELIVERY_NUMBER_BITS) - 1;
const _: () = assert!(limits::PUBLISH_ENDPOINTS_MAX as u128 <= DELIVERY_NUMBER_MASK);

/// Issues event ids for one shard: strictly increasing, even when the clock steps back.
#[derive(Debug)]
pub struct EventIdGenerator {
    shard: u16,
    last: EventId,
    /// Where each millisecond's sequence starts: 0, or in cluster mode the owner's lease epoch
    /// in the high bits ([`EventIdGenerator::start_epoch`]).
    base: u64,
}

/// Bits of an id's sequence below the epoch in cluster mode: 2^40 ids per millisecond.
pub const EPOCH_SHIFT: u32 = 40;

impl EventIdGenerator {
    /// A generator that continues after `last_issued` (recovered from the log, if any).
    pub fn new(shard: u16, last_issued: Option<EventId>) -> Self {
        Self { shard, last: last_issued.unwrap_or(EventId::new(0, shard, 0)), base: 0 }
    }

    /// Cluster mode: a partition's owner at lease `epoch` issues ids whose sequence starts at
    /// `epoch << 40` in every millisecond, so that an owner deposed but not yet aware of it (a
    /// paused process) and its successor never issue the same id.
    pub fn start_epoch(&mut self, epoch: u64) {
        self.base = epoch << EPOCH_SHIFT;
    }

    /// Notes an id seen during replay so that new ids come after it. Ids another shard issued
    /// (deliveries adopted from a channel's shard) say nothing about this shard's sequence.
    pub fn observe(&mut self, id: EventId) {
        if id.shard() == self.shard && id > self.last {
            self.last = id;
        }
    }

    /// The id of a published event at time `now_ms`: one whose delivery bits are zero, with the
    /// whole block of delivery ids after it reserved.
    pub fn next_published(&mut self, now_ms: u64) -> EventId {
        let first = self.next(now_ms);
        let block = 1u64 << DELIVERY_NUMBER_BITS;
        let published = match first.sequence().checked_next_multiple_of(block) {
            Some(sequence) => EventId::new(first.unix_ms(), self.shard, sequence),
            // The sequence space of this millisecond is spent (it never is in practice).
            None => EventId::new(first.unix_ms().saturating_add(1), self.shard, self.base),
        };
        self.last = published.last_delivery();
        published
    }

    /// The next id at time `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> EventId {
        let candidate = EventId::new(now_ms, self.shard, self.base);
        let next = if candidate > self.last {
            candidate
        } else {
            // Same millisecond (or a clock that stepped back): keep the time, bump the sequence.
            EventId::new(self.last.unix_ms(), self.shard, self.last.sequence().wrapping_add(1))
        };
        self.last = next;
        next
    }
}

/// Checks an endpoint id from a path or body: 1 to 64 of `A–Z a–z 0–9 _ - .`.
pub fn valid_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::ENDPOINT_ID_BYTES_MAX
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
}

/// Checks an `X-Idempotency-Key`: 1 to 255 visible ASCII bytes.
pub fn valid_idempotency_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= limits::IDEMPOTENCY_KEY_BYTES_MAX
        && key.iter().all(|byte| (0x21..=0x7E).contains(byte))
}

/// The shard owning an endpoint: FNV-1a of the id, modulo the shard count. Stable across
/// releases and restarts (endpoints live in their owner's log).
pub fn owner_shard(endpoint_id: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in endpoint_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards.max(1) as u64) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // Two owners of one partition in the same millisecond, one deposed and unaware of it, never
    // issue the same id; the new owner's ids still follow every id it replayed.
    #[test]
    fn owners_of_different_epochs_never_collide() {
        let mut old = EventIdGenerator::new(3, None);
        old.start_epoch(1);
        let mut new = EventIdGenerator::new(3, None);
        let replayed = old.next(1_000);
        new.observe(replayed);
        new.start_epoch(2);
        let (a, b) = (old.next(1_000), new.next(1_000));
        assert_ne!(a, b);
        assert!(b > replayed && b.sequence() >> EPOCH_SHIFT == 2 && a.sequence() >> EPOCH_SHIFT == 1);
        assert!(new.next(999) > b, "a clock stepping back keeps ids increasing");
    }
    use proptest::prelude::*;

    // Ids travel through URLs and logs as text; the text must come back to the same id.
    #[test]
    fn event_ids_round_trip_and_carry_their_parts() {
        let id = EventId::new(1_700_000_000_123, 3, 42);
        let text = id.to_string();
        assert!(text.starts_with("evt_") && text.len() == 30, "{text}");
        assert_eq!(EventId::parse(&text), Some(id));
        assert_eq!((id.unix_ms(), id.shard(), id.sequence()), (1_700_000_000_123, 3, 42));
        assert_eq!(EventId::parse(&text.to_lowercase()), Some(id));
        assert_eq!(EventId::parse("evt_short"), None);
        assert_eq!(EventId::parse("evt_ZZZZZZZZZZZZZZZZZZZZZZZZZZ"), None);
        assert_eq!(EventId::parse("ep_00000000000000000000000000"), None);
    }

    // Time-ordered ids must sort by time as text, and never repeat even within a millisecond or
    // when the clock steps back.
    #[test]
    fn generator_is_strictly_increasing() {
        let mut generator = EventIdGenerator::new(1, None);
        let times = [100, 100, 100, 99, 150, 150, 10];
        let ids: Vec<EventId> = times.iter().map(|now| generator.next(*now)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_string() < pair[1].to_string());
        }
        let mut resumed = EventIdGenerator::new(1, None);
        resumed.observe(*ids.last().unwrap());
        assert!(resumed.next(5) > *ids.last().unwrap());
    }

    // A published event's deliveries are found by their ids alone: they follow the event's id
    // in a block no other id (of a later event, published or not) falls into.
    #[test]
    fn published_ids_reserve_their_delivery_block() {
        let mut generator = EventIdGenerator::new(2, None);
        let before = generator.next(100);
        let published = generator.next_published(100);
        let after = generator.next(100);
        let next_published = generator.next_published(100);
        assert!(before < published && published < after && after < next_published);
        assert_eq!(published.published(), published);
        for number in [1, 2, 10_000] {
            let delivery = published.delivery(number);
            assert!(published < delivery && delivery <= published.last_delivery());
            assert_eq!(delivery.published(), published);
            assert_eq!(delivery.shard(), 2);
        }
        assert!(after > published.last_delivery(), "a later id falls inside the block");
        assert!(next_published > published.last_delivery());
        let mut other = EventIdGenerator::new(3, None);
        other.observe(published.delivery(5));
        assert_eq!(other.next(100).shard(), 3, "another shard's ids do not move this one's sequence");
    }

    proptest! {
        // Parsing arbitrary text never panics, and any accepted text renders back identically.
        #[test]
        fn parse_is_total(text in "evt_[0-9A-Za-z]{0,30}") {
            if let Some(id) = EventId::parse(&text) {
                prop_assert_eq!(id.to_string().to_lowercase(), text.to_lowercase());
            }
        }
    }

    // The owner shard is on disk (an endpoint's records live in its owner's log), so the hash
    // must never change between releases: pinned to FNV-1a 64 values computed independently
    // (for example, FNV-1a("abc") = 0xe71fa2190541574b, and 0xe71f…574b mod 4 = 3).
    #[test]
    fn owner_shard_is_pinned_fnv1a_and_spread() {
        assert_eq!(owner_shard("abc", 4), 3);
        assert_eq!(owner_shard("abc", 7), 5);
        assert_eq!(owner_shard("orders", 4), 0);
        assert_eq!(owner_shard("orders", 7), 4);
        assert_eq!(owner_shard("endpoint-0", 2), 1);
        assert_eq!(owner_shard("bench-0", 7), 3);
        assert_eq!(owner_shard("abc", 1), 0);
        let mut counts = [0usize; 4];
        for index in 0..4000 {
            counts[owner_shard(&format!("endpoint-{index}"), 4)] += 1;
        }
        assert!(counts.iter().all(|count| *count > 800), "{counts:?}");
        assert!(valid_endpoint_id("ep_01-a.b") && !valid_endpoint_id("") && !valid_endpoint_id("a/b"));
    }
}
