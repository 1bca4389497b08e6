//! `TokenBucket`: the per-connection frame rate limit (a steady rate with a burst).

use std::time::Instant;

pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate_per_sec: rate_per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            updated: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
}
