//! Daily byte accounting of one account or domain (sans-IO: the day is passed in). What
//! was counted since the last flush is kept apart, so the store can add it to what other
//! processes (an old one draining during a takeover) wrote in the meantime.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01, UTC: quotas reset at midnight UTC.
pub fn utc_day(t: SystemTime) -> u32 {
    (t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 86_400) as u32
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    day: u32,
    /// Bytes counted today, this process's and (as of the last flush) the store's.
    used: u64,
    /// Bytes counted here since the last flush.
    unflushed: u64,
}

#[derive(Debug, Default)]
pub struct QuotaAccount {
    usage: Mutex<Usage>,
}

impl QuotaAccount {
    /// An account with `used` bytes already counted on `day` (loaded from the store).
    pub fn loaded(day: u32, used: u64) -> QuotaAccount {
        QuotaAccount {
            usage: Mutex::new(Usage {
                day,
                used,
                unflushed: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes counted on `today` (0 once the day has turned).
    pub fn used(&self, today: u32) -> u64 {
        let u = self.lock();
        if u.day == today {
            u.used
        } else {
            0
        }
    }

    pub fn add(&self, today: u32, n: u64) {
        let mut u = self.lock();
        if u.day != today {
            // A new day: yesterday's unflushed bytes still belong to yesterday, but the
            // store keeps only today, so they are dropped with it.
            *u = Usage {
                day: today,
                used: 0,
                unflushed: 0,
            };
        }
        u.used += n;
        u.unflushed += n;
    }

    /// What to write: (day, bytes since the last flush); resets the unflushed count.
    pub fn take_unflushed(&self) -> Option<(u32, u64)> {
        let mut u = self.lock();
        if u.unflushed == 0 {
            return None;
        }
        let d = (u.day, u.unflushed);
        u.unflushed = 0;
        Some(d)
    }

    /// The write failed: count the bytes again for the next flush.
    pub fn restore(&self, day: u32, n: u64) {
        let mut u = self.lock();
        if u.day == day {
            u.unflushed += n;
        }
    }

    /// The store now holds `total` for `day` (ours and any other writer's): adopt it,
    /// plus what was counted here since the snapshot was taken.
    pub fn merged(&self, day: u32, total: u64) {
        let mut u = self.lock();
        if u.day == day {
            u.used = total + u.unflushed;
        }
    }

    /// Nothing left to write and the day is over: the entry can go.
    pub fn stale(&self, today: u32) -> bool {
        let u = self.lock();
        u.day != today && u.unflushed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days_turn_at_midnight_utc() {
        let d = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400);
        assert_eq!(utc_day(d), 20_000);
        assert_eq!(utc_day(d - Duration::from_secs(1)), 19_999);
    }

    #[test]
    fn counts_reset_with_the_day() {
        let a = QuotaAccount::loaded(10, 500);
        a.add(10, 100);
        assert_eq!(a.used(10), 600);
        assert_eq!(a.used(11), 0);
        a.add(11, 7);
        assert_eq!(a.used(11), 7);
        assert_eq!(a.take_unflushed(), Some((11, 7)));
    }

    #[test]
    fn flush_merges_other_writers_and_keeps_later_bytes() {
        let a = QuotaAccount::loaded(10, 0);
        a.add(10, 100);
        let (day, n) = a.take_unflushed().unwrap();
        a.add(10, 5); // counted while the store was being written
                      // Another process added 1000 meanwhile: the store now says 1100.
        a.merged(day, 1000 + n);
        assert_eq!(a.used(10), 1105);
        assert_eq!(a.take_unflushed(), Some((10, 5)));
        assert_eq!(a.take_unflushed(), None);
    }

    #[test]
    fn a_failed_write_is_retried() {
        let a = QuotaAccount::loaded(10, 0);
        a.add(10, 100);
        let (day, n) = a.take_unflushed().unwrap();
        a.restore(day, n);
        assert_eq!(a.take_unflushed(), Some((10, 100)));
        assert!(!a.stale(10));
        assert!(a.stale(11));
    }
}
