//! One stream's view of the shaping: before each read the relay asks how many bytes it
//! may move (`grant`), and after it pays for what it moved (`paid`). Both directions of a
//! stream share one `StreamShaper`, so rates count the two directions together.

use super::bucket::TokenBucket;
use super::config::QuotaLimits;
use super::quota::{Periods, QuotaAccount};
use super::{lock, Bucket, Shaping};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Which quota an account counts against (its index in `QuotaLimits`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    JidDay = 0,
    DomainDay = 1,
    JidMonth = 2,
    DomainMonth = 3,
}

impl Limit {
    /// The account's current period: today, or this month.
    fn period(self, now: &Periods) -> u32 {
        match self {
            Limit::JidDay | Limit::DomainDay => now.day,
            Limit::JidMonth | Limit::DomainMonth => now.month,
        }
    }
}

/// The answer to "may I read `want` bytes now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read at most this many bytes (at least one).
    Go(usize),
    /// Not enough tokens: ask again at this time.
    Wait(Instant),
    /// The requester's daily or monthly quota is used up: end the stream.
    QuotaUsed,
}

pub struct StreamShaper {
    shaping: Arc<Shaping>,
    /// The requester's domain, whose overrides apply (`None`: no requester known).
    domain: Option<Box<str>>,
    own: Mutex<Own>,
    /// The global bucket, then the requester's account and domain buckets if known.
    shared: Vec<Arc<Bucket>>,
    accounts: Vec<(Arc<QuotaAccount>, Limit)>,
}

/// What a stream takes from the settings, with the reload generation it came from.
struct Own {
    gen: u64,
    bucket: TokenBucket,
    /// The quotas in bytes; 0 = none.
    quotas: QuotaLimits,
}

/// Narrows the grant `n` to what `b` allows now, or pushes `wait` out to when it will
/// allow a useful amount.
fn consider(b: &mut TokenBucket, now: Instant, n: &mut u64, wait: &mut Duration) {
    if b.unlimited() {
        return;
    }
    let need = b.min_grant().min(*n);
    let avail = b.available(now);
    if avail >= need {
        *n = (*n).min(avail);
    } else {
        *wait = (*wait).max(b.wait_for(now, need));
    }
}

impl StreamShaper {
    pub(crate) fn new(
        shaping: Arc<Shaping>,
        domain: Option<&str>,
        now: Instant,
        shared: Vec<Arc<Bucket>>,
        accounts: Vec<(Arc<QuotaAccount>, Limit)>,
    ) -> StreamShaper {
        let gen = shaping.gen.load(Relaxed);
        let (rates, quotas) = shaping.limits_for(domain);
        StreamShaper {
            own: Mutex::new(Own {
                gen,
                bucket: TokenBucket::new(rates.stream.0, rates.burst(rates.stream), now),
                quotas,
            }),
            domain: domain.map(Into::into),
            shaping,
            shared,
            accounts,
        }
    }

