//! One connection's rate limits: publishes, subscribe churn, reactions.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::auth::Grant;
use crate::budget::Window;
use crate::protocol::ReactionKey;

/// Subscribes and unsubscribes one connection may make per second: each
/// costs the store a read, so churn is bounded like publishing.
pub const SUBSCRIBE_RATE: u32 = 20;
/// Subscribes and unsubscribes allowed in a burst: enough to join the most
/// rooms a connection may follow at once.
pub const SUBSCRIBE_BURST: u32 = 100;
/// Reactions one connection may send per second, sustained.
pub const REACTION_RATE: u32 = 10;
/// Reactions one connection may send in a burst (the contract's 20).
pub const REACTION_BURST: u32 = 20;
/// Different reaction keys one connection may use within
/// [`REACTION_KEY_PERIOD`]: a viewer reacts with a few emoji, a flood of
/// invented keys comes from few connections each sending many.
pub const REACTION_KEYS: usize = 4;
/// The period [`REACTION_KEYS`] counts over.
pub const REACTION_KEY_PERIOD: Duration = Duration::from_secs(1);

/// Why a reaction was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReactLimit {
    /// Past the connection's reaction rate.
    Rate,
    /// Past the different keys a connection may use in a period.
    Keys,
}

/// One connection's reaction limits, made on its first reaction.
struct Reactions {
    rate: DefaultDirectRateLimiter,
    /// Keys used lately, and when last.
    recent: Vec<(ReactionKey, Instant)>,
}

/// A rate limiter allowing `per_second` sustained and `burst` at once (a
/// zero is taken as one: a limit, never a ban).
pub fn rate_limiter(per_second: u32, burst: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// What one connection has left of each rate. The API key, the
/// broadcaster's own backend, is never throttled.
pub struct Limiters {
    publishes: DefaultDirectRateLimiter,
    churn: DefaultDirectRateLimiter,
    /// Made on the first reaction (boxed: most connections never react,
    /// and this lives in every one).
    reactions: Option<Box<Reactions>>,
    /// New rooms this connection made lately (boxed, made on first use:
    /// few connections make rooms).
    rooms: Option<Box<Window>>,
}

impl Limiters {
    /// Fresh limits: `publish_rate` per second, bursts of `publish_burst`.
    pub fn new(publish_rate: u32, publish_burst: u32) -> Self {
        Limiters {
            publishes: rate_limiter(publish_rate, publish_burst),
            churn: rate_limiter(SUBSCRIBE_RATE, SUBSCRIBE_BURST),
            reactions: None,
            rooms: None,
        }
    }

    /// The connection's new-room window.
    pub fn rooms(&mut self) -> &mut Window {
        self.rooms.get_or_insert_with(Box::default)
    }

    /// Takes one publish; `false` past the rate.
    pub fn publish(&self, grant: &Grant) -> bool {
        matches!(grant, Grant::ApiKey) || self.publishes.check().is_ok()
    }

    /// Takes one subscribe or unsubscribe; `false` past the rate.
    pub fn churn(&self, grant: &Grant) -> bool {
        matches!(grant, Grant::ApiKey) || self.churn.check().is_ok()
    }

    /// Takes one reaction with `key`, or says which limit it is past;
    /// `true` when the connection had not used `key` lately (it counts as
    /// one more viewer sending it).
    pub fn react(&mut self, key: &ReactionKey) -> Result<bool, ReactLimit> {
        let limits = self.reactions.get_or_insert_with(|| {
            Box::new(Reactions { rate: rate_limiter(REACTION_RATE, REACTION_BURST), recent: Vec::new() })
        });
        let now = Instant::now();
        limits.recent.retain(|(_, at)| now.duration_since(*at) < REACTION_KEY_PERIOD);
        let known = limits.recent.iter().position(|(k, _)| k == key);
        if known.is_none() && limits.recent.len() >= REACTION_KEYS {
            return Err(ReactLimit::Keys);
        }
        limits.rate.check().map_err(|_| ReactLimit::Rate)?;
        match known {
            Some(i) => limits.recent[i].1 = now,
            None => limits.recent.push((key.clone(), now)),
        }
        Ok(known.is_none())
    }
}
