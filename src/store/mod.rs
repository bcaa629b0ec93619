//! The store contract: where rooms' events live, with two implementations.
//!
//! - [`memory::MemoryStore`]: embedded, single node, used when no Redis is given.
//! - [`redis::RedisStore`]: Redis Streams through fred, shared by many nodes.
//!
//! # Invariants every implementation keeps
//! - **IDs**: `ms-seq`, strictly increasing per room, and never repeated,
//!   even when a room's history is deleted, evicted or expired and rebuilt.
//! - **Trimming**: each room keeps at least `history` events (`MAXLEN ~`);
//!   older ones may go.
//! - **Predecessors**: every event carries, written atomically with it, the
//!   position a reader must hold for the event to continue it: the ID of the
//!   entry appended just before it, or the room's floor (below) for the
//!   first entry after its history went (`0-0` when the floor went too).
//!   One marker never equals a reader's position: [`NEW_SERVER`] (the entry
//!   was the room's first written by another store server process than the
//!   one before it: a restart or failover that may have lost acknowledged
//!   writes without a trace in the keys).
//! - **The floor**: each room remembers the last position it handed out (its
//!   last event's ID, or an [anchor](EventLog::anchor) a live subscriber of an
//!   empty room was given) longer than its history. A room with no kept
//!   events ends at its floor.
//! - **Gaps are exact** and stated once, in [`Page::new`]: reading after
//!   position `X` reports a gap iff
//!   - the first kept event after `X` does not name `X` as its predecessor
//!     (trimmed past `X`, history lost and rebuilt, or a change of server), or
//!   - nothing is kept after `X` and `X` is not the room's end (a token from
//!     the future, or history lost with nothing new yet).
//!
//!   A page never crosses a break in the chain: it ends before an event that
//!   does not continue the one before it, so the next read reports it.
//!   Reading from [`Position::Oldest`] never reports a gap.
//! - **Idle rooms expire** after the configured idle time, history and all.
//! - **Appends happen once**: an append the store client had to send again
//!   (its reply was lost in a reconnection) stores nothing the second time
//!   and answers the first outcome.
//! - **Lost data is detectable**: a domain's [`incarnation`](LossDetection::incarnations)
//!   changes when it may have lost data, which tells the live feed to check
//!   the rooms it follows; the predecessor chain tells every later reader.
//!   Losing the incarnation's own record must never rewind anyone: at worst
//!   it costs a check of every followed room of its domain.
//!
//! Four contracts, one engine value implementing all of them ([`Store`]):
//! - [`EventLog`] (here): append, read, follow;
//! - [`LossDetection`] ([`loss`]): domains, incarnations, connection generations;
//! - [`LiveLog`] ([`live_log`]): per-node audience counts, live nodes, notes;
//! - [`Rules`] ([`rules`]): bans and room settings;
//! - [`PresenceLog`] ([`presence`]): members across nodes, webhook events.
//!
//! Live delivery goes through a [`feed::Feed`]: the node tells it which rooms
//! have local subscribers; it hands each new batch to a [`feed::FeedSink`].

pub mod coalesce;
pub mod feed;
pub mod live_log;
pub mod loss;
pub mod memory;
pub mod presence;
pub mod redis;
pub mod rules;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::StoreSettings;
use crate::protocol::{ErrorCode, Event, EventId, EventName, IdempotencyKey, OpKind, RoomName, StateKey};

pub use self::live_log::{live_sum, LiveLog, LiveNote, NoteCursor, Signal};
pub use self::loss::{Change, Incarnation, LossDetection};
pub use self::presence::PresenceLog;
pub use self::rules::{RoomRules, RoomSettings, Rules};

/// How long an idempotency key is remembered per room: a repeat within
/// this stores nothing and answers the first publish's ID.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// What an idempotent append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The event was stored with this ID.
    Stored(EventId),
    /// The key was used for this room within the window: nothing was
    /// stored, and this is the first publish's ID.
    Repeated(EventId),
    /// The key was used for this room within the window for another
    /// payload: nothing was stored; the first publish's ID.
    Conflict(EventId),
    /// The event names a new state key and the room has as many as it may
    /// keep: nothing was stored.
    TooManyKeys,
    /// The publisher published to this slow-mode room less than its
    /// interval ago: nothing was stored; it may publish again after this.
    SlowMode {
        /// Milliseconds until it may publish again.
        retry_after_ms: u64,
    },
    /// An operation's target is not an event the room keeps (never was,
    /// trimmed, already deleted, or itself an operation): nothing was stored.
    NotFound,
}

