//! The embedded in-memory store: one node, no Redis, same semantics.
//!
//! IDs come from the wall clock like Redis's (`ms-seq`, never going back),
//! trimming drops whole blocks like `MAXLEN ~` (so "at least N" holds, not
//! "exactly N"), and gap answers follow the rules in the contract.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod live_log;
mod presence;

use super::feed::{ChangeSource, Wake};
use super::{
    payload_fingerprint, AppendOptions, Appended, BackPage, EventLog, Incarnation, LiveNote, LossDetection, Page,
    Position, RoomRules, RoomSettings, Rules, Snapshot, StoreError, StoreOptions, IDEMPOTENCY_WINDOW,
};
use crate::protocol::{Event, EventId, IdempotencyKey, Meta, Op, OpKind, RoomName, Shown, StateKey};

/// Entries dropped together when trimming, like a Redis stream's macro node.
const TRIM_BLOCK: usize = 100;
/// How often expired rooms and audience reports are swept.
const JANITOR_EVERY: Duration = Duration::from_secs(1);

/// The embedded store. Cheap to clone; clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    changes: Arc<Changes>,
    options: StoreOptions,
    incarnation: Incarnation,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<RoomName, RoomLog>,
    /// room -> node -> count
    audience: HashMap<RoomName, HashMap<String, u64>>,
    /// node -> alive until
    nodes: HashMap<String, Instant>,
    /// The live log: (sequence, note), bounded by `NOTES_KEPT`.
    notes: VecDeque<(u64, LiveNote)>,
    /// The last note's sequence number.
    note_seq: u64,
    /// (room, idempotency key) -> (the ID it got, when, its payload's fingerprint)
    idempotent: HashMap<(RoomName, IdempotencyKey), (EventId, Instant, String)>,
    /// Each room's bans and settings.
    rules: HashMap<RoomName, RoomRules>,
    /// (room, publisher) -> when slow mode lets it publish again.
    slow: HashMap<(RoomName, String), Instant>,
    /// Members and webhook events.
    presence: presence::PresenceState,
}

struct RoomLog {
    events: VecDeque<Event>,
    /// The room's floor: the last position it handed out (its last event's
    /// ID, or an anchor). Outlives trimming and the history's expiry, so IDs
    /// never go back and a rebuilt history names it.
    floor: EventId,
    /// Last append (or anchor), for idle expiry.
    touched: Instant,
    /// Each state key's latest event; kept apart from the history (trimming
    /// leaves it), gone with the history.
    state: BTreeMap<StateKey, Event>,
}

impl RoomLog {
    /// The room's end: its newest kept event, else its floor.
    fn end(&self) -> EventId {
        self.events.back().map_or(self.floor, |e| e.id)
    }
}

/// Rooms appended to since the feed last looked, and a wake-up for it.
/// Bounded by the number of rooms.
#[derive(Default)]
struct Changes {
    dirty: Mutex<HashSet<RoomName>>,
    notify: Notify,
}

