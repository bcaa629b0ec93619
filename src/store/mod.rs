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
//! - **Lost data is detectable**: the store's [`incarnation`](Store::incarnation)
//!   changes when it loses its data, which catches what predecessors cannot
//!   (a room whose whole history, even its existence, was lost).
//!
//! Live delivery goes through a [`feed::Feed`]: the node tells it which rooms
//! have local subscribers; it hands each new batch to a [`feed::FeedSink`].

pub mod feed;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::{Event, EventId, RoomName};

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
    /// The store answered something this node cannot read.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
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

/// The small contract between the node and where events live.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends one event (compact JSON) to `room`, trimming to the history
    /// bound and refreshing the room's idle expiry. Returns the new ID.
    async fn append(&self, room: &RoomName, data: Bytes) -> Result<EventId, StoreError>;

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

    /// Records this node's live subscriber counts; a count of 0 removes the
    /// node's entry. Reports expire after `presence_ttl` unless refreshed,
    /// so a crashed node's audience vanishes on its own.
    async fn report_audience(&self, node: &str, counts: &[(RoomName, usize)]) -> Result<(), StoreError>;

    /// Live subscribers of `room` summed over all nodes with fresh reports.
    async fn audience(&self, room: &RoomName) -> Result<usize, StoreError>;

    /// A token that changes when the store loses its data (Redis restarted
    /// empty, or failed over without it). The feed compares it after every
    /// reconnection: events acked just before such a loss may never have
    /// been read, so every followed room must be told of a possible gap.
    async fn incarnation(&self) -> Result<String, StoreError>;

    /// Increases with every (re)connection to the store, so the feed knows
    /// when to compare incarnations. Constant for the embedded store.
    fn connection_generation(&self) -> u64;

    /// Checks the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Starts what tells the live feed which rooms changed.
    async fn change_source(&self, node: &str) -> Result<Box<dyn feed::ChangeSource>, StoreError>;
}
