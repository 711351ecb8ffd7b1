//! `compare A B`: the ratio B/A of every figure and latency the two reports share.

use super::model::Report;
use super::table::num;
use std::fmt::Write;
use std::path::Path;

pub fn load(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("parse {}: {e}", path.display()))
}

/// The comparison table.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "A: {} (proxy engine {})\nB: {} (proxy engine {})",
        a.env.args.join(" "),
        a.env.proxy_engine.as_deref().unwrap_or("-"),
        b.env.args.join(" "),
        b.env.proxy_engine.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        o,
        "{:<10} {:<34} {:>12} {:>12} {:>8}  {:<8} unit",
        "scenario", "figure", "A", "B", "B/A", "better"
    );
    let mut shared = 0;
    for sa in &a.scenarios {
        let Some(sb) = b.scenarios.iter().find(|s| s.name == sa.name) else {
            continue;
        };
        let mut row = |name: &str, va: f64, vb: f64, unit: &str, higher: bool| {
            let r = if va != 0.0 { vb / va } else { f64::NAN };
            let better = if !r.is_finite() || (r - 1.0).abs() < 0.02 {
                "same"
            } else if (r > 1.0) == higher {
                "B"
            } else {
                "A"
            };
            shared += 1;
            let _ = writeln!(
                o,
                "{:<10} {:<34} {:>12} {:>12} {:>8}  {:<8} {unit}",
                sa.name,
                name,
                num(va),
                num(vb),
                format!("{r:.2}x"),
                better
            );
        };
        for fa in &sa.figures {
            if let Some(fb) = sb.figures.iter().find(|f| f.name == fa.name) {
                row(&fa.name, fa.value, fb.value, &fa.unit, fa.higher_is_better);
            }
        }
        for la in &sa.latencies {
            if let Some(lb) = sb
                .latencies
                .iter()
                .find(|l| l.name == la.name && l.target == la.target)
            {
                let n = format!("{} {} p99", la.target, la.name);
                row(&n, la.p99_us, lb.p99_us, "us", false);
            }
        }
    }
    if shared == 0 {
        o.push_str("(no figure in common)\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::{Figure, ScenarioReport};

    fn rep(v: f64) -> Report {
        Report {
            scenarios: vec![ScenarioReport {
                name: "bulk".into(),
                figures: vec![Figure::new("aggregate, 1 pairs", "Gbit/s", v, true)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn ratio_per_shared_figure() {
        let t = compare(&rep(10.0), &rep(15.0));
        assert!(t.contains("1.50x"), "{t}");
        assert!(t.lines().last().unwrap().contains(" B "), "{t}");
    }

    #[test]
    fn json_roundtrip_then_compare() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, serde_json::to_string(&rep(2.0)).unwrap()).unwrap();
        let back = load(&p).unwrap();
        assert!(compare(&back, &rep(1.0)).contains("0.50x"));
    }
}
