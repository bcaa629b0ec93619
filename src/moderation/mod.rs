//! Moderation: bans, room settings (slow mode) and disconnects, the same on
//! every node, and the publish hook that lets the application's backend
//! approve, rewrite or refuse a client's publish.
//!
//! Rules live in the store; each node caches a room's rules when it first
//! needs them and reads them again after [`RULES_FRESH`]. A moderator's
//! change is written to the store, then told to every node through the live
//! log (read four times a second), and acted on at once by the node that
//! took it: a banned subject's subscriptions end within a second on every
//! node, a disconnected subject's connections close.

pub mod hook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::auth::Grant;
use crate::hub::Hub;
use bytes::Bytes;

use crate::protocol::{EventId, OpKind, RoomName};
use crate::store::{LiveNote, RoomRules, RoomSettings, Signal, Store, StoreError};

/// How long a node trusts the rules it read (changes also arrive as notes).
pub const RULES_FRESH: Duration = Duration::from_secs(5);
/// Rooms whose rules are cached at once; past it, stale entries go.
const CACHED_ROOMS: usize = 65_536;
/// Longest ban a moderator may set (a year).
pub const MAX_BAN: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest slow-mode interval (an hour).
pub const MAX_SLOW_MODE_MS: u64 = 3_600_000;
/// Longest reason a disconnect may carry (a close frame's reason is at most
/// 123 bytes, and the node adds its own words).
pub const MAX_REASON: usize = 80;

use crate::clock::now_ms;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Cached {
    rules: Arc<RoomRules>,
    read_at: Instant,
}

/// The node's moderation: cached rules, and the moderators' actions.
pub struct Moderation {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    node: String,
    rooms: Mutex<HashMap<RoomName, Cached>>,
}

/// One current ban.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ban {
    /// The banned subject.
    pub sub: String,
    /// When it ends, ms since the epoch.
    pub until_ms: u64,
    /// Seconds left.
    pub expires_in: u64,
}

