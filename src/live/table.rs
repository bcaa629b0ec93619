//! `AudienceTable`: what this node knows of other nodes' counts, for the
//! rooms its own viewers watch the audience of.

use std::collections::{HashMap, HashSet};

use crate::protocol::RoomName;
use crate::store::live_sum;

/// Per watched room, every node's last reported local count.
#[derive(Debug, Default)]
pub(super) struct AudienceTable {
    rooms: HashMap<RoomName, HashMap<String, u64>>,
}

impl AudienceTable {
    /// Forgets rooms no longer watched here; returns the watched rooms the
    /// table does not hold yet (to load from the store).
    pub(super) fn retain_watched(&mut self, watched: &[RoomName]) -> Vec<RoomName> {
        let wanted: HashSet<&RoomName> = watched.iter().collect();
        self.rooms.retain(|room, _| wanted.contains(room));
        watched.iter().filter(|room| !self.rooms.contains_key(*room)).cloned().collect()
    }

    /// Forgets everything (the store may have lost or missed counts).
    pub(super) fn clear(&mut self) {
        self.rooms.clear();
    }

    /// Sets a room's counts as loaded from the store.
    pub(super) fn load(&mut self, room: RoomName, counts: HashMap<String, u64>) {
        self.rooms.insert(room, counts);
    }

    /// Applies one node's new count for a room the table holds.
    pub(super) fn apply(&mut self, node: &str, room: &RoomName, count: u64) {
        if let Some(counts) = self.rooms.get_mut(room) {
            if count == 0 {
                counts.remove(node);
            } else {
                counts.insert(node.to_owned(), count);
            }
        }
    }

    /// The room's audience over the nodes alive now.
    pub(super) fn sum(&self, room: &RoomName, live: &HashSet<String>) -> u64 {
        self.rooms.get(room).map_or(0, |counts| live_sum(counts, live))
    }

    /// The rooms held.
    pub(super) fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_live_nodes_of_watched_rooms() {
        let room = RoomName::parse("r").unwrap();
        let mut table = AudienceTable::default();
        assert_eq!(table.retain_watched(std::slice::from_ref(&room)), vec![room.clone()]);
        table.load(room.clone(), HashMap::from([("a".to_owned(), 3), ("b".to_owned(), 2)]));
        table.apply("c", &room, 4);
        table.apply("a", &room, 0);
        let live: HashSet<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(table.sum(&room, &live), 6);
        let without_c: HashSet<String> = ["a", "b"].map(String::from).into();
        assert_eq!(table.sum(&room, &without_c), 2, "a dead node's viewers do not count");
        assert!(table.retain_watched(&[]).is_empty());
        assert_eq!(table.sum(&room, &live), 0);
    }
}
