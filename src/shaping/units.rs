//! Byte sizes and rates as operators write them: `"10 GiB"`, `"100 Mbit/s"`, `"5 MB/s"`, or
//! a plain integer (bytes, bytes per second). Decimal units are powers of 1000, binary ones
//! of 1024, and bits are divided by 8.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// Bytes per second; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRate(pub u64);

/// A number of bytes; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

/// Parses `"<number> <unit>"`; `rate` allows (and ignores) a trailing `/s`.
fn parse(text: &str, rate: bool) -> Result<u64, String> {
    let t = text.trim();
    let t = match t.strip_suffix("/s") {
        Some(stripped) if rate => stripped.trim_end(),
        Some(_) => return Err(format!("{text:?}: a size has no \"/s\"")),
        None => t,
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a number followed by a unit such as MiB"))?;
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "bit" => 1.0 / 8.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, \
                 kbit, Mbit or Gbit)"
            ))
        }
    };
    let v = n * scale;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(format!("{text:?}: too large"));
    }
    // 0 means "no limit": a tiny non-zero value must not turn into it by rounding.
    if v > 0.0 && v.round() == 0.0 {
        return Err(format!("{text:?}: less than one byte; use 0 for no limit"));
    }
    Ok(v.round() as u64)
}

impl std::str::FromStr for ByteRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse(s, true).map(ByteRate)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse(s, false).map(ByteSize)
    }
}

/// An integer or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Text(String),
}

/// Deserialize (an integer, or a string with a unit) and Display for both types.
macro_rules! quantity {
    ($t:ident, $unit:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match Raw::deserialize(d)? {
                    Raw::Int(n) => Ok($t(n)),
                    Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", self.0, $unit)
            }
        }
    };
}

quantity!(ByteRate, "B/s");
quantity!(ByteSize, "B");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_as_written() {
        assert_eq!("1000".parse::<ByteRate>().unwrap().0, 1000);
        assert_eq!("10 MiB/s".parse::<ByteRate>().unwrap().0, 10 << 20);
        assert_eq!("100 Mbit/s".parse::<ByteRate>().unwrap().0, 12_500_000);
        assert_eq!("1.5 MB/s".parse::<ByteRate>().unwrap().0, 1_500_000);
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().0, 2 << 30);
        assert_eq!("0".parse::<ByteSize>().unwrap().0, 0);
    }

    #[test]
    fn bad_text_says_what_is_wrong() {
        assert!("10 parsecs"
            .parse::<ByteRate>()
            .unwrap_err()
            .contains("unknown unit"));
        assert!("fast".parse::<ByteRate>().unwrap_err().contains("number"));
        assert!("1 GiB/s"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("no \"/s\""));
        assert!("1e400 GB".parse::<ByteSize>().is_err());
        assert!("1 bit/s".parse::<ByteRate>().unwrap_err().contains("use 0"));
        assert_eq!("0 bit/s".parse::<ByteRate>(), Ok(ByteRate(0)));
    }

    #[test]
    fn toml_takes_integers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: ByteRate,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 125000\nb = \"1 KiB\"").unwrap();
        assert_eq!((t.a.0, t.b.0), (125_000, 1024));
    }
}
