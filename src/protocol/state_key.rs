//! State keys: the name of one current value of a room (`score`, `lot-17`).

use std::fmt;
use std::sync::Arc;

use super::reaction::is_visible_key;

/// Longest state key accepted, in bytes.
pub const MAX_STATE_KEY_LEN: usize = 64;

/// A validated state key: 1-64 bytes of UTF-8 without whitespace, control
/// or format characters (the rule of reaction keys). A keyed event becomes
/// its key's current value in the room. Shared, since every copy of a keyed
/// event carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateKey(Arc<str>);

/// Why a string is not a state key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a state key is 1-{MAX_STATE_KEY_LEN} bytes, without whitespace, control or format characters")]
pub struct InvalidStateKey;

impl StateKey {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidStateKey> {
        if is_visible_key(raw, MAX_STATE_KEY_LEN) {
            Ok(StateKey(Arc::from(raw)))
        } else {
            Err(InvalidStateKey)
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for StateKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_current_values() {
        for good in ["score", "lot-17", "poll:open", "🏆", &"k".repeat(64)] {
            assert!(StateKey::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "two words", "tab\t", &"k".repeat(65), "\u{202e}x", "a\u{200b}"] {
            assert_eq!(StateKey::parse(bad), Err(InvalidStateKey), "{bad:?}");
        }
    }
}
