//! Per-source-address limits: concurrent connections and new connections per second, each
//! counted per IPv4 address or per IPv6 /64 (one host usually owns a whole /64), and
//! concurrent connections summed over the prefixes a network or a botnet owns many
//! addresses of: IPv4 /24, IPv6 /56 (a site) and /48 (an organisation). Checked once per
//! accepted connection, never per byte; the table is sharded to keep cores apart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use crate::stats::Refusal;

const SHARDS: usize = 16;

/// A connection's source address (an IPv4-mapped IPv6 address counts as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    addr: u128,
    v4: bool,
}

/// What a limit is counted against: the host (IPv4 address, IPv6 /64) or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    masked: u128,
    level: Level,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Level {
    Host,
    V4Slash24,
    V6Slash56,
    V6Slash48,
}

/// The top `bits` of a 128-bit address.
fn prefix(addr: u128, bits: u32) -> u128 {
    addr & !(u128::MAX >> bits)
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source {
                addr: u32::from(a) as u128,
                v4: true,
            },
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source {
                    addr: u32::from(v4) as u128,
                    v4: true,
                },
                None => Source {
                    addr: u128::from(a),
                    v4: false,
                },
            },
        }
    }

    fn host(self) -> Key {
        let masked = if self.v4 {
            self.addr
        } else {
            prefix(self.addr, 64)
        };
        Key {
            masked,
            level: Level::Host,
        }
    }

    /// The aggregate prefixes this source counts in.
    fn prefixes(self) -> impl Iterator<Item = Key> {
        let a = self.addr;
        let key = |level, masked| Key { masked, level };
        let v4 = self.v4.then(|| key(Level::V4Slash24, a & !0xff));
        let v6 = (!self.v4).then(|| {
            [
                key(Level::V6Slash56, prefix(a, 56)),
                key(Level::V6Slash48, prefix(a, 48)),
            ]
        });
        v4.into_iter().chain(v6.into_iter().flatten())
    }
}

/// The limits in force; 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceLimits {
    /// Connections open at once per IPv4 address or IPv6 /64.
    pub per_ip: u32,
    /// New connections per second per IPv4 address or IPv6 /64.
    pub rate: f64,
    pub burst: u32,
    /// Connections open at once per IPv4 /24, IPv6 /56, IPv6 /48.
    pub per_v4_24: u32,
    pub per_v6_56: u32,
    pub per_v6_48: u32,
}

