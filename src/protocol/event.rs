//! `Event`: one stored event as the node moves it around, and how runs of
//! events are cut into frames.

use bytes::Bytes;

use std::sync::Arc;

use super::{EventId, EventName, StateKey};

/// What a moderator's operation does to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Replaces the target's data.
    Edit,
    /// Removes the target's data (and that of its edits).
    Delete,
}

impl OpKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Edit => "edit",
            OpKind::Delete => "delete",
        }
    }
}

/// An operation on an earlier event of the room, itself an event: ordered,
/// resumable, delivered like any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Edit or delete.
    pub kind: OpKind,
    /// The event it applies to.
    pub target: EventId,
}

/// How a read shows an event that moderators changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shown {
    /// As published.
    #[default]
    Original,
    /// With its latest edit's data, in its own place.
    Edited,
    /// Deleted: its place and ID remain, its data is gone.
    Deleted,
}

/// What some events carry besides their data: a name (a Pusher event's,
/// or a publisher's), and a connection it is not delivered to (the Pusher
/// socket that triggered it). Rare, so kept behind one pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The event's name.
    pub name: Option<EventName>,
    /// A Pusher socket ID the event is not delivered to.
    pub skip: Option<Arc<str>>,
}

/// One event of a room, as read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The event's ID, its position in the room.
    pub id: EventId,
    /// The position a reader must hold for this event to continue it: the
    /// entry written just before it (`0-0` for a room's first; see the store
    /// contract for the other cases). Written atomically with the entry, it
    /// makes gap detection exact.
    pub prev: EventId,
    /// The payload as compact JSON text, validated when it entered the node.
    pub data: Bytes,
    /// The state key the event is the current value of, if it names one.
    pub key: Option<StateKey>,
    /// For a moderator's operation: what it does, to which event.
    pub op: Option<Op>,
    /// Whether a moderator edited or deleted this event since.
    pub shown: Shown,
    /// Its name and delivery exception, when it has either.
    pub meta: Option<Arc<Meta>>,
}

impl Event {
    /// The event's name, if it has one.
    pub fn name(&self) -> Option<&EventName> {
        self.meta.as_ref().and_then(|m| m.name.as_ref())
    }
}

/// Bytes one event is reckoned to take in a frame beyond its payload (its
/// ID and framing in any wire format), for byte bounds.
pub const EVENT_OVERHEAD: usize = 64;

/// Payload bytes one `events` frame (or SSE chunk) aims at. Runs of events
/// are cut into frames of at most this much; an event larger than this
/// travels alone. Every frame therefore fits the WebSocket's write bound
/// whatever the backlog: a frame holds this plus at most one event.
pub const FRAME_BUDGET: usize = 64 * 1024;

impl Event {
    /// Bytes this event is reckoned to take in a frame.
    pub fn frame_size(&self) -> usize {
        self.data.len() + EVENT_OVERHEAD
    }
}

/// Cuts `events` into consecutive runs of at most `budget` reckoned bytes
/// (an event larger than the budget alone), in order and without gaps.
pub fn frames(events: &[Event], budget: usize) -> impl Iterator<Item = &[Event]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 0;
        let mut n = 0;
        for event in rest {
            let next = size + event.frame_size();
            if n > 0 && next > budget {
                break;
            }
            size = next;
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sized(sizes: &[usize]) -> Vec<Event> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Event {
                id: EventId::new(i as u64 + 1, 0),
                prev: EventId::new(i as u64, 0),
                data: Bytes::from(vec![b'1'; *n]),
                ..Event::default()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn frames_keep_every_event_once_in_order_within_the_budget(
            sizes in proptest::collection::vec(1usize..70_000, 0..200),
            budget in 1usize..200_000,
        ) {
            let events = sized(&sizes);
            let cut: Vec<&[Event]> = frames(&events, budget).collect();
            let joined: Vec<Event> = cut.iter().flat_map(|f| f.iter().cloned()).collect();
            prop_assert_eq!(&joined, &events);
            for frame in &cut {
                prop_assert!(!frame.is_empty());
                let size: usize = frame.iter().map(Event::frame_size).sum();
                prop_assert!(frame.len() == 1 || size <= budget, "a frame of {} events holds {} bytes", frame.len(), size);
            }
        }
    }
}
