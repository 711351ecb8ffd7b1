//! The `[shaping]` and `[quota]` sections. Both are off by default; SIGHUP changes rates,
//! bursts and quotas live (the quota store's path needs a restart).

use super::units::{ByteRate, ByteSize};
use crate::config::{invalid, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Token-bucket rates in bytes per second over both directions of a stream together;
/// 0 (the default) = unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    /// Each stream.
    pub stream_rate: ByteRate,
    /// All streams activated by one requester account (bare JID) together.
    pub jid_rate: ByteRate,
    /// All streams activated by accounts of one domain together.
    pub domain_rate: ByteRate,
    /// The whole process.
    pub global_rate: ByteRate,
    /// How far ahead of its rate a bucket lets traffic run after an idle spell, in
    /// milliseconds of that rate.
    pub burst_ms: u64,
    /// Per requester domain: rates that replace the ones above for its accounts.
    pub domains: BTreeMap<String, DomainShaping>,
}

/// `[shaping.domains."example.org"]`: each rate set here replaces the section's own for
/// streams activated by accounts of that domain; the others are inherited.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainShaping {
    pub stream_rate: Option<ByteRate>,
    pub jid_rate: Option<ByteRate>,
    pub domain_rate: Option<ByteRate>,
}

/// The rates that apply to one stream's requester, and the burst setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub stream: ByteRate,
    pub jid: ByteRate,
    pub domain: ByteRate,
    pub burst_ms: u64,
}

impl Rates {
    /// The burst of a bucket with `rate` (see `ShapingConfig::burst`).
    pub fn burst(&self, rate: ByteRate) -> u64 {
        burst(self.burst_ms, rate)
    }
}

/// `burst_ms` of `rate`, and at least 16 KiB so that a grant is never smaller than a
/// useful chunk.
fn burst(burst_ms: u64, rate: ByteRate) -> u64 {
    ((rate.0 as u128 * burst_ms as u128 / 1000) as u64).max(16 << 10)
}

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            stream_rate: ByteRate(0),
            jid_rate: ByteRate(0),
            domain_rate: ByteRate(0),
            global_rate: ByteRate(0),
            burst_ms: 200,
            domains: BTreeMap::new(),
        }
    }
}

/// Bytes a requester account or domain may relay per UTC day or month; 0 = no quota.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub jid_bytes_per_day: ByteSize,
    pub domain_bytes_per_day: ByteSize,
    pub jid_bytes_per_month: ByteSize,
    pub domain_bytes_per_month: ByteSize,
    /// The embedded database that keeps the day's counts across restarts.
    pub store: Option<PathBuf>,
    /// Per requester domain: quotas that replace the ones above for it and its accounts.
    pub domains: BTreeMap<String, DomainQuota>,
}

/// `[quota.domains."example.org"]`: each quota set here (0 = none) replaces the
/// section's own for that domain and its accounts; the other is inherited.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainQuota {
    pub jid_bytes_per_day: Option<ByteSize>,
    pub domain_bytes_per_day: Option<ByteSize>,
    pub jid_bytes_per_month: Option<ByteSize>,
    pub domain_bytes_per_month: Option<ByteSize>,
}

/// The four quotas that apply to one requester, in bytes; 0 = none. Indexed by
/// `Limit as usize` (`stream.rs`): account per day, domain per day, account per month,
/// domain per month.
pub type QuotaLimits = [u64; 4];

/// A domain key of `shaping.domains` / `quota.domains`: what a JID's domain part can be
/// after normalisation (the server hands the proxy lowercase bare JIDs).
fn check_domain(section: &str, d: &str) -> Result<(), ConfigError> {
    if d.is_empty() || d.contains(['@', '/']) || d.chars().any(|c| c.is_uppercase()) {
        return Err(invalid(
            format!("{section}.domains"),
            format!("{d:?} is not a lowercase domain name"),
        ));
    }
    Ok(())
}

/// Checks one rate: 0 (no limit) or at least 1 KiB/s.
fn check_rate(
    key: impl Into<std::borrow::Cow<'static, str>>,
    r: ByteRate,
) -> Result<(), ConfigError> {
    if r.0 != 0 && r.0 < 1024 {
        return Err(invalid(
            key,
            format!("{r} is below 1 KiB/s; use 0 for no limit"),
        ));
    }
    Ok(())
}

impl ShapingConfig {
    pub fn enabled(&self) -> bool {
        let overrides = self.domains.values().flat_map(|d| {
            [d.stream_rate, d.jid_rate, d.domain_rate]
                .into_iter()
                .flatten()
        });
        [
            self.stream_rate,
            self.jid_rate,
            self.domain_rate,
            self.global_rate,
        ]
        .into_iter()
        .chain(overrides)
        .any(|r| r.0 > 0)
    }

    /// The rates for a requester of `domain` (`None`: no requester known).
    pub fn rates_for(&self, domain: Option<&str>) -> Rates {
        let o = domain.and_then(|d| self.domains.get(d));
        let pick =
            |f: fn(&DomainShaping) -> Option<ByteRate>, own: ByteRate| o.and_then(f).unwrap_or(own);
        Rates {
            stream: pick(|d| d.stream_rate, self.stream_rate),
            jid: pick(|d| d.jid_rate, self.jid_rate),
            domain: pick(|d| d.domain_rate, self.domain_rate),
            burst_ms: self.burst_ms,
        }
    }