impl SourceLimits {
    fn of(&self, level: Level) -> u32 {
        match level {
            Level::Host => self.per_ip,
            Level::V4Slash24 => self.per_v4_24,
            Level::V6Slash56 => self.per_v6_56,
            Level::V6Slash48 => self.per_v6_48,
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
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    /// 0 = unlimited.
    max_open: AtomicU32,
    /// Per prefix level (/24, /56, /48); 0 = unlimited.
    max_prefix: [AtomicU32; 3],
    /// New connections per second (f64 bits); 0 = unlimited.
    rate: AtomicU64,
    burst: AtomicU32,
}

impl IpLimiter {
    pub fn new(limits: SourceLimits) -> IpLimiter {
        let l = IpLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_open: AtomicU32::new(0),
            max_prefix: Default::default(),
            rate: AtomicU64::new(0),
            burst: AtomicU32::new(1),
        };
        l.set(limits);
        l
    }

    /// Changes the limits (SIGHUP); connections already open stay.
    pub fn set(&self, limits: SourceLimits) {
        self.max_open.store(limits.per_ip, Relaxed);
        self.rate.store(limits.rate.max(0.0).to_bits(), Relaxed);
        self.burst.store(limits.burst.max(1), Relaxed);
        for (i, level) in [Level::V4Slash24, Level::V6Slash56, Level::V6Slash48]
            .into_iter()
            .enumerate()
        {
            self.max_prefix[i].store(limits.of(level), Relaxed);
        }
    }

    fn max_of(&self, level: Level) -> u32 {
        match level {
            Level::Host => self.max_open.load(Relaxed),
            Level::V4Slash24 => self.max_prefix[0].load(Relaxed),
            Level::V6Slash56 => self.max_prefix[1].load(Relaxed),
            Level::V6Slash48 => self.max_prefix[2].load(Relaxed),
        }
    }

    fn shard(&self, k: Key) -> &Mutex<HashMap<Key, Entry>> {
        let h = (k.masked ^ (k.masked >> 64)) as u64 ^ k.level as u64;
        &self.shards[(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS]
    }

    /// A new connection from `src`: admitted (and counted) or refused with the reason.
    pub fn admit(&self, src: Source, now: Instant) -> Result<(), Refusal> {
        self.admit_host(src.host(), now)?;
        // Then each prefix; a refusal takes back what was counted.
        let mut counted = Vec::with_capacity(2);
        for key in src.prefixes() {
            let max = self.max_of(key.level);
            let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
            let e = map.entry(key).or_insert(Entry {
                open: 0,
                tokens: 0.0,
                last: now,
            });
            if max > 0 && e.open >= max {
                drop(map);
                for k in counted.into_iter().chain([src.host()]) {
                    self.release_key(k);
                }
                return Err(Refusal::PerPrefixConnections);
            }
            e.open += 1;
            counted.push(key);
        }
        Ok(())
    }

    fn admit_host(&self, key: Key, now: Instant) -> Result<(), Refusal> {
        let max_open = self.max_open.load(Relaxed);
        let rate = f64::from_bits(self.rate.load(Relaxed));
        let burst = self.burst.load(Relaxed) as f64;
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(key).or_insert(Entry {
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

    /// Counts a connection from `src` that was admitted elsewhere (handed over by an old
    /// process during an upgrade), without refusing it.
    pub fn count(&self, src: Source) {
        for key in [src.host()].into_iter().chain(src.prefixes()) {
            let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key)
                .or_insert(Entry {
                    open: 0,
                    tokens: 0.0,
                    last: Instant::now(),
                })
                .open += 1;
        }
    }

    /// A connection admitted for `src` closed.
    pub fn release(&self, src: Source) {
        for key in [src.host()].into_iter().chain(src.prefixes()) {
            self.release_key(key);
        }
    }

    fn release_key(&self, key: Key) {
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&key) {
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
            map.retain(|k, e| {
                let refilled = k.level != Level::Host
                    || rate <= 0.0
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

    fn host_only(per_ip: u32, rate: f64, burst: u32) -> SourceLimits {
        SourceLimits {
            per_ip,
            rate,
            burst,
            per_v4_24: 0,
            per_v6_56: 0,
            per_v6_48: 0,
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let host = |s| src(s).host();
        assert_eq!(host("2001:db8:1:2::1"), host("2001:db8:1:2:ffff::9"));
        assert_ne!(host("2001:db8:1:2::1"), host("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.7"), src("192.0.2.7"));
        assert_ne!(host("192.0.2.7"), host("192.0.2.8"));
    }

    #[test]
    fn prefixes_sum_many_addresses_and_release_on_refusal() {
        let l = IpLimiter::new(SourceLimits {
            per_ip: 2,
            rate: 0.0,
            burst: 1,
            per_v4_24: 3,
            per_v6_56: 4,
            per_v6_48: 6,
        });
        let t = Instant::now();
        // IPv4 /24: three addresses, one connection each, then the /24 is full.
        for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            l.admit(src(a), t).unwrap();
        }
        assert_eq!(
            l.admit(src("192.0.2.4"), t),
            Err(Refusal::PerPrefixConnections)
        );
        l.admit(src("192.0.3.1"), t).expect("another /24");
        l.release(src("192.0.2.1"));
        l.admit(src("192.0.2.4"), t).expect("room again");
        // The refused one took nothing: 192.0.2.4 holds one host slot, not two.
        l.admit(src("192.0.2.4"), t).unwrap_err();
        l.release(src("192.0.2.3"));
        l.admit(src("192.0.2.4"), t)
            .expect("a second for this host");
        // IPv6: every /64 of one /56 counts there, and /56s of one /48 there.
        for i in 0..4 {
            l.admit(src(&format!("2001:db8:0:{i}::1")), t).unwrap();
        }
        assert_eq!(
            l.admit(src("2001:db8:0:ff::1"), t),
            Err(Refusal::PerPrefixConnections),
            "the /56 is full"
        );
        l.admit(src("2001:db8:0:100::1"), t).unwrap();
        l.admit(src("2001:db8:0:200::1"), t).unwrap();
        assert_eq!(
            l.admit(src("2001:db8:0:300::1"), t),
            Err(Refusal::PerPrefixConnections),
            "the /48 is full"
        );
        l.admit(src("2001:db8:1::1"), t).expect("another /48");
    }

    #[test]
    fn concurrent_limit_bites_and_releases() {
        let l = IpLimiter::new(host_only(2, 0.0, 1));
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
        let l = IpLimiter::new(host_only(0, 10.0, 5));
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
        let l = IpLimiter::new(host_only(8, 1.0, 2));
        let t = Instant::now();
        let a = src("203.0.113.1");
        let b = src("203.0.113.2");
        l.admit(a, t).unwrap();
        l.admit(b, t).unwrap();
        l.release(b);
        l.sweep(t);
        // a, b and their /24 (counted even without a limit, so that one set later on
        // reload starts from the truth).
        assert_eq!(l.tracked(), 3, "b's bucket has not refilled yet");
        l.sweep(t + Duration::from_secs(5));
        assert_eq!(l.tracked(), 2, "b forgotten, a and its /24 still open");
        l.release(a);
        l.sweep(t + Duration::from_secs(10));
        assert_eq!(l.tracked(), 0);
    }
}
