//! Merging by cursor: what of a live batch a subscriber still needs.

use crate::protocol::{Event, EventId};

/// What to do with a live batch, given the subscriber's cursor (the last
/// event it received, or the position it is known to be complete up to).
#[derive(Debug, PartialEq, Eq)]
pub enum Accept {
    /// Everything in it was already delivered.
    Skip,
    /// All of it is new and follows the cursor directly: send the shared frame.
    All,
    /// Events from this index on are new and follow the cursor directly.
    From(usize),
    /// The first new event does not follow the cursor: something between
    /// was missed. Catch up from the store instead (which reports a gap if
    /// the missed events are gone).
    Discontinuous,
}

/// Decides how a batch of consecutive events meets `cursor`.
pub fn accept(cursor: EventId, events: &[Event]) -> Accept {
    let first_new = events.partition_point(|e| e.id <= cursor);
    match events.get(first_new) {
        None => Accept::Skip,
        Some(e) if e.prev != cursor => Accept::Discontinuous,
        Some(_) if first_new == 0 => Accept::All,
        Some(_) => Accept::From(first_new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Events with IDs `ids`, chained from `prev`.
    fn chain(prev: u64, ids: &[u64]) -> Vec<Event> {
        let mut p = EventId::new(prev, 0);
        ids.iter()
            .map(|&i| {
                let e = Event { id: EventId::new(i, 0), prev: p, data: Bytes::from_static(b"1"), ..Event::default() };
                p = e.id;
                e
            })
            .collect()
    }

    #[test]
    fn merges_overlap_and_detects_holes() {
        let c = |ms| EventId::new(ms, 0);
        assert_eq!(accept(c(3), &chain(3, &[4, 5])), Accept::All);
        assert_eq!(accept(c(5), &chain(3, &[4, 5])), Accept::Skip);
        assert_eq!(accept(c(9), &chain(3, &[4, 5])), Accept::Skip);
        assert_eq!(accept(c(4), &chain(3, &[4, 5, 6])), Accept::From(1));
        assert_eq!(accept(c(2), &chain(3, &[4, 5])), Accept::Discontinuous);
        assert_eq!(accept(EventId::ZERO, &chain(0, &[1])), Accept::All);
        assert_eq!(accept(EventId::ZERO, &[]), Accept::Skip);
    }
}
