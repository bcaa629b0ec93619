//! `Event`: one stored event as the node moves it around.

use bytes::Bytes;

use super::EventId;

/// One event of a room, as read from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event's ID, its position in the room.
    pub id: EventId,
    /// The ID of the entry written just before it (`0-0` for a room's first).
    /// Written atomically with the entry; a reader holding `prev` knows it
    /// has missed nothing, which makes gap detection exact.
    pub prev: EventId,
    /// The payload as compact JSON text, validated when it entered the node.
    pub data: Bytes,
}
