//! `bulk`: P pairs each move B bytes (one way, or both ways at once); aggregate and
//! per-pair Gbit/s. A list of pair counts gives a throughput-vs-pairs curve.

use super::{progress, Ctx};
use crate::pairs::{next_pair_id, setup, Target};
use crate::report::model::{gbps, Figure, ScenarioReport, Series};
use crate::transfer::{receive, send, Leg};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BulkParams {
    pub pairs: Vec<usize>,
    pub bytes: u64,
    pub both_ways: bool,
}

/// Figures of one pair count on one target.
#[derive(Debug, Clone)]
pub struct BulkRun {
    pub pairs: usize,
    pub aggregate_gbps: f64,
    pub per_pair_gbps: Vec<f64>,
    pub bytes: u64,
}

/// Moves the bytes over `pairs` pairs on `target`; fails on the first bad byte.
pub fn run_one(
    ctx: &Ctx,
    target: &Target,
    pairs: usize,
    p: &BulkParams,
) -> anyhow::Result<BulkRun> {
    ctx.check_deadline("bulk")?;
    let mut set = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let pair = setup(target, &ctx.tag, next_pair_id())?;
        ctx.apply_timeouts(&pair)?;
        set.push(pair);
    }
    let dirs = if p.both_ways { 2 } else { 1 };
    let total = p.bytes * pairs as u64 * dirs;
    let pb = progress(total, &format!("bulk {} x{pairs}", target.label()), true);
    let start = Instant::now();
    let ends = std::thread::scope(|s| -> anyhow::Result<Vec<Instant>> {
        let mut handles = Vec::new();
        for pair in &mut set {
            let fwd = Leg::new(ctx.seed, pair.id, false, p.bytes);
            let (mut rw, mut tw) = (pair.requester.try_clone()?, pair.target.try_clone()?);
            let (mut rr, mut tr) = (pair.requester.try_clone()?, pair.target.try_clone()?);
            let f2 = fwd.clone();
            handles.push(s.spawn(move || send(&mut rw, &f2, &mut Vec::new()).map(|_| None)));
            let pbr = pb.clone();
            handles.push(s.spawn(move || {
                receive(&mut tr, &fwd, &mut Vec::new(), true, &pbr).map(|r| Some(r.done))
            }));
            if p.both_ways {
                let back = Leg::new(ctx.seed, pair.id, true, p.bytes);
                let b2 = back.clone();
                handles.push(s.spawn(move || send(&mut tw, &b2, &mut Vec::new()).map(|_| None)));
                let pbr = pb.clone();
                handles.push(s.spawn(move || {
                    receive(&mut rr, &back, &mut Vec::new(), true, &pbr).map(|r| Some(r.done))
                }));
            } else {
                let _ = tw.shutdown(std::net::Shutdown::Write);
            }
        }
        let mut ends = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.join().expect("transfer thread panicked") {
                Ok(Some(t)) => ends.push(t),
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(ends),
        }
    });
    pb.finish_and_clear();
    let ends = ends?;
    let last = ends.iter().max().copied().unwrap_or(start);
    // Per pair: its received directions, from the common start to its last byte.
    let per_pair_gbps = ends
        .chunks(dirs as usize)
        .map(|c| gbps(p.bytes * dirs, *c.iter().max().expect("chunk") - start))
        .collect();
    Ok(BulkRun {
        pairs,
        aggregate_gbps: gbps(total, last - start),
        per_pair_gbps,
        bytes: total,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(ctx: &Ctx, p: &BulkParams, name: &str) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let mut rep = ScenarioReport {
        name: name.into(),
        params: vec![
            ("pairs".into(), format!("{:?}", p.pairs)),
            ("bytes_per_pair".into(), p.bytes.to_string()),
            ("both_ways".into(), p.both_ways.to_string()),
        ],
        ..Default::default()
    };
    let targets = ctx.targets();
    let mut runs: Vec<(String, Vec<BulkRun>)> = targets
        .iter()
        .map(|t| (t.label().to_string(), Vec::new()))
        .collect();
    // Proxy and direct alternate per pair count, so that drift in the machine's load
    // affects both sides of each ratio alike.
    for &n in &p.pairs {
        for (t, (_, v)) in targets.iter().zip(runs.iter_mut()) {
            v.push(run_one(ctx, t, n, p)?);
        }
    }
    let direct = runs
        .iter()
        .find(|(l, _)| l == "direct")
        .map(|(_, v)| v.clone());
    let (main_label, main) = &runs[0];
    for (i, r) in main.iter().enumerate() {
        let d = direct
            .as_ref()
            .filter(|_| main_label != "direct")
            .map(|d| &d[i]);
        let n = r.pairs;
        rep.figures.push(
            Figure::new(
                &format!("aggregate, {n} pairs"),
                "Gbit/s",
                r.aggregate_gbps,
                true,
            )
            .with_direct(d.map(|d| d.aggregate_gbps)),
        );
        if n > 1 {
            rep.figures.push(
                Figure::new(
                    &format!("per pair median, {n} pairs"),
                    "Gbit/s",
                    median(&r.per_pair_gbps),
                    true,
                )
                .with_direct(d.map(|d| median(&d.per_pair_gbps))),
            );
            let min = r
                .per_pair_gbps
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            rep.figures.push(
                Figure::new(&format!("per pair min, {n} pairs"), "Gbit/s", min, true).with_direct(
                    d.map(|d| {
                        d.per_pair_gbps
                            .iter()
                            .copied()
                            .fold(f64::INFINITY, f64::min)
                    }),
                ),
            );
        }
    }
    for (label, v) in &runs {
        rep.series.push(Series {
            name: "aggregate throughput".into(),
            target: label.clone(),
            x_label: "pairs".into(),
            y_label: "Gbit/s".into(),
            points: v
                .iter()
                .map(|r| (r.pairs as f64, r.aggregate_gbps))
                .collect(),
        });
    }
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}
