//! `EventId`: a stream entry ID (`ms-seq`), the resume token.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Redis-stream-style entry ID: milliseconds and a sequence number.
///
/// IDs are strictly increasing within a room, so the derived ordering
/// (milliseconds first, then sequence) is the delivery order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds part (the wall clock of the store when the entry was added).
    pub ms: u64,
    /// Sequence within the same millisecond.
    pub seq: u64,
}

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id {0:?}: expected `<ms>-<seq>` or `<ms>` with decimal numbers")]
pub struct ParseEventIdError(pub String);

impl EventId {
    /// `0-0`: before every entry. A client's `0` means "from the oldest kept".
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The largest ID there is: nothing can come after it.
    pub const MAX: EventId = EventId { ms: u64::MAX, seq: u64::MAX };

    /// Builds an ID from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        EventId { ms, seq }
    }

    /// True for `0-0`.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Parses `ms-seq` or a bare `ms` (meaning `ms-0`, as Redis reads it).
    pub fn parse(s: &str) -> Result<Self, ParseEventIdError> {
        let err = || ParseEventIdError(truncate(s));
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, Some(seq)),
            None => (s, None),
        };
        let ms = parse_decimal(ms).ok_or_else(err)?;
        let seq = match seq {
            Some(seq) => parse_decimal(seq).ok_or_else(err)?,
            None => 0,
        };
        Ok(EventId { ms, seq })
    }
}

/// Strict decimal: 1-20 ASCII digits that fit a u64 (no sign, no spaces).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Keeps error messages short when a client sends a huge bogus ID.
fn truncate(s: &str) -> String {
    s.chars().take(48).collect()
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ParseEventIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventId::parse(s)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EventId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_bare_forms() {
        assert_eq!(EventId::parse("1732270000000-3"), Ok(EventId::new(1732270000000, 3)));
        assert_eq!(EventId::parse("0"), Ok(EventId::ZERO));
        assert_eq!(EventId::parse("17"), Ok(EventId::new(17, 0)));
        assert_eq!(EventId::parse("18446744073709551615-18446744073709551615"), Ok(EventId::new(u64::MAX, u64::MAX)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            " 1",
            "+1",
            "1.5",
            "18446744073709551616",
            "1-18446744073709551616",
            "٣",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn orders_by_ms_then_seq_and_round_trips() {
        let a = EventId::new(5, 9);
        let b = EventId::new(6, 0);
        assert!(a < b && EventId::ZERO < a);
        assert_eq!(EventId::parse(&a.to_string()), Ok(a));
    }
}
