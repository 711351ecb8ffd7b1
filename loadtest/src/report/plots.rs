//! SVG plots (plotters' SVG backend: text is written as SVG <text>, no system fonts).
//!
//! Made to be read at a glance: pairs on a log axis (ticks 1, 2, 4, 8, ...), latencies on
//! a log axis with human ticks (100 us, 1 ms, 10 ms), and wherever proxy and direct are
//! compared, a second panel with their ratio and the line 1.0 (= as fast as direct).

use super::model::{median, Latency, Report, Series};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const PROXY: RGBColor = RGBColor(214, 39, 40);
const DIRECT: RGBColor = RGBColor(31, 119, 180);
const OTHER: [RGBColor; 3] = [RGBColor(44, 160, 44), RGBColor(148, 103, 189), BLACK];

fn color(target: &str, i: usize) -> RGBColor {
    match target {
        t if t.starts_with("proxy") || t == "streamhost" || t == "with abuse" => PROXY,
        "direct" | "without abuse" => DIRECT,
        // The peers keep their colour from figure to figure.
        t if t.starts_with("prosody") => OTHER[1],
        t if t.starts_with("ejabberd") => OTHER[0],
        t if t.starts_with("haproxy") => BLACK,
        _ => OTHER[i % OTHER.len()],
    }
}

/// How an axis maps values and where its ticks go.
#[derive(Clone, Copy, PartialEq)]
enum Axis {
    Linear,
    /// Whole numbers (rounds): linear, ticks at integers.
    Count,
    /// Pair counts: log scale, ticks at powers of two.
    Pairs,
    /// Microseconds: log scale, ticks at 1-2-5 or powers of ten, labelled `100 us`, `1 ms`.
    Micros,
    /// Values spanning more than a decade (ratios of proxies far apart): log scale, ticks
    /// at 1-2-5 (`0.05`, `0.1`, `0.2`, ...).
    Log,
}

impl Axis {
    fn map(self, v: f64) -> f64 {
        match self {
            Axis::Linear | Axis::Count => v,
            Axis::Pairs | Axis::Micros => v.max(1e-3).log10(),
            Axis::Log => v.max(1e-6).log10(),
        }
    }

    fn unmap(self, v: f64) -> f64 {
        match self {
            Axis::Linear | Axis::Count => v,
            Axis::Pairs | Axis::Micros | Axis::Log => 10f64.powf(v),
        }
    }

    /// Tick values (unmapped) for data from `lo` to `hi`.
    fn ticks(self, lo: f64, hi: f64) -> Vec<f64> {
        match self {
            Axis::Linear | Axis::Count => {
                let span = (hi - lo).max(1e-9);
                let raw = span / 8.0;
                let mag = 10f64.powf(raw.log10().floor());
                let step = [1.0, 2.0, 5.0, 10.0]
                    .iter()
                    .map(|m| m * mag)
                    .find(|s| span / s <= 6.0)
                    .unwrap_or(10.0 * mag);
                let step = if self == Axis::Count {
                    step.max(1.0)
                } else {
                    step
                };
                let mut v = (lo / step).ceil() * step;
                let mut out = Vec::new();
                while v <= hi + step * 1e-9 && out.len() < 50 {
                    out.push(v);
                    v += step;
                }
                out
            }
            Axis::Pairs => {
                let mut out = Vec::new();
                let mut p = 1f64;
                while p <= hi * 1.0001 && out.len() < 40 {
                    if p >= lo * 0.9999 {
                        out.push(p);
                    }
                    p *= 2.0;
                }
                if out.len() > 12 {
                    out = out.into_iter().step_by(2).collect();
                }
                out
            }
            Axis::Micros | Axis::Log => {
                let mut all = Vec::new();
                let mut decade = if self == Axis::Log { 1e-4 } else { 1.0 };
                while decade <= 1e9 {
                    for m in [1.0, 2.0, 5.0] {
                        let v = m * decade;
                        if v >= lo * 0.9999 && v <= hi * 1.0001 {
                            all.push(v);
                        }
                    }
                    decade *= 10.0;
                }
                // Three or more decades: their powers of ten alone read best.
                let is_decade = |v: &f64| v.log10().fract().abs() < 1e-9;
                if all.iter().filter(|v| is_decade(v)).count() >= 3 {
                    all.retain(is_decade);
                }
                all
            }
        }
    }

