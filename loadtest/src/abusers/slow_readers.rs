//! Activated pairs whose receiver does not keep up: `stalled` never reads (its sender
//! writes until the socket blocks, and tries again every tick), `trickle` reads a few bytes
//! a second and checks them against the pattern. The proxy must hold them without letting
//! them slow the other pairs, and without buffering without bound.

use super::{Shared, Tally};
use crate::pairs::{next_pair_id, setup, Pair, Target};
use crate::pattern;
use crate::report::model::median;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// How the receivers of the pairs read.
#[derive(Debug, Clone, Copy)]
pub enum Reader {
    /// Never.
    Stalled,
    /// This many bytes a second.
    Trickle(u64),
}

struct Slow {
    pair: Pair,
    seed: u64,
    sent: u64,
    read: u64,
    cut: bool,
}

const TICK: Duration = Duration::from_millis(250);
/// Bytes written into one pair per tick at most (its buffers fill long before that).
const MAX_PER_TICK: u64 = 64 << 20;

/// Sets up `count` pairs on `target` and abuses them until the phase ends. A byte a
/// trickling receiver reads that is not the pattern's fails the run.
pub fn run(
    sh: &Shared,
    target: &Target,
    tag: &str,
    seed: u64,
    count: usize,
    reader: Reader,
) -> anyhow::Result<Tally> {
    let name = match reader {
        Reader::Stalled => "stalled",
        Reader::Trickle(_) => "trickle",
    };
    let mut pairs = Vec::with_capacity(count);
    let mut setup_failed = 0u64;
    let mut first_err = None;
    while pairs.len() < count && !sh.stopped() {
        match setup(target, tag, next_pair_id()) {
            Ok(pair) => {
                pair.requester.set_nonblocking(true)?;
                pair.target.set_nonblocking(true)?;
                let seed = pattern::seed_for(seed, pair.id, false);
                pairs.push(Slow {
                    pair,
                    seed,
                    sent: 0,
                    read: 0,
                    cut: false,
                });
            }
            Err(e) => {
                setup_failed += 1;
                first_err.get_or_insert(e);
                if setup_failed > 10 && setup_failed as usize > count / 10 {
                    break;
                }
            }
        }
    }
    sh.mark_ready();
    // Small writes: a blocked socket costs one fill of this each tick.
    let mut wbuf = vec![0u8; 64 << 10];
    let mut rbuf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut next_read = start;
    while !sh.stopped() {
        let read_now = Instant::now() >= next_read;
        if read_now {
            next_read += Duration::from_secs(1);
        }
        for s in pairs.iter_mut().filter(|s| !s.cut) {
            let budget = s.sent + MAX_PER_TICK;
            while s.sent < budget {
                pattern::fill(s.seed, s.sent, &mut wbuf);
                match s.pair.requester.write(&wbuf) {
                    Ok(n) => s.sent += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        s.cut = true;
                        break;
                    }
                }
            }
            if let (Reader::Trickle(per_s), true) = (reader, read_now) {
                let want = (per_s as usize).clamp(1, rbuf.len());
                match s.pair.target.read(&mut rbuf[..want]) {
                    Ok(0) => s.cut = true,
                    Ok(n) => {
                        if let Err(m) = pattern::check(s.seed, s.read, &rbuf[..n]) {
                            anyhow::bail!(
                                "{name} pair {}: wrong byte at offset {}: expected {:#04x}, got {:#04x}",
                                s.pair.id,
                                m.offset,
                                m.expected,
                                m.got
                            );
                        }
                        s.read += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => s.cut = true,
                }
            }
        }
        sh.nap(TICK);
    }
    let mut t = Tally::default();
    t.add(&format!("{name} pairs"), "pairs", pairs.len() as f64);
    t.add(
        &format!("{name} setups failed"),
        "setups",
        setup_failed as f64,
    );
    let accepted: Vec<f64> = pairs
        .iter()
        .map(|s| (s.sent - s.read) as f64 / 1024.0)
        .collect();
    t.add(
        &format!("{name}: in flight per pair"),
        "KiB",
        median(&accepted),
    );
    if let Reader::Trickle(_) = reader {
        let read: u64 = pairs.iter().map(|s| s.read).sum();
        t.add("trickle: read and checked", "KiB", read as f64 / 1024.0);
    }
    t.add(
        &format!("{name} pairs cut by proxy"),
        "pairs",
        pairs.iter().filter(|s| s.cut).count() as f64,
    );
    if pairs.is_empty() {
        if let Some(e) = first_err {
            anyhow::bail!("{name}: no pair could be set up: {e:#}");
        }
    }
    Ok(t)
}
