//! Reaction keys: what a viewer reacts with (an emoji, a short word).

use std::fmt;

/// Longest reaction key accepted, in bytes.
pub const MAX_REACTION_KEY_LEN: usize = 32;

/// A validated reaction key: 1-32 bytes of UTF-8 without whitespace or
/// control characters, so it is safe as a JSON key and a log field.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ReactionKey(String);

/// Why a string is not a reaction key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a reaction key is 1-{MAX_REACTION_KEY_LEN} bytes, without whitespace or control characters")]
pub struct InvalidReactionKey;

impl ReactionKey {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidReactionKey> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_REACTION_KEY_LEN
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(ReactionKey(raw.to_owned()))
        } else {
            Err(InvalidReactionKey)
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_visible_keys_only() {
        for good in ["👏", "clap", "❤️", &"k".repeat(32)] {
            assert!(ReactionKey::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "two words", "tab\t", "nl\n", "\u{7}", &"k".repeat(33)] {
            assert_eq!(ReactionKey::parse(bad), Err(InvalidReactionKey), "{bad:?}");
        }
    }
}
