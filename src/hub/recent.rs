//! What a node keeps of a room's newest events and current state, so a
//! crowd joining at once is answered from memory: one store read per room
//! and node, not one per viewer.
//!
//! Both are kept in exact step with the feed (they change under the same
//! lock as the room's `last`), so a joiner served from them sees the same
//! events, in the same order, as one served from the store.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::protocol::{Event, EventId, Op, OpKind, Shown, StateKey};
use crate::store::{Page, Position, Snapshot};

/// Most events kept per room (the largest rewind).
pub const MAX_RECENT_EVENTS: usize = 1000;
/// Most payload bytes kept per room: rooms of large events keep fewer.
pub const MAX_RECENT_BYTES: usize = 1024 * 1024;
/// Events kept once a resume of the room had to go to the store, so the
/// next ones (a resume storm) find them here.
pub const RESUME_KEEP: usize = 128;

/// A room's newest events, as one unbroken chain ending at the room's last
/// delivered event.
#[derive(Debug, Default)]
pub struct Recent {
    events: VecDeque<Event>,
    bytes: usize,
    /// Events to keep (grows with what joiners ask for).
    want: usize,
    /// `events` holds every kept event back to the start of the chain
    /// (nothing older continues them): a rewind of more is answered with all.
    complete: bool,
}

impl Recent {
    /// Asks to keep at least `n` events from now on.
    pub fn want(&mut self, n: usize) {
        self.want = self.want.max(n.min(MAX_RECENT_EVENTS));
    }

    /// How many events it is asked to keep.
    pub fn wanted(&self) -> usize {
        self.want
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets everything (the store may have lost events).
    pub fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
        self.complete = false;
    }

    /// Takes the feed's next run (consecutive events after `last`, the
    /// room's previous end).
    pub fn push(&mut self, last: Option<EventId>, run: &[Event]) {
        if self.want == 0 || run.is_empty() {
            return;
        }
        let Some(first) = run.first() else { return };
        let end = self.events.back().map(|e| e.id).or(last);
        if end != Some(first.prev) {
            // Not the chain it holds (or nothing known to hold): start over.
            self.clear();
        }
        for event in run {
            self.bytes += event.data.len();
            self.events.push_back(event.clone());
        }
        self.trim();
    }

    /// Applies a moderator's operation (the feed just delivered it) to the
    /// events held: the target shows its new data, or loses it with its edits.
    pub fn moderate(&mut self, op: Op, data: &Bytes) {
        for event in self.events.iter_mut() {
            let target = event.id == op.target && event.op.is_none();
            let edit_of_target = event.op.is_some_and(|o| o.kind == OpKind::Edit && o.target == op.target);
            let (new, shown) = match op.kind {
                OpKind::Edit if target => (data.clone(), Shown::Edited),
                OpKind::Delete if target || edit_of_target => (Bytes::new(), Shown::Deleted),
                _ => continue,
            };
            self.bytes = self.bytes - event.data.len() + new.len();
            event.data = new;
            event.shown = shown;
        }
    }

    fn trim(&mut self) {
        while self.events.len() > self.want || (self.bytes > MAX_RECENT_BYTES && self.events.len() > 1) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.data.len();
                self.complete = false;
            }
        }
    }

    /// Places events read from the store (oldest first, the newest kept at
    /// read time; `all_kept` when no older ones are) before what it holds,
    /// where their chain meets it. `last` is the room's end as the feed
    /// knows it.
    pub fn backfill(&mut self, mut fetched: Vec<Event>, all_kept: bool, last: EventId) {
        // Where the store's events must end to continue what is held.
        let meet = self.events.front().map(|e| e.prev).unwrap_or(last);
        // The read saw up to the meeting point (else it is older than what
        // is held, and says nothing of the events between).
        let reached = fetched.last().map_or(all_kept, |e| e.id >= meet);
        fetched.retain(|e| e.id <= meet);
        if fetched.last().map(|e| e.id) != Some(meet) {
            // Nothing kept continues what is held (the chain starts here,
            // after a break or with the room), or the read did not reach.
            if reached {
                self.complete = true;
            }
            return;
        }
        // Cut at the newest break: older events do not continue these.
        let start = fetched.windows(2).rposition(|w| w[1].prev != w[0].id).map_or(0, |i| i + 1);
        let broke = start > 0;
        for event in fetched.drain(start..).rev() {
            self.bytes += event.data.len();
            self.events.push_front(event);
        }
        self.complete = all_kept || broke;
        self.trim();
    }

    /// Where a rewind of `n` events starts, when it can be told from here.
    pub fn rewind(&self, n: usize, last: EventId) -> Option<Position> {
        let len = self.events.len();
        if len >= n {
            return Some(Position::After(self.events[len - n].prev));
        }
        if self.complete {
            return Some(Position::After(self.events.front().map_or(last, |e| e.prev)));
        }
        None
    }

    /// The page a history read from `from` would get, when every event it
    /// needs is held: events after `from` (at most `limit`, at most
    /// `bytes` of payload past the first), and the room's end `last`.
    pub fn page(&self, from: Position, limit: usize, bytes: usize, last: EventId) -> Option<Page> {
        let start = match from {
            Position::After(x) if x == last => self.events.len(),
            Position::After(x) => {
                let i = self.events.partition_point(|e| e.id <= x);
                if self.events.get(i)?.prev != x {
                    return None;
                }
                i
            }
            Position::Oldest if self.complete => 0,
            Position::Oldest => return None,
        };
        let mut events = Vec::new();
        let mut size = 0;
        for event in self.events.iter().skip(start).take(limit) {
            if !events.is_empty() && size + event.data.len() > bytes {
                break;
            }
            size += event.data.len();
            events.push(event.clone());
        }
        let more = start + events.len() < self.events.len();
        Some(Page { events, gap: false, tail: last, more })
    }
}

