//! Reading the spawned proxy's Prometheus endpoint (`GET /metrics`): its counters of
//! refusals, stalls and accept errors say what it did about a load, next to what the
//! clients saw.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One scrape: every sample, `name{labels}` to value (`# ...` lines left out).
pub type Samples = BTreeMap<String, f64>;

const TIMEOUT: Duration = Duration::from_secs(5);
/// An answer larger than this is not the proxy's exposition.
const MAX_BODY: u64 = 4 << 20;

pub fn scrape(addr: SocketAddr) -> anyhow::Result<Samples> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| anyhow::anyhow!("metrics endpoint {addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: streamhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.take(MAX_BODY).read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("metrics endpoint {addr}: no HTTP head"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "metrics endpoint {addr}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(parse(body))
}

/// `name{labels} value` lines; the value is the last field.
pub fn parse(body: &str) -> Samples {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// How much each sample named by `wanted` (a prefix of the sample) grew from `before` to
/// `after`; samples that did not grow are left out.
pub fn growth(before: &Samples, after: &Samples, wanted: &[&str]) -> Vec<(String, f64)> {
    after
        .iter()
        .filter(|(k, _)| wanted.iter().any(|w| k.starts_with(w)))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_and_its_growth() {
        let a = parse(
            "# HELP x y\n# TYPE streamhost_refusals counter\n\
             streamhost_refusals_total{reason=\"shed\"} 0\n\
             streamhost_refusals_total{reason=\"handshake_timeout\"} 3\n\
             streamhost_relay_stalls_total 10\n# EOF\n",
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a["streamhost_relay_stalls_total"], 10.0);
        let mut b = a.clone();
        b.insert(
            "streamhost_refusals_total{reason=\"handshake_timeout\"}".into(),
            7.0,
        );
        b.insert("streamhost_relay_stalls_total".into(), 12.0);
        let g = growth(&a, &b, &["streamhost_refusals"]);
        assert_eq!(
            g,
            vec![(
                "streamhost_refusals_total{reason=\"handshake_timeout\"}".to_string(),
                4.0
            )]
        );
    }
}