impl Appended {
    /// The event's ID, stored now or before (none when refused for its key).
    pub fn id(self) -> Option<EventId> {
        match self {
            Appended::Stored(id) | Appended::Repeated(id) | Appended::Conflict(id) => Some(id),
            Appended::TooManyKeys | Appended::SlowMode { .. } | Appended::NotFound => None,
        }
    }
}

/// What one append carries besides its payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendOptions<'a> {
    /// Names the publish: a repeat within [`IDEMPOTENCY_WINDOW`] stores nothing.
    pub idempotency: Option<&'a IdempotencyKey>,
    /// Makes the event this key's current value in the room.
    pub key: Option<&'a StateKey>,
    /// Slow mode: the publisher may publish to the room once per interval.
    pub slow: Option<Slow<'a>>,
    /// The event's name (a Pusher event's, or a publisher's).
    pub name: Option<&'a EventName>,
    /// A Pusher socket ID the event is not delivered to.
    pub skip: Option<&'a str>,
}

/// A publisher under a room's slow mode.
#[derive(Clone, Copy, Debug)]
pub struct Slow<'a> {
    /// Who publishes (a token subject, or one anonymous connection).
    pub publisher: &'a str,
    /// The room's interval, milliseconds.
    pub interval_ms: u64,
}

impl<'a> AppendOptions<'a> {
    /// Just an idempotency key (or none).
    pub fn idempotent(idempotency: Option<&'a IdempotencyKey>) -> Self {
        AppendOptions { idempotency, ..AppendOptions::default() }
    }
}

/// A room's current state: each state key's latest event, as of a position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The room's end when the values were read: the values reflect every
    /// event up to it and none after.
    pub position: EventId,
    /// Each key's latest event.
    pub values: Vec<(StateKey, Event)>,
}

/// One page of a backwards history read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackPage {
    /// Kept events before the position, oldest first, at most the limit.
    pub events: Vec<Event>,
    /// Older events are still kept: read on before `events[0]`.
    pub more: bool,
    /// Events between these, or between the newest and the position, are
    /// missing (a break in the chain: history lost and rebuilt).
    pub gap: bool,
}

impl BackPage {
    /// The answer to a read before a position: `older`, the kept events
    /// before it newest first (up to `limit + 1`, to tell whether there are
    /// more), and `above`, the predecessor the event at the position names
    /// (when the position is an event; `None` for the newest events).
    pub fn new(above: Option<EventId>, mut older: Vec<Event>, limit: usize) -> BackPage {
        let more = older.len() > limit;
        older.truncate(limit);
        older.reverse();
        let broken = older.windows(2).any(|w| w[1].prev != w[0].id);
        let detached = match (above, older.last()) {
            (Some(prev), Some(newest)) => newest.id != prev,
            _ => false,
        };
        BackPage { events: older, more, gap: broken || detached }
    }
}

/// Where a history read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// From the oldest event still kept (a client's `0`); never a gap.
    Oldest,
    /// Strictly after this ID; a gap if anything after it is no longer kept.
    After(EventId),
}

/// A fingerprint of a payload (64-bit FNV-1a, as hex), stored beside an
/// idempotency key's first ID: a repeat with another payload is a conflict,
/// not a repeat. Fixed, so every node of a deployment computes the same.
pub fn payload_fingerprint(data: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The predecessor of a room's first entry written by another store server
/// process than its previous entry (see the module invariants).
pub const NEW_SERVER: EventId = EventId::new(0, 2);

/// One page of a history read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Kept events after the position, oldest first, at most the limit, and
    /// each continuing the one before it.
    pub events: Vec<Event>,
    /// True when events between the position and `events[0]` (or the room's
    /// end) are no longer kept: see the module invariants.
    pub gap: bool,
    /// The room's end at read time: its newest kept event, else its floor,
    /// else `0-0`. A reader that hit a gap with no events continues from here.
    pub tail: EventId,
    /// The read stopped before the room's end (the limit, or a break in the
    /// chain): read on after the last event.
    pub more: bool,
}

impl Page {
    /// The answer to a read from `from`: `events` as the store returned them
    /// (oldest first, at most `limit`), and the room's end. States the gap
    /// rule of the module docs, for every store.
    pub fn new(from: Position, mut events: Vec<Event>, limit: usize, tail: EventId) -> Page {
        let mut more = events.len() >= limit;
        if let Some(i) = events.windows(2).position(|w| w[1].prev != w[0].id) {
            events.truncate(i + 1);
            more = true;
        }
        let gap = match (from, events.first()) {
            (Position::Oldest, _) => false,
            (Position::After(x), Some(first)) => first.prev != x,
            (Position::After(x), None) => x != tail,
        };
        Page { events, gap, tail, more }
    }
}

