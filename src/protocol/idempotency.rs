//! Idempotency keys: a publisher's name for one logical publish, so that a
//! retry after a lost answer stores nothing twice.

use std::fmt;

/// Longest key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A validated idempotency key: 1-128 bytes of visible ASCII (`!` to `~`),
/// so it is safe in a header, a log line and a Redis key name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a string is not an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1-{MAX_IDEMPOTENCY_KEY_LEN} bytes of visible ASCII, without spaces")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidIdempotencyKey> {
        let ok = !raw.is_empty() && raw.len() <= MAX_IDEMPOTENCY_KEY_LEN && raw.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(IdempotencyKey(raw.to_owned()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_only() {
        assert!(IdempotencyKey::parse("bid-42:user-7").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(129)] {
            assert_eq!(IdempotencyKey::parse(bad), Err(InvalidIdempotencyKey), "{bad:?}");
        }
    }
}