    /// The stream's own part, brought up to date with the last reload.
    fn own(&self, now: Instant) -> std::sync::MutexGuard<'_, Own> {
        let mut own = lock(&self.own);
        let gen = self.shaping.gen.load(Relaxed);
        if own.gen != gen {
            let (rates, quotas) = self.shaping.limits_for(self.domain.as_deref());
            own.bucket
                .set(rates.stream.0, rates.burst(rates.stream), now);
            own.quotas = quotas;
            own.gen = gen;
        }
        own
    }

    /// Bytes left under the tightest quota (today's or this month's); `None` when no
    /// quota applies.
    pub fn quota_left(&self) -> Option<u64> {
        if self.accounts.is_empty() {
            return None;
        }
        let quotas = self.own(Instant::now()).quotas;
        self.left_under(quotas)
    }

    fn left_under(&self, limits: QuotaLimits) -> Option<u64> {
        if self.accounts.is_empty() {
            return None;
        }
        let now = Periods::at(SystemTime::now());
        self.accounts
            .iter()
            .filter_map(|(a, which)| {
                let limit = limits[*which as usize];
                (limit > 0).then(|| limit.saturating_sub(a.used(which.period(&now))))
            })
            .min()
    }

    /// How many of `want` bytes may be read now.
    pub fn grant(&self, now: Instant, want: usize) -> Grant {
        let mut n = want as u64;
        let mut wait = Duration::ZERO;
        {
            let mut own = self.own(now);
            if let Some(left) = self.left_under(own.quotas) {
                if left == 0 {
                    return Grant::QuotaUsed;
                }
                n = n.min(left);
            }
            consider(&mut own.bucket, now, &mut n, &mut wait);
        }
        for b in &self.shared {
            consider(&mut lock(b), now, &mut n, &mut wait);
        }
        if wait > Duration::ZERO {
            Grant::Wait(now + wait)
        } else {
            Grant::Go(n.max(1) as usize)
        }
    }

    /// Pays for `n` bytes read: every bucket and every quota account.
    pub fn paid(&self, n: usize) {
        let n = n as u64;
        lock(&self.own).bucket.take(n);
        for b in &self.shared {
            lock(b).take(n);
        }
        if !self.accounts.is_empty() {
            let now = Periods::at(SystemTime::now());
            for (a, which) in &self.accounts {
                a.add(which.period(&now), n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::units::{ByteRate, ByteSize};
    use crate::shaping::{QuotaConfig, ShapingConfig};

    fn shaping(s: ShapingConfig) -> Arc<Shaping> {
        Shaping::new(&s, &QuotaConfig::default()).unwrap()
    }

    #[test]
    fn off_hands_out_no_shaper() {
        let sh = shaping(ShapingConfig::default());
        assert!(sh.stream(Some("romeo@example.org")).unwrap().is_none());
    }

    #[test]
    fn stream_rate_bounds_each_grant_and_waits_when_spent() {
        let sh = shaping(ShapingConfig {
            stream_rate: ByteRate(1 << 20),
            ..Default::default()
        });
        let st = sh.stream(None).unwrap().unwrap();
        let now = Instant::now();
        let burst = ShapingConfig::default().burst(ByteRate(1 << 20)) as usize;
        assert_eq!(st.grant(now, 1 << 30), Grant::Go(burst));
        st.paid(burst);
        match st.grant(now, 1 << 30) {
            Grant::Wait(t) => assert!(t > now && t < now + Duration::from_millis(50)),
            g => panic!("{g:?}"),
        }
    }

    #[test]
    fn an_account_bucket_is_shared_by_its_streams_only() {
        let sh = shaping(ShapingConfig {
            jid_rate: ByteRate(1 << 20),
            ..Default::default()
        });
        let now = Instant::now();
        let a = sh.stream(Some("romeo@example.org")).unwrap().unwrap();
        let b = sh.stream(Some("romeo@example.org")).unwrap().unwrap();
        let c = sh.stream(Some("juliet@example.org")).unwrap().unwrap();
        let Grant::Go(n) = a.grant(now, 1 << 30) else {
            panic!()
        };
        a.paid(n);
        assert!(matches!(b.grant(now, 1 << 30), Grant::Wait(_)));
        assert_eq!(c.grant(now, 1 << 30), Grant::Go(n));
    }

    #[test]
    fn reload_changes_running_streams() {
        let sh = shaping(ShapingConfig {
            stream_rate: ByteRate(1 << 20),
            ..Default::default()
        });
        let st = sh.stream(None).unwrap().unwrap();
        let now = Instant::now();
        let faster = ShapingConfig {
            stream_rate: ByteRate(100 << 20),
            ..Default::default()
        };
        sh.set(&faster, &QuotaConfig::default());
        // The earned tokens stay; from the reload on they come in at the new rate.
        assert!(matches!(st.grant(now, 1 << 30), Grant::Go(_)));
        let later = now + Duration::from_millis(100);
        let Grant::Go(n) = st.grant(later, 1 << 30) else {
            panic!()
        };
        assert!(n > 5 << 20, "{n}");
        sh.set(&ShapingConfig::default(), &QuotaConfig::default());
        assert_eq!(st.grant(later, 1 << 30), Grant::Go(1 << 30));
    }

    #[test]
    fn quota_bounds_grants_refuses_new_streams_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuotaConfig {
            jid_bytes_per_day: ByteSize(1000),
            store: Some(dir.path().join("q.redb")),
            ..Default::default()
        };
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        let st = sh.stream(Some("romeo@example.org")).unwrap().unwrap();
        let now = Instant::now();
        assert_eq!(st.grant(now, 1 << 20), Grant::Go(1000));
        st.paid(1000);
        assert_eq!(st.grant(now, 1 << 20), Grant::QuotaUsed);
        assert!(sh.stream(Some("romeo@example.org")).is_err());
        assert!(sh.stream(Some("juliet@example.org")).unwrap().is_some());
        assert_eq!(sh.used_now("domain:example.org"), 1000);
        // No monthly quota is set: months are not counted (nor kept in memory).
        assert_eq!(sh.used_now("month-jid:romeo@example.org"), 0);
        sh.flush().unwrap();
        drop(st);
        drop(sh);
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        assert_eq!(sh.used_now("jid:romeo@example.org"), 1000);
        assert!(sh.stream(Some("romeo@example.org")).is_err());
        // A bigger quota after a reload lets the account go on.
        let more = QuotaConfig {
            jid_bytes_per_day: ByteSize(5000),
            ..q
        };
        assert!(sh.set(&ShapingConfig::default(), &more).is_empty());
        assert!(sh.stream(Some("romeo@example.org")).is_ok());
    }

    #[test]
    fn a_domain_override_replaces_only_what_it_sets_and_reloads() {
        let toml = |rate: &str| -> ShapingConfig {
            toml::from_str(&format!(
                "jid_rate = \"1 MiB/s\"\nstream_rate = \"4 MiB/s\"\n\
                 [domains.\"vip.example.org\"]\njid_rate = \"{rate}\"\n"
            ))
            .unwrap()
        };
        let s = toml("8 MiB/s");
        let vip = s.rates_for(Some("vip.example.org"));
        assert_eq!(
            (vip.jid, vip.stream),
            (ByteRate(8 << 20), ByteRate(4 << 20))
        );
        assert_eq!(s.rates_for(Some("example.org")).jid, ByteRate(1 << 20));
        assert_eq!(s.rates_for(None).jid, ByteRate(1 << 20));
        let sh = shaping(s);
        let now = Instant::now();
        let burst = |r: u64| ShapingConfig::default().burst(ByteRate(r)) as usize;
        // The stream rate (4 MiB/s) grants more than a plain account's bucket allows,
        // less than the override's.
        let plain = sh.stream(Some("romeo@example.org")).unwrap().unwrap();
        assert_eq!(plain.grant(now, 1 << 30), Grant::Go(burst(1 << 20)));
        let v = sh.stream(Some("juliet@vip.example.org")).unwrap().unwrap();
        assert_eq!(v.grant(now, 1 << 30), Grant::Go(burst(4 << 20)));
        // A reload lowers the override: the running stream's account bucket follows.
        sh.set(&toml("2 MiB/s"), &QuotaConfig::default());
        let v2 = sh.stream(Some("juliet@vip.example.org")).unwrap().unwrap();
        let later = now + Duration::from_secs(10);
        assert_eq!(v2.grant(later, 1 << 30), Grant::Go(burst(2 << 20)));
    }

    #[test]
    fn a_domain_quota_override_can_lift_or_tighten_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let q: QuotaConfig = toml::from_str(&format!(
            "jid_bytes_per_day = 1000\nstore = {:?}\n\
             [domains.\"vip.example.org\"]\njid_bytes_per_day = 0\n\
             [domains.\"tight.example.org\"]\njid_bytes_per_day = 10\n",
            dir.path().join("q.redb")
        ))
        .unwrap();
        q.validate().unwrap();
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        let left = |jid: &str| sh.stream(Some(jid)).unwrap().unwrap().quota_left();
        assert_eq!(left("romeo@example.org"), Some(1000));
        assert_eq!(left("juliet@vip.example.org"), None);
        assert_eq!(left("tybalt@tight.example.org"), Some(10));
        // Reloaded without the overrides, the vip account has the common quota.
        let st = sh.stream(Some("juliet@vip.example.org")).unwrap().unwrap();
        let plain = QuotaConfig {
            domains: Default::default(),
            ..q
        };
        sh.set(&ShapingConfig::default(), &plain);
        assert_eq!(st.quota_left(), Some(1000));
    }

    #[test]
    fn a_monthly_quota_counts_alongside_the_daily_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuotaConfig {
            jid_bytes_per_day: ByteSize(1000),
            domain_bytes_per_month: ByteSize(1500),
            store: Some(dir.path().join("q.redb")),
            ..Default::default()
        };
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        let now = Instant::now();
        let romeo = sh.stream(Some("romeo@example.org")).unwrap().unwrap();
        assert_eq!(romeo.grant(now, 1 << 20), Grant::Go(1000));
        romeo.paid(1000);
        assert_eq!(romeo.grant(now, 1 << 20), Grant::QuotaUsed, "romeo's day");
        // Another account of the domain has its own day, but the domain's month is
        // shared: 500 bytes are left of it.
        let juliet = sh.stream(Some("juliet@example.org")).unwrap().unwrap();
        assert_eq!(juliet.quota_left(), Some(500));
        juliet.paid(500);
        assert!(
            sh.stream(Some("nurse@example.org")).is_err(),
            "the domain's month"
        );
        assert_eq!(sh.used_now("month-domain:example.org"), 1500);
        assert_eq!(sh.used_now("month-jid:romeo@example.org"), 1000);
        assert_eq!(sh.used_now("jid:juliet@example.org"), 500);
        // Kept across a restart, month and day alike.
        sh.flush().unwrap();
        drop((romeo, juliet, sh));
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        assert_eq!(sh.used_now("month-domain:example.org"), 1500);
        assert!(sh.stream(Some("tybalt@example.org")).is_err());
        assert!(sh.stream(Some("tybalt@verona.example")).unwrap().is_some());
    }
}
