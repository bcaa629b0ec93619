//! Live notes: what nodes tell each other about their audiences and
//! reactions, through one short shared log in the store (not room history).
//!
//! A node appends a note only when it has something to say: its counts for
//! the rooms whose local audience changed, or one window of reactions. Every
//! node reads the log from where it left off, so each note is read once by
//! each node and per-room work follows change, never the number of rooms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
