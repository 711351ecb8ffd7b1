//! `mixed`: open-loop Poisson arrivals at a fixed rate with heavy-tailed (lognormal,
//! clipped) sizes: many small transfers, a few huge ones. Latency is measured from each
//! transfer's scheduled arrival, so a slow proxy cannot hide its queueing (no coordinated
//! omission). The same schedule runs against direct TCP.

use super::{progress, Ctx};
use crate::pairs::{next_pair_id, setup, Target};
use crate::procstat::{CpuMark, CpuUsed};
use crate::report::model::{gbps, median, new_histogram, record, Figure, Latency, ScenarioReport};
use crate::transfer::{receive, send, Leg};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp, LogNormal};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct MixedParams {
    /// Arrivals per second.
    pub rate: f64,
    pub duration: Duration,
    /// Median transfer size and lognormal sigma; sizes are clipped to [min, max].
    pub median: u64,
    pub sigma: f64,
    pub min: u64,
    pub max: u64,
    /// Transfers in flight at most; arrivals beyond wait (and their latency shows it).
    pub max_inflight: usize,
}

/// Arrival offsets and sizes, the same for every target of a run.
pub fn schedule(p: &MixedParams, seed: u64) -> anyhow::Result<Vec<(Duration, u64)>> {
    anyhow::ensure!(p.rate > 0.0, "rate must be positive");
    anyhow::ensure!(
        p.min <= p.max && p.median > 0,
        "sizes: need 0 < median, min <= max"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let gap = Exp::new(p.rate)?;
    let size = LogNormal::new((p.median as f64).ln(), p.sigma)?;
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += gap.sample(&mut rng);
        if t >= p.duration.as_secs_f64() || out.len() >= 1_000_000 {
            return Ok(out);
        }
        let s = (size.sample(&mut rng) as u64).clamp(p.min, p.max);
        out.push((Duration::from_secs_f64(t), s));
    }
}

pub struct MixedRun {
    pub transfers: usize,
    pub bytes: u64,
    pub goodput_gbps: f64,
    pub done: Histogram<u64>,
    pub small_done: Histogram<u64>,
    pub setup: Histogram<u64>,
    /// CPU used by the clients and the proxy process during the run.
    pub cpu: CpuUsed,
}

impl MixedRun {
    /// The rounds of one target together: latencies added up, the median goodput.
    fn merge(v: &[MixedRun]) -> MixedRun {
        let mut m = MixedRun {
            transfers: 0,
            bytes: 0,
            goodput_gbps: median(&v.iter().map(|r| r.goodput_gbps).collect::<Vec<_>>()),
            done: new_histogram(),
            small_done: new_histogram(),
            setup: new_histogram(),
            cpu: CpuUsed::default(),
        };
        for r in v {
            m.transfers += r.transfers;
            m.bytes += r.bytes;
            m.done.add(&r.done).expect("same bounds");
            m.small_done.add(&r.small_done).expect("same bounds");
            m.setup.add(&r.setup).expect("same bounds");
        }
        m
    }
}

/// A counting semaphore on transfers in flight.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn take(&self) {
        let mut g = self.free.lock().expect("lock");
        while *g == 0 {
            g = self.cv.wait(g).expect("lock");
        }
        *g -= 1;
    }
    fn give(&self) {
        *self.free.lock().expect("lock") += 1;
        self.cv.notify_one();
    }
}

const SMALL: u64 = 64 << 10;

pub fn run_one(
    ctx: &Ctx,
    target: &Target,
    sched: &[(Duration, u64)],
    p: &MixedParams,
) -> anyhow::Result<MixedRun> {
    let slots = Slots {
        free: Mutex::new(p.max_inflight.max(1)),
        cv: Condvar::new(),
    };
    let hists = Mutex::new((new_histogram(), new_histogram(), new_histogram()));
    let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let total: u64 = sched.iter().map(|s| s.1).sum();
    let pb = progress(
        sched.len() as u64,
        &format!("mixed {}", target.label()),
        false,
    );
    let start = Instant::now();
    let last_done = Mutex::new(start);
    std::thread::scope(|s| {
        for &(at, size) in sched {
            let when = start + at;
            if when > ctx.deadline || first_err.lock().expect("lock").is_some() {
                break;
            }
            if let Some(wait) = when.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            slots.take();
            let (slots, hists, first_err, last_done, pb) =
                (&slots, &hists, &first_err, &last_done, &pb);
            s.spawn(move || {
                let r = (|| -> anyhow::Result<()> {
                    let mut pair = setup(target, &ctx.tag, next_pair_id())?;
                    ctx.apply_timeouts(&pair)?;
                    let activated = pair.times.activated;
                    let leg = Leg::new(ctx.seed, pair.id, false, size);
                    let l2 = leg.clone();
                    let mut w = pair.requester.try_clone()?;
                    let sender = std::thread::spawn(move || send(&mut w, &l2, &mut Vec::new()));
                    let quiet = indicatif::ProgressBar::hidden();
                    let got = receive(&mut pair.target, &leg, &mut Vec::new(), true, &quiet);
                    let sent = sender.join().expect("sender panicked");
                    let got = got?;
                    sent?;
                    let mut h = hists.lock().expect("lock");
                    record(&mut h.0, got.done - when);
                    if size <= SMALL {
                        record(&mut h.1, got.done - when);
                    }
                    record(&mut h.2, activated - when);
                    let mut l = last_done.lock().expect("lock");
                    *l = (*l).max(got.done);
                    Ok(())
                })();
                if let Err(e) = r {
                    first_err.lock().expect("lock").get_or_insert(e);
                }
                pb.inc(1);
                slots.give();
            });
        }
    });
    pb.finish_and_clear();
    if let Some(e) = first_err.into_inner().expect("lock") {
        return Err(e);
    }
    let (done, small_done, setup_h) = hists.into_inner().expect("lock");
    let n = done.len() as usize;
    anyhow::ensure!(
        n == sched.len(),
        "time limit reached after {n} of {} transfers",
        sched.len()
    );
    let elapsed = *last_done.lock().expect("lock") - start;
    Ok(MixedRun {
        transfers: n,
        bytes: total,
        goodput_gbps: gbps(total, elapsed),
        done,
        small_done,
        setup: setup_h,
        cpu: CpuUsed::default(),
    })
}

