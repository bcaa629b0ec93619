//! Reaction keys: what a viewer reacts with (an emoji, a short word).

use std::fmt;

/// Longest reaction key accepted, in bytes.
pub const MAX_REACTION_KEY_LEN: usize = 32;

/// A validated reaction key: 1-32 bytes of UTF-8 without whitespace,
/// control or format characters (bidi overrides, zero-width joiners and
/// spaces, soft hyphens), so it is safe as a JSON key and a log field and
/// shows every viewer what it says. Emoji sequences stay whole: the
/// zero-width joiner and the variation selectors they use are allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ReactionKey(String);

/// Why a string is not a reaction key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a reaction key is 1-{MAX_REACTION_KEY_LEN} bytes, without whitespace, control or format characters")]
pub struct InvalidReactionKey;

impl ReactionKey {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidReactionKey> {
        if is_visible_key(raw, MAX_REACTION_KEY_LEN) {
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

/// Whether `raw` is 1-`max` bytes without whitespace, control or format
/// characters: the rule for every short key a client names (reactions,
/// state keys).
pub(super) fn is_visible_key(raw: &str, max: usize) -> bool {
    !raw.is_empty() && raw.len() <= max && !raw.chars().any(|c| c.is_whitespace() || c.is_control() || is_format(c))
}

/// Unicode format characters (category Cf) that change how text around
/// them shows without showing themselves, less the two that emoji need:
/// the zero-width joiner (U+200D) and the variation selectors (not Cf).
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200C}'
            | '\u{200E}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0001}'
    )
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
        assert!(ReactionKey::parse("👩\u{200D}🚀").is_ok(), "an emoji's joiner stays");
        for bad in [
            "",
            "two words",
            "tab\t",
            "nl\n",
            "\u{7}",
            &"k".repeat(33),
            "\u{202E}evil",
            "a\u{200B}b",
            "\u{2066}x\u{2069}",
            "soft\u{00AD}",
            "\u{FEFF}",
        ] {
            assert_eq!(ReactionKey::parse(bad), Err(InvalidReactionKey), "{bad:?}");
        }
    }
}
