//! The live log: what nodes tell each other about their audiences and
//! reactions. Not room history: per-node counts that lapse with the node,
//! and one short shared log of notes.
//!
//! A node appends a note only when it has something to say: its counts for
//! the rooms whose local audience changed, or one window of reactions. Every
//! node reads the log from where it left off, so each note is read once by
//! each node and per-room work follows change, never the number of rooms.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::protocol::RoomName;

/// One node's news: changed audience counts, one reaction window, rooms
/// whose members changed, or moderation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNote {
    /// The node that wrote it.
    #[serde(rename = "n")]
    pub node: String,
    /// Its new local subscriber count per room (0: it has none left).
    #[serde(rename = "a", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audience: BTreeMap<String, u64>,
    /// Reactions it counted in one window, per room and key.
    #[serde(rename = "r", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, BTreeMap<String, u64>>,
    /// How many viewers sent each of those keys (a key missing here: as
    /// many as its reactions, as nodes that did not count viewers wrote).
    #[serde(rename = "p", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactors: BTreeMap<String, BTreeMap<String, u64>>,
    /// Moderation every node must act on (bans, settings, disconnects).
    #[serde(rename = "m", default, skip_serializing_if = "Vec::is_empty")]
    pub moderation: Vec<Signal>,
    /// Rooms whose members changed: nodes with presence watchers read on.
    #[serde(rename = "pm", default, skip_serializing_if = "Vec::is_empty")]
    pub presence: Vec<String>,
}

/// A moderator's action, told to every node through the live log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Signal {
    /// `sub` is banned from `room` until `until_ms`: its subscriptions there end.
    Ban {
        /// The room.
        room: String,
        /// The banned subject.
        sub: String,
        /// When the ban ends (ms since the epoch).
        until_ms: u64,
    },
    /// `sub`'s ban of `room` was lifted.
    Unban {
        /// The room.
        room: String,
        /// The subject.
        sub: String,
    },
    /// `room`'s settings changed: read them again.
    Settings {
        /// The room.
        room: String,
    },
    /// Every connection of `sub` is to be closed.
    Disconnect {
        /// The subject.
        sub: String,
        /// What the moderator said, for the close frame.
        reason: String,
    },
}

impl LiveNote {
    /// The note as stored: compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Cuts the note into notes of at most [`MAX_NOTE_BYTES`] each, room by
    /// room (a room's entry is never split); an entry too large for a note
    /// of its own is left out, which none of the node's own writes can be
    /// (32 keys of 32 bytes, a room name of 164).
    pub fn split(self) -> Vec<LiveNote> {
        let empty = || LiveNote { node: self.node.clone(), ..LiveNote::default() };
        let base = empty().to_json().len() + 16;
        let mut notes = vec![empty()];
        let mut size = base;
        let entry = |room: &str, json: usize| room.len() + json + 8;
        for (room, count) in &self.audience {
            let bytes = entry(room, count.to_string().len());
            if size + bytes > MAX_NOTE_BYTES {
                notes.push(empty());
                size = base;
            }
            size += bytes;
            if let Some(note) = notes.last_mut() {
                note.audience.insert(room.clone(), *count);
            }
        }
        for (room, keys) in &self.reactions {
            let reactors = self.reactors.get(room);
            let json = |v: &BTreeMap<String, u64>| serde_json::to_string(v).map_or(usize::MAX / 4, |j| j.len());
            let bytes = entry(room, json(keys)) + reactors.map_or(0, |r| entry(room, json(r)));
            if base + bytes > MAX_NOTE_BYTES {
                continue;
            }
            if size + bytes > MAX_NOTE_BYTES {
                notes.push(empty());
                size = base;
            }
            size += bytes;
            if let Some(note) = notes.last_mut() {
                note.reactions.insert(room.clone(), keys.clone());
                if let Some(reactors) = reactors {
                    note.reactors.insert(room.clone(), reactors.clone());
                }
            }
        }
        for room in &self.presence {
            let bytes = room.len() + 4;
            if size + bytes > MAX_NOTE_BYTES {
                notes.push(empty());
                size = base;
            }
            size += bytes;
            if let Some(note) = notes.last_mut() {
                note.presence.push(room.clone());
            }
        }
        notes.retain(|n| {
            !n.audience.is_empty() || !n.reactions.is_empty() || !n.moderation.is_empty() || !n.presence.is_empty()
        });
        notes
    }
}

/// Where a reader of the live notes stands (opaque to callers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoteCursor(pub(crate) String);

/// Notes kept in the shared log: far more than nodes write between two
/// reads (each node writes a few per second; readers read four times a
/// second). With [`MAX_NOTE_BYTES`], the log holds at most 32 MiB.
pub const NOTES_KEPT: usize = 2_000;

/// Bytes one note may hold, as stored JSON: a node's news is cut into notes
/// of at most this much ([`LiveNote::split`]), and a store refuses larger.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;

/// Notes read per call, so one read stays small.
pub const NOTES_PER_READ: usize = 1_000;

/// A node whose liveness lapsed this many liveness periods ago is forgotten
/// (with the default 6 s, after a minute): its entries are removed by
/// whoever notices, so a killed node leaves nothing behind for long.
pub const FORGET_AFTER_PERIODS: u32 = 10;

/// A room's audience: the counts of the nodes that are alive, summed. The
/// one place the rule "a node that stopped reporting stops counting" is
/// applied, by the stores and by the live task's own table alike.
pub fn live_sum(counts: &HashMap<String, u64>, live: &HashSet<String>) -> u64 {
    counts.iter().filter(|(node, _)| live.contains(*node)).map(|(_, n)| n).sum()
}

/// Per-node audience counts and the shared log of notes.
#[async_trait]
pub trait LiveLog: Send + Sync + 'static {
    /// Records this node's live subscriber counts for the rooms given (a
    /// count of 0 removes the node's entry) and marks the node alive for
    /// `presence_ttl`. Counts of a node that stops reporting stop counting
    /// once its liveness expires, so a crashed node's audience vanishes on
    /// its own, with no per-room refresh.
    async fn report_audience(&self, node: &str, counts: &[(RoomName, usize)]) -> Result<(), StoreError>;

    /// Each room's recorded count per node (live or not), in `rooms` order.
    async fn audience_by_node(&self, rooms: &[RoomName]) -> Result<Vec<HashMap<String, u64>>, StoreError>;

    /// The nodes whose liveness has not expired.
    async fn live_nodes(&self) -> Result<HashSet<String>, StoreError>;

    /// Appends a note to the live log every node reads.
    async fn append_note(&self, note: &LiveNote) -> Result<(), StoreError>;

    /// Notes after `after`, oldest first, with the cursor to read on from.
    /// `None` starts at the log's present end (returns no notes).
    async fn read_notes(&self, after: Option<&NoteCursor>) -> Result<(Vec<LiveNote>, NoteCursor), StoreError>;

    /// Live subscribers of `room` summed over all live nodes.
    async fn audience(&self, room: &RoomName) -> Result<usize, StoreError> {
        let live = self.live_nodes().await?;
        let by_node = self.audience_by_node(std::slice::from_ref(room)).await?;
        Ok(by_node.first().map_or(0, |counts| live_sum(counts, &live)) as usize)
    }
}
