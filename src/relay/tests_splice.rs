//! The splice engine's direction under thousands of generated event orders: several
//! directions share a small pipe pool and spill budget; bytes arrive (some before the
//! relay starts), receivers drain at their own pace, shapers hand out few tokens, and
//! sockets fail at random moments.

use super::sim::{Budget, Counts, Dest, Rng, Shaper, Source};
use super::splice::{PipeEnv, SpliceDir};
use super::{Hold, Next};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

struct Pool {
    pipes: Vec<VecDeque<u8>>,
    free: Vec<usize>,
    lent: Vec<bool>,
    size: usize,
}

impl Pool {
    fn lent(&self) -> usize {
        self.lent.iter().filter(|&&l| l).count()
    }
}

struct Dir {
    src: Source,
    dst: Dest,
    shaper: Shaper,
    counts: Counts,
    m: SpliceDir<usize>,
    next: Next,
    /// Fail a socket at some step.
    fail_at: Option<usize>,
}

/// One call into the machine: what it asked of the world.
struct Ctx<'a> {
    d: &'a mut Dir,
    pool: &'a mut Pool,
    budget: &'a mut Budget,
    now: Instant,
    borrow_failed: bool,
}

// The common part of the simulated world (`sim.rs`).
sim_env!(Ctx);

impl PipeEnv<usize> for Ctx<'_> {
    fn pipe_size(&self) -> usize {
        self.pool.size
    }
    fn borrow(&mut self) -> Option<usize> {
        let p = self.pool.free.pop();
        match p {
            Some(p) => self.pool.lent[p] = true,
            None => self.borrow_failed = true,
        }
        p
    }
    fn give_back(&mut self, p: usize) {
        assert!(self.pool.lent[p], "pipe {p} given back twice");
        assert!(
            self.pool.pipes[p].is_empty(),
            "pipe {p} given back with bytes"
        );
        self.pool.lent[p] = false;
        self.pool.free.push(p);
    }
    fn splice_in(&mut self, p: usize, len: usize) -> Result<usize, i32> {
        assert!(self.pool.lent[p]);
        let room = self.pool.size - self.pool.pipes[p].len();
        assert!(len > 0 && len <= room, "splice of {len} into room {room}");
        let bytes = self.d.src.read(len)?;
        self.pool.pipes[p].extend(bytes);
        Ok(bytes.len())
    }
    fn splice_out(&mut self, p: usize, len: usize) -> Result<usize, i32> {
        let pipe = &mut self.pool.pipes[p];
        assert!(len > 0 && len <= pipe.len());
        let bytes: Vec<u8> = pipe.iter().take(len).copied().collect();
        let n = self.d.dst.write(&bytes)?;
        pipe.drain(..n);
        Ok(n)
    }
    fn drain_pipe(&mut self, p: usize, len: usize, into: &mut Vec<u8>) -> Result<usize, i32> {
        assert_eq!(
            self.pool.pipes[p].len(),
            len,
            "drained a pipe by a wrong length"
        );
        into.extend(self.pool.pipes[p].drain(..));
        Ok(len)
    }
}

#[derive(Default)]
struct Seen {
    stalls: usize,
    fallbacks: usize,
    fallback_full: usize,
    pool_waits: usize,
    parks: usize,
    quota_cuts: usize,
    failures: usize,
    finished: usize,
    early: usize,
}

