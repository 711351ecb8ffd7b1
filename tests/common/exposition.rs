//! `/metrics` read with a real OpenMetrics parser (`openmetrics-parser`), and the
//! consistency rules every histogram must obey.

use openmetrics_parser::{
    openmetrics::parse_openmetrics, HistogramValue, MetricsExposition, OpenMetricsType,
    OpenMetricsValue,
};

pub struct Exposition {
    pub parsed: MetricsExposition<OpenMetricsType, OpenMetricsValue>,
    pub text: String,
}

impl Exposition {
    /// Parses an OpenMetrics exposition; panics (with the text) if it is not valid.
    pub fn parse(text: &str) -> Exposition {
        let parsed = parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:?}\n{text}"));
        Exposition {
            parsed,
            text: text.to_string(),
        }
    }

    /// Family names (counters without `_total`).
    pub fn families(&self) -> Vec<String> {
        let mut v: Vec<_> = self.parsed.families.keys().cloned().collect();
        v.sort();
        v
    }

    fn sample(&self, family: &str, labels: &[(&str, &str)]) -> Option<OpenMetricsValue> {
        let f = self.parsed.families.get(family)?;
        f.iter_samples()
            .find(|s| {
                let set = s.get_labelset().expect("a label set");
                set.iter().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|s| s.value.clone())
    }

    /// The value of a counter or gauge sample; panics if it is missing or of another type.
    pub fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        match self.sample(family, labels) {
            Some(OpenMetricsValue::Counter(c)) => c.value.as_f64(),
            Some(OpenMetricsValue::Gauge(g)) => g.as_f64(),
            other => panic!("{family}{labels:?}: {other:?}\n{}", self.text),
        }
    }

    /// True if the family has a sample with exactly these labels.
    pub fn has(&self, family: &str, labels: &[(&str, &str)]) -> bool {
        self.sample(family, labels).is_some()
    }

    /// The type the exposition declares for a family.
    pub fn kind(&self, family: &str) -> Option<String> {
        self.parsed
            .families
            .get(family)
            .map(|f| f.family_type.to_string())
    }

    /// A histogram without labels, checked with `check_histogram`.
    pub fn histogram(&self, family: &str) -> Histogram {
        match self.sample(family, &[]) {
            Some(OpenMetricsValue::Histogram(h)) => check_histogram(family, &h),
            other => panic!("{family}: {other:?}\n{}", self.text),
        }
    }
}

/// A histogram's cumulative buckets `(upper bound, count)`, its `_count` and `_sum`.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// Observations at or below `bound` (a bucket bound).
    pub fn at(&self, bound: f64) -> f64 {
        self.buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .unwrap_or_else(|| panic!("no bucket le={bound}: {self:?}"))
            .1
    }
}

/// What every histogram must satisfy: bounds increasing and ending in `+Inf`, cumulative
/// counts non-decreasing, `+Inf` equal to `_count`, and `_sum` between what the
/// observations would add up to at their buckets' lower and upper bounds (non-negative
/// observations).
pub fn check_histogram(name: &str, h: &HistogramValue) -> Histogram {
    let buckets: Vec<(f64, f64)> = h
        .buckets
        .iter()
        .map(|b| (b.upper_bound, b.count.as_f64()))
        .collect();
    let count = h.count.unwrap_or_else(|| panic!("{name}: no _count")) as f64;
    let sum = h
        .sum
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no _sum"))
        .as_f64();
    assert!(!buckets.is_empty(), "{name}: no buckets");
    assert_eq!(
        buckets.last().unwrap().0,
        f64::INFINITY,
        "{name}: last bucket is not +Inf: {buckets:?}"
    );
    for w in buckets.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "{name}: bounds not increasing: {buckets:?}"
        );
        assert!(
            w[0].1 <= w[1].1,
            "{name}: cumulative counts decrease: {buckets:?}"
        );
    }
    assert_eq!(
        buckets.last().unwrap().1,
        count,
        "{name}: bucket +Inf differs from _count: {buckets:?}"
    );
    let (mut low, mut high, mut below, mut lower_bound) = (0.0, 0.0, 0.0, 0.0);
    for &(bound, cum) in &buckets {
        let n = cum - below;
        low += n * lower_bound;
        if n > 0.0 {
            high += n * bound;
        }
        below = cum;
        lower_bound = bound;
    }
    let eps = 1e-9 * (1.0 + high.abs());
    assert!(
        sum >= low - eps && sum <= high + eps,
        "{name}: _sum {sum} outside [{low}, {high}] implied by {buckets:?}"
    );
    Histogram {
        buckets,
        count,
        sum,
    }
}
