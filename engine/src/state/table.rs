//! The table of events a shard tracks, by id: a sorted sequence of chunks of at most
//! [`CHUNK_EVENTS_MAX`] events, each chunk's ids and events in two arrays.
//!
//! Why not `BTreeMap`: event ids grow with time, so nearly every insert is at the end, and a
//! B-tree filled that way keeps its leaves about half full: 166 bytes per 88-byte entry,
//! measured. Here an insert at the end fills the last chunk to the brim before the next one is
//! started, so memory is the entries themselves. Inserts elsewhere (an event recreated by replay
//! from a carried record) split a full chunk in two; removals shrink chunks, and a chunk that
//! falls below a quarter full is merged into its neighbour when they fit together. Lookups are
//! two binary searches.

use std::collections::VecDeque;

use super::Event;
use crate::model::ids::EventId;

/// Events per chunk at most: a removal moves at most this many entries.
pub const CHUNK_EVENTS_MAX: usize = 128;

/// A chunk below this many events is merged with a neighbour when both fit in one.
const CHUNK_EVENTS_LOW: usize = CHUNK_EVENTS_MAX / 4;

#[derive(Debug, Default)]
struct Chunk {
    ids: Vec<EventId>,
    events: Vec<Event>,
}

impl Chunk {
    fn new() -> Self {
        Self { ids: Vec::with_capacity(CHUNK_EVENTS_MAX), events: Vec::with_capacity(CHUNK_EVENTS_MAX) }
    }

    fn first(&self) -> Option<EventId> {
        self.ids.first().copied()
    }
}

/// Events by id, in id order.
#[derive(Debug, Default)]
pub struct EventTable {
    chunks: VecDeque<Chunk>,
    len: usize,
}

impl EventTable {
    /// Events held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `event_id` if any does: the last one starting at or before it.
    fn chunk_of(&self, event_id: &EventId) -> Option<usize> {
        let after = self.chunks.partition_point(|chunk| chunk.first().is_some_and(|first| first <= *event_id));
        after.checked_sub(1)
    }

    fn locate(&self, event_id: &EventId) -> Option<(usize, usize)> {
        let chunk = self.chunk_of(event_id)?;
        let index = self.chunks[chunk].ids.binary_search(event_id).ok()?;
        Some((chunk, index))
    }

    /// An event by id.
    pub fn get(&self, event_id: &EventId) -> Option<&Event> {
        let (chunk, index) = self.locate(event_id)?;
        self.chunks[chunk].events.get(index)
    }

    /// An event by id, to change it.
    pub fn get_mut(&mut self, event_id: &EventId) -> Option<&mut Event> {
        let (chunk, index) = self.locate(event_id)?;
        self.chunks[chunk].events.get_mut(index)
    }

    /// True when the event is held.
    pub fn contains_key(&self, event_id: &EventId) -> bool {
        self.locate(event_id).is_some()
    }

    /// Adds an event (replacing one of the same id, which is returned).
    pub fn insert(&mut self, event_id: EventId, event: Event) -> Option<Event> {
        let at_end = self.chunks.back().and_then(|chunk| chunk.ids.last()).is_none_or(|last| *last < event_id);
        if at_end {
            if self.chunks.back().is_none_or(|chunk| chunk.ids.len() >= CHUNK_EVENTS_MAX) {
                self.chunks.push_back(Chunk::new());
            }
            if let Some(chunk) = self.chunks.back_mut() {
                chunk.ids.push(event_id);
                chunk.events.push(event);
                self.len += 1;
            }
            return None;
        }
        let chunk_index = self.chunk_of(&event_id).unwrap_or(0);
        let chunk = &mut self.chunks[chunk_index];
        match chunk.ids.binary_search(&event_id) {
            Ok(index) => Some(std::mem::replace(&mut chunk.events[index], event)),
            Err(index) => {
                chunk.ids.insert(index, event_id);
                chunk.events.insert(index, event);
                self.len += 1;
                if chunk.ids.len() > CHUNK_EVENTS_MAX {
                    let half = chunk.ids.len() / 2;
                    let mut upper = Chunk::new();
                    upper.ids.extend(chunk.ids.drain(half..));
                    upper.events.extend(chunk.events.drain(half..));
                    self.chunks.insert(chunk_index + 1, upper);
                }
                None
            }
        }
    }

    /// Removes an event; it, if it was held.
    pub fn remove(&mut self, event_id: &EventId) -> Option<Event> {
        let (chunk_index, index) = self.locate(event_id)?;
        let chunk = &mut self.chunks[chunk_index];
        chunk.ids.remove(index);
        let event = chunk.events.remove(index);
        self.len -= 1;
        self.tidy(chunk_index);
        Some(event)
    }

    /// Drops an empty chunk, or merges a small one into a neighbour it fits with.
    fn tidy(&mut self, chunk_index: usize) {
        let Some(size) = self.chunks.get(chunk_index).map(|chunk| chunk.ids.len()) else {
            return;
        };
        if size == 0 {
            self.chunks.remove(chunk_index);
            return;
        }
        if size >= CHUNK_EVENTS_LOW {
            return;
        }
        let fits =
            |neighbour: Option<&Chunk>| neighbour.is_some_and(|chunk| chunk.ids.len() + size <= CHUNK_EVENTS_MAX);
        let (into, from) = if chunk_index > 0 && fits(self.chunks.get(chunk_index - 1)) {
            (chunk_index - 1, chunk_index)
        } else if fits(self.chunks.get(chunk_index + 1)) {
            (chunk_index, chunk_index + 1)
        } else {
            return;
        };
        if let Some(later) = self.chunks.remove(from) {
            let earlier = &mut self.chunks[into];
            earlier.ids.extend(later.ids);
            earlier.events.extend(later.events);
        }
    }