    /// The burst of a bucket with `rate`: `burst_ms` of it, and at least 16 KiB so that a
    /// grant is never smaller than a useful chunk.
    pub fn burst(&self, rate: ByteRate) -> u64 {
        burst(self.burst_ms, rate)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, r) in [
            ("shaping.stream_rate", self.stream_rate),
            ("shaping.jid_rate", self.jid_rate),
            ("shaping.domain_rate", self.domain_rate),
            ("shaping.global_rate", self.global_rate),
        ] {
            check_rate(key, r)?;
        }
        for (d, o) in &self.domains {
            check_domain("shaping", d)?;
            for (name, r) in [
                ("stream_rate", o.stream_rate),
                ("jid_rate", o.jid_rate),
                ("domain_rate", o.domain_rate),
            ] {
                if let Some(r) = r {
                    check_rate(format!("shaping.domains.\"{d}\".{name}"), r)?;
                }
            }
        }
        if !(10..=10_000).contains(&self.burst_ms) {
            return Err(invalid("shaping.burst_ms", "must be 10 to 10000"));
        }
        Ok(())
    }
}

impl QuotaConfig {
    pub fn enabled(&self) -> bool {
        self.limits_for(None).iter().any(|&q| q > 0)
            || self
                .domains
                .keys()
                .any(|d| self.limits_for(Some(d)).iter().any(|&q| q > 0))
    }

    /// Whether any monthly quota is set, for everyone or for some domain.
    pub fn monthly(&self) -> bool {
        std::iter::once(None)
            .chain(self.domains.keys().map(|d| Some(d.as_str())))
            .any(|d| self.limits_for(d)[2..].iter().any(|&q| q > 0))
    }

    /// The quotas for a requester of `domain` (an override's, else the section's own).
    pub fn limits_for(&self, domain: Option<&str>) -> QuotaLimits {
        let o = domain.and_then(|d| self.domains.get(d));
        let pick =
            |f: fn(&DomainQuota) -> Option<ByteSize>, own: ByteSize| o.and_then(f).unwrap_or(own).0;
        [
            pick(|d| d.jid_bytes_per_day, self.jid_bytes_per_day),
            pick(|d| d.domain_bytes_per_day, self.domain_bytes_per_day),
            pick(|d| d.jid_bytes_per_month, self.jid_bytes_per_month),
            pick(|d| d.domain_bytes_per_month, self.domain_bytes_per_month),
        ]
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for d in self.domains.keys() {
            check_domain("quota", d)?;
        }
        if self.enabled() && self.store.is_none() {
            return Err(invalid(
                "quota.store",
                "a quota is set, so a file to keep the counts across restarts is needed",
            ));
        }
        if let Some(p) = &self.store {
            if p.as_os_str().is_empty() || p.is_dir() {
                return Err(invalid(
                    "quota.store",
                    format!("{} is not a file path", p.display()),
                ));
            }
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir.filter(|d| !d.is_dir()) {
                return Err(invalid(
                    "quota.store",
                    format!("its directory {} does not exist", d.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        assert!(!ShapingConfig::default().enabled());
        assert!(!QuotaConfig::default().enabled());
        ShapingConfig::default().validate().unwrap();
        QuotaConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let s = ShapingConfig {
            jid_rate: ByteRate(10),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("shaping.jid_rate"));
        let q = QuotaConfig {
            jid_bytes_per_day: ByteSize(1 << 30),
            ..Default::default()
        };
        assert!(q
            .validate()
            .unwrap_err()
            .to_string()
            .contains("quota.store"));
        let q = QuotaConfig {
            store: Some("/no/such/dir/quota.redb".into()),
            ..Default::default()
        };
        let e = q.validate().unwrap_err().to_string();
        assert!(
            e.contains("quota.store") && e.contains("/no/such/dir"),
            "{e}"
        );
    }

    #[test]
    fn burst_is_milliseconds_of_rate() {
        let s = ShapingConfig::default();
        assert_eq!(s.burst(ByteRate(10_000_000)), 2_000_000);
        assert_eq!(s.burst(ByteRate(1024)), 16 << 10);
    }

    #[test]
    fn domain_overrides_are_checked_and_name_their_key() {
        let s: ShapingConfig =
            toml::from_str("[domains.\"vip.example.org\"]\njid_rate = 100\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("shaping.domains.\"vip.example.org\".jid_rate"),
            "{e}"
        );
        let s: ShapingConfig =
            toml::from_str("[domains.\"VIP.org\"]\njid_rate = \"1 MiB/s\"\n").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("shaping.domains") && e.contains("lowercase"),
            "{e}"
        );
        assert!(s.enabled(), "an override alone turns shaping on");
        let e = toml::from_str::<ShapingConfig>("[domains.\"a.org\"]\nglobal_rate = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("global_rate"), "{e}");
        let q: QuotaConfig =
            toml::from_str("[domains.\"a.org\"]\ndomain_bytes_per_day = \"1 GB\"\n").unwrap();
        assert!(q.enabled());
        let e = q.validate().unwrap_err().to_string();
        assert!(
            e.contains("quota.store"),
            "an override's quota needs the store: {e}"
        );
        assert_eq!(q.limits_for(Some("a.org")), [0, 1_000_000_000, 0, 0]);
        assert_eq!(q.limits_for(Some("b.org")), [0; 4]);
        let q: QuotaConfig = toml::from_str(
            "jid_bytes_per_month = \"10 GB\"\n[domains.\"a.org\"]\njid_bytes_per_month = 0\n",
        )
        .unwrap();
        assert!(q.enabled() && q.monthly());
        assert_eq!(q.limits_for(Some("b.org")), [0, 0, 10_000_000_000, 0]);
        assert_eq!(q.limits_for(Some("a.org")), [0; 4]);
    }
}