impl Wake for Changes {
    fn wake(&self) {
        self.notify.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated
    // in a way later readers would misread, so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use crate::clock::now_ms;

impl MemoryStore {
    /// An empty store.
    pub fn new(options: StoreOptions) -> Self {
        MemoryStore {
            inner: Arc::default(),
            changes: Arc::default(),
            options,
            incarnation: Incarnation { data: format!("{:016x}", rand::random::<u64>()), server: "embedded".to_owned() },
        }
    }

    /// Periodically drops idle rooms and stale audience reports.
    pub fn spawn_janitor(&self, shutdown: CancellationToken, tracker: &TaskTracker) {
        let store = self.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(JANITOR_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => store.expire(Instant::now()),
                }
            }
        });
    }

    fn expire(&self, now: Instant) {
        let mut inner = lock(&self.inner);
        let ttl = self.options.room_ttl;
        // History goes after the idle time; the floor, like Redis's floor
        // key, lives twice as long.
        inner.rooms.retain(|_, log| {
            let idle = now.duration_since(log.touched);
            if idle >= ttl {
                log.events.clear();
                log.state.clear();
            }
            idle < ttl * 2
        });
        inner.idempotent.retain(|_, (_, at, _)| now.duration_since(*at) < IDEMPOTENCY_WINDOW);
        inner.slow.retain(|_, until| *until > now);
        let wall = now_ms();
        for rules in inner.rules.values_mut() {
            rules.bans.retain(|_, until| *until > wall);
        }
        inner.rules.retain(|_, rules| !rules.bans.is_empty() || rules.settings != RoomSettings::default());
        // A node gone for a minute is forgotten, with its counts.
        let forget = self.options.presence_ttl * crate::store::live_log::FORGET_AFTER_PERIODS;
        inner.nodes.retain(|_, until| now.saturating_duration_since(*until) < forget);
        let Inner { audience, nodes, .. } = &mut *inner;
        audience.retain(|_, counts| {
            counts.retain(|node, _| nodes.contains_key(node));
            !counts.is_empty()
        });
    }

    /// Appends under the lock; returns the outcome.
    fn append_locked(&self, inner: &mut Inner, room: &RoomName, data: Bytes, options: AppendOptions<'_>) -> Appended {
        let now = Instant::now();
        let key = options.key;
        if let Some(slow) = options.slow.filter(|s| s.interval_ms > 0) {
            let entry = (room.clone(), slow.publisher.to_owned());
            if let Some(until) = inner.slow.get(&entry).filter(|until| **until > now) {
                return Appended::SlowMode { retry_after_ms: (*until - now).as_millis().max(1) as u64 };
            }
        }
        let log = inner.rooms.entry(room.clone()).or_insert_with(|| RoomLog {
            events: VecDeque::new(),
            floor: EventId::ZERO,
            touched: now,
            state: BTreeMap::new(),
        });
        if now.duration_since(log.touched) >= self.options.room_ttl {
            // Idle past its expiry: the history starts over, as an
            // expired Redis key would, above the floor.
            log.events.clear();
            log.state.clear();
        }
        if let Some(key) = key {
            if !log.state.contains_key(key) && log.state.len() >= self.options.max_state_keys {
                return Appended::TooManyKeys;
            }
        }
        let prev = log.end();
        let id = next_id(prev);
        let meta = (options.name.is_some() || options.skip.is_some())
            .then(|| Arc::new(Meta { name: options.name.cloned(), skip: options.skip.map(Arc::from) }));
        let event = Event { id, prev, data, key: key.cloned(), meta, ..Event::default() };
        if let Some(key) = key {
            log.state.insert(key.clone(), event.clone());
        }
        log.events.push_back(event);
        log.floor = id;
        log.touched = now;
        if let Some(slow) = options.slow.filter(|s| s.interval_ms > 0) {
            let until = now + Duration::from_millis(slow.interval_ms);
            inner.slow.insert((room.clone(), slow.publisher.to_owned()), until);
        }
        let history = self.options.history.max(1);
        if log.events.len() >= history + TRIM_BLOCK {
            let excess = log.events.len() - history;
            log.events.drain(..excess);
        }
        Appended::Stored(id)
    }

    /// Tells the feed `room` changed.
    fn changed(&self, room: &RoomName) {
        lock(&self.changes.dirty).insert(room.clone());
        self.changes.notify.notify_one();
    }

    /// The room's kept events and its end (`0-0` for a room never seen or
    /// long gone).
    fn view<'a>(&self, inner: &'a Inner, room: &RoomName) -> (Option<&'a VecDeque<Event>>, EventId) {
        let Some(log) = inner.rooms.get(room) else {
            return (None, EventId::ZERO);
        };
        let idle = log.touched.elapsed();
        if idle >= self.options.room_ttl * 2 {
            (None, EventId::ZERO)
        } else if idle >= self.options.room_ttl {
            (None, log.floor)
        } else {
            (Some(&log.events), log.end())
        }
    }
}