    /// Keeps the events for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&EventId, &mut Event) -> bool) {
        let mut kept = 0;
        for chunk in &mut self.chunks {
            let mut verdicts = Vec::with_capacity(chunk.ids.len());
            for (event_id, event) in chunk.ids.iter().zip(chunk.events.iter_mut()) {
                verdicts.push(keep(event_id, event));
            }
            let mut verdict = verdicts.iter();
            chunk.ids.retain(|_| verdict.next().copied().unwrap_or(true));
            let mut verdict = verdicts.iter();
            chunk.events.retain(|_| verdict.next().copied().unwrap_or(true));
            kept += chunk.ids.len();
        }
        self.chunks.retain(|chunk| !chunk.ids.is_empty());
        self.len = kept;
    }

    /// Every event with its id, oldest first (`.rev()` for newest first).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&EventId, &Event)> {
        self.chunks.iter().flat_map(|chunk| chunk.ids.iter().zip(chunk.events.iter()))
    }

    /// Every event, oldest first.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.chunks.iter().flat_map(|chunk| chunk.events.iter())
    }

    /// Every id, oldest first.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &EventId> {
        self.chunks.iter().flat_map(|chunk| chunk.ids.iter())
    }

    /// Events with an id below `before` (all when `None`), newest first; finding where to start
    /// is a binary search, so a page deep in the past costs no more than the first.
    pub fn newest_before(&self, before: Option<EventId>) -> impl Iterator<Item = (&EventId, &Event)> {
        let (whole, part) = match before {
            None => (self.chunks.len(), 0),
            Some(before) => match self.chunk_of(&before) {
                None => (0, 0),
                Some(chunk) => (chunk, self.chunks[chunk].ids.partition_point(|event_id| *event_id < before)),
            },
        };
        let partial = self
            .chunks
            .get(whole)
            .map(|chunk| chunk.ids[..part].iter().zip(chunk.events[..part].iter()).rev())
            .into_iter()
            .flatten();
        let earlier =
            self.chunks.range(..whole).rev().flat_map(|chunk| chunk.ids.iter().zip(chunk.events.iter()).rev());
        partial.chain(earlier)
    }
}

impl std::ops::Index<&EventId> for EventTable {
    type Output = Event;

    /// The event of this id; a missing one is a programmer's error (tests only index).
    #[allow(clippy::panic)]
    fn index(&self, event_id: &EventId) -> &Event {
        match self.get(event_id) {
            Some(event) => event,
            None => panic!("no event {event_id}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::state::EventStatus;

    fn event(tag: u32) -> Event {
        Event {
            lsn: u64::from(tag),
            position: kapsel_wal::Position::default(),
            queued_lsn: 0,
            detail: None,
            endpoint: 0,
            attempts: tag,
            budget_used: 0,
            payload_bytes: 0,
            status: EventStatus::Pending,
            in_flight: false,
            delivery: false,
            event_type: 0,
            channel: 0,
        }
    }

    proptest! {
        // The table must behave exactly like an ordered map under any mix of appends, inserts in
        // the middle, removals and retains, or events get lost or found twice.
        #[test]
        fn behaves_like_an_ordered_map(operations in prop::collection::vec((0u8..4, 0u64..2_000), 1..1_500)) {
            let mut table = EventTable::default();
            let mut model = BTreeMap::new();
            let mut next = 1_000u64;
            for (kind, value) in operations {
                match kind {
                    0 => {
                        next += 1 + value % 3;
                        let id = EventId(u128::from(next));
                        prop_assert_eq!(table.insert(id, event(next as u32)).is_some(), model.insert(id, next as u32).is_some());
                    }
                    1 => {
                        let id = EventId(u128::from(value));
                        prop_assert_eq!(table.insert(id, event(value as u32)).is_some(), model.insert(id, value as u32).is_some());
                    }
                    2 => {
                        let id = EventId(u128::from(value % (next + 1)));
                        prop_assert_eq!(table.remove(&id).map(|event| event.attempts), model.remove(&id));
                    }
                    _ => {
                        let cut = value % 7;
                        table.retain(|id, _| id.0 as u64 % 7 != cut);
                        model.retain(|id, _| id.0 as u64 % 7 != cut);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            let listed: Vec<(EventId, u32)> = table.iter().map(|(id, event)| (*id, event.attempts)).collect();
            let expected: Vec<(EventId, u32)> = model.iter().map(|(id, tag)| (*id, *tag)).collect();
            prop_assert_eq!(listed, expected);
            for (id, tag) in &model {
                prop_assert_eq!(table.get(id).map(|event| event.attempts), Some(*tag));
            }
            let cursor = model.keys().nth(model.len() / 2).copied();
            let newest: Vec<EventId> = table.newest_before(cursor).map(|(id, _)| *id).collect();
            let expected: Vec<EventId> = model.keys().rev().filter(|id| cursor.is_none_or(|cursor| **id < cursor)).copied().collect();
            prop_assert_eq!(newest, expected);
            prop_assert!(table.chunks.iter().all(|chunk| !chunk.ids.is_empty() && chunk.ids.len() <= CHUNK_EVENTS_MAX));
        }
    }
}
