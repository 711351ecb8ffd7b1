//! A token bucket over bytes (sans-IO: time is passed in). Tokens may go negative: a
//! chunk already moved is always paid for, and the debt delays the next grant, so the
//! long-run rate stays exact even when several cores draw on one bucket at once.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// Most tokens that can pile up while idle.
    burst: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    pub fn unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Changes the rate and burst, keeping the tokens earned so far (capped by the burst).
    pub fn set(&mut self, rate: u64, burst: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(burst as f64);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
    }

    /// Whole tokens available now (0 while in debt); `u64::MAX` when unlimited.
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.unlimited() {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens.max(0.0) as u64
    }

    /// Pays for `n` bytes moved.
    pub fn take(&mut self, n: u64) {
        if !self.unlimited() {
            self.tokens -= n as f64;
        }
    }

    /// How long until `want` tokens are available (zero if they are now).
    pub fn wait_for(&mut self, now: Instant, want: u64) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        let missing = want as f64 - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate as f64)
        }
    }

    /// The smallest grant worth a wake-up: 20 ms of rate, between 4 KiB and 64 KiB, and
    /// never more than the burst (or no grant could ever be made).
    pub fn min_grant(&self) -> u64 {
        (self.rate / 50)
            .clamp(4096, 64 << 10)
            .min(self.burst.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.available(t0), 500);
        b.take(500);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 100);
        // Never more than the burst, however long it idles.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 500);
    }

    #[test]
    fn debt_delays_the_next_grant() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        b.take(600); // two cores each moved a chunk: 500 in debt
        assert_eq!(b.available(t0), 0);
        let w = b.wait_for(t0, 100);
        assert!((w.as_secs_f64() - 0.6).abs() < 1e-6, "{w:?}");
        assert_eq!(b.available(t0 + Duration::from_millis(600)), 100);
    }

    #[test]
    fn long_run_rate_is_exact() {
        // Grant as much as is available at each wake-up, as the relay does.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 20, 64 << 10, t0);
        let mut now = t0;
        let mut moved = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let want = 256 << 10;
            let w = b.wait_for(now, b.min_grant());
            now += w;
            let n = b.available(now).min(want);
            b.take(n);
            moved += n;
        }
        let rate = moved as f64 / (now - t0).as_secs_f64();
        assert!(
            (rate / (1 << 20) as f64 - 1.0).abs() < 0.01,
            "rate {rate} is not 1 MiB/s"
        );
    }

    #[test]
    fn set_keeps_earned_tokens_within_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        b.set(10, 50, t0);
        assert_eq!(b.available(t0), 50);
        b.set(0, 0, t0);
        assert_eq!(b.available(t0), u64::MAX);
        assert_eq!(b.wait_for(t0, 1 << 30), Duration::ZERO);
    }

    #[test]
    fn min_grant_fits_the_burst() {
        let t0 = Instant::now();
        assert_eq!(TokenBucket::new(100, 1000, t0).min_grant(), 1000);
        assert_eq!(TokenBucket::new(1 << 30, 1 << 30, t0).min_grant(), 64 << 10);
        assert_eq!(TokenBucket::new(1 << 20, 1 << 20, t0).min_grant(), 20971);
    }
}
