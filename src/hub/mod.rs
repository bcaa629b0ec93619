//! The hub: this node's registry of rooms with local subscribers.
//!
//! The feed hands each room's new events to [`Hub::deliver`], which wraps
//! them once in a [`Batch`] and offers it to every subscriber's bounded
//! outbox. A full outbox never blocks delivery: the subscriber is marked
//! lagged and catches up from the store on its own time.
//!
//! A room enters the registry with its first local subscriber (and the feed
//! starts following it from the room's anchor) and leaves it with its last.
//! Room-wide notices (audience, reactions) go out through [`Hub::offer`];
//! what they say is the live audience's business (`crate::live`).

mod batch;
mod notice;
pub mod outbox;
pub mod recent;

pub use batch::{Batch, Encoded};
pub use notice::{Audience, Notice};
pub use recent::State;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::outbox::Outbox;
use self::recent::{Recent, MAX_RECENT_EVENTS, RESUME_KEEP};
use crate::protocol::{frames, Event, EventId, RoomName, FRAME_BUDGET};
use crate::store::feed::{Feed, FeedSink};
use crate::store::{Page, Position, StoreError};

/// Payload bytes one page served from a room's recent events holds at most
/// (past its first event), like a page read from the store.
const PAGE_BYTES: usize = 1 << 20;
/// Local subscribers from which a room keeps its newest events for the
/// joiners and resumes after them: fewer are served from the store, since
/// the memory would cost more than the reads it saves.
const CROWD: usize = 8;
/// Times a join re-reads the state when the feed moved past the read.
const STATE_READS: usize = 3;

/// One connection's membership in one room, as the hub sees it.
#[derive(Clone)]
pub struct Subscriber {
    /// The connection's outbox (shared by all its rooms).
    pub outbox: Arc<Outbox>,
    /// Signals from the hub to the connection about this room.
    pub flags: Arc<RoomFlags>,
    /// Who presence shows for this subscription, when not the connection's
    /// subject (a Pusher presence channel's `user_id` and `user_info`).
    pub member: Option<Arc<(Arc<str>, Arc<str>)>>,
}

/// What the hub tells a connection about one of its rooms, out of band.
#[derive(Debug, Default)]
pub struct RoomFlags {
    /// A batch could not be queued: catch up from the store.
    pub lagged: AtomicBool,
    /// The store may have lost events: report a gap after the cursor, then
    /// carry on from it.
    pub lost: AtomicBool,
    /// The subscriber asked for the room's audience count.
    pub audience: AtomicBool,
    /// The connection's subject was banned from the room: leave it.
    pub banned: AtomicBool,
    /// Presence: [`PRESENCE_OFF`], [`PRESENCE_WANTED`] (asked; its snapshot
    /// is due) or [`PRESENCE_SENT`] (has a snapshot; diffs follow).
    pub presence: AtomicU8,
}

/// The subscriber did not ask for presence.
pub const PRESENCE_OFF: u8 = 0;
/// The subscriber asked for presence and waits for its snapshot.
pub const PRESENCE_WANTED: u8 = 1;
/// The subscriber has its snapshot; diffs follow.
pub const PRESENCE_SENT: u8 = 2;

/// A room's local subscribers as presence sees them.
#[derive(Debug, Default)]
pub struct LocalRoom {
    /// Subscribers here (with or without a subject).
    pub subscribers: usize,
    /// Subjects subscribed here, with their info (compact JSON).
    pub members: HashMap<Arc<str>, Arc<str>>,
}

struct Members {
    by_conn: HashMap<u64, Subscriber>,
    /// The last event ID handed to members. Every later event is offered to
    /// whoever is a member now, which is what makes it a joiner's cursor.
    last: Option<EventId>,
    /// The room's newest events, kept once joiners ask for them.
    recent: Recent,
    /// The room's current state, once a joiner asked for it; `None` until
    /// read, and again after the feed saw a hole.
    state: Option<Arc<State>>,
}

impl Members {
    /// Where the room's delivered events end (its anchor before any).
    fn end(&self, start: Option<&EventId>) -> Option<EventId> {
        self.last.or(start.copied())
    }
}

/// Counts what joiners got from memory and what went to the store.
fn served(what: &'static str, hit: bool) {
    metrics::counter!("roomcast_recent_total", "what" => what, "outcome" => if hit { "hit" } else { "miss" })
        .increment(1);
}

