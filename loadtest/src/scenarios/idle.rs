//! `idle`: K activated pairs held S seconds; the proxy's RSS and open fds before, during
//! and after (when it was spawned here), RSS per pair; every pair is checked both ways
//! at the end of the hold. Pairs are set up by a few threads and held without threads.

use super::{progress, Ctx};
use crate::pairs::{next_pair_id, setup, Pair, Target};
use crate::procstat::{sample, ProcSample};
use crate::report::model::{Figure, ScenarioReport, Series};
use crate::transfer::{receive, send, Leg};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct IdleParams {
    pub pairs: usize,
    pub hold: Duration,
    pub concurrency: usize,
}

const CHECK_BYTES: u64 = 64;

fn set_up_all(ctx: &Ctx, target: &Target, p: &IdleParams) -> anyhow::Result<Vec<Pair>> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(p.pairs));
    let pb = progress(
        p.pairs as u64,
        &format!("idle setup {}", target.label()),
        false,
    );
    std::thread::scope(|s| -> anyhow::Result<()> {
        let hs: Vec<_> = (0..p.concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < p.pairs {
                        ctx.check_deadline("all idle pairs were set up")?;
                        let pair = setup(target, &ctx.tag, next_pair_id())?;
                        ctx.apply_timeouts(&pair)?;
                        out.lock().expect("lock").push(pair);
                        pb.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().expect("setup thread panicked")?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(out.into_inner().expect("lock"))
}

/// Sends a few bytes each way on every pair and checks them; one way only through a proxy
/// that closes both ends on either one's FIN (Prosody's), since each send ends with one.
fn check_all(ctx: &Ctx, pairs: &mut [Pair], both_ways: bool) -> anyhow::Result<()> {
    let quiet = indicatif::ProgressBar::hidden();
    let mut buf = Vec::new();
    for pair in pairs.iter_mut() {
        let fwd = Leg::new(ctx.seed, pair.id, false, CHECK_BYTES);
        let back = Leg::new(ctx.seed, pair.id, true, CHECK_BYTES);
        send(&mut pair.requester, &fwd, &mut buf)?;
        if both_ways {
            send(&mut pair.target, &back, &mut buf)?;
        }
        receive(&mut pair.target, &fwd, &mut buf, true, &quiet)?;
        if both_ways {
            receive(&mut pair.requester, &back, &mut buf, true, &quiet)?;
        }
    }
    Ok(())
}

fn kib_figure(name: &str, v: u64) -> Figure {
    Figure::new(name, "KiB", v as f64, false)
}

pub fn run(ctx: &Ctx, p: &IdleParams) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let mut rep = ScenarioReport {
        name: "idle".into(),
        params: vec![
            ("pairs".into(), p.pairs.to_string()),
            ("hold_s".into(), p.hold.as_secs_f64().to_string()),
        ],
        ..Default::default()
    };
    // Memory figures are the proxy's; a direct-only run just checks the pairs.
    let target = ctx.proxy.clone().unwrap_or(Target::Direct);
    let pid = ctx.proxy_pid.filter(|_| !target.is_direct());
    let snap = |_: &str| -> Option<ProcSample> { pid.and_then(|p| sample(p).ok()) };
    let before = snap("before");
    let t0 = Instant::now();
    let mut pairs = set_up_all(ctx, &target, p)?;
    let setup_s = t0.elapsed().as_secs_f64();
    let mut during = Vec::new();
    let hold_end = Instant::now() + p.hold;
    let pb = progress(p.hold.as_secs().max(1), "idle hold (s)", false);
    while Instant::now() < hold_end && Instant::now() < ctx.deadline {
        if let Some(s) = snap("during") {
            during.push((started.elapsed().as_secs_f64(), s));
        }
        std::thread::sleep(Duration::from_millis(500).min(hold_end - Instant::now().min(hold_end)));
        pb.set_position(p.hold.as_secs() - (hold_end - Instant::now().min(hold_end)).as_secs());
    }
    pb.finish_and_clear();
    let peak = snap("during");
    check_all(ctx, &mut pairs, target.takes_half_close())?;
    let n = pairs.len();
    drop(pairs);
    std::thread::sleep(Duration::from_millis(500));
    let after = snap("after");
    rep.figures
        .push(Figure::new("pairs held", "pairs", n as f64, true));
    rep.figures.push(Figure::new(
        "setup rate",
        "1/s",
        n as f64 / setup_s.max(1e-9),
        true,
    ));
    if let (Some(b), Some(d), Some(a)) = (before, peak, after) {
        rep.figures.push(kib_figure("proxy RSS before", b.rss_kib));
        rep.figures.push(kib_figure("proxy RSS during", d.rss_kib));
        rep.figures.push(kib_figure("proxy RSS after", a.rss_kib));
        rep.figures
            .push(kib_figure("proxy RSS peak (VmHWM)", d.hwm_kib));
        rep.figures.push(Figure::new(
            "proxy RSS per pair",
            "KiB",
            d.rss_kib.saturating_sub(b.rss_kib) as f64 / n.max(1) as f64,
            false,
        ));
        rep.figures
            .push(Figure::new("proxy fds before", "fds", b.fds as f64, false));
        rep.figures
            .push(Figure::new("proxy fds during", "fds", d.fds as f64, false));
        rep.figures
            .push(Figure::new("proxy fds after", "fds", a.fds as f64, false));
        rep.figures.push(Figure::new(
            "proxy threads during",
            "threads",
            d.threads as f64,
            false,
        ));
        rep.series.push(Series {
            ranges: Vec::new(),
            name: "proxy RSS while idle".into(),
            target: "proxy".into(),
            x_label: "s".into(),
            y_label: "KiB".into(),
            points: during.iter().map(|(t, s)| (*t, s.rss_kib as f64)).collect(),
        });
    }
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}