/// Picks one histogram of a run.
type Pick = fn(&MixedRun) -> &Histogram<u64>;

pub fn run(ctx: &Ctx, p: &MixedParams) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let sched = schedule(p, ctx.seed)?;
    let bytes: u64 = sched.iter().map(|s| s.1).sum();
    let mut rep = ScenarioReport {
        name: "mixed".into(),
        params: vec![
            ("rate_per_s".into(), p.rate.to_string()),
            ("duration_s".into(), p.duration.as_secs_f64().to_string()),
            ("transfers".into(), sched.len().to_string()),
            ("bytes".into(), bytes.to_string()),
            (
                "sizes".into(),
                format!(
                    "lognormal median {} sigma {} clipped to [{}, {}]",
                    p.median, p.sigma, p.min, p.max
                ),
            ),
        ],
        ..Default::default()
    };
    let rounds = ctx.rounds.max(1);
    rep.params.push(("rounds".into(), rounds.to_string()));
    // Direct first, then the proxy, alternating; latencies add up over the rounds.
    let targets = ctx.round_targets();
    let mut runs: Vec<(&str, Vec<MixedRun>)> =
        targets.iter().map(|t| (t.label(), Vec::new())).collect();
    for _ in 0..rounds {
        for (t, (_, v)) in targets.iter().zip(runs.iter_mut()) {
            let cpu = CpuMark::now(ctx.proxy_pid);
            let mut r = run_one(ctx, t, &sched, p)?;
            r.cpu = cpu.used();
            v.push(r);
        }
    }
    let goodput = |v: &[MixedRun]| v.iter().map(|r| r.goodput_gbps).collect::<Vec<_>>();
    let (main_label, main) = runs.last().expect("at least one target");
    let direct = (runs.len() > 1).then(|| &runs[0].1);
    rep.figures.push(Figure::from_rounds(
        "goodput",
        "Gbit/s",
        &goodput(main),
        direct.map(|d| goodput(d)).as_deref(),
        true,
    ));
    // Per GB carried, setups and XMPP included: small transfers make it far higher than bulk's.
    let gb = |v: &[MixedRun]| v.iter().map(|r| r.bytes as f64).sum::<f64>() / 1e9;
    let clients = |v: &[MixedRun]| v.iter().map(|r| r.cpu.clients).sum::<f64>() / gb(v);
    let mut f = Figure::new("clients CPU", "core-s/GB", clients(main), false)
        .with_direct(direct.map(|d| clients(d)));
    f.rounds = Some(rounds);
    rep.figures.push(f);
    let proxy: Option<f64> = main.iter().map(|r| r.cpu.proxy).sum();
    if let Some(pc) = proxy.filter(|_| *main_label == "proxy") {
        let mut f = Figure::new("proxy CPU", "core-s/GB", pc / gb(main), false);
        f.rounds = Some(rounds);
        rep.figures.push(f);
    }
    let merged: Vec<(&str, MixedRun)> =
        runs.iter().map(|(l, v)| (*l, MixedRun::merge(v))).collect();
    let main = &merged.last().expect("at least one target").1;
    let direct = (merged.len() > 1).then(|| &merged[0].1);
    let hs: [(&str, Pick); 3] = [
        ("done", |r| &r.done),
        ("done (<= 64 KiB)", |r| &r.small_done),
        ("activated", |r| &r.setup),
    ];
    for (name, h) in hs {
        for (qn, q) in [("p50", 0.5), ("p99", 0.99)] {
            let v = |r: &MixedRun| h(r).value_at_quantile(q) as f64;
            rep.figures.push(
                Figure::new(&format!("{name} {qn}"), "us", v(main), false)
                    .with_direct(direct.map(v)),
            );
        }
        // The proxy's line first in tables and plots.
        for (label, r) in merged.iter().rev() {
            if h(r).is_empty() {
                continue;
            }
            rep.latencies
                .push(Latency::from_histogram(name, label, h(r)));
        }
    }
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_seeded_bounded_and_heavy_tailed() {
        let p = MixedParams {
            rate: 1000.0,
            duration: Duration::from_secs(2),
            median: 4096,
            sigma: 2.0,
            min: 100,
            max: 1 << 24,
            max_inflight: 8,
        };
        let a = schedule(&p, 1).unwrap();
        assert_eq!(a, schedule(&p, 1).unwrap());
        assert!((1700..2300).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(a.iter().all(|s| (100..=1 << 24).contains(&s.1)));
        let mut sizes: Vec<u64> = a.iter().map(|s| s.1).collect();
        sizes.sort();
        let median = sizes[sizes.len() / 2];
        let mean = sizes.iter().sum::<u64>() / sizes.len() as u64;
        assert!((2000..8000).contains(&median), "{median}");
        assert!(mean > 3 * median, "heavy tail: mean {mean} median {median}");
    }
}
