//! Reconnect delays: exponential from `initial` doubling to `max`, each with +-25% jitter.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The default for the component connection: 0.5 s doubling to 30 s.
    pub fn component() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The delay before the next attempt, given a jitter sample in [0, 1).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
        base.mul_f64(factor)
    }

    /// Called after a connection succeeded: the next failure starts over from `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_with_bounded_jitter() {
        let mut b = Backoff::component();
        let mid: Vec<_> = (0..10).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(mid[0], Duration::from_millis(500));
        assert_eq!(mid[1], Duration::from_secs(1));
        assert_eq!(mid[2], Duration::from_secs(2));
        assert_eq!(mid[9], Duration::from_secs(30));
        let mut b = Backoff::component();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(375));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(1250));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::component();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_millis(500));
    }
}
