//! `peers`: streamhost beside other XEP-0065 proxies, the same bulk transfers interleaved
//! (direct, streamhost, the next peer, ..., then again), each figure the median over the
//! rounds and each ratio the median of the rounds' own ratios to direct.

use super::bulk::{run_one, BulkParams, BulkRun};
use super::idle::IdleParams;
use super::setup::SetupParams;
use super::Ctx;
use crate::pairs::Target;
use crate::peers::Peer;
use crate::report::model::{median, range, Figure, ScenarioReport, Series};
use std::time::Instant;

pub fn run(
    ctx: &Ctx,
    peers: &[Peer],
    skipped: &[String],
    p: &BulkParams,
    setup: &SetupParams,
    idle: &IdleParams,
) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let rounds = ctx.rounds.max(1);
    let mut rep = ScenarioReport {
        name: "peers".into(),
        params: vec![
            ("pairs".into(), format!("{:?}", p.pairs)),
            ("bytes_per_pair".into(), p.bytes.to_string()),
            ("rounds".into(), rounds.to_string()),
            ("setups".into(), setup.count.to_string()),
            ("concurrency".into(), setup.concurrency.to_string()),
            ("idle_pairs".into(), idle.pairs.to_string()),
            (
                "peers".into(),
                peers
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ],
        ..Default::default()
    };
    // runs[0] is direct, runs[1 + i] peer i; each [pair count][round].
    let mut runs: Vec<Vec<Vec<BulkRun>>> = vec![vec![Vec::new(); p.pairs.len()]; peers.len() + 1];
    for _ in 0..rounds {
        for (i, &n) in p.pairs.iter().enumerate() {
            runs[0][i].push(run_one(ctx, &Target::Direct, n, p)?);
            for (k, peer) in peers.iter().enumerate() {
                let c = Ctx {
                    proxy_pid: peer.pid,
                    ..ctx.clone()
                };
                let r = run_one(&c, &peer.target, n, p)
                    .map_err(|e| anyhow::anyhow!("{}: {e:#}", peer.name))?;
                runs[k + 1][i].push(r);
            }
        }
    }
    for (i, &n) in p.pairs.iter().enumerate() {
        let direct: Vec<f64> = runs[0][i].iter().map(|r| r.aggregate_gbps).collect();
        for (k, peer) in peers.iter().enumerate() {
            let v = &runs[k + 1][i];
            let agg: Vec<f64> = v.iter().map(|r| r.aggregate_gbps).collect();
            rep.figures.push(Figure::from_rounds(
                &format!("{}, {n} pairs", peer.name),
                "Gbit/s",
                &agg,
                Some(&direct),
                true,
            ));
            let gb = v.iter().map(|r| r.bytes as f64).sum::<f64>() / 1e9;
            let cpu: Option<f64> = v.iter().map(|r| r.cpu.proxy).sum();
            if let Some(c) = cpu.filter(|_| gb > 0.0) {
                let mut f = Figure::new(
                    &format!("{} CPU, {n} pairs", peer.name),
                    "core-s/GB",
                    c / gb,
                    false,
                );
                f.rounds = Some(rounds);
                rep.figures.push(f);
            }
            let ratios: Vec<(f64, f64)> = agg
                .iter()
                .zip(&direct)
                .enumerate()
                .filter(|(_, (_, d))| **d > 0.0)
                .map(|(r, (a, d))| ((r + 1) as f64, a / d))
                .collect();
            rep.series.push(Series {
                name: format!("ratio to direct, {n} pairs"),
                target: peer.name.clone(),
                x_label: "round".into(),
                y_label: "ratio".into(),
                points: ratios,
                ranges: Vec::new(),
            });
        }
        rep.figures.push(Figure::from_rounds(
            &format!("direct, {n} pairs"),
            "Gbit/s",
            &direct,
            None,
            true,
        ));
    }
    // Against pairs (the plot's x axis): each target's throughput, each peer's ratio.
    let curve = |name: &str, target: &str, y: &str, per_count: Vec<Vec<f64>>| {
        let (points, ranges) = p
            .pairs
            .iter()
            .zip(per_count)
            .map(|(&n, v)| {
                let [lo, hi] = range(&v).unwrap_or([0.0, 0.0]);
                ((n as f64, median(&v)), (lo, hi))
            })
            .unzip();
        Series {
            name: name.into(),
            target: target.into(),
            x_label: "pairs".into(),
            y_label: y.into(),
            points,
            ranges,
        }
    };
    let agg = |v: &Vec<BulkRun>| v.iter().map(|r| r.aggregate_gbps).collect::<Vec<_>>();
    rep.series.push(curve(
        "aggregate throughput",
        "direct",
        "Gbit/s",
        runs[0].iter().map(agg).collect(),
    ));
    for (k, peer) in peers.iter().enumerate() {
        rep.series.push(curve(
            "aggregate throughput",
            &peer.name,
            "Gbit/s",
            runs[k + 1].iter().map(agg).collect(),
        ));
    }
    for (k, peer) in peers.iter().enumerate() {
        let ratios = runs[k + 1]
            .iter()
            .zip(&runs[0])
            .map(|(m, d)| {
                m.iter()
                    .zip(d)
                    .filter(|(_, d)| d.aggregate_gbps > 0.0)
                    .map(|(m, d)| m.aggregate_gbps / d.aggregate_gbps)
                    .collect()
            })
            .collect();
        rep.series
            .push(curve("ratio to direct", &peer.name, "ratio", ratios));
    }
    if peers
        .iter()
        .any(|x| matches!(x.target, Target::Relay { .. }))
    {
        rep.notes.push(
            "The plain TCP relay is not a SOCKS5 proxy: no handshake, no pairing, no \
             activation, one connection forwarded to a fixed address. Its ratio is what \
             relaying alone costs on this machine, the floor for any proxy."
                .into(),
        );
    }
    super::peers_setup_idle::add(ctx, peers, setup, idle, &mut rep)?;
    rep.notes.extend(skipped.iter().cloned());
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}
