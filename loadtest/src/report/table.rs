//! The human-readable tables: plain text for the terminal, Markdown for report.md.

use super::model::{Figure, Report};
use std::fmt::Write;

pub fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `0.62x`, or with rounds the median and the range of the rounds' ratios:
/// `0.62x (0.55-0.70)`.
pub fn ratio(f: &Figure) -> String {
    match (f.ratio, f.ratio_range) {
        (Some(r), Some([lo, hi])) if f.rounds.unwrap_or(1) > 1 => {
            format!("{r:.2}x ({lo:.2}-{hi:.2})")
        }
        (Some(r), _) => format!("{r:.2}x"),
        (None, _) => "-".into(),
    }
}

fn rows(report: &Report, md: bool) -> String {
    let mut o = String::new();
    for s in &report.scenarios {
        let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // The terminal's first column has always been "value" against the proxy.
        let (value, base) = match s.labels() {
            ("proxy", b) => ("value", b),
            l => l,
        };
        if md {
            let _ = writeln!(
                o,
                "\n## {}\n\n{} ({:.1} s)\n",
                s.name,
                params.join(", "),
                s.wall_s
            );
            let _ = writeln!(
                o,
                "| figure | {} | {} | ratio (range over rounds) | unit |\n|---|---:|---:|---:|---|",
                s.labels().0,
                s.labels().1
            );
        } else {
            let _ = writeln!(
                o,
                "\n== {} ({:.1} s): {}",
                s.name,
                s.wall_s,
                params.join(", ")
            );
            let _ = writeln!(
                o,
                "  {:<34} {:>13} {:>13} {:>20}  unit",
                "figure", value, base, "ratio (range)"
            );
        }
        for f in &s.figures {
            let d = f.direct.map(num).unwrap_or_else(|| "-".into());
            if md {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} |",
                    f.name,
                    num(f.value),
                    d,
                    ratio(f),
                    f.unit
                );
            } else {
                let _ = writeln!(
                    o,
                    "  {:<34} {:>13} {:>13} {:>20}  {}",
                    f.name,
                    num(f.value),
                    d,
                    ratio(f),
                    f.unit
                );
            }
        }
        for n in &s.notes {
            if md {
                let _ = writeln!(o, "\n{n}");
            } else {
                for line in wrap(n, 88) {
                    let _ = writeln!(o, "  {line}");
                }
            }
        }
        if !s.latencies.is_empty() {
            if md {
                let _ = writeln!(o, "\n| latency (us) | target | n | p50 | p90 | p99 | max |\n|---|---|---:|---:|---:|---:|---:|");
            } else {
                let _ = writeln!(
                    o,
                    "  {:<22} {:<7} {:>7} {:>10} {:>10} {:>10} {:>10}",
                    "latency (us)", "target", "n", "p50", "p90", "p99", "max"
                );
            }
            for l in &s.latencies {
                if md {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        l.name,
                        l.target,
                        l.count,
                        num(l.p50_us),
                        num(l.p90_us),
                        num(l.p99_us),
                        num(l.max_us)
                    );
                } else {
                    let _ = writeln!(
                        o,
                        "  {:<22} {:<7} {:>7} {:>10} {:>10} {:>10} {:>10}",
                        l.name,
                        l.target,
                        l.count,
                        num(l.p50_us),
                        num(l.p90_us),
                        num(l.p99_us),
                        num(l.max_us)
                    );
                }
            }
        }
    }
    o
}

/// Splits a sentence into lines of at most `width` characters (longer words stay whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in text.split_whitespace() {
        let cur = lines.last_mut().expect("one line");
        if !cur.is_empty() && cur.len() + 1 + w.len() > width {
            lines.push(w.to_string());
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(w);
        }
    }
    lines
}

fn env_lines(r: &Report) -> Vec<String> {
    let e = &r.env;
    vec![
        format!("kernel: {}", e.kernel),
        format!(
            "cores: {}{}, open files limit: {}",
            e.cores,
            e.client_cpus
                .as_ref()
                .map(|c| format!(" (generator on CPUs {c})"))
                .unwrap_or_default(),
            e.nofile_limit
        ),
        format!(
            "proxy: {}{}",
            e.proxy,
            e.proxy_engine
                .as_ref()
                .map(|x| format!(", engine {x}"))
                .unwrap_or_default()
        ),
        format!("xmpp: {}", e.xmpp),
    ]
}

pub fn terminal(r: &Report) -> String {
    let mut o = String::from("streamhost load test\n");
    for l in env_lines(r) {
        let _ = writeln!(o, "  {l}");
    }
    o.push_str(&rows(r, false));
    if r.errors.is_empty() {
        o.push_str("\nresult: PASS (every byte verified)\n");
    } else {
        let _ = writeln!(o, "\nresult: FAIL");
        for e in &r.errors {
            let _ = writeln!(o, "  error: {e}");
        }
    }
    o
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::from("# streamhost load test\n\n");
    for l in env_lines(r) {
        let _ = writeln!(o, "- {l}");
    }
    let _ = writeln!(o, "- command: `{}`", r.env.args.join(" "));
    o.push_str(&rows(r, true));
    if let Some(cfg) = &r.env.proxy_config {
        let _ = writeln!(o, "\n## Proxy config\n\n```toml\n{cfg}```");
    }
    if r.errors.is_empty() {
        o.push_str("\n**Result: PASS** (every byte verified)\n");
    } else {
        o.push_str("\n**Result: FAIL**\n\n");
        for e in &r.errors {
            let _ = writeln!(o, "- {e}");
        }
    }
    o
}