    /// The label of tick `v`, with as many decimals as the ticks' spacing needs.
    fn label(self, v: f64, decimals: usize) -> String {
        match self {
            Axis::Micros => human_us(v),
            // 1-2-5 ticks over decades: each with the decimals it needs (0.05, 0.5, 5).
            Axis::Log => {
                let d = self::decimals(&[v]);
                format!("{v:.d$}")
            }
            _ => format!("{v:.decimals$}"),
        }
    }
}

/// Decimals that tell ticks apart: 0 for whole numbers, 1 for 0.2 steps, 2 for 0.05.
fn decimals(ticks: &[f64]) -> usize {
    (0..3)
        .find(|&d| {
            let f = 10f64.powi(d as i32);
            ticks
                .iter()
                .all(|t| ((t * f) - (t * f).round()).abs() < 1e-6)
        })
        .unwrap_or(3)
}

/// `100 us`, `1 ms`, `2.5 ms`, `10 s`.
pub fn human_us(us: f64) -> String {
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "us")
    };
    let v = (v * 10.0).round() / 10.0;
    if v.fract() == 0.0 {
        format!("{} {unit}", v as i64)
    } else {
        format!("{v} {unit}")
    }
}

/// A linear coordinate (over values already mapped by an [`Axis`]) whose ticks are exactly
/// the given ones: plotters' own pick for a log axis would be 10^0.5 and the like.
struct Keyed {
    lo: f64,
    hi: f64,
    keys: Vec<f64>,
}

impl Ranged for Keyed {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.keys.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// One line of a panel, with optional (low, high) whiskers per point.
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    ranges: Vec<(f64, f64)>,
}

struct Panel<'a> {
    title: &'a str,
    x: Axis,
    x_desc: &'a str,
    y_desc: &'a str,
    lines: Vec<Line>,
    /// A dashed horizontal line (1.0 on ratio panels) and its legend label.
    reference: Option<(f64, &'a str)>,
}

