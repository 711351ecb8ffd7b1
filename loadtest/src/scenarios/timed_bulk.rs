//! Bulk transfers bounded in bytes and in time: P pairs each send up to B bytes, one way,
//! and stop at a deadline if the bytes are not through by then. Every byte that arrives is
//! checked, and the count that arrived must be the count sent. For phases whose load must
//! end in bounded time however slow the relay gets (`abuse`).

use super::Ctx;
use crate::pairs::{next_pair_id, setup, Target};
use crate::procstat::{CpuMark, CpuUsed};
use crate::report::model::gbps;
use crate::transfer::{receive_to_eof, send_until, Leg};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TimedRun {
    /// Bytes that arrived (and were checked), all pairs.
    pub bytes: u64,
    pub aggregate_gbps: f64,
    pub per_pair_gbps: Vec<f64>,
    /// Whether every pair sent all its bytes before the deadline.
    pub complete: bool,
    pub cpu: CpuUsed,
}

pub fn run(
    ctx: &Ctx,
    target: &Target,
    pairs: usize,
    bytes: u64,
    limit: Duration,
) -> anyhow::Result<TimedRun> {
    let mut set = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let pair = setup(target, &ctx.tag, next_pair_id())?;
        ctx.apply_timeouts(&pair)?;
        set.push(pair);
    }
    let cpu = CpuMark::now(ctx.proxy_pid);
    let start = Instant::now();
    let until = start + limit;
    // Per pair: (sent, arrived, last byte).
    let results = std::thread::scope(|s| -> anyhow::Result<Vec<(u64, u64, Instant)>> {
        let mut handles = Vec::new();
        for pair in &mut set {
            let leg = Leg::new(ctx.seed, pair.id, false, bytes);
            let l2 = leg.clone();
            let mut w = pair.requester.try_clone()?;
            let mut r = pair.target.try_clone()?;
            if target.takes_half_close() {
                let _ = pair.target.shutdown(std::net::Shutdown::Write);
            }
            let sender = s.spawn(move || send_until(&mut w, &l2, &mut Vec::new(), until));
            let receiver = s.spawn(move || receive_to_eof(&mut r, &leg, &mut Vec::new()));
            handles.push((pair.id, sender, receiver));
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for (id, sender, receiver) in handles {
            let sent = sender.join().expect("sender panicked");
            let got = receiver.join().expect("receiver panicked");
            match (sent, got) {
                (Ok(sent), Ok((got, last))) if sent == got => out.push((sent, got, last)),
                (Ok(sent), Ok((got, _))) => {
                    first_err.get_or_insert(anyhow::anyhow!(
                        "pair {id}: {sent} bytes sent, {got} arrived"
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    first_err.get_or_insert(e.into());
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    });
    let cpu = cpu.used();
    let results = results?;
    let total: u64 = results.iter().map(|r| r.1).sum();
    let last = results.iter().map(|r| r.2).max().unwrap_or(start);
    Ok(TimedRun {
        bytes: total,
        aggregate_gbps: gbps(total, last - start),
        per_pair_gbps: results.iter().map(|r| gbps(r.1, r.2 - start)).collect(),
        complete: results.iter().all(|r| r.0 == bytes),
        cpu,
    })
}
