//! One stream's view of the shaping: before each read the relay asks how many bytes it
//! may move (`grant`), and after it pays for what it moved (`paid`). Both directions of a
//! stream share one `StreamShaper`, so rates count the two directions together.

use super::bucket::TokenBucket;
use super::quota::{utc_day, QuotaAccount};
use super::{lock, Bucket, Shaping, ShapingConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Which daily quota an account counts against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    Jid,
    Domain,
}

/// The answer to "may I read `want` bytes now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read at most this many bytes (at least one).
    Go(usize),
    /// Not enough tokens: ask again at this time.
    Wait(Instant),
    /// The requester's daily quota is used up: end the stream.
    QuotaUsed,
}

pub struct StreamShaper {
    shaping: Arc<Shaping>,
    /// The stream's own bucket and the reload generation its rate comes from.
    own: Mutex<(u64, TokenBucket)>,
    /// The global bucket, then the requester's account and domain buckets if known.
    shared: Vec<Arc<Bucket>>,
    accounts: Vec<(Arc<QuotaAccount>, Limit)>,
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
        s: &ShapingConfig,
        now: Instant,
        shared: Vec<Arc<Bucket>>,
        accounts: Vec<(Arc<QuotaAccount>, Limit)>,
    ) -> StreamShaper {
        let gen = shaping.gen.load(Relaxed);
        StreamShaper {
            own: Mutex::new((
                gen,
                TokenBucket::new(s.stream_rate.0, s.burst(s.stream_rate), now),
            )),
            shaping,
            shared,
            accounts,
        }
    }

    /// Bytes left today under the tightest quota; `None` when no quota applies.
    pub fn quota_left(&self) -> Option<u64> {
        if self.accounts.is_empty() {
            return None;
        }
        let today = utc_day(SystemTime::now());
        self.accounts
            .iter()
            .filter_map(|(a, which)| {
                let limit = self.shaping.quota_limit(*which);
                (limit > 0).then(|| limit.saturating_sub(a.used(today)))
            })
            .min()
    }

    /// How many of `want` bytes may be read now.
    pub fn grant(&self, now: Instant, want: usize) -> Grant {
        let mut n = want as u64;
        if let Some(left) = self.quota_left() {
            if left == 0 {
                return Grant::QuotaUsed;
            }
            n = n.min(left);
        }
        let mut wait = Duration::ZERO;
        {
            let mut own = lock(&self.own);
            let gen = self.shaping.gen.load(Relaxed);
            if own.0 != gen {
                let s = self.shaping.settings();
                own.1.set(s.stream_rate.0, s.burst(s.stream_rate), now);
                own.0 = gen;
            }
            consider(&mut own.1, now, &mut n, &mut wait);
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
        lock(&self.own).1.take(n);
        for b in &self.shared {
            lock(b).take(n);
        }
        if !self.accounts.is_empty() {
            let today = utc_day(SystemTime::now());
            for (a, _) in &self.accounts {
                a.add(today, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::units::{ByteRate, ByteSize};
    use crate::shaping::QuotaConfig;

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
            domain_bytes_per_day: ByteSize(0),
            store: Some(dir.path().join("q.redb")),
        };
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        let st = sh.stream(Some("romeo@example.org")).unwrap().unwrap();
        let now = Instant::now();
        assert_eq!(st.grant(now, 1 << 20), Grant::Go(1000));
        st.paid(1000);
        assert_eq!(st.grant(now, 1 << 20), Grant::QuotaUsed);
        assert!(sh.stream(Some("romeo@example.org")).is_err());
        assert!(sh.stream(Some("juliet@example.org")).unwrap().is_some());
        assert_eq!(sh.used_today("domain:example.org"), 1000);
        sh.flush().unwrap();
        drop(st);
        drop(sh);
        let sh = Shaping::new(&ShapingConfig::default(), &q).unwrap();
        assert_eq!(sh.used_today("jid:romeo@example.org"), 1000);
        assert!(sh.stream(Some("romeo@example.org")).is_err());
        // A bigger quota after a reload lets the account go on.
        let more = QuotaConfig {
            jid_bytes_per_day: ByteSize(5000),
            ..q
        };
        assert!(sh.set(&ShapingConfig::default(), &more).is_empty());
        assert!(sh.stream(Some("romeo@example.org")).is_ok());
    }
}
