//! `RoomName`: a validated room name.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest room name accepted, in bytes (Pusher's longest channel name).
pub const MAX_ROOM_LEN: usize = 164;

/// A room's name: 1-164 bytes of `[A-Za-z0-9_.:-]` and Pusher's other
/// channel characters `= @ , ;` (a Pusher channel is the room of its name).
///
/// The charset needs no escaping in JSON, SSE, URLs or Redis keys, which is
/// what lets frames be assembled without an escaper. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a string is not a [`RoomName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid room name: use 1-164 bytes of A-Z a-z 0-9 _ . : - = @ , ;")]
pub struct InvalidRoomName;

impl RoomName {
    /// Validates and wraps a room name.
    pub fn parse(s: &str) -> Result<Self, InvalidRoomName> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ROOM_LEN
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'=' | b'@' | b',' | b';')
            });
        if ok {
            Ok(RoomName(Arc::from(s)))
        } else {
            Err(InvalidRoomName)
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for RoomName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RoomName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        for good in ["show-42", "a", "A.b:c_d-9", &"x".repeat(164), "private-encrypted-a=b@c,d;e", "presence-room.1"] {
            assert!(RoomName::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "a b", "a/b", "é", "{x}", "a\n", &"x".repeat(165), "a\"b", "a|b", "a%b", "a*b", "a#b", "a?b"] {
            assert!(RoomName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