struct RoomEntry {
    /// Distinguishes successive lives of the same room in the registry, so a
    /// late "unwatch" from an old life cannot stop the feed for a new one.
    generation: u64,
    /// The room's anchor when its first local subscriber joined: where the
    /// feed starts. Resolved once, whoever asks first.
    start: OnceCell<EventId>,
    members: RwLock<Members>,
    /// One store read at a time fills the recent events or the state, and
    /// joiners arriving meanwhile wait for it instead of reading too.
    fill: tokio::sync::Mutex<()>,
}

/// The node-local room registry and fanout.
pub struct Hub {
    rooms: Mutex<HashMap<RoomName, Arc<RoomEntry>>>,
    generations: AtomicU64,
    /// The live feed that follows the rooms registered here.
    feed: Feed,
    /// Every connection's outbox and subject, for the heartbeat tick and
    /// moderation. Weak: a connection that is gone is pruned at the next tick.
    connections: Mutex<HashMap<u64, Connection>>,
}

/// A connection as the hub knows it.
struct Connection {
    outbox: Weak<Outbox>,
    /// Its credential's subject, for bans, disconnects and presence.
    subject: Option<Arc<str>>,
    /// Its credential's info, for presence.
    info: Option<Arc<str>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// An empty hub whose rooms `feed` follows (start the feed's loop with
    /// this hub as its sink).
    pub fn new(feed: Feed) -> Arc<Hub> {
        Arc::new(Hub { rooms: Mutex::default(), generations: AtomicU64::new(1), feed, connections: Mutex::default() })
    }

    /// Whether the live feed runs (it reaches the store).
    pub fn is_live(&self) -> bool {
        self.feed.is_live()
    }

    /// Waits up to `within` for the live feed to run; whether it does.
    pub async fn wait_live(&self, within: Duration) -> bool {
        self.feed.wait_live(within).await
    }

    /// Adds `conn` to `room`. Returns the live cursor: every event after it
    /// will be offered to this subscriber, none before it.
    pub async fn join(&self, room: &RoomName, conn: u64, subscriber: Subscriber) -> Result<EventId, StoreError> {
        let (entry, last) = {
            let mut rooms = lock(&self.rooms);
            let entry = rooms
                .entry(room.clone())
                .or_insert_with(|| {
                    Arc::new(RoomEntry {
                        generation: self.generations.fetch_add(1, Ordering::Relaxed),
                        start: OnceCell::new(),
                        members: RwLock::new(Members {
                            by_conn: HashMap::new(),
                            last: None,
                            recent: Recent::default(),
                            state: None,
                        }),
                        fill: tokio::sync::Mutex::new(()),
                    })
                })
                .clone();
            let last = {
                let mut members = write(&entry.members);
                members.by_conn.insert(conn, subscriber);
                members.last
            };
            (entry, last)
        };
        let start = entry.start.get_or_try_init(|| self.feed.follow(room, entry.generation)).await;
        match start {
            Ok(start) => Ok(last.unwrap_or(*start)),
            Err(e) => {
                self.leave(room, conn).await;
                Err(e)
            }
        }
    }

    fn entry(&self, room: &RoomName) -> Option<Arc<RoomEntry>> {
        lock(&self.rooms).get(room).cloned()
    }

    /// Where a rewind of `room`'s last `n` events starts, for a subscriber
    /// that joined it: told from the room's recent events when this node
    /// holds enough of them, else from one store read that fills them for
    /// the joiners after it.
    pub async fn rewind(&self, room: &RoomName, n: usize) -> Result<Position, StoreError> {
        let Some(entry) = self.entry(room) else {
            return Err(StoreError::Unavailable("the room is not followed here".into()));
        };
        let from_memory = |entry: &RoomEntry| {
            let mut members = write(&entry.members);
            if members.by_conn.len() >= CROWD {
                members.recent.want(n);
            }
            let end = members.end(entry.start.get())?;
            members.recent.rewind(n, end)
        };
        if let Some(at) = from_memory(&entry) {
            served("rewind", true);
            return Ok(at);
        }
        let _filling = entry.fill.lock().await;
        if let Some(at) = from_memory(&entry) {
            served("rewind", true);
            return Ok(at);
        }
        served("rewind", false);
        let asked = n.max(read(&entry.members).recent.wanted()).min(MAX_RECENT_EVENTS);
        let newest = self.feed.log().read_back(room, None, asked).await?;
        let at = match newest.events.len().checked_sub(n) {
            Some(i) => Position::After(newest.events[i].prev),
            None => newest.events.first().map_or(Position::Oldest, |e| Position::After(e.prev)),
        };
        let mut members = write(&entry.members);
        if let Some(end) = members.end(entry.start.get()).filter(|_| members.recent.wanted() > 0) {
            members.recent.backfill(newest.events, !newest.more, end);
        }
        Ok(at)
    }