/// The ID after `end` on the wall clock: the time now, or just above `end`
/// when the clock has not passed it.
fn next_id(end: EventId) -> EventId {
    let ms = now_ms();
    if ms > end.ms {
        EventId::new(ms, 0)
    } else {
        EventId::new(end.ms, end.seq + 1)
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn append(&self, room: &RoomName, data: Bytes, options: AppendOptions<'_>) -> Result<Appended, StoreError> {
        let outcome = {
            let mut inner = lock(&self.inner);
            match options.idempotency {
                None => self.append_locked(&mut inner, room, data, options),
                Some(idempotency) => {
                    let entry = (room.clone(), idempotency.clone());
                    let print = payload_fingerprint(&data);
                    if let Some((id, _, first)) =
                        inner.idempotent.get(&entry).filter(|(_, at, _)| at.elapsed() < IDEMPOTENCY_WINDOW)
                    {
                        return Ok(if *first == print { Appended::Repeated(*id) } else { Appended::Conflict(*id) });
                    }
                    let outcome = self.append_locked(&mut inner, room, data, options);
                    if let Appended::Stored(id) = outcome {
                        inner.idempotent.insert(entry, (id, Instant::now(), print));
                    }
                    outcome
                }
            }
        };
        if matches!(outcome, Appended::Stored(_)) {
            self.changed(room);
        }
        Ok(outcome)
    }

    async fn moderate(
        &self,
        room: &RoomName,
        target: EventId,
        kind: OpKind,
        data: Bytes,
    ) -> Result<Appended, StoreError> {
        let outcome = {
            let mut inner = lock(&self.inner);
            let Some(log) = inner.rooms.get_mut(room).filter(|log| log.touched.elapsed() < self.options.room_ttl)
            else {
                return Ok(Appended::NotFound);
            };
            let Some(at) = log.events.iter().position(|e| e.id == target && e.op.is_none()) else {
                return Ok(Appended::NotFound);
            };
            if log.events[at].shown == Shown::Deleted {
                return Ok(Appended::NotFound);
            }
            let key = log.events[at].key.clone();
            match kind {
                OpKind::Edit => {
                    let event = &mut log.events[at];
                    event.data = data.clone();
                    event.shown = Shown::Edited;
                    if let Some(value) = key.as_ref().and_then(|k| log.state.get_mut(k)).filter(|v| v.id == target) {
                        value.data = data.clone();
                        value.shown = Shown::Edited;
                    }
                }
                OpKind::Delete => {
                    // The target and every edit of it lose their data.
                    for event in log.events.iter_mut() {
                        let edit_of_target = event.op.is_some_and(|op| op.kind == OpKind::Edit && op.target == target);
                        if event.id == target || edit_of_target {
                            event.data = Bytes::new();
                            event.shown = Shown::Deleted;
                        }
                    }
                    if let Some(k) = key.as_ref().filter(|k| log.state.get(*k).is_some_and(|v| v.id == target)) {
                        log.state.remove(k);
                    }
                }
            }
            let stored = if kind == OpKind::Delete { Bytes::new() } else { data };
            let op = Op { kind, target };
            match self.append_locked(&mut inner, room, stored, AppendOptions::default()) {
                Appended::Stored(id) => {
                    if let Some(event) = inner.rooms.get_mut(room).and_then(|log| log.events.back_mut()) {
                        event.op = Some(op);
                    }
                    Appended::Stored(id)
                }
                other => other,
            }
        };
        self.changed(room);
        Ok(outcome)
    }

    async fn recorded(&self, room: &RoomName, key: &IdempotencyKey) -> Result<Option<EventId>, StoreError> {
        let inner = lock(&self.inner);
        let entry = inner.idempotent.get(&(room.clone(), key.clone()));
        Ok(entry.filter(|(_, at, _)| at.elapsed() < IDEMPOTENCY_WINDOW).map(|(id, _, _)| *id))
    }

    async fn read_back(&self, room: &RoomName, before: Option<EventId>, limit: usize) -> Result<BackPage, StoreError> {
        let inner = lock(&self.inner);
        let Some(events) = self.view(&inner, room).0 else {
            return Ok(BackPage::default());
        };
        let end = match before {
            None => events.len(),
            Some(x) => events.partition_point(|e| e.id < x),
        };
        let above = before.and_then(|x| events.get(end).filter(|e| e.id == x)).map(|e| e.prev);
        let older: Vec<Event> = events.iter().take(end).rev().take(limit + 1).cloned().collect();
        Ok(BackPage::new(above, older, limit))
    }

    async fn state(&self, room: &RoomName) -> Result<Snapshot, StoreError> {
        let inner = lock(&self.inner);
        let (events, position) = self.view(&inner, room);
        let values = match (events, inner.rooms.get(room)) {
            (Some(_), Some(log)) => log.state.iter().map(|(k, e)| (k.clone(), e.clone())).collect(),
            _ => Vec::new(),
        };
        Ok(Snapshot { position, values })
    }

    async fn read(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError> {
        let inner = lock(&self.inner);
        let (events, tail) = self.view(&inner, room);
        let events: Vec<Event> = match (events, from) {
            (None, _) => Vec::new(),
            (Some(events), Position::Oldest) => events.iter().take(limit).cloned().collect(),
            (Some(events), Position::After(x)) => {
                let start = events.partition_point(|e| e.id <= x);
                events.iter().skip(start).take(limit).cloned().collect()
            }
        };
        Ok(Page::new(from, events, limit, tail))
    }

    async fn tail(&self, room: &RoomName) -> Result<EventId, StoreError> {
        Ok(self.view(&lock(&self.inner), room).1)
    }

    async fn anchor(&self, room: &RoomName) -> Result<EventId, StoreError> {
        let mut inner = lock(&self.inner);
        let end = self.view(&inner, room).1;
        if !end.is_zero() {
            return Ok(end);
        }
        let floor = next_id(inner.rooms.get(room).map_or(EventId::ZERO, |log| log.floor));
        let log = RoomLog { events: VecDeque::new(), floor, touched: Instant::now(), state: BTreeMap::new() };
        inner.rooms.insert(room.clone(), log);
        Ok(floor)
    }

    async fn read_many(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError> {
        let inner = lock(&self.inner);
        let mut out = Vec::new();
        for (room, after) in positions {
            let (Some(events), _) = self.view(&inner, room) else {
                continue;
            };
            let start = events.partition_point(|e| e.id <= *after);
            if start < events.len() {
                out.push((room.clone(), events.iter().skip(start).take(limit).cloned().collect()));
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn change_source(&self, _node: &str) -> Result<Box<dyn ChangeSource>, StoreError> {
        Ok(Box::new(MemoryChanges { changes: self.changes.clone() }))
    }
}

#[async_trait]
impl LossDetection for MemoryStore {
    async fn incarnations(&self, domains: &[usize]) -> Result<Vec<Incarnation>, StoreError> {
        // Data lives exactly as long as this process: one incarnation.
        Ok(domains.iter().map(|_| self.incarnation.clone()).collect())
    }

    fn connection_generation(&self) -> u64 {
        0
    }
}

#[async_trait]
impl Rules for MemoryStore {
    async fn room_rules(&self, room: &RoomName) -> Result<RoomRules, StoreError> {
        Ok(lock(&self.inner).rules.get(room).cloned().unwrap_or_default())
    }

    async fn ban(&self, room: &RoomName, sub: &str, until_ms: u64) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let rules = inner.rules.entry(room.clone()).or_default();
        let now = now_ms();
        rules.bans.retain(|_, until| *until > now);
        rules.bans.insert(sub.to_owned(), until_ms);
        Ok(())
    }

    async fn unban(&self, room: &RoomName, sub: &str) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        Ok(inner.rules.get_mut(room).is_some_and(|rules| rules.bans.remove(sub).is_some()))
    }

    async fn set_settings(&self, room: &RoomName, settings: RoomSettings) -> Result<(), StoreError> {
        lock(&self.inner).rules.entry(room.clone()).or_default().settings = settings;
        Ok(())
    }
}

/// The memory store's change source: the set of rooms appended to.
struct MemoryChanges {
    changes: Arc<Changes>,
}

#[async_trait]
impl ChangeSource for MemoryChanges {
    fn watch(&mut self, _room: &RoomName) {}

    fn unwatch(&mut self, _room: &RoomName) {}

    async fn prepare(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn wait(&mut self, timeout: Duration) -> Result<Vec<RoomName>, StoreError> {
        // `Notify` keeps one permit, so an append racing this call is not lost.
        let _ = tokio::time::timeout(timeout, self.changes.notify.notified()).await;
        Ok(lock(&self.changes.dirty).drain().collect())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.changes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expiry on a paused clock: history goes after the idle time, the
    /// floor after twice that.
    #[tokio::test(start_paused = true)]
    async fn history_expires_after_the_idle_time_and_the_floor_after_twice_that() {
        let ttl = Duration::from_secs(60);
        let store = MemoryStore::new(StoreOptions {
            history: 10,
            room_ttl: ttl,
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 10,
        });
        let room = RoomName::parse("r").unwrap();
        let id = store.append(&room, Bytes::from_static(b"1"), AppendOptions::default()).await.unwrap().id().unwrap();
        tokio::time::advance(ttl - Duration::from_secs(1)).await;
        assert_eq!(store.read(&room, Position::Oldest, 10).await.unwrap().events.len(), 1, "kept until the idle time");
        tokio::time::advance(Duration::from_secs(2)).await;
        store.expire(Instant::now());
        assert!(store.read(&room, Position::Oldest, 10).await.unwrap().events.is_empty(), "history gone");
        assert_eq!(store.tail(&room).await.unwrap(), id, "the floor stays");
        tokio::time::advance(ttl).await;
        store.expire(Instant::now());
        assert_eq!(store.tail(&room).await.unwrap(), EventId::ZERO, "then the floor goes too");
    }
}
