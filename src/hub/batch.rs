//! `Batch`: one room's new events, shared by every local subscriber.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{encode_events, sse_events, Event, Format, RoomName, Wire};

/// One room's consecutive events as read by the feed. Each wire encoding is
/// made at most once, the first time a subscriber of that format needs it,
/// and then shared by reference count: no per-subscriber serialisation.
#[derive(Debug)]
pub struct Batch {
    /// The room the events belong to.
    pub room: RoomName,
    /// Events in ID order, consecutive in the room.
    pub events: Vec<Event>,
    json: OnceLock<Wire>,
    msgpack: OnceLock<Wire>,
    sse: OnceLock<Bytes>,
    /// The events as another protocol's messages (the Pusher layer's).
    messages: OnceLock<Vec<Encoded>>,
    /// Approximate memory held, for outbox byte bounds.
    size: usize,
}

impl Batch {
    /// Wraps a non-empty run of events.
    pub fn new(room: RoomName, events: Vec<Event>) -> Self {
        let size = events.iter().map(Event::frame_size).sum::<usize>() + 128;
        Batch {
            room,
            events,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            sse: OnceLock::new(),
            messages: OnceLock::new(),
            size,
        }
    }

    /// The `events` frame in `format`, encoded on first use.
    pub fn wire(&self, format: Format) -> &Wire {
        let cell = match format {
            Format::Json => &self.json,
            Format::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| encode_events(format, &self.room, &self.events))
    }

    /// The events as Server-Sent Events, encoded on first use.
    pub fn sse(&self) -> &Bytes {
        self.sse.get_or_init(|| sse_events(&self.events))
    }

    /// The events as one text message each in another protocol (Pusher's),
    /// made by `encode` for the first subscriber that asks and shared by the
    /// rest. A room belongs to one such app, so one encoding serves all.
    pub fn messages(&self, encode: impl FnOnce(&[Event]) -> Vec<Encoded>) -> &[Encoded] {
        self.messages.get_or_init(|| encode(&self.events))
    }

    /// Approximate bytes this batch holds (payloads plus framing).
    pub fn size(&self) -> usize {
        self.size
    }
}

/// One event as another protocol's message.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The connection (Pusher socket ID) it is not sent to, if any.
    pub skip: Option<Arc<str>>,
    /// The message.
    pub text: Utf8Bytes,
}
