//! `TokenBucket`: the per-connection frame rate limit (a steady rate with a burst), a
//! `governor` GCRA limiter read at the instant the caller passes in.

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Instant;

/// The clock of one bucket: whatever instant the last `try_take` was given, so the decision
/// depends on the caller's `now` only (deterministic in tests, one clock read per frame).
struct GivenInstant(Cell<Instant>);

impl Clock for GivenInstant {
    type Instant = Instant;

    fn now(&self) -> Instant {
        self.0.get()
    }
}

/// `burst` frames at once, then `rate_per_sec` per second; starts full.
pub struct TokenBucket {
    limiter: RateLimiter<NotKeyed, InMemoryState, GivenInstant, NoOpMiddleware<Instant>>,
}

impl TokenBucket {
    /// Zero rates count as 1 (config validation rejects them anyway).
    pub fn new(rate_per_sec: u32, burst: u32) -> TokenBucket {
        let nonzero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(nonzero(rate_per_sec)).allow_burst(nonzero(burst));
        let clock = GivenInstant(Cell::new(Instant::now()));
        TokenBucket { limiter: RateLimiter::direct_with_clock(quota, clock) }
    }

    /// Takes one token if there is one at `now`. An instant earlier than one seen before adds
    /// no tokens.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.limiter.clock().0.set(now);
        self.limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_burst_then_refills_at_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| b.try_take(start)));
        assert!(!b.try_take(start));
        assert!(b.try_take(start + Duration::from_millis(110)));
        assert!(!b.try_take(start + Duration::from_millis(110)));
    }

    #[test]
    fn refills_no_more_than_the_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new(100, 5);
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.try_take(later)).count(), 5);
        // Steady state: one per 10 ms.
        let t = later + Duration::from_millis(10);
        assert!(b.try_take(t));
        assert!(!b.try_take(t));
    }
}