/// A store failure: the store is unreachable or refused a command.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses writes because it is out of memory (Redis
    /// `maxmemory` with a `noeviction` policy). Distinct from an outage: the
    /// store answers, and an operator must make room.
    #[error("store out of memory: {0}")]
    OutOfMemory(String),
    /// The store answered something this node cannot read.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

impl StoreError {
    /// The error code a client is told.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            StoreError::OutOfMemory(_) => ErrorCode::StoreFull,
            StoreError::Unavailable(_) | StoreError::Protocol(_) => ErrorCode::StoreUnavailable,
        }
    }

    /// The metric label and log word for this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::OutOfMemory(_) => "out_of_memory",
            StoreError::Protocol(_) => "protocol",
        }
    }
}

/// Settings both stores share.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Events kept per room (at least; `MAXLEN ~`).
    pub history: usize,
    /// A room whose last publish is older than this loses its history.
    pub room_ttl: Duration,
    /// How long a node's audience report counts without being refreshed.
    pub presence_ttl: Duration,
    /// Most state keys a room keeps (`--max-state-keys`).
    pub max_state_keys: usize,
}

impl StoreOptions {
    /// The options of the node's store, from its settings.
    pub fn new(settings: &StoreSettings, presence_ttl: Duration) -> Self {
        StoreOptions {
            history: settings.history,
            room_ttl: settings.room_ttl,
            presence_ttl,
            max_state_keys: settings.max_state_keys,
        }
    }
}

