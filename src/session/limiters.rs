//! One connection's rate limits: publishes, subscribe churn, reactions.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::auth::Grant;

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
    reactions: Option<Box<DefaultDirectRateLimiter>>,
}

impl Limiters {
    /// Fresh limits: `publish_rate` per second, bursts of `publish_burst`.
    pub fn new(publish_rate: u32, publish_burst: u32) -> Self {
        Limiters {
            publishes: rate_limiter(publish_rate, publish_burst),
            churn: rate_limiter(SUBSCRIBE_RATE, SUBSCRIBE_BURST),
            reactions: None,
        }
    }

    /// Takes one publish; `false` past the rate.
    pub fn publish(&self, grant: &Grant) -> bool {
        matches!(grant, Grant::ApiKey) || self.publishes.check().is_ok()
    }

    /// Takes one subscribe or unsubscribe; `false` past the rate.
    pub fn churn(&self, grant: &Grant) -> bool {
        matches!(grant, Grant::ApiKey) || self.churn.check().is_ok()
    }

    /// Takes one reaction; `false` past the rate.
    pub fn react(&mut self) -> bool {
        let limiter = self.reactions.get_or_insert_with(|| Box::new(rate_limiter(REACTION_RATE, REACTION_BURST)));
        limiter.check().is_ok()
    }
}
