//! The store contract: where rooms' events live, with two implementations.
//!
//! - [`memory::MemoryStore`]: embedded, single node, used when no Redis is given.
//! - [`redis::RedisStore`]: Redis Streams through fred, shared by many nodes.
//!
//! # Invariants every implementation keeps
//! - **IDs**: `ms-seq`, strictly increasing per room.
//! - **Trimming**: each room keeps at least `history` events (`MAXLEN ~`);
//!   older ones may go.
//! - **Predecessors**: every event carries the ID of the entry appended just
//!   before it (`0-0` for a room's first), written atomically with it.
//! - **Gaps are exact**: reading after position `X` reports a gap iff
//!   - the first kept event after `X` does not name `X` as its predecessor
//!     (trimmed past `X`, or history lost and rebuilt), or
//!   - nothing is kept after `X` but `X` is beyond the room's last ID (a
//!     token from the future: the store lost writes), or
//!   - the room has no history at all and `X` is not `0-0`.
//!
//!   Reading from [`Position::Oldest`] never reports a gap.
//! - **Idle rooms expire** after the configured idle time, history and all.
//! - **IDs never repeat**, even when a room's history is deleted, evicted
//!   or expired and rebuilt: a rebuilt room's first ID is above every ID
//!   the room ever had, and its predecessor is `0-0`, so the rebuild is a
//!   gap to anyone who was past it.
//! - **Lost data is detectable**: a domain's [`incarnation`](Store::incarnations)
//!   changes when it may have lost data, which catches what predecessors
//!   cannot (a room whose whole history, even its existence, was lost).
//!   Losing the incarnation's own record must never rewind anyone: at worst
//!   it costs a check of every followed room of its domain.
//!
//! Live delivery goes through a [`feed::Feed`]: the node tells it which rooms
//! have local subscribers; it hands each new batch to a [`feed::FeedSink`].

pub mod coalesce;
pub mod feed;
pub mod memory;
pub mod notes;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::StoreSettings;
use crate::protocol::{ErrorCode, Event, EventId, IdempotencyKey, RoomName};

pub use self::notes::{LiveNote, NoteCursor};

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
}

impl Appended {
    /// The event's ID, stored now or before.
    pub fn id(self) -> EventId {
        match self {
            Appended::Stored(id) | Appended::Repeated(id) => id,
        }
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

/// One page of a history read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Kept events after the position, oldest first, at most the limit.
    pub events: Vec<Event>,
    /// True when events between the position and `events[0]` (or the room's
    /// end) are no longer kept: see the module invariants.
    pub gap: bool,
    /// The room's last ID at read time (`0-0` for a room without history).
    /// A reader that hit a gap with no events continues from here.
    pub tail: EventId,
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

/// Who holds the data now, compared by the feed after reconnections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// A token stored beside the data; it changes when the data (or just the
    /// token) was deleted while the server kept running.
    pub data: String,
    /// The server process answering (Redis `run_id`); it changes when the
    /// store restarted or failed over, when acknowledged writes may be lost
    /// even though every key looks intact (a snapshot older than the acks).
    pub server: String,
}

/// How two incarnations differ, which decides what the feed must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Same data, same server: nothing happened.
    None,
    /// Same server, new token: keys were deleted or evicted. Each followed
    /// room's history can be checked exactly from its position.
    DataTouched,
    /// Another server process: acked writes may be gone without a trace.
    /// Every followed room gets a gap.
    ServerChanged,
}

impl Change {
    /// The metric label and log word for this change.
    pub fn label(self) -> &'static str {
        match self {
            Change::None => "none",
            Change::DataTouched => "data_touched",
            Change::ServerChanged => "server_changed",
        }
    }
}

