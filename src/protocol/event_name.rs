//! Event names: what an event is called beside its data (`message`,
//! `order-shipped`, `App\Events\OrderShipped`), as Pusher's events are.

use std::fmt;
use std::sync::Arc;

/// Longest event name accepted, in bytes (Pusher's limit).
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// A validated event name: 1-200 bytes of UTF-8 without control characters.
/// Shared, since every copy of a named event carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName(Arc<str>);

/// Why a string is not an event name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event name is 1-{MAX_EVENT_NAME_LEN} bytes, without control characters")]
pub struct InvalidEventName;

impl EventName {
    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidEventName> {
        if !raw.is_empty() && raw.len() <= MAX_EVENT_NAME_LEN && !raw.chars().any(char::is_control) {
            Ok(EventName(Arc::from(raw)))
        } else {
            Err(InvalidEventName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_and_bounded() {
        for good in ["message", "client-typing", "App\\Events\\OrderShipped", "é 🎉", &"x".repeat(200)] {
            assert!(EventName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a\nb", "a\u{0}", &"x".repeat(201)] {
            assert!(EventName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
