//! The figures of a run, as written to report.json and read back by `compare`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub env: Env,
    pub scenarios: Vec<ScenarioReport>,
    /// Problems that made the run fail; empty when it passed.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Env {
    pub kernel: String,
    pub cores: usize,
    pub nofile_limit: u64,
    /// "spawned", "external ADDR" or "none (direct only)".
    pub proxy: String,
    pub proxy_engine: Option<String>,
    pub proxy_config: Option<String>,
    /// The CPUs the generator's load threads were kept on (--client-cpus).
    #[serde(default)]
    pub client_cpus: Option<String>,
    pub xmpp: String,
    pub args: Vec<String>,
    pub started_unix: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub params: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    pub latencies: Vec<Latency>,
    pub series: Vec<Series>,
    /// Plain sentences printed under the scenario's table (e.g. what the CPU figures mean).
    #[serde(default)]
    pub notes: Vec<String>,
    pub wall_s: f64,
    /// What the value and baseline columns are, when not the proxy against direct TCP
    /// (`abuse`: with the abuse against without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared: Option<[String; 2]>,
}

impl ScenarioReport {
    /// The labels of the value and the baseline: `proxy` and `direct` unless set.
    pub fn labels(&self) -> (&str, &str) {
        match &self.compared {
            Some([v, b]) => (v, b),
            None => ("proxy", "direct"),
        }
    }
}

/// One number, with the same figure over direct TCP in the same run when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub direct: Option<f64>,
    /// value / direct; with rounds, the median of the rounds' own ratios.
    pub ratio: Option<f64>,
    pub higher_is_better: bool,
    /// Alternating rounds (direct, proxy, direct, proxy, ...) the figure is the median of;
    /// absent for a single measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<usize>,
    /// Lowest and highest value over the rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_range: Option<[f64; 2]>,
    /// Lowest and highest ratio over the rounds (each round's proxy over its own direct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_range: Option<[f64; 2]>,
}

impl Figure {
    pub fn new(name: &str, unit: &str, value: f64, higher_is_better: bool) -> Self {
        Figure {
            name: name.into(),
            unit: unit.into(),
            value,
            direct: None,
            ratio: None,
            higher_is_better,
            rounds: None,
            value_range: None,
            ratio_range: None,
        }
    }

    /// The median of per-round values, and with a direct value per round, the median and
    /// range of the per-round ratios (round i's proxy over round i's direct).
    pub fn from_rounds(
        name: &str,
        unit: &str,
        values: &[f64],
        direct: Option<&[f64]>,
        higher_is_better: bool,
    ) -> Self {
        let mut f = Figure::new(name, unit, median(values), higher_is_better);
        f.rounds = Some(values.len());
        f.value_range = range(values);
        if let Some(d) = direct.filter(|d| d.len() == values.len() && !d.is_empty()) {
            f.direct = Some(median(d));
            let ratios: Vec<f64> = values
                .iter()
                .zip(d)
                .filter(|(_, d)| **d > 0.0)
                .map(|(v, d)| v / d)
                .collect();
            if !ratios.is_empty() {
                f.ratio = Some(median(&ratios));
                f.ratio_range = range(&ratios);
            }
        }
        f
    }

    pub fn with_direct(mut self, direct: Option<f64>) -> Self {
        self.direct = direct;
        self.ratio = direct.filter(|d| *d > 0.0).map(|d| self.value / d);
        self
    }
}

/// Latency percentiles in microseconds, and the CDF for plots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub name: String,
    /// "proxy" or "direct".
    pub target: String,
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// (quantile 0..1, microseconds).
    pub cdf: Vec<(f64, f64)>,
}

impl Latency {
    pub fn from_histogram(name: &str, target: &str, h: &hdrhistogram::Histogram<u64>) -> Self {
        let q = |x: f64| h.value_at_quantile(x) as f64;
        let mut cdf = Vec::new();
        for i in 0..=100 {
            let x = i as f64 / 100.0;
            cdf.push((x, q(x)));
        }
        for x in [0.995, 0.999, 0.9999] {
            cdf.push((x, q(x)));
        }
        cdf.sort_by(|a, b| a.0.total_cmp(&b.0));
        Latency {
            name: name.into(),
            target: target.into(),
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: h.max() as f64,
            cdf,
        }
    }
}

/// Points for a plot, e.g. aggregate Gbit/s against the number of pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub target: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    /// Per point, the lowest and highest y over the rounds (empty: single measurements).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<(f64, f64)>,
}

/// A histogram of microseconds, 1 us to 10 min, 3 significant digits.
pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 600_000_000);
    h.record(us).expect("value within bounds");
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Lowest and highest value; `None` for none.
pub fn range(v: &[f64]) -> Option<[f64; 2]> {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo <= hi).then_some([lo, hi])
}

pub fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_value_over_direct() {
        let f = Figure::new("x", "Gbit/s", 3.0, true).with_direct(Some(4.0));
        assert_eq!(f.ratio, Some(0.75));
        assert_eq!(
            Figure::new("x", "", 1.0, true).with_direct(None).ratio,
            None
        );
    }

    #[test]
    fn rounds_give_median_and_range_of_per_round_ratios() {
        // Round 2's direct is slow: its ratio is high, but it is one of three.
        let f = Figure::from_rounds(
            "x",
            "Gbit/s",
            &[10.0, 10.0, 9.0],
            Some(&[20.0, 10.0, 18.0]),
            true,
        );
        assert_eq!(f.value, 10.0);
        assert_eq!(f.direct, Some(18.0));
        assert_eq!(f.ratio, Some(0.5));
        assert_eq!(f.ratio_range, Some([0.5, 1.0]));
        assert_eq!(f.value_range, Some([9.0, 10.0]));
        assert_eq!(f.rounds, Some(3));
        assert_eq!(median(&[1.0, 4.0, 2.0, 3.0]), 2.5);
        assert_eq!(range(&[]), None);
        let alone = Figure::from_rounds("x", "", &[1.0, 3.0], None, true);
        assert_eq!((alone.value, alone.ratio), (2.0, None));
    }

    #[test]
    fn latency_percentiles_from_histogram() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = Latency::from_histogram("done", "proxy", &h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() <= 1.0, "{}", l.p50_us);
        assert!((l.p99_us - 990.0).abs() <= 1.0);
        assert_eq!(l.max_us, 1000.0);
        assert!(l.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn gbps_of_a_gigabyte_per_second() {
        assert!((gbps(1_000_000_000, Duration::from_secs(1)) - 8.0).abs() < 1e-9);
    }
}
