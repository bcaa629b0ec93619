//! Event IDs as the harness reads them off the wire (`ms-seq`), ordered the
//! way the protocol orders them. The harness speaks only the public
//! protocol, so it keeps its own small copy rather than the server's type.

use std::fmt;

/// An event ID: milliseconds and a sequence number, ordered by both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// An ID from its parts.
    pub fn new(ms: u64, seq: u64) -> EventId {
        EventId { ms, seq }
    }

    /// Parses `ms-seq` (or a bare `ms`); `None` for anything else.
    pub fn parse(text: &str) -> Option<EventId> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(EventId { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_prints() {
        let a = EventId::parse("1732270000000-3").unwrap();
        assert_eq!(a.to_string(), "1732270000000-3");
        assert!(EventId::parse("0-0").unwrap() < a);
        assert!(a < EventId::parse("1732270000000-10").unwrap());
        assert_eq!(EventId::parse("7"), Some(EventId::new(7, 0)));
        assert_eq!(EventId::parse("x-1"), None);
    }
}
