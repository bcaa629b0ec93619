//! Room rules: who is banned from a room until when, and the room's
//! settings (slow mode). Kept in the store, so every node reads the same;
//! nodes cache them and hear of changes through the live log.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::protocol::RoomName;

/// A room's settings, as moderators set them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Each publisher (neither the API key nor a moderator) may publish
    /// once per this many milliseconds; 0: no slow mode.
    #[serde(default)]
    pub slow_mode_ms: u64,
}

/// Everything a node needs to apply a room's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomRules {
    /// Banned subjects and when each ban ends (ms since the epoch). Bans
    /// that ended may still be listed; readers compare with the clock.
    pub bans: BTreeMap<String, u64>,
    /// The room's settings.
    pub settings: RoomSettings,
}

impl RoomRules {
    /// When `sub`'s ban of this room ends, if it is banned at `now_ms`.
    pub fn banned_until(&self, sub: &str, now_ms: u64) -> Option<u64> {
        self.bans.get(sub).copied().filter(|until| *until > now_ms)
    }
}

/// Room rules in the store.
#[async_trait]
pub trait Rules: Send + Sync + 'static {
    /// `room`'s bans and settings.
    async fn room_rules(&self, room: &RoomName) -> Result<RoomRules, StoreError>;

    /// Bans `sub` from `room` until `until_ms` (ms since the epoch),
    /// replacing an earlier ban of it. Bans that ended are dropped.
    async fn ban(&self, room: &RoomName, sub: &str, until_ms: u64) -> Result<(), StoreError>;

    /// Lifts `sub`'s ban of `room`; whether there was one.
    async fn unban(&self, room: &RoomName, sub: &str) -> Result<bool, StoreError>;

    /// Replaces `room`'s settings.
    async fn set_settings(&self, room: &RoomName, settings: RoomSettings) -> Result<(), StoreError>;
}
