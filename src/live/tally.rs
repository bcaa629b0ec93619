//! `Tally`: reactions counted per room and key over one window, bounded.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::{ReactionKey, RoomName};

/// Distinct reaction keys one room may collect per window and node; more
/// are dropped (and counted): a flood of invented keys must not grow
/// memory or the frames every viewer receives.
pub const MAX_KEYS_PER_WINDOW: usize = 32;

/// Reactions per room and key, as counted so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    rooms: HashMap<RoomName, BTreeMap<ReactionKey, u64>>,
}

impl Tally {
    /// Counts one reaction; `false` (and nothing counted) when the room's
    /// distinct keys are at [`MAX_KEYS_PER_WINDOW`] and `key` is new.
    pub fn add(&mut self, room: &RoomName, key: &ReactionKey) -> bool {
        self.add_n(room, key, 1)
    }

    /// Counts `n` reactions (a node's window being combined); the same bound.
    pub fn add_n(&mut self, room: &RoomName, key: &ReactionKey, n: u64) -> bool {
        let keys = match self.rooms.get_mut(room) {
            Some(keys) => keys,
            None => self.rooms.entry(room.clone()).or_default(),
        };
        if let Some(count) = keys.get_mut(key) {
            *count += n;
            return true;
        }
        if keys.len() >= MAX_KEYS_PER_WINDOW {
            return false;
        }
        keys.insert(key.clone(), n);
        true
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The counts, room by room.
    pub fn into_rooms(self) -> impl Iterator<Item = (RoomName, BTreeMap<ReactionKey, u64>)> {
        self.rooms.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_key_and_bounds_distinct_keys() {
        let room = RoomName::parse("r").unwrap();
        let mut tally = Tally::default();
        let clap = ReactionKey::parse("clap").unwrap();
        assert!(tally.add(&room, &clap));
        assert!(tally.add_n(&room, &clap, 4));
        for i in 1..MAX_KEYS_PER_WINDOW {
            assert!(tally.add(&room, &ReactionKey::parse(&format!("k{i}")).unwrap()));
        }
        assert!(!tally.add(&room, &ReactionKey::parse("one-too-many").unwrap()));
        assert!(tally.add(&room, &clap), "known keys still count");
        let rooms: Vec<_> = tally.into_rooms().collect();
        assert_eq!(rooms[0].1[&clap], 6);
        assert_eq!(rooms[0].1.len(), MAX_KEYS_PER_WINDOW);
    }
}
