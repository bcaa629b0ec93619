//! `Notice`: a room-wide frame that is not an event (an audience count, a
//! window of reactions, who is present), encoded once per format and shared like a batch.

use std::sync::OnceLock;

use crate::protocol::{encode_frame, Format, RoomName, ServerFrame, Wire};

/// Who among a room's subscribers a notice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Only subscribers that asked for the audience count.
    Watchers,
    /// Every subscriber of the room.
    Everyone,
}

/// A frame for a room's subscribers that carries no event: not stored, no
/// ID, no cursor. Losing one (a full outbox) costs a count, never an event.
#[derive(Debug)]
pub struct Notice {
    /// The room it is about.
    pub room: RoomName,
    frame: ServerFrame,
    /// Approximate bytes held.
    size: usize,
    json: OnceLock<Wire>,
    msgpack: OnceLock<Wire>,
}

impl Notice {
    /// Wraps `frame`, which concerns `room`.
    pub fn new(room: RoomName, frame: ServerFrame) -> Self {
        let size = match &frame {
            // Member lists can be large: count them for the outbox's bound.
            ServerFrame::Presence { .. } | ServerFrame::PresenceDiff { .. } => {
                serde_json::to_vec(&frame).map_or(256, |v| v.len())
            }
            _ => 256,
        };
        Notice { room, frame, size, json: OnceLock::new(), msgpack: OnceLock::new() }
    }

    /// The frame in `format`, encoded on first use.
    pub fn wire(&self, format: Format) -> &Wire {
        let cell = match format {
            Format::Json => &self.json,
            Format::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| encode_frame(format, &self.frame))
    }

    /// The frame itself (for transports that write their own encoding).
    pub fn frame(&self) -> &ServerFrame {
        &self.frame
    }

    /// Approximate bytes held, for outbox byte bounds.
    pub fn size(&self) -> usize {
        self.size
    }
}
