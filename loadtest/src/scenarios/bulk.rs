//! `bulk`: P pairs each move B bytes (one way, or both ways at once); aggregate and
//! per-pair Gbit/s. A list of pair counts gives a throughput-vs-pairs curve.

use super::{progress, Ctx};
use crate::pairs::{next_pair_id, setup, Target};
use crate::procstat::{CpuMark, CpuUsed};
use crate::report::model::{gbps, median, range, Figure, ScenarioReport, Series};
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
    /// CPU the clients (this process) and the proxy process used during the transfer.
    pub cpu: CpuUsed,
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
    let cpu = CpuMark::now(ctx.proxy_pid);
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
            } else if target.takes_half_close() {
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
    let cpu = cpu.used();
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
        cpu,
    })
}

/// GB (10^9 bytes) moved by runs.
fn gb(runs: &[&BulkRun]) -> f64 {
    runs.iter().map(|r| r.bytes as f64).sum::<f64>() / 1e9
}

/// Core-seconds per GB over all rounds (summed, so that 10 ms clock ticks average out).
fn cpu_per_gb(runs: &[&BulkRun], pick: impl Fn(&BulkRun) -> Option<f64>) -> Option<f64> {
    let mut sum = 0.0;
    for r in runs {
        sum += pick(r)?;
    }
    let g = gb(runs);
    (g > 0.0).then_some(sum / g)
}

/// The plain sentence under the table: what the proxy costs in CPU, and why a ratio on
/// cores shared by clients and proxy is bounded.
pub fn cpu_note(pairs: usize, direct_clients: f64, clients: f64, proxy: f64) -> String {
    let bound = direct_clients / (clients + proxy).max(1e-9);
    let per_core = 8.0 / proxy.max(1e-9);
    format!(
        "CPU, {pairs} pairs: direct TCP cost the clients {direct_clients:.2} core-s per GB; \
         through the proxy the clients spent {clients:.2} and the proxy {proxy:.2}, so where \
         clients and proxy share saturated cores the ratio tends to {direct_clients:.2} / \
         {:.2} = {bound:.2}x, while the proxy on its own relays about {per_core:.0} Gbit/s \
         per core.",
        clients + proxy
    )
}

