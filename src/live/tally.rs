//! `Tally`: reactions counted per room and key over one window, bounded,
//! and the keys that go out: a room's most popular first. Popular means
//! sent by the most viewers, then the most often: one connection repeating
//! an invented key cannot outrank a key many viewers send.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::{ReactionKey, RoomName};

/// Distinct reaction keys a room's `reactions` frame (and a node's note)
/// carries per window: the most counted, so a flood of invented keys can
/// neither grow the frames every viewer receives nor push out the keys
/// real viewers send.
pub const MAX_KEYS_PER_WINDOW: usize = 32;

/// Distinct keys counted per room and window before the rest are dropped
/// (and counted): room enough for a flood of junk beside every honest key,
/// with bounded memory.
pub const MAX_KEYS_TRACKED: usize = 1024;

/// One key's reactions in a window: how many, and from how many viewers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Reactions.
    pub n: u64,
    /// Viewers (connections) that sent them, as far as known.
    pub reactors: u64,
}

/// Reactions per room and key, as counted so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    rooms: HashMap<RoomName, BTreeMap<ReactionKey, Count>>,
}

/// A room's keys that go out, most popular first is not kept: by key.
pub type Top = BTreeMap<ReactionKey, Count>;

impl Tally {
    /// Counts one reaction (`new_reactor`: the first with this key from its
    /// viewer lately); `false` (and nothing counted) when the room already
    /// tracks [`MAX_KEYS_TRACKED`] keys and `key` is new.
    pub fn add(&mut self, room: &RoomName, key: &ReactionKey, new_reactor: bool) -> bool {
        self.add_n(room, key, Count { n: 1, reactors: u64::from(new_reactor) })
    }

    /// Counts a node's window of reactions being combined; the same bound.
    pub fn add_n(&mut self, room: &RoomName, key: &ReactionKey, add: Count) -> bool {
        let keys = match self.rooms.get_mut(room) {
            Some(keys) => keys,
            None => self.rooms.entry(room.clone()).or_default(),
        };
        if let Some(count) = keys.get_mut(key) {
            count.n += add.n;
            count.reactors += add.reactors;
            return true;
        }
        if keys.len() >= MAX_KEYS_TRACKED {
            return false;
        }
        keys.insert(key.clone(), add);
        true
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Each room's [`MAX_KEYS_PER_WINDOW`] most popular keys (by viewers,
    /// then reactions, then the keys' order: every node that sums the same
    /// counts picks the same keys), and how many reactions the rest held.
    pub fn into_top(self) -> (Vec<(RoomName, Top)>, u64) {
        let mut dropped = 0;
        let rooms = self
            .rooms
            .into_iter()
            .map(|(room, keys)| {
                let mut ranked: Vec<(ReactionKey, Count)> = keys.into_iter().collect();
                ranked.sort_by(|(ka, a), (kb, b)| (b.reactors, b.n).cmp(&(a.reactors, a.n)).then_with(|| ka.cmp(kb)));
                dropped += ranked.iter().skip(MAX_KEYS_PER_WINDOW).map(|(_, c)| c.n).sum::<u64>();
                ranked.truncate(MAX_KEYS_PER_WINDOW);
                (room, ranked.into_iter().collect())
            })
            .collect();
        (rooms, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> ReactionKey {
        ReactionKey::parse(k).unwrap()
    }

    #[test]
    fn keys_many_viewers_send_go_out_first_whatever_the_junk() {
        let room = RoomName::parse("r").unwrap();
        let mut tally = Tally::default();
        // A flood of junk keys first, each from one connection, sent often.
        for i in 0..200 {
            for n in 0..10 {
                assert!(tally.add(&room, &key(&format!("junk{i}")), n == 0));
            }
        }
        // Then the honest ones: three viewers, two.
        for _ in 0..3 {
            tally.add(&room, &key("🔥"), true);
        }
        tally.add(&room, &key("👏"), true);
        tally.add(&room, &key("👏"), true);
        let (rooms, dropped) = tally.clone().into_top();
        let keys = &rooms[0].1;
        assert_eq!(keys.len(), MAX_KEYS_PER_WINDOW);
        assert_eq!((keys[&key("🔥")].n, keys[&key("👏")].n), (3, 2), "honest keys are counted exactly");
        assert_eq!(dropped, (200 - (MAX_KEYS_PER_WINDOW as u64 - 2)) * 10);
        // The same counts in another order pick the same keys.
        let mut again = Tally::default();
        again.add_n(&room, &key("👏"), Count { n: 2, reactors: 2 });
        again.add_n(&room, &key("🔥"), Count { n: 3, reactors: 3 });
        for i in (0..200).rev() {
            again.add_n(&room, &key(&format!("junk{i}")), Count { n: 10, reactors: 1 });
        }
        assert_eq!(again.into_top().0, rooms);
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let room = RoomName::parse("r").unwrap();
        let mut tally = Tally::default();
        for i in 0..MAX_KEYS_TRACKED {
            assert!(tally.add(&room, &key(&format!("k{i}")), true));
        }
        assert!(!tally.add(&room, &key("one-too-many"), true));
        assert!(tally.add(&room, &key("k0"), false), "known keys still count");
    }
}
