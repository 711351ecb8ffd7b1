//! `setup`: N pair setups at concurrency C, each carrying a small verified payload;
//! setups/s and latency of handshake, activation round trip, first byte and done.

use super::{progress, Ctx};
use crate::pairs::{next_pair_id, setup, Target};
use crate::report::model::{median, new_histogram, record, Figure, Latency, ScenarioReport};
use crate::transfer::{receive, send, Leg};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct SetupParams {
    pub count: usize,
    pub concurrency: usize,
    pub payload: u64,
}

pub struct SetupRun {
    pub done: usize,
    pub per_sec: f64,
    pub hist: [Histogram<u64>; 4],
}

impl SetupRun {
    /// The rounds of one target together: latencies added up.
    fn merge(v: &[SetupRun]) -> SetupRun {
        let mut hist = [
            new_histogram(),
            new_histogram(),
            new_histogram(),
            new_histogram(),
        ];
        for r in v {
            for (a, b) in hist.iter_mut().zip(&r.hist) {
                a.add(b).expect("same bounds");
            }
        }
        SetupRun {
            done: v.iter().map(|r| r.done).sum(),
            per_sec: median(&v.iter().map(|r| r.per_sec).collect::<Vec<_>>()),
            hist,
        }
    }
}

pub const STEPS: [&str; 4] = ["handshake", "activation", "first byte", "done"];

pub fn run_one(ctx: &Ctx, target: &Target, p: &SetupParams) -> anyhow::Result<SetupRun> {
    let next = AtomicUsize::new(0);
    let hist = Mutex::new([
        new_histogram(),
        new_histogram(),
        new_histogram(),
        new_histogram(),
    ]);
    let pb = progress(p.count as u64, &format!("setup {}", target.label()), false);
    let start = Instant::now();
    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..p.concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let mut buf = Vec::new();
                    let quiet = indicatif::ProgressBar::hidden();
                    let mut local = [
                        new_histogram(),
                        new_histogram(),
                        new_histogram(),
                        new_histogram(),
                    ];
                    while next.fetch_add(1, Ordering::Relaxed) < p.count {
                        ctx.check_deadline("all setups were done")?;
                        let mut pair = setup(target, &ctx.tag, next_pair_id())?;
                        ctx.apply_timeouts(&pair)?;
                        let leg = Leg::new(ctx.seed, pair.id, false, p.payload);
                        // Small enough for the socket buffers: write, then read, one thread.
                        send(&mut pair.requester, &leg, &mut buf)?;
                        let r = receive(&mut pair.target, &leg, &mut buf, true, &quiet)?;
                        let t = pair.times;
                        record(&mut local[0], t.handshake());
                        record(&mut local[1], t.activation());
                        record(&mut local[2], r.first_byte.unwrap_or(r.done) - t.activated);
                        record(&mut local[3], r.done - t.start);
                        pb.inc(1);
                    }
                    let mut g = hist.lock().expect("lock");
                    for (a, b) in g.iter_mut().zip(&local) {
                        a.add(b).expect("same bounds");
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("setup worker panicked")?;
        }
        Ok(())
    });
    pb.finish_and_clear();
    result?;
    let elapsed = start.elapsed();
    let hist = hist.into_inner().expect("lock");
    let done = hist[3].len() as usize;
    Ok(SetupRun {
        done,
        per_sec: done as f64 / elapsed.as_secs_f64(),
        hist,
    })
}

pub fn run(ctx: &Ctx, p: &SetupParams) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let mut rep = ScenarioReport {
        name: "setup".into(),
        params: vec![
            ("count".into(), p.count.to_string()),
            ("concurrency".into(), p.concurrency.to_string()),
            ("payload_bytes".into(), p.payload.to_string()),
        ],
        ..Default::default()
    };
    let rounds = ctx.rounds.max(1);
    rep.params.push(("rounds".into(), rounds.to_string()));
    // Direct first, then the proxy, alternating; latencies add up over the rounds.
    let targets = ctx.round_targets();
    let mut per_round: Vec<Vec<SetupRun>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (t, v) in targets.iter().zip(per_round.iter_mut()) {
            v.push(run_one(ctx, t, p)?);
        }
    }
    let rate = |v: &[SetupRun]| v.iter().map(|r| r.per_sec).collect::<Vec<_>>();
    let direct_rates = (targets.len() > 1).then(|| rate(&per_round[0]));
    rep.figures.push(Figure::from_rounds(
        "setups",
        "1/s",
        &rate(per_round.last().expect("a target")),
        direct_rates.as_deref(),
        true,
    ));
    // The proxy first in the latency tables.
    let runs: Vec<(&str, SetupRun)> = targets
        .iter()
        .zip(&per_round)
        .rev()
        .map(|(t, v)| (t.label(), SetupRun::merge(v)))
        .collect();
    let direct = runs
        .iter()
        .skip(1)
        .find(|(l, _)| *l == "direct")
        .map(|(_, r)| r);
    let main = &runs[0].1;
    for (i, step) in STEPS.iter().enumerate() {
        let q = |r: &SetupRun, x: f64| r.hist[i].value_at_quantile(x) as f64;
        // Direct TCP has no activation step: no baseline for it.
        let direct = direct.filter(|_| *step != "activation");
        rep.figures.push(
            Figure::new(&format!("{step} p50"), "us", q(main, 0.5), false)
                .with_direct(direct.map(|d| q(d, 0.5))),
        );
        rep.figures.push(
            Figure::new(&format!("{step} p99"), "us", q(main, 0.99), false)
                .with_direct(direct.map(|d| q(d, 0.99))),
        );
    }
    for (label, r) in &runs {
        for (i, step) in STEPS.iter().enumerate() {
            if *label == "direct" && (i == 1) {
                continue; // no activation without a proxy
            }
            rep.latencies
                .push(Latency::from_histogram(step, label, &r.hist[i]));
        }
    }
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}