    /// A page of `room`'s history from `from`: from the events this node
    /// holds when they cover it, else from the store. A resume that had to
    /// go to the store makes the node keep more, for the resumes after it.
    pub async fn history(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError> {
        let log = self.feed.log();
        let Some(entry) = self.entry(room) else {
            return log.read(room, from, limit).await;
        };
        let from_memory = |entry: &RoomEntry| {
            let members = read(&entry.members);
            let end = members.end(entry.start.get())?;
            members.recent.page(from, limit, PAGE_BYTES, end)
        };
        if let Some(page) = from_memory(&entry) {
            served("history", true);
            return Ok(page);
        }
        let fill = {
            let mut members = write(&entry.members);
            let crowd = members.by_conn.len() >= CROWD;
            let short = crowd && members.recent.wanted() < RESUME_KEEP;
            if crowd {
                members.recent.want(RESUME_KEEP);
            }
            short
        };
        if fill {
            // The first resume to miss fills the recent events once.
            let _filling = entry.fill.lock().await;
            let newest = log.read_back(room, None, RESUME_KEEP).await?;
            {
                let mut members = write(&entry.members);
                if let Some(end) = members.end(entry.start.get()) {
                    members.recent.backfill(newest.events, !newest.more, end);
                }
            }
            if let Some(page) = from_memory(&entry) {
                served("history", true);
                return Ok(page);
            }
        }
        served("history", false);
        log.read(room, from, limit).await
    }

    /// `room`'s current state as the feed follows it: read from the store
    /// once per node, then kept in step with every event the feed hands over.
    pub async fn state(&self, room: &RoomName) -> Result<Arc<State>, StoreError> {
        let log = self.feed.log();
        let Some(entry) = self.entry(room) else {
            return Ok(Arc::new(State::from(log.state(room).await?)));
        };
        if let Some(state) = read(&entry.members).state.clone() {
            served("state", true);
            return Ok(state);
        }
        let _filling = entry.fill.lock().await;
        if let Some(state) = read(&entry.members).state.clone() {
            served("state", true);
            return Ok(state);
        }
        served("state", false);
        let mut state = State::from(log.state(room).await?);
        for _ in 0..STATE_READS {
            if let Some(state) = Self::install_state(&entry, &mut state) {
                return Ok(state);
            }
            state = State::from(log.state(room).await?);
        }
        // A room too busy to meet: this joiner gets the store's answer, which
        // is consistent in itself (its position says where it stands).
        Ok(Arc::new(state))
    }

    /// Makes `state`, read from the store, the room's followed state when it
    /// meets the feed: at or ahead of what the feed handed over (the events
    /// up to it are skipped when they come), or behind it by events this
    /// node still holds. `None` when it cannot meet (read it again).
    fn install_state(entry: &RoomEntry, state: &mut State) -> Option<Arc<State>> {
        let mut members = write(&entry.members);
        let end = members.end(entry.start.get()).unwrap_or(EventId::ZERO);
        if state.position < end {
            let page = members.recent.page(Position::After(state.position), usize::MAX, usize::MAX, end)?;
            if !state.apply(&page.events) || state.position != end {
                return None;
            }
        }
        let state = Arc::new(state.clone());
        members.state = Some(state.clone());
        Some(state)
    }

    /// Removes `conn` from `room`; the room leaves the registry (and the
    /// feed) with its last local subscriber.
    pub async fn leave(&self, room: &RoomName, conn: u64) {
        let emptied = {
            let mut rooms = lock(&self.rooms);
            let Some(entry) = rooms.get(room).cloned() else {
                return;
            };
            let empty = {
                let mut members = write(&entry.members);
                members.by_conn.remove(&conn);
                members.by_conn.is_empty()
            };
            if empty {
                rooms.remove(room);
                Some(entry.generation)
            } else {
                None
            }
        };
        if let Some(generation) = emptied {
            self.feed.unwatch(room.clone(), generation).await;
        }
    }

    /// Local subscriber counts of every room with local subscribers.
    pub fn local_counts(&self) -> HashMap<RoomName, usize> {
        let rooms = lock(&self.rooms);
        rooms.iter().map(|(room, entry)| (room.clone(), read(&entry.members).by_conn.len())).collect()
    }

    /// Rooms where some local subscriber asked for the audience count.
    pub fn watched_audiences(&self) -> Vec<RoomName> {
        let rooms = lock(&self.rooms);
        rooms
            .iter()
            .filter(|(_, entry)| {
                read(&entry.members).by_conn.values().any(|s| s.flags.audience.load(Ordering::Relaxed))
            })
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// Every room with local subscribers: how many, and the members among
    /// them (one per subject, however many connections it has here).
    pub fn local_members(&self) -> HashMap<RoomName, LocalRoom> {
        let entries: Vec<(RoomName, Arc<RoomEntry>)> =
            lock(&self.rooms).iter().map(|(room, entry)| (room.clone(), entry.clone())).collect();
        let connections = lock(&self.connections);
        let empty: Arc<str> = Arc::from("{}");
        entries
            .into_iter()
            .map(|(room, entry)| {
                let members = read(&entry.members);
                let mut local = LocalRoom { subscribers: members.by_conn.len(), members: HashMap::new() };
                for (conn, subscriber) in &members.by_conn {
                    if let Some(member) = &subscriber.member {
                        local.members.insert(member.0.clone(), member.1.clone());
                    } else if let Some(c) = connections.get(conn) {
                        if let Some(sub) = &c.subject {
                            let info = c.info.clone().unwrap_or_else(|| empty.clone());
                            local.members.insert(sub.clone(), info);
                        }
                    }
                }
                (room, local)
            })
            .collect()
    }

    /// Rooms where some local subscriber asked for presence.
    pub fn watched_presence(&self) -> Vec<RoomName> {
        let rooms = lock(&self.rooms);
        rooms
            .iter()
            .filter(|(_, entry)| {
                read(&entry.members).by_conn.values().any(|s| s.flags.presence.load(Ordering::Relaxed) != PRESENCE_OFF)
            })
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// Sends a room's presence watchers what is due: its snapshot (made by
    /// `snapshot`, once) to those waiting for one, `diff` to the others.
    /// A watcher whose outbox refuses a frame is owed a snapshot again.
    pub fn offer_presence(&self, room: &RoomName, snapshot: impl FnOnce() -> Arc<Notice>, diff: Option<&Arc<Notice>>) {
        let Some(entry) = self.entry(room) else {
            return;
        };
        let members = read(&entry.members);
        let mut snapshot = Some(snapshot);
        let mut made: Option<Arc<Notice>> = None;
        for subscriber in members.by_conn.values() {
            let flag = &subscriber.flags.presence;
            let sent = match flag.load(Ordering::Acquire) {
                PRESENCE_WANTED => {
                    let notice = match (&made, snapshot.take()) {
                        (Some(n), _) => n.clone(),
                        (None, Some(make)) => made.insert(make()).clone(),
                        (None, None) => continue,
                    };
                    subscriber.outbox.offer_notice(&notice)
                }
                PRESENCE_SENT => match diff {
                    Some(diff) => subscriber.outbox.offer_notice(diff),
                    None => true,
                },
                _ => continue,
            };
            flag.store(if sent { PRESENCE_SENT } else { PRESENCE_WANTED }, Ordering::Release);
        }
    }

    /// Offers a room-wide notice to the room's local subscribers (`to`:
    /// all, or those that asked for its audience); `false` when the room
    /// has none here.
    pub fn offer(&self, room: &RoomName, notice: &Arc<Notice>, to: Audience) -> bool {
        let Some(entry) = lock(&self.rooms).get(room).cloned() else {
            return false;
        };
        let members = read(&entry.members);
        for subscriber in members.by_conn.values() {
            if to == Audience::Everyone || subscriber.flags.audience.load(Ordering::Relaxed) {
                let _ = subscriber.outbox.offer_notice(notice);
            }
        }
        true
    }

    /// Registers a connection's outbox (and its credential's subject and
    /// info) for the heartbeat tick, moderation and presence.
    pub fn connect(&self, conn: u64, outbox: &Arc<Outbox>, subject: Option<&str>, info: Option<&str>) {
        let connection =
            Connection { outbox: Arc::downgrade(outbox), subject: subject.map(Arc::from), info: info.map(Arc::from) };
        lock(&self.connections).insert(conn, connection);
    }

    /// Ends `sub`'s subscriptions to `room` on this node (a ban); how many.
    pub fn ban(&self, room: &RoomName, sub: &str) -> usize {
        let Some(entry) = self.entry(room) else {
            return 0;
        };
        let connections = lock(&self.connections);
        let members = read(&entry.members);
        let mut banned = 0;
        for (conn, subscriber) in &members.by_conn {
            if connections.get(conn).and_then(|c| c.subject.as_deref()) == Some(sub) {
                subscriber.flags.banned.store(true, Ordering::Release);
                subscriber.outbox.signal();
                banned += 1;
            }
        }
        banned
    }

    /// Closes every connection of `sub` on this node, saying `reason`; how many.
    pub fn kick(&self, sub: &str, reason: &str) -> usize {
        let reason = Arc::new(reason.to_owned());
        let outboxes: Vec<Arc<Outbox>> = lock(&self.connections)
            .values()
            .filter(|c| c.subject.as_deref() == Some(sub))
            .filter_map(|c| c.outbox.upgrade())
            .collect();
        for outbox in &outboxes {
            outbox.kick(reason.clone());
        }
        outboxes.len()
    }

    /// Forgets a connection (its outbox is also pruned once dropped).
    pub fn disconnect(&self, conn: u64) {
        lock(&self.connections).remove(&conn);
    }

    /// Runs the heartbeat tick every `every` until `shutdown`.
    pub fn spawn_heartbeat(self: &Arc<Self>, every: Duration, shutdown: CancellationToken, tracker: &TaskTracker) {
        let hub = self.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => hub.heartbeat(),
                }
            }
        });
    }

    /// The heartbeat tick: wakes every connection, so each one that has
    /// been silent since the previous tick sends a heartbeat frame. One
    /// walk per tick, and no timer per connection.
    pub fn heartbeat(&self) {
        let outboxes: Vec<Arc<Outbox>> = {
            let mut connections = lock(&self.connections);
            connections.retain(|_, c| c.outbox.strong_count() > 0);
            connections.values().filter_map(|c| c.outbox.upgrade()).collect()
        };
        for outbox in outboxes {
            outbox.heartbeat();
        }
    }

    /// Bytes queued in all outboxes, and in the fullest one: how far behind
    /// the node's slowest readers are.
    pub fn outbox_bytes(&self) -> (usize, usize) {
        let connections = lock(&self.connections);
        connections
            .values()
            .filter_map(|c| c.outbox.upgrade())
            .map(|o| o.queued_bytes())
            .fold((0, 0), |(sum, max), b| (sum + b, max.max(b)))
    }

    /// Number of rooms with local subscribers.
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }
}

