//! How long the live feed gathers a room's events before handing them on.
//!
//! Every delivery costs each subscriber one write, so the window caps
//! writes per subscriber per second. At ordinary rates the base window
//! (`--coalesce-ms`) is all: a lone event waits for nothing, a burst waits
//! out the rest of it. When one room carries a firehose, the window grows
//! with that room's rate, up to `--coalesce-max-ms`: each write then
//! carries more events, which is what the node (and every client) spends
//! its CPU on. Measured on two nodes and 1,000 subscribers of one room at
//! 2,500 msg/s: a 30 ms window instead of 10 ms cut the nodes' CPU by a
//! third and p99 from 317 ms to 72 ms, because the machine stopped running
//! out of cores. The ramp starts low (100 events/s, full at 1,000): with
//! clients that parse every frame, starting at 400 and full at 2,000 left
//! the nodes 1.5x the reference's CPU per delivery at 250-800 msg/s; this
//! ramp brought it to 1.04-1.30x, with p99 still below the reference's. At
//! 100 events/s and below nothing changes.

use std::time::Duration;

/// The busiest room's rate (events/s) up to which the base window holds.
const CALM: f64 = 100.0;
/// The rate from which the window is at its cap.
const FIREHOSE: f64 = 1_000.0;
/// Weight of the newest measurement in the rate estimate.
const SMOOTHING: f64 = 0.25;

/// The feed's coalescing bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalescing {
    /// The window at ordinary rates (0: deliver at once).
    pub base: Duration,
    /// The longest window, reached when one room's rate is a firehose; a
    /// cap below `base` means `base`.
    pub max: Duration,
}

impl Coalescing {
    /// A fixed window: no growth under load.
    pub fn fixed(window: Duration) -> Self {
        Coalescing { base: window, max: window }
    }
}

/// The current window, from the busiest room's recent rate.
#[derive(Debug)]
pub(crate) struct Window {
    bounds: Coalescing,
    /// Smoothed events per second of the busiest room per delivery.
    rate: f64,
    current: Duration,
}

impl Window {
    pub(crate) fn new(bounds: Coalescing) -> Self {
        metrics::gauge!("roomcast_feed_window_seconds").set(bounds.base.as_secs_f64());
        // A cap below the base means the base.
        let bounds = Coalescing { max: bounds.max.max(bounds.base), ..bounds };
        Window { bounds, rate: 0.0, current: bounds.base }
    }

    /// How long to gather after a delivery.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// Records a delivery whose busiest room had `events`, `since` the
    /// delivery before it, and moves the window.
    pub(crate) fn delivered(&mut self, events: usize, since: Duration) {
        let seconds = since.as_secs_f64().max(self.bounds.base.as_secs_f64()).max(0.001);
        let rate = events as f64 / seconds;
        self.rate += SMOOTHING * (rate - self.rate);
        let load = ((self.rate - CALM) / (FIREHOSE - CALM)).clamp(0.0, 1.0);
        self.current = self.bounds.base + (self.bounds.max - self.bounds.base).mul_f64(load);
        metrics::gauge!("roomcast_feed_window_seconds").set(self.current.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settle(window: &mut Window, events: usize, since: Duration) -> Duration {
        for _ in 0..40 {
            window.delivered(events, since);
        }
        window.current()
    }

    #[test]
    fn the_window_grows_with_the_busiest_rooms_rate_and_comes_back() {
        let mut w = Window::new(Coalescing { base: 10 * MS, max: 30 * MS });
        assert_eq!(w.current(), 10 * MS);
        // 1 event per 10 ms is 100/s: calm.
        assert_eq!(settle(&mut w, 1, 10 * MS), 10 * MS);
        // 60 events per 20 ms is 3,000/s: a firehose.
        assert_eq!(settle(&mut w, 60, 20 * MS), 30 * MS);
        // Halfway between calm and firehose: halfway between the bounds.
        let mid = settle(&mut w, 11, 20 * MS);
        assert!(mid > 15 * MS && mid < 25 * MS, "{mid:?}");
        // Back to one event a second.
        assert_eq!(settle(&mut w, 1, Duration::from_secs(1)), 10 * MS);
    }

    #[test]
    fn a_fixed_or_inverted_window_never_grows() {
        let mut fixed = Window::new(Coalescing::fixed(10 * MS));
        assert_eq!(settle(&mut fixed, 500, 10 * MS), 10 * MS);
        let mut inverted = Window::new(Coalescing { base: 50 * MS, max: 20 * MS });
        assert_eq!(settle(&mut inverted, 500, 10 * MS), 50 * MS);
        let mut off = Window::new(Coalescing::fixed(Duration::ZERO));
        assert_eq!(settle(&mut off, 500, Duration::ZERO), Duration::ZERO);
    }
}
