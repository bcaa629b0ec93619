//! The rooms one connection follows, with their cursors.

use std::sync::Arc;

use crate::hub::RoomFlags;
use crate::protocol::{EventId, RoomName};

/// One followed room's delivery state.
pub struct RoomState {
    /// Last event delivered (or the position the client is complete up to).
    pub cursor: EventId,
    /// Set by the hub (outbox full, store lost data) or by the session
    /// (discontinuity).
    pub flags: Arc<RoomFlags>,
    /// The position of the last gap told, while nothing was delivered
    /// since: one loss seen twice (by the feed, then in the history) is
    /// told once.
    pub told: Option<EventId>,
    /// Events the next history read asks for (see `page_limit`).
    pub read_limit: usize,
    /// A catch-up is under way, a page at a time.
    pub paging: bool,
    /// The subscriber asked for the room's state.
    pub state: bool,
    /// A state frame is owed (after a gap).
    pub state_due: bool,
}

impl RoomState {
    /// A room followed from `cursor`, reading history `read_limit` events at a time.
    pub fn new(cursor: EventId, flags: Arc<RoomFlags>, read_limit: usize) -> Self {
        RoomState { cursor, flags, told: None, read_limit, paging: false, state: false, state_due: false }
    }
}

/// A connection's rooms. Most connections follow one room or a few, and
/// there is one of these per connection, so a plain vector (searched in
/// order) beats a hash map in memory and, at these sizes, in speed.
#[derive(Default)]
pub struct Rooms {
    entries: Vec<(RoomName, RoomState)>,
}

impl Rooms {
    fn position(&self, room: &RoomName) -> Option<usize> {
        self.entries.iter().position(|(name, _)| name == room)
    }

    /// Whether `room` is followed.
    pub fn contains(&self, room: &RoomName) -> bool {
        self.position(room).is_some()
    }

    /// Number of rooms followed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no room is followed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Follows `room` (replacing its state if it was already followed).
    pub fn insert(&mut self, room: RoomName, state: RoomState) {
        match self.position(&room) {
            Some(i) => self.entries[i].1 = state,
            None => {
                self.entries.reserve_exact(1);
                self.entries.push((room, state));
            }
        }
    }

    /// Stops following `room`, returning its state.
    pub fn remove(&mut self, room: &RoomName) -> Option<RoomState> {
        self.position(room).map(|i| self.entries.swap_remove(i).1)
    }

    /// `room`'s state.
    pub fn get(&self, room: &RoomName) -> Option<&RoomState> {
        self.position(room).map(|i| &self.entries[i].1)
    }

    /// `room`'s state, to update.
    pub fn get_mut(&mut self, room: &RoomName) -> Option<&mut RoomState> {
        self.position(room).map(|i| &mut self.entries[i].1)
    }

    /// Every followed room with its state.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomName, &RoomState)> {
        self.entries.iter().map(|(name, state)| (name, state))
    }

    /// Every followed room with its state, to update.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&RoomName, &mut RoomState)> {
        self.entries.iter_mut().map(|(name, state)| (&*name, state))
    }

    /// Every followed room's name, consuming the set.
    pub fn into_names(self) -> impl Iterator<Item = RoomName> {
        self.entries.into_iter().map(|(name, _)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ms: u64) -> RoomState {
        RoomState::new(EventId::new(ms, 0), Arc::default(), 1)
    }

    #[test]
    fn insert_get_remove() {
        let (a, b) = (RoomName::parse("a").unwrap(), RoomName::parse("b").unwrap());
        let mut rooms = Rooms::default();
        rooms.insert(a.clone(), state(1));
        rooms.insert(b.clone(), state(2));
        rooms.insert(a.clone(), state(3));
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms.get(&a).map(|s| s.cursor.ms), Some(3));
        rooms.get_mut(&b).unwrap().cursor = EventId::new(9, 0);
        assert_eq!(rooms.remove(&b).map(|s| s.cursor.ms), Some(9));
        assert!(!rooms.contains(&b) && rooms.contains(&a));
        assert!(!rooms.is_empty());
        assert_eq!(rooms.into_names().collect::<Vec<_>>(), vec![a]);
    }
}
