//! Byte accounting of one account or domain over a period, a UTC day or a UTC month
//! (sans-IO: the period is passed in). What was counted since the last flush is kept
//! apart, so the store can add it to what other processes (an old one draining during a
//! takeover) wrote in the meantime.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01, UTC: daily quotas reset at midnight UTC.
pub fn utc_day(t: SystemTime) -> u32 {
    (t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 86_400) as u32
}

/// Months since January 1970, UTC: monthly quotas reset at midnight UTC on the 1st.
pub fn utc_month(t: SystemTime) -> u32 {
    // Days to a civil date (H. Hinnant's algorithm, for days on or after 1970-01-01).
    let z = utc_day(t) as u64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    ((year - 1970) * 12 + month - 1) as u32
}

/// The current day and month: an account key starting with `month-` counts by month,
/// every other by day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day: u32,
    pub month: u32,
}

impl Periods {
    pub fn at(t: SystemTime) -> Periods {
        Periods {
            day: utc_day(t),
            month: utc_month(t),
        }
    }

    pub fn now() -> Periods {
        Periods::at(SystemTime::now())
    }

    /// The current period of the account `key`.
    pub fn of(&self, key: &str) -> u32 {
        if key.starts_with("month-") {
            self.month
        } else {
            self.day
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    period: u32,
    /// Bytes counted in the period, this process's and (as of the last flush) the store's.
    used: u64,
    /// Bytes counted here since the last flush.
    unflushed: u64,
}

#[derive(Debug, Default)]
pub struct QuotaAccount {
    usage: Mutex<Usage>,
}

impl QuotaAccount {
    /// An account with `used` bytes already counted in period `day` (loaded from the
    /// store). Here and below a "day" is whichever period the account counts by.
    pub fn loaded(day: u32, used: u64) -> QuotaAccount {
        QuotaAccount {
            usage: Mutex::new(Usage {
                period: day,
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
        if u.period == today {
            u.used
        } else {
            0
        }
    }

    pub fn add(&self, today: u32, n: u64) {
        let mut u = self.lock();
        if u.period != today {
            // A new day: yesterday's unflushed bytes still belong to yesterday, but the
            // store keeps only today, so they are dropped with it.
            *u = Usage {
                period: today,
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
        let d = (u.period, u.unflushed);
        u.unflushed = 0;
        Some(d)
    }

    /// The write failed: count the bytes again for the next flush.
    pub fn restore(&self, day: u32, n: u64) {
        let mut u = self.lock();
        if u.period == day {
            u.unflushed += n;
        }
    }

    /// The store now holds `total` for `day` (ours and any other writer's): adopt it,
    /// plus what was counted here since the snapshot was taken.
    pub fn merged(&self, day: u32, total: u64) {
        let mut u = self.lock();
        if u.period == day {
            u.used = total + u.unflushed;
        }
    }

    /// Nothing left to write and the day is over: the entry can go.
    pub fn stale(&self, today: u32) -> bool {
        let u = self.lock();
        u.period != today && u.unflushed == 0
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
    fn months_turn_on_the_first_at_midnight_utc() {
        let at = |days: u64| UNIX_EPOCH + Duration::from_secs(days * 86_400);
        assert_eq!(utc_month(at(0)), 0); // 1970-01-01
        assert_eq!(utc_month(at(30)), 0); // 1970-01-31
        assert_eq!(utc_month(at(31)), 1); // 1970-02-01
        assert_eq!(utc_month(at(11_016)), 30 * 12 + 1); // 2000-02-29
        assert_eq!(utc_month(at(11_017)), 30 * 12 + 2); // 2000-03-01
        assert_eq!(utc_month(at(20_787) - Duration::from_secs(1)), 56 * 12 + 10); // 2026-11-30
        assert_eq!(utc_month(at(20_788)), 56 * 12 + 11); // 2026-12-01
        let p = Periods::at(at(20_788));
        assert_eq!(p.of("jid:romeo@example.org"), 20_788);
        assert_eq!(p.of("month-jid:romeo@example.org"), 56 * 12 + 11);
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