impl Moderation {
    /// Moderation over `store`, acting on `hub`'s connections; `node` names
    /// this node in the notes it writes.
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, node: String) -> Self {
        Moderation { store, hub, node, rooms: Mutex::default() }
    }

    /// `room`'s rules, from the cache while fresh.
    pub async fn rules(&self, room: &RoomName) -> Result<Arc<RoomRules>, StoreError> {
        if let Some(cached) = lock(&self.rooms).get(room).filter(|c| c.read_at.elapsed() < RULES_FRESH) {
            return Ok(cached.rules.clone());
        }
        let rules = Arc::new(self.store.room_rules(room).await?);
        let mut rooms = lock(&self.rooms);
        if rooms.len() >= CACHED_ROOMS {
            rooms.retain(|_, c| c.read_at.elapsed() < RULES_FRESH);
        }
        rooms.insert(room.clone(), Cached { rules: rules.clone(), read_at: Instant::now() });
        Ok(rules)
    }

    /// When `grant`'s ban of `room` ends, if it is banned there now. Only a
    /// token's subject can be banned, so other credentials cost no lookup.
    pub async fn banned_until(&self, room: &RoomName, grant: &Grant) -> Result<Option<u64>, StoreError> {
        let Some(sub) = grant.sub() else {
            return Ok(None);
        };
        Ok(self.rules(room).await?.banned_until(sub, now_ms()))
    }

    fn forget(&self, room: &str) {
        if let Ok(room) = RoomName::parse(room) {
            lock(&self.rooms).remove(&room);
        }
    }

    /// Tells every node (this one included) through the live log.
    async fn tell(&self, signal: Signal) -> Result<(), StoreError> {
        let note = LiveNote { node: self.node.clone(), moderation: vec![signal], ..LiveNote::default() };
        self.store.append_note(&note).await
    }

    /// Edits (new `data`, compact JSON) or deletes event `target` of
    /// `room`: the operation's own ID, or `None` when the room keeps no
    /// such event.
    pub async fn change(
        &self,
        room: &RoomName,
        target: EventId,
        kind: OpKind,
        data: Bytes,
    ) -> Result<Option<EventId>, StoreError> {
        let outcome = self.store.moderate(room, target, kind, data).await?;
        if let Some(id) = outcome.id() {
            metrics::counter!("roomcast_moderated_total", "op" => kind.as_str()).increment(1);
            info!(room = %room, target = %target, op = kind.as_str(), id = %id, "event moderated");
        }
        Ok(outcome.id())
    }

    /// Bans `sub` from `room` for `duration`; when the ban ends.
    pub async fn ban(&self, room: &RoomName, sub: &str, duration: Duration) -> Result<u64, StoreError> {
        let until_ms = now_ms() + duration.min(MAX_BAN).as_millis() as u64;
        self.store.ban(room, sub, until_ms).await?;
        let signal = Signal::Ban { room: room.to_string(), sub: sub.to_owned(), until_ms };
        self.apply(std::slice::from_ref(&signal));
        self.tell(signal).await?;
        Ok(until_ms)
    }

    /// Lifts `sub`'s ban of `room`; whether there was one.
    pub async fn unban(&self, room: &RoomName, sub: &str) -> Result<bool, StoreError> {
        let lifted = self.store.unban(room, sub).await?;
        let signal = Signal::Unban { room: room.to_string(), sub: sub.to_owned() };
        self.apply(std::slice::from_ref(&signal));
        self.tell(signal).await?;
        Ok(lifted)
    }

    /// `room`'s current bans, read from the store.
    pub async fn bans(&self, room: &RoomName) -> Result<Vec<Ban>, StoreError> {
        let now = now_ms();
        let rules = self.store.room_rules(room).await?;
        Ok(rules
            .bans
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(sub, until_ms)| Ban { sub, until_ms, expires_in: (until_ms - now).div_ceil(1000) })
            .collect())
    }

    /// Replaces `room`'s settings.
    pub async fn set_settings(&self, room: &RoomName, settings: RoomSettings) -> Result<(), StoreError> {
        self.store.set_settings(room, settings).await?;
        let signal = Signal::Settings { room: room.to_string() };
        self.apply(std::slice::from_ref(&signal));
        self.tell(signal).await
    }

    /// Closes every connection of `sub` on every node, saying `reason`.
    pub async fn disconnect(&self, sub: &str, reason: &str) -> Result<(), StoreError> {
        let signal = Signal::Disconnect { sub: sub.to_owned(), reason: reason.to_owned() };
        self.apply(std::slice::from_ref(&signal));
        self.tell(signal).await
    }

    /// Acts on moderators' signals (read from the live log, or just taken
    /// here): forgets cached rules, ends banned subscriptions, closes
    /// disconnected subjects' connections. Acting twice is harmless.
    pub fn apply(&self, signals: &[Signal]) {
        for signal in signals {
            match signal {
                Signal::Ban { room, sub, until_ms } => {
                    self.forget(room);
                    let Ok(room) = RoomName::parse(room) else { continue };
                    if *until_ms > now_ms() {
                        let ended = self.hub.ban(&room, sub);
                        if ended > 0 {
                            info!(room = %room, sub, ended, "banned subject's subscriptions ended");
                        }
                    }
                }
                Signal::Unban { room, .. } | Signal::Settings { room } => self.forget(room),
                Signal::Disconnect { sub, reason } => {
                    let closed = self.hub.kick(sub, reason);
                    if closed > 0 {
                        info!(sub, closed, "subject disconnected by a moderator");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;
    use crate::store::feed::Feed;
    use crate::store::memory::MemoryStore;
    use crate::store::{Rules, StoreOptions};

    #[tokio::test(start_paused = true)]
    async fn a_ban_holds_until_it_ends_and_rules_are_read_again_when_stale() {
        let options = StoreOptions {
            history: 10,
            room_ttl: Duration::from_secs(600),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 10,
        };
        let store = Arc::new(MemoryStore::new(options));
        let hub = Hub::new(Feed::unattended(store.clone()));
        let moderation = Moderation::new(store.clone(), hub, "n".into());
        let room = RoomName::parse("chat").unwrap();
        let token = |sub: &str| {
            Grant::Token(Claims {
                sub: Some(sub.into()),
                exp: u64::MAX,
                rooms: vec!["*".into()],
                publish: vec![],
                moderate: vec![],
                info: None,
            })
        };
        assert_eq!(moderation.banned_until(&room, &token("troll")).await.unwrap(), None);
        let until = moderation.ban(&room, "troll", Duration::from_secs(60)).await.unwrap();
        assert_eq!(moderation.banned_until(&room, &token("troll")).await.unwrap(), Some(until));
        assert_eq!(moderation.banned_until(&room, &token("fan")).await.unwrap(), None);
        assert_eq!(moderation.bans(&room).await.unwrap().len(), 1);
        // Another node's change reaches this one's cache once it is stale.
        store.unban(&room, "troll").await.unwrap();
        assert!(moderation.banned_until(&room, &token("troll")).await.unwrap().is_some(), "cached");
        tokio::time::advance(RULES_FRESH).await;
        assert_eq!(moderation.banned_until(&room, &token("troll")).await.unwrap(), None);
    }
}
