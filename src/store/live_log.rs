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

/// One node's news: changed audience counts, or one reaction window.
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
}

/// Where a reader of the live notes stands (opaque to callers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoteCursor(pub(crate) String);

/// Notes kept in the shared log: far more than nodes write between two
/// reads (each node writes at most a few per second).
pub const NOTES_KEPT: usize = 10_000;

/// Notes read per call, so one read stays small.
pub const NOTES_PER_READ: usize = 1_000;

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