/// The event log: rooms' events, appended, read and followed. The small
/// contract the rest of the node reads and writes events through; its rules
/// are the module invariants.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends one event (compact JSON) to `room`, trimming to the history
    /// bound and refreshing the room's idle expiry, and returns its ID. With
    /// an idempotency key used for `room` within [`IDEMPOTENCY_WINDOW`] (on
    /// any node), stores nothing and answers the first publish's ID. Atomic,
    /// so concurrent repeats store one event; and a store client's own
    /// resend of the same call never stores twice. With a state key, the
    /// event also becomes that key's value in the room's state, in the same
    /// step (refused when it is a new key past `max_state_keys`).
    async fn append(&self, room: &RoomName, data: Bytes, options: AppendOptions<'_>) -> Result<Appended, StoreError>;

    /// Appends a moderator's operation on `target` (an event the room keeps,
    /// not itself an operation), and applies it, in one step: an edit
    /// (`data`: the new data) shows the target with its data from then on,
    /// in every read; a delete removes the target's data, and that of its
    /// edits, from the store, leaving its place (its ID, and the chain of
    /// predecessors, so it never reads as a gap). A state value that was
    /// the target follows it (edited, or gone). The operation is an event
    /// of the room like any other, delivered live and kept in the history.
    async fn moderate(
        &self,
        room: &RoomName,
        target: EventId,
        kind: OpKind,
        data: Bytes,
    ) -> Result<Appended, StoreError>;

    /// The first ID stored with idempotency key `key` in `room` within
    /// [`IDEMPOTENCY_WINDOW`], if any (a publish hook is not asked again
    /// for a retry of a stored publish).
    async fn recorded(&self, room: &RoomName, key: &IdempotencyKey) -> Result<Option<EventId>, StoreError>;

    /// Reads up to `limit` kept events just before `before` (the newest ones
    /// for `None`), see [`BackPage::new`].
    async fn read_back(&self, room: &RoomName, before: Option<EventId>, limit: usize) -> Result<BackPage, StoreError>;

    /// The room's current state and the position it reflects, read at one
    /// moment. State is kept apart from the history: trimming does not touch
    /// it, and it expires with the room.
    async fn state(&self, room: &RoomName) -> Result<Snapshot, StoreError>;

    /// Reads up to `limit` kept events from `from`, with exact gap detection
    /// (see [`Page::new`]).
    async fn read(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError>;

    /// The room's end (see [`Page::tail`]); changes nothing.
    async fn tail(&self, room: &RoomName) -> Result<EventId, StoreError>;

    /// Where a live subscriber joining `room` now starts: the room's end, or
    /// for a room with no end yet, a fresh position recorded as its floor, so
    /// that the room's first event names it and a room rebuilt meanwhile
    /// (which cannot) is a gap, not a continuation.
    async fn anchor(&self, room: &RoomName) -> Result<EventId, StoreError>;

    /// Reads up to `limit` events after each given position, for the live
    /// feed. Rooms with nothing new are left out of the answer.
    async fn read_many(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError>;

    /// Checks the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// What tells the live feed which rooms changed. Makes no call to the
    /// store: a source connects on its first [`prepare`](feed::ChangeSource::prepare),
    /// so a node builds its feed before its store first answers.
    fn change_source(&self, node: &str) -> Result<Box<dyn feed::ChangeSource>, StoreError>;
}

/// A store engine: one value that is the event log, detects its own losses
/// and carries the live log (as centrifuge's engine is both its broker and
/// its presence manager). The node holds one; each part of the node sees
/// the contract it uses.
pub trait Store: EventLog + LossDetection + LiveLog + Rules + PresenceLog {}

impl<T: EventLog + LossDetection + LiveLog + Rules + PresenceLog> Store for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(links: &[(u64, u64)]) -> Vec<Event> {
        links
            .iter()
            .map(|&(prev, id)| Event {
                id: EventId::new(id, 0),
                prev: EventId::new(prev, 0),
                data: Bytes::from_static(b"1"),
                ..Event::default()
            })
            .collect()
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.events.iter().map(|e| e.id.ms).collect()
    }

    #[test]
    fn the_gap_rule() {
        let at = |ms| Position::After(EventId::new(ms, 0));
        let tail = EventId::new(5, 0);
        // The first event names the position, or it does not.
        assert!(!Page::new(at(3), chain(&[(3, 4), (4, 5)]), 10, tail).gap);
        assert!(Page::new(at(2), chain(&[(3, 4), (4, 5)]), 10, tail).gap);
        // Nothing after the position: complete only at the room's end.
        assert!(!Page::new(at(5), Vec::new(), 10, tail).gap);
        assert!(Page::new(at(9), Vec::new(), 10, tail).gap, "a token from the future");
        assert!(Page::new(at(4), Vec::new(), 10, tail).gap, "history gone below the floor");
        assert!(!Page::new(Position::After(EventId::ZERO), Vec::new(), 10, EventId::ZERO).gap);
        // From the oldest: never a gap.
        assert!(!Page::new(Position::Oldest, chain(&[(3, 4)]), 10, tail).gap);
    }

    #[test]
    fn a_page_ends_before_a_break_in_the_chain() {
        // Event 7 names a position nobody holds (a break, like `NEW_SERVER`).
        let events = chain(&[(1, 2), (2, 3), (0, 7), (7, 8)]);
        let page = Page::new(Position::After(EventId::new(1, 0)), events.clone(), 10, EventId::new(8, 0));
        assert_eq!(ids(&page), vec![2, 3]);
        assert!(page.more && !page.gap);
        let page = Page::new(Position::After(EventId::new(3, 0)), events[2..].to_vec(), 10, EventId::new(8, 0));
        assert_eq!(ids(&page), vec![7, 8]);
        assert!(page.gap && !page.more, "the break is reported by the next read");
        // A full page has more; a short unbroken one does not.
        assert!(Page::new(Position::Oldest, chain(&[(1, 2), (2, 3)]), 2, EventId::new(3, 0)).more);
        assert!(!Page::new(Position::Oldest, chain(&[(1, 2), (2, 3)]), 3, EventId::new(3, 0)).more);
    }

    #[test]
    fn a_backwards_page_is_oldest_first_and_tells_more_and_breaks() {
        let newest_first = |links: &[(u64, u64)]| {
            let mut events = chain(links);
            events.reverse();
            events
        };
        let page = BackPage::new(Some(EventId::new(4, 0)), newest_first(&[(1, 2), (2, 3), (3, 4)]), 2);
        assert_eq!(page.events.iter().map(|e| e.id.ms).collect::<Vec<_>>(), vec![3, 4]);
        assert!(page.more && !page.gap);
        let page = BackPage::new(None, newest_first(&[(1, 2), (2, 3)]), 5);
        assert!(!page.more && !page.gap);
        assert!(BackPage::new(Some(EventId::new(9, 0)), newest_first(&[(2, 3), (3, 4)]), 5).gap);
        assert!(BackPage::new(None, newest_first(&[(1, 2), (0, 7)]), 5).gap, "a break inside");
    }
}
