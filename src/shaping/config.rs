//! The `[shaping]` and `[quota]` sections. Both are off by default; SIGHUP changes rates,
//! bursts and quotas live (the quota store's path needs a restart).

use super::units::{ByteRate, ByteSize};
use crate::config::{invalid, ConfigError};
use serde::Deserialize;
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
}

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            stream_rate: ByteRate(0),
            jid_rate: ByteRate(0),
            domain_rate: ByteRate(0),
            global_rate: ByteRate(0),
            burst_ms: 200,
        }
    }
}

/// Bytes a requester account or domain may relay per UTC day; 0 = no quota.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub jid_bytes_per_day: ByteSize,
    pub domain_bytes_per_day: ByteSize,
    /// The embedded database that keeps the day's counts across restarts.
    pub store: Option<PathBuf>,
}

impl ShapingConfig {
    pub fn enabled(&self) -> bool {
        [
            self.stream_rate,
            self.jid_rate,
            self.domain_rate,
            self.global_rate,
        ]
        .iter()
        .any(|r| r.0 > 0)
    }

    /// The burst of a bucket with `rate`: `burst_ms` of it, and at least 16 KiB so that a
    /// grant is never smaller than a useful chunk.
    pub fn burst(&self, rate: ByteRate) -> u64 {
        ((rate.0 as u128 * self.burst_ms as u128 / 1000) as u64).max(16 << 10)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, r) in [
            ("shaping.stream_rate", self.stream_rate),
            ("shaping.jid_rate", self.jid_rate),
            ("shaping.domain_rate", self.domain_rate),
            ("shaping.global_rate", self.global_rate),
        ] {
            if r.0 != 0 && r.0 < 1024 {
                return Err(invalid(
                    key,
                    format!("{r} is below 1 KiB/s; use 0 for no limit"),
                ));
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
        self.jid_bytes_per_day.0 > 0 || self.domain_bytes_per_day.0 > 0
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled() && self.store.is_none() {
            return Err(invalid(
                "quota.store",
                "a daily quota is set, so a file to keep the counts across restarts is needed",
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
}