impl FeedSink for Hub {
    fn deliver(&self, room: &RoomName, events: Vec<Event>) {
        let Some(entry) = lock(&self.rooms).get(room).cloned() else {
            return;
        };
        let Some(last) = events.last().map(|e| e.id) else {
            return;
        };
        // Frames bounded in bytes: a backlog of large events becomes several
        // batches, each written (and flushed) as the client takes it.
        let lens: Vec<usize> = frames(&events, FRAME_BUDGET).map(<[Event]>::len).collect();
        let mut rest = events;
        let batches: Vec<Arc<Batch>> = lens
            .into_iter()
            .map(|n| {
                let tail = rest.split_off(n);
                Arc::new(Batch::new(room.clone(), std::mem::replace(&mut rest, tail)))
            })
            .collect();
        let mut members = write(&entry.members);
        let before = members.end(entry.start.get());
        for batch in &batches {
            members.recent.push(before, &batch.events);
            for event in &batch.events {
                if let Some(op) = event.op {
                    members.recent.moderate(op, &event.data);
                }
            }
        }
        if let Some(state) = members.state.as_mut() {
            let whole = batches.iter().all(|b| Arc::make_mut(state).apply(&b.events));
            if !whole {
                members.state = None;
            }
        }
        members.last = Some(last);
        for batch in &batches {
            for subscriber in members.by_conn.values() {
                subscriber.outbox.offer(batch, &subscriber.flags.lagged);
            }
        }
        metrics::counter!("roomcast_batches_total").increment(batches.len() as u64);
    }

    fn lost(&self, room: &RoomName) {
        let Some(entry) = lock(&self.rooms).get(room).cloned() else {
            return;
        };
        // Cursors, and `last` for joiners, stay: every ID the store hands
        // out after a loss is above them, so nothing is delivered twice.
        // What the node held of the room may not be the store's any more.
        let mut members = write(&entry.members);
        members.recent.clear();
        members.state = None;
        for subscriber in members.by_conn.values() {
            subscriber.flags.lost.store(true, Ordering::Release);
            subscriber.outbox.signal();
        }
    }

    fn wants(&self, room: &RoomName, generation: u64) -> bool {
        lock(&self.rooms).get(room).is_some_and(|e| e.generation == generation)
    }
}