fn run(seed: u64, seen: &mut Seen) {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut now = start;
    let npipes = rng.upto(2);
    let size = rng.upto(64);
    let mut pool = Pool {
        pipes: vec![VecDeque::new(); npipes],
        free: (0..npipes).collect(),
        lent: vec![false; npipes],
        size,
    };
    let mut budget = Budget::new(&mut rng);
    let ndirs = rng.upto(3);
    let mut dirs: Vec<Dir> = (0..ndirs)
        .map(|_| {
            let mut src = Source::new(&mut rng, 1500);
            // Early bytes: sent before the relay starts (even all of them, and the FIN).
            src.arrived = rng.below(src.data.len() + 1);
            if src.arrived == src.data.len() && rng.percent(30) {
                src.eof = true;
            }
            if src.arrived > 0 {
                seen.early += 1;
            }
            Dir {
                dst: Dest::new(&mut rng),
                shaper: Shaper::new(&mut rng, now),
                counts: Counts::default(),
                m: SpliceDir::new(now),
                // The relay starts with a readiness poll on each source.
                next: Next::Readable,
                fail_at: rng.percent(25).then(|| rng.below(600)),
                src,
            }
        })
        .collect();
    let mut starving: VecDeque<usize> = VecDeque::new();
    let ended = |n: Next| matches!(n, Next::Finished | Next::QuotaCut | Next::Fail(_));
    for step in 0..200_000 {
        if dirs.iter().all(|d| ended(d.next)) {
            break;
        }
        let k = rng.below(ndirs);
        if dirs[k].fail_at == Some(step) {
            if rng.percent(50) {
                dirs[k].src.error = Some(libc::ECONNRESET);
            } else {
                dirs[k].dst.error = Some(libc::EPIPE);
            }
        }
        let d = &mut dirs[k];
        let ready = match rng.below(6) {
            0 => {
                d.src.arrive(&mut rng);
                continue;
            }
            1 => {
                d.dst.drain(&mut rng);
                continue;
            }
            2 => {
                now += Duration::from_micros(rng.below(1500) as u64);
                continue;
            }
            // An event for this direction, if what it waits for happened (or, rarely, a
            // spurious wakeup of its poll).
            _ => match d.next {
                Next::Readable => d.src.readable() || rng.percent(5),
                Next::Writable => d.dst.space() > 0 || d.dst.error.is_some() || rng.percent(5),
                Next::Pool => {
                    // The worker wakes the longest waiter when a pipe comes back.
                    !pool.free.is_empty() && starving.front() == Some(&k)
                }
                Next::Park(at) => now >= at,
                _ => false,
            },
        };
        if !ready {
            continue;
        }
        let was = d.next;
        if was == Next::Pool {
            starving.pop_front();
        }
        let mut ctx = Ctx {
            d,
            pool: &mut pool,
            budget: &mut budget,
            now,
            borrow_failed: false,
        };
        let full_before = ctx.d.counts.fallback_full;
        let stalls_before = ctx.d.counts.stalls;
        let next = match was {
            Next::Pool | Next::Park(_) => {
                assert_ne!(ctx.d.m.hold(), Hold::None);
                let mut m = std::mem::replace(&mut ctx.d.m, SpliceDir::new(now));
                let n = m.resume(now, &mut ctx);
                ctx.d.m = m;
                n
            }
            _ => {
                let mut m = std::mem::replace(&mut ctx.d.m, SpliceDir::new(now));
                let n = m.pump(now, &mut ctx);
                ctx.d.m = m;
                n
            }
        };
        let borrow_failed = ctx.borrow_failed;
        let d = &mut dirs[k];
        d.next = next;
        // Bytes arrive exactly once and in order.
        assert_eq!(
            d.dst.got[..],
            d.src.data[..d.dst.got.len()],
            "seed {seed}: bytes out of order"
        );
        assert_eq!(d.counts.delivered, d.dst.got.len(), "seed {seed}");
        seen.stalls += d.counts.stalls - stalls_before;
        match next {
            Next::Readable | Next::Park(_) | Next::Pool | Next::QuotaCut | Next::Finished => {
                assert!(!d.m.holds_pipe(), "seed {seed}: {next:?} holding a pipe")
            }
            Next::Writable if d.m.holds_pipe() => {
                // A stalled direction keeps its pipe only when the budget is used up.
                assert!(
                    d.counts.fallback_full > full_before,
                    "seed {seed}: stalled holding a pipe with budget left"
                );
                seen.fallback_full += 1;
            }
            _ => {}
        }
        match next {
            Next::Pool => {
                assert!(
                    borrow_failed,
                    "seed {seed}: waits for a pool that had pipes"
                );
                assert_eq!(d.m.hold(), Hold::Pool);
                starving.push_back(k);
                seen.pool_waits += 1;
            }
            Next::Park(at) => {
                assert!(at > now && d.shaper.on, "seed {seed}");
                assert_eq!(d.m.hold(), Hold::Tokens);
                seen.parks += 1;
            }
            Next::Finished => {
                // EOF propagates only after every byte.
                assert!(d.src.eof && d.src.read == d.src.data.len(), "seed {seed}");
                assert_eq!(d.dst.got, d.src.data, "seed {seed}");
                assert_eq!(d.m.spilled(), 0);
                d.dst.shut = true;
                seen.finished += 1;
            }
            Next::QuotaCut => {
                // Every byte read within the quota was delivered before the cut.
                assert!(d.shaper.cut(), "seed {seed}");
                assert_eq!(d.dst.got.len(), d.src.read, "seed {seed}");
                seen.quota_cuts += 1;
            }
            Next::Fail(e) => {
                assert!(
                    e == libc::ECONNRESET || e == libc::EPIPE,
                    "seed {seed}: {e}"
                );
                seen.failures += 1;
            }
            _ => {}
        }
        if ended(next) {
            // The pair is torn down: what it held goes back.
            let left = d.m.release();
            if let Some((p, dirty)) = left.pipe {
                assert_eq!(dirty, !pool.pipes[p].is_empty());
                pool.pipes[p].clear();
                pool.lent[p] = false;
                pool.free.push(p);
            }
            budget.release(left.spill);
        }
        // The pool and the budget account for exactly what the directions hold.
        assert_eq!(
            pool.lent(),
            dirs.iter().filter(|d| d.m.holds_pipe()).count(),
            "seed {seed}"
        );
        assert_eq!(
            budget.used,
            dirs.iter().map(|d| d.m.spilled()).sum::<usize>(),
            "seed {seed}"
        );
        assert!(budget.used <= budget.limit);
        seen.fallbacks += dirs[k].counts.fallbacks;
        dirs[k].counts.fallbacks = 0;
    }
    for d in &dirs {
        assert!(
            ended(d.next),
            "seed {seed}: a direction never ended: {:?}",
            d.next
        );
    }
    assert_eq!(pool.lent(), 0, "seed {seed}");
    assert_eq!(budget.used, 0, "seed {seed}");
}

#[test]
fn splice_directions_relay_every_byte_once_in_order_under_generated_event_orders() {
    let mut seen = Seen::default();
    for seed in 0..4000 {
        run(seed, &mut seen);
    }
    // The orders reached every behaviour.
    assert!(seen.stalls > 100, "stalls {}", seen.stalls);
    assert!(seen.fallbacks > 100, "fallbacks {}", seen.fallbacks);
    assert!(
        seen.fallback_full > 10,
        "fallback_full {}",
        seen.fallback_full
    );
    assert!(seen.pool_waits > 100, "pool waits {}", seen.pool_waits);
    assert!(seen.parks > 100, "parks {}", seen.parks);
    assert!(seen.quota_cuts > 10, "quota cuts {}", seen.quota_cuts);
    assert!(seen.failures > 100, "failures {}", seen.failures);
    assert!(seen.finished > 1000, "finished {}", seen.finished);
    assert!(seen.early > 1000, "early {}", seen.early);
}