impl Incarnation {
    /// What changed from `earlier` to `self`.
    pub fn since(&self, earlier: &Incarnation) -> Change {
        if self.server != earlier.server {
            Change::ServerChanged
        } else if self.data != earlier.data {
            Change::DataTouched
        } else {
            Change::None
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
}

impl StoreOptions {
    /// The options of the node's store, from its settings.
    pub fn new(settings: &StoreSettings, presence_ttl: Duration) -> Self {
        StoreOptions { history: settings.history, room_ttl: settings.room_ttl, presence_ttl }
    }
}

/// The small contract between the node and where events live.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends one event (compact JSON) to `room`, trimming to the history
    /// bound and refreshing the room's idle expiry. Returns the new ID.
    async fn append(&self, room: &RoomName, data: Bytes) -> Result<EventId, StoreError>;

    /// Appends like [`append`](Store::append), unless `key` was used for
    /// `room` within [`IDEMPOTENCY_WINDOW`] (on any node): then stores
    /// nothing and answers the first publish's ID. Atomic, so concurrent
    /// repeats store one event.
    async fn append_once(&self, room: &RoomName, key: &IdempotencyKey, data: Bytes) -> Result<Appended, StoreError>;

    /// Reads up to `limit` kept events from `from`, with exact gap detection.
    async fn read(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError>;

    /// The room's last ID, or `0-0` if it has no history.
    async fn tail(&self, room: &RoomName) -> Result<EventId, StoreError>;

    /// Reads up to `limit` events after each given position, for the live
    /// feed. Rooms with nothing new are left out of the answer.
    async fn read_many(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError>;

    /// Records this node's live subscriber counts for the rooms given (a
    /// count of 0 removes the node's entry) and marks the node alive for
    /// `presence_ttl`. Counts of a node that stops reporting stop counting
    /// once its liveness expires, so a crashed node's audience vanishes on
    /// its own, with no per-room refresh.
    async fn report_audience(&self, node: &str, counts: &[(RoomName, usize)]) -> Result<(), StoreError>;

    /// Live subscribers of `room` summed over all live nodes.
    async fn audience(&self, room: &RoomName) -> Result<usize, StoreError>;

    /// Each room's recorded count per node (live or not), in `rooms` order.
    async fn audience_by_node(&self, rooms: &[RoomName]) -> Result<Vec<HashMap<String, u64>>, StoreError>;

    /// The nodes whose liveness has not expired.
    async fn live_nodes(&self) -> Result<HashSet<String>, StoreError>;

    /// Appends a note to the live log every node reads.
    async fn append_note(&self, note: &LiveNote) -> Result<(), StoreError>;

    /// Notes after `after`, oldest first, with the cursor to read on from.
    /// `None` starts at the log's present end (returns no notes).
    async fn read_notes(&self, after: Option<&NoteCursor>) -> Result<(Vec<LiveNote>, NoteCursor), StoreError>;

    /// How many loss-detection domains the store has: parts of the data
    /// that can be lost, or fail over, independently (Redis: the buckets,
    /// each in one slot of one master; the embedded store: one).
    fn domains(&self) -> usize {
        1
    }

    /// The domain `room`'s data lives in, below [`domains`](Store::domains).
    fn domain(&self, _room: &RoomName) -> usize {
        0
    }

    /// Identifies the data and the server holding it for each of `domains`,
    /// in order (see [`Incarnation`]). The feed compares them after every
    /// reconnection and sweep: events acked just before a loss may never
    /// have been read, so followed rooms of a changed domain must be
    /// checked, or told of a possible gap; other domains' rooms are left be.
    async fn incarnations(&self, domains: &[usize]) -> Result<Vec<Incarnation>, StoreError>;

    /// The incarnation of domain 0, which is the whole store when it has one domain.
    async fn incarnation(&self) -> Result<Incarnation, StoreError> {
        let mut all = self.incarnations(&[0]).await?;
        all.pop().ok_or_else(|| StoreError::Protocol("no incarnation for domain 0".into()))
    }

    /// Increases with every (re)connection to the store, so the feed knows
    /// when to compare incarnations. Constant for the embedded store.
    fn connection_generation(&self) -> u64;

    /// Checks the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Starts what tells the live feed which rooms changed.
    async fn change_source(&self, node: &str) -> Result<Box<dyn feed::ChangeSource>, StoreError>;
}
