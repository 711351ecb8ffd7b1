//! Per-source-address limits: concurrent connections and new connections per second, each
//! counted per IPv4 address or per IPv6 /64 (one host usually owns a whole /64). Checked once
//! per accepted connection, never per byte; the table is sharded to keep cores apart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use crate::stats::Refusal;

const SHARDS: usize = 16;

/// The address a limit is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source(u32::from(a) as u128),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source(u32::from(v4) as u128),
                // Keep the /64 prefix, tagged so it never equals an IPv4 value.
                None => Source((u128::from(a) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    open: u32,
    tokens: f64,
    last: Instant,
}

pub struct IpLimiter {
    shards: Vec<Mutex<HashMap<Source, Entry>>>,
    /// 0 = unlimited.
    max_open: AtomicU32,
    /// New connections per second (f64 bits); 0 = unlimited.
    rate: AtomicU64,
    burst: AtomicU32,
}

impl IpLimiter {
    pub fn new(max_open: u32, rate: f64, burst: u32) -> IpLimiter {
        let l = IpLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_open: AtomicU32::new(0),
            rate: AtomicU64::new(0),
            burst: AtomicU32::new(1),
        };
        l.set(max_open, rate, burst);
        l
    }

    /// Changes the limits (SIGHUP); connections already open stay.
    pub fn set(&self, max_open: u32, rate: f64, burst: u32) {
        self.max_open.store(max_open, Relaxed);
        self.rate.store(rate.max(0.0).to_bits(), Relaxed);
        self.burst.store(burst.max(1), Relaxed);
    }

    fn shard(&self, s: Source) -> &Mutex<HashMap<Source, Entry>> {
        let h = (s.0 ^ (s.0 >> 64)) as u64;
        &self.shards[(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS]
    }

    /// A new connection from `src`: admitted (and counted) or refused with the reason.
    pub fn admit(&self, src: Source, now: Instant) -> Result<(), Refusal> {
        let max_open = self.max_open.load(Relaxed);
        let rate = f64::from_bits(self.rate.load(Relaxed));
        let burst = self.burst.load(Relaxed) as f64;
        let mut map = self.shard(src).lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(src).or_insert(Entry {
            open: 0,
            tokens: burst,
            last: now,
        });
        if max_open > 0 && e.open >= max_open {
            return Err(Refusal::PerIpConnections);
        }
        if rate > 0.0 {
            let dt = now.saturating_duration_since(e.last).as_secs_f64();
            e.tokens = (e.tokens + dt * rate).min(burst);
            e.last = now;
            if e.tokens < 1.0 {
                return Err(Refusal::PerIpRate);
            }
            e.tokens -= 1.0;
        }
        e.open += 1;
        Ok(())
    }

    /// A connection admitted for `src` closed.
    pub fn release(&self, src: Source) {
        let mut map = self.shard(src).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&src) {
            e.open = e.open.saturating_sub(1);
        }
    }

    /// Forgets sources with nothing open whose rate bucket has refilled, bounding the table
    /// by the addresses actually connected or recently active.
    pub fn sweep(&self, now: Instant) {
        let rate = f64::from_bits(self.rate.load(Relaxed));
        let burst = self.burst.load(Relaxed) as f64;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, e| {
                let refilled = rate <= 0.0
                    || e.tokens + now.saturating_duration_since(e.last).as_secs_f64() * rate
                        >= burst;
                e.open > 0 || !refilled
            });
        }
    }

    /// Sources tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.7"), src("192.0.2.7"));
        assert_ne!(src("192.0.2.7"), src("192.0.2.8"));
    }

    #[test]
    fn concurrent_limit_bites_and_releases() {
        let l = IpLimiter::new(2, 0.0, 1);
        let t = Instant::now();
        let a = src("192.0.2.1");
        assert!(l.admit(a, t).is_ok());
        assert!(l.admit(a, t).is_ok());
        assert_eq!(l.admit(a, t), Err(Refusal::PerIpConnections));
        assert!(l.admit(src("192.0.2.2"), t).is_ok(), "others unaffected");
        l.release(a);
        assert!(l.admit(a, t).is_ok());
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let l = IpLimiter::new(0, 10.0, 5);
        let t = Instant::now();
        let a = src("198.51.100.1");
        for _ in 0..5 {
            assert!(l.admit(a, t).is_ok());
        }
        assert_eq!(l.admit(a, t), Err(Refusal::PerIpRate));
        // 10/s: one token every 100 ms.
        assert!(l.admit(a, t + Duration::from_millis(100)).is_ok());
        assert_eq!(
            l.admit(a, t + Duration::from_millis(110)),
            Err(Refusal::PerIpRate)
        );
        let admitted = (1..=100)
            .filter(|i| l.admit(a, t + Duration::from_millis(110 + 10 * i)).is_ok())
            .count();
        assert_eq!(admitted, 10, "one second admits the rate");
    }

    #[test]
    fn sweep_forgets_idle_sources_only() {
        let l = IpLimiter::new(8, 1.0, 2);
        let t = Instant::now();
        let a = src("203.0.113.1");
        let b = src("203.0.113.2");
        l.admit(a, t).unwrap();
        l.admit(b, t).unwrap();
        l.release(b);
        l.sweep(t);
        assert_eq!(l.tracked(), 2, "b's bucket has not refilled yet");
        l.sweep(t + Duration::from_secs(5));
        assert_eq!(l.tracked(), 1, "b forgotten, a still open");
    }
}