/// A room's current state as the node follows it: each key's latest event,
/// as of `position`.
#[derive(Clone, Debug)]
pub struct State {
    /// The room position the values reflect.
    pub position: EventId,
    /// Each key's latest event.
    pub values: BTreeMap<StateKey, Event>,
}

impl From<Snapshot> for State {
    fn from(s: Snapshot) -> Self {
        State { position: s.position, values: s.values.into_iter().collect() }
    }
}

impl State {
    /// Applies the feed's next run. Returns false when the run does not
    /// continue the position (events were missed): the state must be read
    /// again.
    pub fn apply(&mut self, run: &[Event]) -> bool {
        for event in run {
            if event.id <= self.position {
                continue;
            }
            if event.prev != self.position {
                return false;
            }
            if let Some(key) = &event.key {
                self.values.insert(key.clone(), event.clone());
            }
            if let Some(op) = event.op {
                // A value that was the target follows it.
                match op.kind {
                    OpKind::Edit => {
                        for value in self.values.values_mut().filter(|v| v.id == op.target) {
                            value.data = event.data.clone();
                            value.shown = Shown::Edited;
                        }
                    }
                    OpKind::Delete => self.values.retain(|_, v| v.id != op.target),
                }
            }
            self.position = event.id;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(from: u64, to: u64) -> Vec<Event> {
        (from..=to)
            .map(|i| Event {
                id: EventId::new(i, 0),
                prev: EventId::new(i - 1, 0),
                data: Bytes::from(i.to_string()),
                ..Event::default()
            })
            .collect()
    }

    fn id(i: u64) -> EventId {
        EventId::new(i, 0)
    }

    #[test]
    fn keeps_what_is_wanted_and_answers_rewinds_and_pages() {
        let mut recent = Recent::default();
        recent.push(Some(id(0)), &chain(1, 5));
        assert_eq!(recent.rewind(1, id(5)), None, "nothing is kept until someone asks");
        recent.want(3);
        recent.push(Some(id(5)), &chain(6, 10));
        assert_eq!(recent.rewind(3, id(10)), Some(Position::After(id(7))));
        assert_eq!(recent.rewind(4, id(10)), None, "older events are in the store only");
        let page = recent.page(Position::After(id(8)), 10, usize::MAX, id(10)).unwrap();
        assert_eq!(page.events, chain(9, 10));
        assert!(!page.more && !page.gap);
        assert_eq!(recent.page(Position::After(id(10)), 10, usize::MAX, id(10)).unwrap().events, vec![]);
        assert_eq!(recent.page(Position::After(id(3)), 10, usize::MAX, id(10)), None);
        // A run that does not continue the chain starts it over.
        recent.push(Some(id(10)), &chain(20, 20)[..]);
        assert_eq!(recent.rewind(2, id(20)), None);
    }

    #[test]
    fn a_backfill_meets_the_chain_or_is_dropped() {
        let mut recent = Recent::default();
        recent.want(10);
        recent.push(Some(id(4)), &chain(5, 6));
        // The store's newest events, read a moment later: 1..=7.
        recent.backfill(chain(1, 7), true, id(6));
        assert_eq!(recent.rewind(10, id(6)), Some(Position::After(id(0))), "all kept: a rewind takes all");
        let page = recent.page(Position::Oldest, 100, usize::MAX, id(6)).unwrap();
        assert_eq!(page.events, chain(1, 6));
        // A read that does not reach what is held is not used.
        let mut other = Recent::default();
        other.want(10);
        other.push(Some(id(9)), &chain(10, 11));
        other.backfill(chain(1, 5), true, id(11));
        assert_eq!(other.rewind(3, id(11)), None);
    }

    #[test]
    fn payload_bytes_are_bounded() {
        let mut recent = Recent::default();
        recent.want(MAX_RECENT_EVENTS);
        let big: Vec<Event> = chain(1, 40)
            .into_iter()
            .map(|mut e| {
                e.data = Bytes::from(vec![b'1'; 60_000]);
                e
            })
            .collect();
        recent.push(Some(id(0)), &big);
        assert!(recent.bytes() <= MAX_RECENT_BYTES);
        assert_eq!(recent.rewind(18, id(40)), None, "17 events of 60 KB fill the bound");
    }

    #[test]
    fn state_follows_the_chain() {
        let key = StateKey::parse("score").unwrap();
        let mut state = State { position: id(2), values: BTreeMap::new() };
        let mut run = chain(1, 4);
        run[3].key = Some(key.clone());
        assert!(state.apply(&run));
        assert_eq!(state.position, id(4));
        assert_eq!(state.values[&key].id, id(4));
        assert!(!state.apply(&chain(9, 9)), "a hole means the state must be read again");
    }
}
