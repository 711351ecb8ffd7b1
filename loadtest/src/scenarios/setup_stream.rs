//! A paced stream of verified pair setups that runs beside other load until told to stop:
//! each one set up, activated, and checked with a small payload. Unlike `setup`, a failed
//! setup is counted (with the first error kept) rather than ending the run, so that a
//! scenario can report how many failed under load.

use super::Ctx;
use crate::pairs::{next_pair_id, setup, Target};
use crate::report::model::{new_histogram, record};
use crate::transfer::{receive, send, Leg};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Threads sharing the rate (a slow setup delays only its own thread's next one).
const THREADS: usize = 4;
pub const PAYLOAD: u64 = 1024;

#[derive(Debug)]
pub struct StreamRun {
    pub done: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// From the first connect to the payload checked at the target.
    pub total: Histogram<u64>,
    /// The activation round trip.
    pub activation: Histogram<u64>,
}

/// Setups at `rate` per second (spread over a few threads) until `stop` is set; at least
/// one per thread.
pub fn run(ctx: &Ctx, target: &Target, rate: f64, stop: &AtomicBool) -> StreamRun {
    let out = Mutex::new(StreamRun {
        done: 0,
        failed: 0,
        first_error: None,
        total: new_histogram(),
        activation: new_histogram(),
    });
    if rate <= 0.0 {
        return out.into_inner().expect("lock");
    }
    let gap = Duration::from_secs_f64(THREADS as f64 / rate);
    std::thread::scope(|s| {
        for k in 0..THREADS {
            let out = &out;
            s.spawn(move || {
                let quiet = indicatif::ProgressBar::hidden();
                let mut buf = Vec::new();
                // Staggered so that the threads' setups interleave evenly.
                let mut next = Instant::now() + gap.mul_f64(k as f64 / THREADS as f64);
                // Each thread's first setup runs however short the other load is, so
                // that every phase has some.
                let mut first = true;
                while first || (!stop.load(Ordering::Relaxed) && Instant::now() < ctx.deadline) {
                    if let Some(w) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(w.min(Duration::from_millis(50)));
                        continue;
                    }
                    next += gap;
                    first = false;
                    let r = (|| -> anyhow::Result<_> {
                        let mut pair = setup(target, &ctx.tag, next_pair_id())?;
                        ctx.apply_timeouts(&pair)?;
                        let leg = Leg::new(ctx.seed, pair.id, false, PAYLOAD);
                        send(&mut pair.requester, &leg, &mut buf)?;
                        let got = receive(&mut pair.target, &leg, &mut buf, true, &quiet)?;
                        Ok((pair.times, got.done))
                    })();
                    let mut o = out.lock().expect("lock");
                    match r {
                        Ok((t, done)) => {
                            o.done += 1;
                            record(&mut o.total, done - t.start);
                            record(&mut o.activation, t.activation());
                        }
                        Err(e) => {
                            o.failed += 1;
                            o.first_error.get_or_insert(format!("{e:#}"));
                        }
                    }
                }
            });
        }
    });
    out.into_inner().expect("lock")
}
