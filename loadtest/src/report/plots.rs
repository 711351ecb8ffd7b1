//! SVG plots (plotters' SVG backend: text is written as SVG <text>, no system fonts).

use super::model::{Latency, Report, Series};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const COLORS: [RGBColor; 4] = [RED, BLUE, GREEN, MAGENTA];

fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> anyhow::Result<()> {
    let pts = lines.iter().flat_map(|l| l.1.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return Ok(());
    }
    if log_x {
        x0 = x0.max(1.0).log10();
        x1 = x1.max(1.0).log10();
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0f64..y1)?;
    let xl = if log_x {
        format!("log10 {x_label}")
    } else {
        x_label.to_string()
    };
    chart.configure_mesh().x_desc(xl).y_desc(y_label).draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| (if log_x { x.max(1.0).log10() } else { x }, y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn series_lines(s: &[&Series]) -> Vec<(String, Vec<(f64, f64)>)> {
    s.iter()
        .map(|s| (s.target.clone(), s.points.clone()))
        .collect()
}

fn cdf_lines(l: &[&Latency]) -> Vec<(String, Vec<(f64, f64)>)> {
    l.iter()
        .map(|l| {
            (
                format!("{} {}", l.target, l.name),
                l.cdf.iter().map(|&(q, us)| (us, q)).collect(),
            )
        })
        .collect()
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Writes every plot the report has data for; returns the files written.
pub fn write_all(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for s in &r.scenarios {
        let tp: Vec<&Series> = s.series.iter().filter(|x| x.x_label == "pairs").collect();
        if !tp.is_empty() {
            let p = dir.join(format!("{}_throughput_vs_pairs.svg", slug(&s.name)));
            line_chart(
                &p,
                &format!("{}: throughput vs pairs", s.name),
                "pairs",
                "Gbit/s",
                &series_lines(&tp),
                false,
            )?;
            out.push(p);
        }
        let other: Vec<&Series> = s.series.iter().filter(|x| x.x_label != "pairs").collect();
        if !other.is_empty() {
            let p = dir.join(format!("{}_series.svg", slug(&s.name)));
            line_chart(
                &p,
                &format!("{}: {}", s.name, other[0].name),
                &other[0].x_label,
                &other[0].y_label,
                &series_lines(&other),
                false,
            )?;
            out.push(p);
        }
        let mut names: Vec<&str> = s.latencies.iter().map(|l| l.name.as_str()).collect();
        names.dedup();
        for n in names {
            let ls: Vec<&Latency> = s.latencies.iter().filter(|l| l.name == n).collect();
            let p = dir.join(format!("{}_latency_cdf_{}.svg", slug(&s.name), slug(n)));
            line_chart(
                &p,
                &format!("{}: {n} latency CDF", s.name),
                "us",
                "quantile",
                &cdf_lines(&ls),
                true,
            )?;
            out.push(p);
        }
    }
    Ok(out)
}
