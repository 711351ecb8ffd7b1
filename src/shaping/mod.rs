//! Bandwidth shaping and daily / monthly byte quotas.
//!
//! - `bucket`: the token bucket (sans-IO).
//! - `quota`: one account's daily count (sans-IO); `store`: the counts kept on disk.
//! - `stream`: what a relay asks before each read: how many bytes it may move now.
//! - `config`, `units`: the `[shaping]` and `[quota]` sections.
//!
//! `Shaping` is the process-wide registry: the global bucket, one bucket per requester
//! account and per domain (kept while a stream of theirs runs), and the quota accounts.
//! When shaping and quotas are both off, `stream` hands out nothing and the relays run
//! exactly as without this module.

pub mod bucket;
pub mod config;
pub mod quota;
pub mod store;
mod stream;
pub mod units;

pub use config::{QuotaConfig, ShapingConfig};
pub use stream::{Grant, StreamShaper};

use bucket::TokenBucket;
use quota::{Periods, QuotaAccount};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use store::QuotaStore;

pub(crate) type Bucket = Mutex<TokenBucket>;

/// The domain part of a bare JID (a JID without `@` is a domain itself).
fn domain_of(jid: &str) -> &str {
    jid.rsplit_once('@').map_or(jid, |(_, d)| d)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Activation refused: the requester or its domain has used its bytes for today or for
/// this month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUsed;

pub struct Shaping {
    settings: RwLock<ShapingConfig>,
    /// Bumped by every reload, so running streams pick up their new stream rate.
    gen: AtomicU64,
    /// Shaping or quota accounting is on: streams get a `StreamShaper`.
    on: AtomicBool,
    /// A monthly quota is set (for everyone or some domain): streams count months too.
    /// Monthly counts are kept only then, since a month's accounts stay in memory all month.
    monthly: AtomicBool,
    quota: RwLock<QuotaConfig>,
    global: Arc<Bucket>,
    jids: Mutex<HashMap<Box<str>, Weak<Bucket>>>,
    domains: Mutex<HashMap<Box<str>, Weak<Bucket>>>,
    quotas: Option<Quotas>,
}

struct Quotas {
    store: QuotaStore,
    /// "jid:<bare jid>" / "domain:<domain>" -> today's count; the same with "month-" in
    /// front -> this month's.
    accounts: Mutex<HashMap<Box<str>, Arc<QuotaAccount>>>,
    /// Flushes that succeeded (or had nothing to write) and that failed, for the metrics.
    flushes_ok: AtomicU64,
    flushes_failed: AtomicU64,
}

impl Shaping {
    /// Opens the quota store (if any) and loads today's and this month's counts.
    pub fn new(shaping: &ShapingConfig, quota: &QuotaConfig) -> io::Result<Arc<Shaping>> {
        let now = Instant::now();
        let quotas = match &quota.store {
            Some(path) => {
                let now = Periods::now();
                let (store, rows) = QuotaStore::open(path, now)?;
                let accounts = rows
                    .into_iter()
                    .map(|(k, n)| {
                        let a = QuotaAccount::loaded(now.of(&k), n);
                        (k.into(), Arc::new(a))
                    })
                    .collect();
                Some(Quotas {
                    store,
                    accounts: Mutex::new(accounts),
                    flushes_ok: AtomicU64::new(0),
                    flushes_failed: AtomicU64::new(0),
                })
            }
            None => None,
        };
        let s = Shaping {
            global: Arc::new(Mutex::new(TokenBucket::new(
                shaping.global_rate.0,
                shaping.burst(shaping.global_rate),
                now,
            ))),
            settings: RwLock::new(shaping.clone()),
            gen: AtomicU64::new(0),
            on: AtomicBool::new(false),
            monthly: AtomicBool::new(quota.monthly()),
            quota: RwLock::new(quota.clone()),
            jids: Default::default(),
            domains: Default::default(),
            quotas,
        };
        s.on.store(shaping.enabled() || s.quotas.is_some(), Relaxed);
        Ok(Arc::new(s))
    }

    /// Applies new rates and quotas (SIGHUP) to running streams too. Returns the keys
    /// that need a restart.
    pub fn set(&self, shaping: &ShapingConfig, quota: &QuotaConfig) -> Vec<&'static str> {
        let now = Instant::now();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = shaping.clone();
        lock(&self.global).set(
            shaping.global_rate.0,
            shaping.burst(shaping.global_rate),
            now,
        );
        // Account buckets are keyed by bare JID, domain buckets by domain: each takes
        // the rate of its domain (an override, or the section's own).
        for (name, b) in lock(&self.jids).iter() {
            if let Some(b) = b.upgrade() {
                let rate = shaping.rates_for(Some(domain_of(name))).jid;
                lock(&b).set(rate.0, shaping.burst(rate), now);
            }
        }
        for (name, b) in lock(&self.domains).iter() {
            if let Some(b) = b.upgrade() {
                let rate = shaping.rates_for(Some(name)).domain;
                lock(&b).set(rate.0, shaping.burst(rate), now);
            }
        }
        *self.quota.write().unwrap_or_else(|e| e.into_inner()) = quota.clone();
        self.monthly.store(quota.monthly(), Relaxed);
        self.on
            .store(shaping.enabled() || self.quotas.is_some(), Relaxed);
        self.gen.fetch_add(1, Relaxed);
        let stored = self.quotas.as_ref().map(|q| q.store.path());
        if stored != quota.store.as_deref() {
            vec!["quota.store"]
        } else {
            vec![]
        }
    }

    /// The rates and the quotas for a requester of `domain`.
    fn limits_for(&self, domain: Option<&str>) -> (config::Rates, config::QuotaLimits) {
        let rates = self
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .rates_for(domain);
        let quotas = self
            .quota
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .limits_for(domain);
        (rates, quotas)
    }

    /// The shaper of a stream being activated by `requester` (a bare JID, when the
    /// activation came over XMPP), `None` when nothing is shaped or counted, or
    /// `QuotaUsed` when the requester's account or domain has no bytes left today or this
    /// month.
    pub fn stream(
        self: &Arc<Self>,
        requester: Option<&str>,
    ) -> Result<Option<StreamShaper>, QuotaUsed> {
        if !self.on.load(Relaxed) {
            return Ok(None);
        }
        let now = Instant::now();
        let domain = requester.map(domain_of);
        let (rates, _) = self.limits_for(domain);
        let monthly = self.monthly.load(Relaxed);
        let mut shared = vec![self.global.clone()];
        let mut accounts = Vec::new();
        if let (Some(jid), Some(domain)) = (requester, domain) {
            shared.push(self.bucket(&self.jids, jid, &rates, rates.jid, now));
            shared.push(self.bucket(&self.domains, domain, &rates, rates.domain, now));
            if let Some(q) = &self.quotas {
                let mut m = lock(&q.accounts);
                let days = [
                    (format!("jid:{jid}"), stream::Limit::JidDay),
                    (format!("domain:{domain}"), stream::Limit::DomainDay),
                ];
                let months = [
                    (format!("month-jid:{jid}"), stream::Limit::JidMonth),
                    (format!("month-domain:{domain}"), stream::Limit::DomainMonth),
                ];
                let months = months.into_iter().filter(|_| monthly);
                for (key, which) in days.into_iter().chain(months) {
                    let a = m.entry(key.into()).or_default().clone();
                    accounts.push((a, which));
                }
            }
        }
        let shaper = StreamShaper::new(self.clone(), domain, now, shared, accounts);
        if shaper.quota_left() == Some(0) {
            return Err(QuotaUsed);
        }
        Ok(Some(shaper))
    }

    /// The bucket of one account or domain, shared by all its running streams.
    fn bucket(
        &self,
        map: &Mutex<HashMap<Box<str>, Weak<Bucket>>>,
        name: &str,
        rates: &config::Rates,
        rate: units::ByteRate,
        now: Instant,
    ) -> Arc<Bucket> {
        let mut m = lock(map);
        if let Some(b) = m.get(name).and_then(Weak::upgrade) {
            return b;
        }
        if m.len() >= 1024 && m.len().is_power_of_two() {
            // Forget the accounts that have no stream left, now and then.
            m.retain(|_, w| w.strong_count() > 0);
        }
        let b = Arc::new(Mutex::new(TokenBucket::new(rate.0, rates.burst(rate), now)));
        m.insert(name.into(), Arc::downgrade(&b));
        b
    }

    /// Bytes counted in the current period for a key: "jid:<bare jid>" or
    /// "domain:<domain>" today, "month-jid:..." or "month-domain:..." this month.
    pub fn used_now(&self, key: &str) -> u64 {
        let now = Periods::now();
        self.quotas
            .as_ref()
            .and_then(|q| lock(&q.accounts).get(key).map(|a| a.used(now.of(key))))
            .unwrap_or(0)
    }

    /// Flushes of the quota store so far: (succeeded, failed); `None` without a store.
    pub fn flushes(&self) -> Option<(u64, u64)> {
        let q = self.quotas.as_ref()?;
        Some((q.flushes_ok.load(Relaxed), q.flushes_failed.load(Relaxed)))
    }

    /// Writes the bytes counted since the last flush to the store.
    pub fn flush(&self) -> io::Result<()> {
        let Some(q) = &self.quotas else {
            return Ok(());
        };
        let r = self.flush_to(q);
        match r {
            Ok(()) => q.flushes_ok.fetch_add(1, Relaxed),
            Err(_) => q.flushes_failed.fetch_add(1, Relaxed),
        };
        r
    }

    fn flush_to(&self, q: &Quotas) -> io::Result<()> {
        let now = Periods::now();
        let accounts: Vec<_> = lock(&q.accounts)
            .iter()
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        let mut rows = Vec::new();
        let mut of = Vec::new();
        for (k, a) in &accounts {
            if let Some((day, n)) = a.take_unflushed() {
                rows.push((k.to_string(), day, n));
                of.push(a);
            }
        }
        if !rows.is_empty() {
            match q.store.add(&rows, now) {
                Ok(totals) => {
                    for ((a, (_, day, _)), total) in of.iter().zip(&rows).zip(totals) {
                        a.merged(*day, total);
                    }
                }
                Err(e) => {
                    for (a, (_, day, n)) in of.iter().zip(&rows) {
                        a.restore(*day, *n);
                    }
                    return Err(e);
                }
            }
        }
        lock(&q.accounts).retain(|k, a| !a.stale(now.of(k)) || Arc::strong_count(a) > 1);
        Ok(())
    }

    /// Flushes every `every` on its own thread until the returned handle is stopped or
    /// dropped (which flushes one last time). `None` when there is no quota store.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) -> Option<Flusher> {
        self.quotas.as_ref()?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("streamhost-quota".into())
            .spawn(move || loop {
                let stop = !matches!(
                    rx.recv_timeout(every),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                if let Err(e) = me.flush() {
                    tracing::warn!(error = %e, "quota counts not saved; retrying");
                }
                if stop {
                    return;
                }
            })
            .ok()?;
        Some(Flusher {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

/// The quota flusher thread; dropping it flushes once more and joins.
pub struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
