//! Exponential backoff with full jitter, for reconnect and retry loops.

use std::time::Duration;

/// Capped exponential backoff: each failure doubles the ceiling from `min`
/// up to `max`; the actual delay is drawn from the upper half of that ceiling,
/// so many nodes retrying at once do not stampede in step.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (swapped if given the wrong way round).
    pub fn new(min: Duration, max: Duration) -> Self {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        Backoff { min, max, attempt: 0 }
    }

    /// The ceiling for the current attempt, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait now; advances to the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = rand::random_range(0..=half.as_millis().max(1) as u64);
        (half + Duration::from_millis(jitter)).clamp(self.min, self.max)
    }

    /// Back to the first attempt, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_min_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(2), "{d:?}");
            assert!(b.ceiling() >= last);
            last = b.ceiling();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn min_and_max_cannot_be_swapped() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_millis(10));
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_secs(5));
        }
    }

    #[test]
    fn later_delays_are_longer_on_average() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(10));
        let first = b.next_delay();
        for _ in 0..6 {
            b.next_delay();
        }
        assert!(b.next_delay() > first * 8);
    }
}