fn draw(area: &DrawingArea<SVGBackend<'_>, Shift>, p: &Panel) -> anyhow::Result<()> {
    let pts = || p.lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut ys: Vec<f64> = p.reference.iter().map(|r| r.0).collect();
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        ys.push(y);
    }
    for l in &p.lines {
        for &(lo, hi) in &l.ranges {
            ys.extend([lo, hi]);
        }
    }
    if !x0.is_finite() {
        return Ok(());
    }
    let y0 = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let y1 = ys.iter().copied().fold(0.0, f64::max);
    // A log y axis when the values span more than a decade: otherwise the small ones
    // (a proxy at 0.05x beside one at 0.7x) sit on the floor.
    let y = if y0 > 0.0 && y1 / y0 > 10.0 {
        Axis::Log
    } else {
        Axis::Linear
    };
    let ticks = p.x.ticks(x0, x1);
    let (mut m0, mut m1) = (p.x.map(x0), p.x.map(x1));
    if m1 - m0 < 1e-9 {
        m0 -= 0.5;
        m1 += 0.5;
    } else {
        let pad = (m1 - m0) * 0.04;
        m0 -= pad;
        m1 += pad;
    }
    let (ylo, yhi, y_keys) = if y == Axis::Log {
        let keys = Axis::Log.ticks(y0 / 1.3, y1 * 1.3);
        (y.map(y0 / 1.3), y.map(y1 * 1.3), keys)
    } else {
        let hi = if y1 <= 0.0 { 1.0 } else { y1 * 1.12 };
        (0.0, hi, Axis::Linear.ticks(0.0, hi))
    };
    // Room above the data for the legend (one row per line and reference), so that it
    // covers no point.
    let rows = p.lines.len() + usize::from(p.reference.is_some());
    let f = (0.055 * rows as f64 + 0.03).min(0.5);
    let yhi = yhi + (yhi - ylo) * f / (1.0 - f);
    let x_keys: Vec<f64> = ticks.iter().map(|&t| p.x.map(t)).collect();
    let y_keys_mapped: Vec<f64> = y_keys.iter().map(|&t| y.map(t)).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(
            Keyed {
                lo: m0,
                hi: m1,
                keys: x_keys,
            },
            Keyed {
                lo: ylo,
                hi: yhi,
                keys: y_keys_mapped,
            },
        )?;
    let x = p.x;
    let (xd, yd) = (decimals(&ticks), decimals(&y_keys));
    let y_desc = if y == Axis::Log {
        format!("{} (log scale)", p.y_desc)
    } else {
        p.y_desc.to_string()
    };
    chart
        .configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| x.label(x.unmap(*v), xd))
        .y_label_formatter(&|v| y.label(y.unmap(*v), yd))
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    if let Some((r, label)) = p.reference {
        let r = y.map(r);
        let dashes = DashedLineSeries::new(vec![(m0, r), (m1, r)], 6, 4, BLACK.mix(0.6).into());
        chart
            .draw_series(dashes)?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    for l in &p.lines {
        let c = l.color;
        let mapped: Vec<(f64, f64)> = l
            .points
            .iter()
            .map(|&(a, b)| (x.map(a), y.map(b)))
            .collect();
        chart
            .draw_series(LineSeries::new(mapped.clone(), c.stroke_width(2)))?
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(mapped.iter().map(|&pt| Circle::new(pt, 3, c.filled())))?;
        for (&(px, _), &(lo, hi)) in mapped.iter().zip(&l.ranges) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(px, y.map(lo)), (px, y.map(hi))],
                c.mix(0.7).stroke_width(1),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Writes one or two stacked panels into `path`.
fn write_svg(path: &Path, panels: &[Panel]) -> anyhow::Result<()> {
    let height = if panels.len() > 1 { 720 } else { 460 };
    let root = SVGBackend::new(path, (820, height)).into_drawing_area();
    root.fill(&WHITE)?;
    match panels {
        [one] => draw(&root, one)?,
        [top, bottom] => {
            let (a, b) = root.split_vertically(400);
            draw(&a, top)?;
            draw(&b, bottom)?;
        }
        _ => anyhow::bail!("one or two panels"),
    }
    root.present()?;
    Ok(())
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn line_of(s: &Series, i: usize) -> Line {
    Line {
        name: s.target.clone(),
        color: color(&s.target, i),
        points: s.points.clone(),
        ranges: s.ranges.clone(),
    }
}

/// Per round, proxy over the direct run just before it.
fn round_ratios(proxy: &Series, direct: &Series) -> Vec<(f64, f64)> {
    proxy
        .points
        .iter()
        .zip(&direct.points)
        .filter(|(_, d)| d.1 > 0.0)
        .map(|(p, d)| (p.0, p.1 / d.1))
        .collect()
}

/// Writes every plot the report has data for; returns the files written.
pub fn write_all(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for s in &r.scenarios {
        // Throughput against pairs (when more than one pair count ran), with its ratio.
        let tp: Vec<&Series> = s
            .series
            .iter()
            .filter(|x| x.x_label == "pairs" && x.y_label == "Gbit/s")
            .collect();
        if tp.iter().any(|x| x.points.len() > 1) {
            let title = format!(
                "{}: aggregate throughput (median, range over rounds)",
                s.name
            );
            let mut panels = vec![Panel {
                title: &title,
                x: Axis::Pairs,
                x_desc: "pairs (log scale)",
                y_desc: "Gbit/s",
                lines: tp.iter().enumerate().map(|(i, x)| line_of(x, i)).collect(),
                reference: None,
            }];
            let ratio: Vec<&Series> = s
                .series
                .iter()
                .filter(|x| x.x_label == "pairs" && x.y_label == "ratio")
                .collect();
            if !ratio.is_empty() {
                panels.push(Panel {
                    title: "ratio to direct (median, range over rounds)",
                    x: Axis::Pairs,
                    x_desc: "pairs (log scale)",
                    y_desc: "ratio to direct",
                    lines: ratio
                        .iter()
                        .enumerate()
                        .map(|(i, x)| line_of(x, i))
                        .collect(),
                    reference: Some((1.0, "direct = 1.0")),
                });
            }
            let p = dir.join(format!("{}_throughput_vs_pairs.svg", slug(&s.name)));
            write_svg(&p, &panels)?;
            out.push(p);
        }
        // Every round of one pair count: how much the machine's noise moved each side.
        let by_round: Vec<&Series> = s
            .series
            .iter()
            .filter(|x| x.x_label == "round" && x.y_label != "ratio")
            .collect();
        let mut names: Vec<&str> = by_round.iter().map(|x| x.name.as_str()).collect();
        names.dedup();
        let (value, base) = s.labels();
        let x_desc = format!("round ({base}, then {value})");
        let ratio_title = format!("{value} / {base} in each round");
        let ratio_desc = format!("ratio to {base}");
        let reference = format!("{base} = 1.0");
        for n in names {
            let lines: Vec<&Series> = by_round.iter().copied().filter(|x| x.name == n).collect();
            let title = format!("{}: {n}, each round", s.name);
            let mut panels = vec![Panel {
                title: &title,
                x: Axis::Count,
                x_desc: &x_desc,
                y_desc: "Gbit/s",
                lines: lines
                    .iter()
                    .enumerate()
                    .map(|(i, x)| line_of(x, i))
                    .collect(),
                reference: None,
            }];
            let proxy = lines.iter().find(|x| x.target == value);
            let direct = lines.iter().find(|x| x.target == base);
            if let (Some(p), Some(d)) = (proxy, direct) {
                let ratios = round_ratios(p, d);
                let med = median(&ratios.iter().map(|r| r.1).collect::<Vec<_>>());
                let ends = [ratios.first(), ratios.last()];
                panels.push(Panel {
                    title: &ratio_title,
                    x: Axis::Count,
                    x_desc: "round",
                    y_desc: &ratio_desc,
                    lines: vec![
                        Line {
                            name: format!("{value} / {base}"),
                            color: PROXY,
                            points: ratios.clone(),
                            ranges: Vec::new(),
                        },
                        Line {
                            name: format!("median {med:.2}x"),
                            color: BLACK,
                            points: ends.iter().flatten().map(|r| (r.0, med)).collect(),
                            ranges: Vec::new(),
                        },
                    ],
                    reference: Some((1.0, &reference)),
                });
            }
            let p = dir.join(format!("{}_{}.svg", slug(&s.name), slug(n)));
            write_svg(&p, &panels)?;
            out.push(p);
        }
        // Several proxies' ratios to direct, round by round, in one figure (`peers`).
        let ratios: Vec<&Series> = s
            .series
            .iter()
            .filter(|x| x.x_label == "round" && x.y_label == "ratio")
            .collect();
        let mut names: Vec<&str> = ratios.iter().map(|x| x.name.as_str()).collect();
        names.dedup();
        for n in names {
            let title = format!("{}: {n}, each round", s.name);
            let p = dir.join(format!("{}_{}.svg", slug(&s.name), slug(n)));
            let lines = ratios
                .iter()
                .filter(|x| x.name == n)
                .enumerate()
                .map(|(i, x)| {
                    let med = median(&x.points.iter().map(|p| p.1).collect::<Vec<_>>());
                    Line {
                        name: format!("{} (median {med:.2}x)", x.target),
                        ..line_of(x, i)
                    }
                })
                .collect();
            write_svg(
                &p,
                &[Panel {
                    title: &title,
                    x: Axis::Count,
                    x_desc: "round (direct, then each proxy)",
                    y_desc: "ratio to direct",
                    lines,
                    reference: Some((1.0, "direct = 1.0")),
                }],
            )?;
            out.push(p);
        }
        // Other series (idle's RSS over time).
        let other: Vec<&Series> = s
            .series
            .iter()
            .filter(|x| x.x_label != "pairs" && x.x_label != "round")
            .collect();
        if !other.is_empty() {
            let title = format!("{}: {}", s.name, other[0].name);
            let p = dir.join(format!("{}_series.svg", slug(&s.name)));
            write_svg(
                &p,
                &[Panel {
                    title: &title,
                    x: Axis::Linear,
                    x_desc: &other[0].x_label,
                    y_desc: &other[0].y_label,
                    lines: other
                        .iter()
                        .enumerate()
                        .map(|(i, x)| line_of(x, i))
                        .collect(),
                    reference: None,
                }],
            )?;
            out.push(p);
        }
        let mut names: Vec<&str> = s.latencies.iter().map(|l| l.name.as_str()).collect();
        names.dedup();
        for n in names {
            let ls: Vec<&Latency> = s.latencies.iter().filter(|l| l.name == n).collect();
            let title = format!("{}: {n} latency, cumulative", s.name);
            let p = dir.join(format!("{}_latency_cdf_{}.svg", slug(&s.name), slug(n)));
            write_svg(
                &p,
                &[Panel {
                    title: &title,
                    x: Axis::Micros,
                    x_desc: "latency (log scale)",
                    y_desc: "fraction at or below",
                    lines: ls
                        .iter()
                        .enumerate()
                        .map(|(i, l)| Line {
                            name: l.target.clone(),
                            color: color(&l.target, i),
                            points: l.cdf.iter().map(|&(q, us)| (us.max(1.0), q)).collect(),
                            ranges: Vec::new(),
                        })
                        .collect(),
                    reference: None,
                }],
            )?;
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_ticks_are_human() {
        let t = Axis::Micros.ticks(80.0, 20_000.0);
        let labels: Vec<String> = t.iter().map(|&v| Axis::Micros.label(v, 0)).collect();
        assert_eq!(labels, ["100 us", "1 ms", "10 ms"]);
        assert_eq!(human_us(2500.0), "2.5 ms");
        assert_eq!(human_us(3e6), "3 s");
        let narrow = Axis::Micros.ticks(150.0, 3000.0);
        assert_eq!(narrow, [200.0, 500.0, 1000.0, 2000.0]);
    }

    #[test]
    fn pair_ticks_are_powers_of_two() {
        assert_eq!(
            Axis::Pairs.ticks(1.0, 64.0),
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        );
        assert_eq!(Axis::Linear.ticks(0.0, 1.0).len(), 6);
        assert_eq!(Axis::Count.ticks(1.0, 3.0), [1.0, 2.0, 3.0]);
        assert_eq!(decimals(&[0.0, 0.2, 0.4]), 1);
        assert_eq!(decimals(&[0.0, 5.0, 10.0]), 0);
    }

    #[test]
    fn log_ticks_read_as_plain_numbers() {
        let t = Axis::Log.ticks(0.04, 1.5);
        assert_eq!(t, [0.05, 0.1, 0.2, 0.5, 1.0]);
        let labels: Vec<String> = t.iter().map(|&v| Axis::Log.label(v, 0)).collect();
        assert_eq!(labels, ["0.05", "0.1", "0.2", "0.5", "1"]);
    }
}
