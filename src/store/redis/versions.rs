//! Putting moderators' changes into what a read returns: an edited entry
//! shows its latest data, and each deleted event (gone from the stream)
//! comes back in its place, without its data, so the chain of predecessors
//! holds (see `APPEND_LUA` for how the versions hash records them).

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocol::{Event, EventId, Op, OpKind, Shown};

/// One entry of a room's versions hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// An edited event's latest data.
    Edited(Bytes),
    /// A deleted event, with the predecessor it had.
    Deleted(EventId),
    /// A deleted edit (its target was deleted), with its predecessor and target.
    DeletedEdit(EventId, EventId),
}

impl Version {
    /// Reads `e|<ids>|<data>`, `x|<prev>` or `o|<prev>|<target>`.
    pub(crate) fn parse(raw: &Bytes) -> Option<Version> {
        let text = raw.as_ref();
        match text.first()? {
            b'e' => {
                let rest = &text[2..];
                let bar = rest.iter().position(|b| *b == b'|')?;
                Some(Version::Edited(raw.slice(2 + bar + 1..)))
            }
            b'x' => {
                let prev = std::str::from_utf8(&text[2..]).ok()?;
                Some(Version::Deleted(EventId::parse(prev).ok()?))
            }
            b'o' => {
                let rest = std::str::from_utf8(&text[2..]).ok()?;
                let (prev, target) = rest.split_once('|')?;
                Some(Version::DeletedEdit(EventId::parse(prev).ok()?, EventId::parse(target).ok()?))
            }
            _ => None,
        }
    }

    /// The deleted event this version stands for, with ID `id`.
    fn placeholder(&self, id: EventId) -> Option<Event> {
        let (prev, op) = match self {
            Version::Edited(_) => return None,
            Version::Deleted(prev) => (*prev, None),
            Version::DeletedEdit(prev, target) => (*prev, Some(Op { kind: OpKind::Edit, target: *target })),
        };
        Some(Event { id, prev, data: Bytes::new(), key: None, op, shown: Shown::Deleted, meta: None })
    }
}

/// `entries` (oldest first, as the stream holds them) with the versions
/// applied: edited entries show their latest data, and the deleted events
/// on the chain below each entry (above `bound` and above the entry before
/// it) and above the last entry (from `top`, the room's floor) are put back
/// in their places.
pub(crate) fn apply(
    entries: Vec<Event>,
    versions: &HashMap<EventId, Version>,
    bound: EventId,
    top: Option<EventId>,
) -> Vec<Event> {
    let mut out = Vec::with_capacity(entries.len());
    let mut below = bound;
    // The deleted events on the chain from `from` down to `below`, oldest first.
    let chain = |from: EventId, below: EventId, out: &mut Vec<Event>| {
        let mut found = Vec::new();
        let mut at = from;
        while at > below {
            let Some(event) = versions.get(&at).and_then(|v| v.placeholder(at)) else { break };
            at = event.prev;
            found.push(event);
        }
        out.extend(found.into_iter().rev());
    };
    for mut entry in entries {
        chain(entry.prev, below, &mut out);
        if let Some(Version::Edited(data)) = versions.get(&entry.id) {
            entry.data = data.clone();
            entry.shown = Shown::Edited;
        }
        below = entry.id;
        out.push(entry);
    }
    if let Some(top) = top {
        chain(top, below, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId::new(ms, 0)
    }

    fn entry(ms: u64, prev: u64) -> Event {
        Event { id: id(ms), prev: id(prev), data: Bytes::from(ms.to_string()), ..Event::default() }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            Version::parse(&Bytes::from_static(b"e|5-0,6-0|{\"a\":1}")),
            Some(Version::Edited(Bytes::from_static(b"{\"a\":1}")))
        );
        assert_eq!(Version::parse(&Bytes::from_static(b"x|4-0")), Some(Version::Deleted(id(4))));
        assert_eq!(Version::parse(&Bytes::from_static(b"o|4-0|3-0")), Some(Version::DeletedEdit(id(4), id(3))));
        assert_eq!(Version::parse(&Bytes::from_static(b"?")), None);
    }

    #[test]
    fn deleted_events_come_back_in_place_and_edits_show() {
        // 1 <- 2 <- [3 deleted] <- [4 deleted] <- 5, 2 edited, 6 deleted after 5.
        let versions: HashMap<EventId, Version> = [
            (id(2), Version::Edited(Bytes::from_static(b"\"new\""))),
            (id(3), Version::Deleted(id(2))),
            (id(4), Version::DeletedEdit(id(3), id(1))),
            (id(6), Version::Deleted(id(5))),
        ]
        .into_iter()
        .collect();
        let read = apply(vec![entry(1, 0), entry(2, 1), entry(5, 4)], &versions, EventId::ZERO, Some(id(6)));
        let ids: Vec<u64> = read.iter().map(|e| e.id.ms).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
        assert!(read.windows(2).all(|w| w[1].prev == w[0].id), "the chain holds");
        assert_eq!(read[1].data, Bytes::from_static(b"\"new\""));
        assert_eq!(read[1].shown, Shown::Edited);
        assert_eq!((read[2].shown, read[2].data.is_empty()), (Shown::Deleted, true));
        assert_eq!(read[3].op, Some(Op { kind: OpKind::Edit, target: id(1) }));
        // A read after a deleted event the reader already has does not show it again.
        let read = apply(vec![entry(5, 4)], &versions, id(4), None);
        assert_eq!(read.iter().map(|e| e.id.ms).collect::<Vec<_>>(), vec![5]);
    }
}