pub fn run(ctx: &Ctx, p: &BulkParams, name: &str) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let rounds = ctx.rounds.max(1);
    let mut rep = ScenarioReport {
        name: name.into(),
        params: vec![
            ("pairs".into(), format!("{:?}", p.pairs)),
            ("bytes_per_pair".into(), p.bytes.to_string()),
            ("both_ways".into(), p.both_ways.to_string()),
            ("rounds".into(), rounds.to_string()),
        ],
        ..Default::default()
    };
    // Direct first, then the proxy: rounds alternate direct, proxy, direct, proxy, ...
    let targets = ctx.round_targets();
    // runs[target][pair count index][round]
    let mut runs: Vec<Vec<Vec<BulkRun>>> = vec![vec![Vec::new(); p.pairs.len()]; targets.len()];
    for _ in 0..rounds {
        for (i, &n) in p.pairs.iter().enumerate() {
            for (t, v) in targets.iter().zip(runs.iter_mut()) {
                v[i].push(run_one(ctx, t, n, p)?);
            }
        }
    }
    let main_label = targets.last().map(|t| t.label()).unwrap_or("direct");
    let main = runs.last().expect("at least one target");
    let direct = (targets.len() > 1).then(|| &runs[0]);
    for (i, &n) in p.pairs.iter().enumerate() {
        let m = &main[i];
        let d = direct.map(|d| &d[i]);
        let pick = |v: &[BulkRun], f: &dyn Fn(&BulkRun) -> f64| v.iter().map(f).collect::<Vec<_>>();
        let agg = |r: &BulkRun| r.aggregate_gbps;
        let dv = d.map(|d| pick(d, &agg));
        rep.figures.push(Figure::from_rounds(
            &format!("aggregate, {n} pairs"),
            "Gbit/s",
            &pick(m, &agg),
            dv.as_deref(),
            true,
        ));
        if n > 1 {
            let med = |r: &BulkRun| median(&r.per_pair_gbps);
            let dv = d.map(|d| pick(d, &med));
            rep.figures.push(Figure::from_rounds(
                &format!("per pair median, {n} pairs"),
                "Gbit/s",
                &pick(m, &med),
                dv.as_deref(),
                true,
            ));
            let min = |r: &BulkRun| {
                r.per_pair_gbps
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
            };
            let dv = d.map(|d| pick(d, &min));
            rep.figures.push(Figure::from_rounds(
                &format!("per pair min, {n} pairs"),
                "Gbit/s",
                &pick(m, &min),
                dv.as_deref(),
                true,
            ));
        }
        // Throughput per core used: what each path moves with the CPU it actually got, so
        // that a neighbour taking a share of the cores in one run does not tilt the ratio.
        // The proxy's CPU must be known: spawned here, or in this process (then in clients).
        let in_process = ctx.proxy_pid == Some(std::process::id());
        let own_proxy =
            main_label != "proxy" || in_process || m.iter().all(|r| r.cpu.proxy.is_some());
        let per_core = |r: &BulkRun| -> Option<f64> {
            let cpu = r.cpu.clients + r.cpu.proxy.unwrap_or(0.0);
            (cpu > 0.0).then(|| r.bytes as f64 * 8.0 / 1e9 / cpu)
        };
        let pm: Option<Vec<f64>> = m.iter().map(per_core).collect();
        let pd: Option<Option<Vec<f64>>> = d.map(|d| d.iter().map(per_core).collect());
        if let (Some(pm), true) = (pm, own_proxy) {
            rep.figures.push(Figure::from_rounds(
                &format!("per core used, {n} pairs"),
                "Gbit/s/core",
                &pm,
                pd.flatten().as_deref(),
                true,
            ));
        }
        let mr: Vec<&BulkRun> = m.iter().collect();
        let dr: Option<Vec<&BulkRun>> = d.map(|d| d.iter().collect());
        let clients = cpu_per_gb(&mr, |r| Some(r.cpu.clients));
        let direct_clients = dr
            .as_ref()
            .and_then(|d| cpu_per_gb(d, |r| Some(r.cpu.clients)));
        if let Some(c) = clients {
            let mut f = Figure::new(&format!("clients CPU, {n} pairs"), "core-s/GB", c, false)
                .with_direct(direct_clients);
            f.rounds = Some(rounds);
            rep.figures.push(f);
        }
        let proxy = (main_label == "proxy")
            .then(|| cpu_per_gb(&mr, |r| r.cpu.proxy))
            .flatten();
        if let Some(pc) = proxy {
            let mut f = Figure::new(&format!("proxy CPU, {n} pairs"), "core-s/GB", pc, false);
            f.rounds = Some(rounds);
            rep.figures.push(f);
        }
        if let (Some(dc), Some(c), Some(pc)) = (direct_clients, clients, proxy) {
            // Too short a run to register a clock tick says nothing.
            if dc > 0.0 && pc > 0.0 {
                rep.notes.push(cpu_note(n, dc, c, pc));
            }
        }
    }
    for (t, v) in targets.iter().zip(&runs) {
        let (points, ranges) = p
            .pairs
            .iter()
            .zip(v)
            .map(|(&n, rs)| {
                let g: Vec<f64> = rs.iter().map(|r| r.aggregate_gbps).collect();
                let [lo, hi] = range(&g).unwrap_or([0.0, 0.0]);
                ((n as f64, median(&g)), (lo, hi))
            })
            .unzip();
        rep.series.push(Series {
            name: "aggregate throughput".into(),
            target: t.label().to_string(),
            x_label: "pairs".into(),
            y_label: "Gbit/s".into(),
            points,
            ranges,
        });
        // Every round, when one pair count ran (the curve above has ranges otherwise).
        for (&n, rs) in p.pairs.iter().zip(v).filter(|_| p.pairs.len() == 1) {
            rep.series.push(Series {
                name: format!("aggregate throughput, {n} pairs"),
                target: t.label().to_string(),
                x_label: "round".into(),
                y_label: "Gbit/s".into(),
                points: rs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ((i + 1) as f64, r.aggregate_gbps))
                    .collect(),
                ranges: Vec::new(),
            });
        }
    }
    if let Some(d) = direct {
        let (points, ranges) = p
            .pairs
            .iter()
            .zip(main.iter().zip(d))
            .map(|(&n, (m, d))| {
                let r: Vec<f64> = m
                    .iter()
                    .zip(d)
                    .filter(|(_, d)| d.aggregate_gbps > 0.0)
                    .map(|(m, d)| m.aggregate_gbps / d.aggregate_gbps)
                    .collect();
                let [lo, hi] = range(&r).unwrap_or([0.0, 0.0]);
                ((n as f64, median(&r)), (lo, hi))
            })
            .unzip();
        rep.series.push(Series {
            name: "aggregate throughput, ratio to direct".into(),
            target: "proxy / direct".into(),
            x_label: "pairs".into(),
            y_label: "ratio".into(),
            points,
            ranges,
        });
    }
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}
