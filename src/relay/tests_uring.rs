//! The uring-splice engine's direction under thousands of generated event orders: its
//! polls and splices are ring requests that the simulated kernel completes when it could
//! (a linked splice out runs after the splice in), several directions share a small pipe
//! pool and spill budget, and a torn-down direction sees its last completions after the
//! teardown.

use super::sim::{Budget, Counts, Dest, Rng, Shaper, Source};
use super::splice::PipeEnv;
use super::uring_splice::{Action, Op, UringDir, UringEnv};
use super::{Hold, Next};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

struct Pool {
    pipes: Vec<VecDeque<u8>>,
    free: Vec<usize>,
    lent: Vec<bool>,
    /// Splices in flight on each pipe.
    busy: Vec<usize>,
    size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flight {
    Readable,
    /// The splice in, and the linked splice out that follows it.
    In {
        pipe: usize,
        len: u32,
    },
    Out {
        pipe: usize,
        len: u32,
    },
    Writable,
}

struct Dir {
    src: Source,
    dst: Dest,
    shaper: Shaper,
    counts: Counts,
    m: UringDir<usize>,
    flights: Vec<Flight>,
    next: Option<Next>,
    closing: bool,
    released: bool,
    fail_at: Option<usize>,
}

struct Ctx<'a> {
    d: &'a mut Dir,
    pool: &'a mut Pool,
    budget: &'a mut Budget,
    others_wait: bool,
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
        assert_eq!(
            self.pool.busy[p], 0,
            "pipe {p} given back with a splice in flight"
        );
        assert!(
            self.pool.pipes[p].is_empty(),
            "pipe {p} given back with bytes"
        );
        self.pool.lent[p] = false;
        self.pool.free.push(p);
    }
    fn splice_in(&mut self, _: usize, _: usize) -> Result<usize, i32> {
        unreachable!("this engine's splices are ring requests")
    }
    fn splice_out(&mut self, _: usize, _: usize) -> Result<usize, i32> {
        unreachable!("this engine's splices are ring requests")
    }
    fn drain_pipe(&mut self, p: usize, len: usize, into: &mut Vec<u8>) -> Result<usize, i32> {
        assert_eq!(
            self.pool.busy[p], 0,
            "pipe {p} read with a splice in flight"
        );
        assert_eq!(self.pool.pipes[p].len(), len);
        into.extend(self.pool.pipes[p].drain(..));
        Ok(len)
    }
}

impl UringEnv<usize> for Ctx<'_> {
    fn others_wait(&self) -> bool {
        self.others_wait
    }
}

#[derive(Default)]
struct Seen {
    stalls: usize,
    fallbacks: usize,
    pool_waits: usize,
    parks: usize,
    quota_cuts: usize,
    failures: usize,
    finished: usize,
    late: usize,
}

struct World {
    seed: u64,
    rng: Rng,
    pool: Pool,
    budget: Budget,
    dirs: Vec<Dir>,
    starving: VecDeque<usize>,
    now: Instant,
}

impl World {
    fn call(
        &mut self,
        k: usize,
        seen: &mut Seen,
        f: impl FnOnce(&mut UringDir<usize>, &mut Ctx, &mut Vec<Action<usize>>),
    ) {
        let seed = self.seed;
        let others_wait = self.starving.iter().any(|&j| j != k);
        let mut out = Vec::new();
        let d = &mut self.dirs[k];
        let mut m = std::mem::replace(&mut d.m, UringDir::new(self.now));
        let mut ctx = Ctx {
            d,
            pool: &mut self.pool,
            budget: &mut self.budget,
            others_wait,
            now: self.now,
            borrow_failed: false,
        };
        f(&mut m, &mut ctx, &mut out);
        let borrow_failed = ctx.borrow_failed;
        let d = &mut self.dirs[k];
        d.m = m;
        for (i, a) in out.iter().enumerate() {
            match *a {
                Action::Submit(op) => {
                    let flight = match op {
                        Op::Readable => Flight::Readable,
                        Op::Splice { pipe, len } => {
                            assert!(self.pool.lent[pipe] && self.pool.pipes[pipe].is_empty());
                            assert!(len > 0 && len as usize <= self.pool.size);
                            self.pool.busy[pipe] += 2;
                            Flight::In { pipe, len }
                        }
                        Op::Out { pipe, len } => {
                            assert_eq!(len as usize, self.pool.pipes[pipe].len(), "seed {seed}");
                            self.pool.busy[pipe] += 1;
                            Flight::Out { pipe, len }
                        }
                        Op::Writable => Flight::Writable,
                    };
                    d.flights.push(flight);
                }
                Action::Then(next) => {
                    assert_eq!(i, out.len() - 1, "seed {seed}: actions after {next:?}");
                    d.next = Some(next);
                    match next {
                        Next::Pool => {
                            assert!(borrow_failed, "seed {seed}");
                            assert_eq!(d.m.hold(), Hold::Pool);
                            self.starving.push_back(k);
                            seen.pool_waits += 1;
                        }
                        Next::Park(at) => {
                            assert!(at > self.now && d.shaper.on, "seed {seed}");
                            seen.parks += 1;
                        }
                        Next::Finished => {
                            assert!(d.flights.is_empty(), "seed {seed}");
                            assert!(d.src.eof && d.src.read == d.src.data.len());
                            assert_eq!(d.dst.got, d.src.data, "seed {seed}");
                            d.dst.shut = true;
                            d.closing = true;
                            seen.finished += 1;
                        }
                        Next::QuotaCut => {
                            assert!(d.shaper.cut(), "seed {seed}");
                            assert_eq!(d.dst.got.len(), d.src.read, "seed {seed}");
                            d.closing = true;
                            seen.quota_cuts += 1;
                        }
                        Next::Fail(e) => {
                            assert!(
                                e == libc::ECONNRESET || e == libc::EPIPE,
                                "seed {seed}: {e}"
                            );
                            d.closing = true;
                            seen.failures += 1;
                        }
                        _ => panic!("seed {seed}: waits through its flights, not {next:?}"),
                    }
                }
            }
        }
        let d = &mut self.dirs[k];
        assert_eq!(
            d.dst.got[..],
            d.src.data[..d.dst.got.len()],
            "seed {seed}: bytes out of order"
        );
        if !d.closing {
            // A splice in carries its linked splice out: at most two requests in flight.
            let requests: usize = d
                .flights
                .iter()
                .map(|f| if matches!(f, Flight::In { .. }) { 2 } else { 1 })
                .sum();
            assert_eq!(d.m.in_flight(), requests, "seed {seed}: {:?}", d.flights);
            assert!(requests <= 2, "seed {seed}: {:?}", d.flights);
            if d.flights == [Flight::Writable] && d.m.holds_pipe() {
                assert!(
                    d.counts.fallback_full > 0,
                    "seed {seed}: stalled holding a pipe"
                );
            }
            if d.flights == [Flight::Readable] || d.next == Some(Next::Pool) {
                assert!(!d.m.holds_pipe(), "seed {seed}: idle holding a pipe");
            }
        }
        seen.stalls += std::mem::take(&mut d.counts.stalls);
        seen.fallbacks += std::mem::take(&mut d.counts.fallbacks);
        self.release_if_done(k);
        assert_eq!(
            self.budget.used,
            self.dirs.iter().map(|d| d.m.spilled()).sum::<usize>(),
            "seed {seed}"
        );
    }

    fn release_if_done(&mut self, k: usize) {
        let d = &mut self.dirs[k];
        if d.closing && d.flights.is_empty() && !d.released {
            d.released = true;
            let left = d.m.release();
            if let Some((p, dirty)) = left.pipe {
                assert_eq!(self.pool.busy[p], 0);
                assert!(dirty || self.pool.pipes[p].is_empty(), "seed {}", self.seed);
                self.pool.pipes[p].clear();
                self.pool.lent[p] = false;
                self.pool.free.push(p);
            }
            self.budget.release(left.spill);
        }
    }

    fn complete(&mut self, k: usize, j: usize, seen: &mut Seen) {
        let now = self.now;
        let d = &mut self.dirs[k];
        let f = d.flights[j];
        // A linked splice out runs only after its splice in.
        if matches!(f, Flight::Out { .. })
            && d.flights[..j]
                .iter()
                .any(|g| matches!(g, Flight::In { .. }))
        {
            return;
        }
        let res = match f {
            Flight::Readable => {
                if !d.src.readable() {
                    return;
                }
                if d.src.error.is_some() {
                    -libc::ECONNRESET
                } else {
                    0
                }
            }
            Flight::In { pipe, len } => {
                self.pool.busy[pipe] -= 1;
                let room = self.pool.size - self.pool.pipes[pipe].len();
                match d.src.read((len as usize).min(room)) {
                    Ok(b) => {
                        self.pool.pipes[pipe].extend(b);
                        b.len() as i32
                    }
                    Err(e) => -e,
                }
            }
            Flight::Out { pipe, len } => {
                self.pool.busy[pipe] -= 1;
                let p = &mut self.pool.pipes[pipe];
                let take: Vec<u8> = p.iter().take(len as usize).copied().collect();
                if take.is_empty() {
                    -libc::EAGAIN
                } else {
                    match d.dst.write(&take) {
                        Ok(n) => {
                            p.drain(..n);
                            n as i32
                        }
                        Err(e) => -e,
                    }
                }
            }
            Flight::Writable => {
                if d.dst.space() == 0 && d.dst.error.is_none() {
                    return;
                }
                if d.dst.error.is_some() {
                    -libc::EPIPE
                } else {
                    0
                }
            }
        };
        d.flights.remove(j);
        if let Flight::In { pipe, len } = f {
            // The hard-linked splice out starts now, whatever the splice in did.
            d.flights.insert(j, Flight::Out { pipe, len });
        }
        if d.closing {
            seen.late += 1;
            self.release_if_done(k);
            return;
        }
        match f {
            Flight::Readable => self.call(k, seen, |m, c, o| m.on_readable(res, c, o)),
            Flight::In { .. } => self.call(k, seen, |m, c, o| m.on_in(now, res, c, o)),
            Flight::Out { .. } => self.call(k, seen, |m, c, o| m.on_out(now, res, c, o)),
            Flight::Writable => self.call(k, seen, |m, c, o| m.on_writable(now, res, c, o)),
        }
    }
}

fn run(seed: u64, seen: &mut Seen) {
    let mut rng = Rng::new(seed);
    let now = Instant::now();
    let npipes = rng.upto(2);
    let pool = Pool {
        pipes: vec![VecDeque::new(); npipes],
        free: (0..npipes).collect(),
        lent: vec![false; npipes],
        busy: vec![0; npipes],
        size: rng.upto(64),
    };
    let budget = Budget::new(&mut rng);
    let ndirs = rng.upto(3);
    let dirs = (0..ndirs)
        .map(|_| {
            let mut src = Source::new(&mut rng, 1500);
            src.arrived = rng.below(src.data.len() + 1);
            Dir {
                dst: Dest::new(&mut rng),
                shaper: Shaper::new(&mut rng, now),
                counts: Counts::default(),
                m: UringDir::new(now),
                flights: Vec::new(),
                next: None,
                closing: false,
                released: false,
                fail_at: rng.percent(25).then(|| rng.below(600)),
                src,
            }
        })
        .collect();
    let mut w = World {
        seed,
        rng,
        pool,
        budget,
        dirs,
        starving: VecDeque::new(),
        now,
    };
    for k in 0..ndirs {
        w.call(k, seen, |m, _, o| m.start(o));
    }
    for step in 0..200_000 {
        if w.dirs.iter().all(|d| d.released) {
            break;
        }
        let k = w.rng.below(ndirs);
        if w.dirs[k].fail_at == Some(step) {
            if w.rng.percent(50) {
                w.dirs[k].src.error = Some(libc::ECONNRESET);
            } else {
                w.dirs[k].dst.error = Some(libc::EPIPE);
            }
        }
        match w.rng.below(6) {
            0 => w.dirs[k].src.arrive(&mut w.rng),
            1 => w.dirs[k].dst.drain(&mut w.rng),
            2 => w.now += Duration::from_micros(w.rng.below(1500) as u64),
            3 | 4 => {
                let n = w.dirs[k].flights.len();
                if n > 0 {
                    let j = w.rng.below(n);
                    w.complete(k, j, seen);
                }
            }
            _ => {
                while let Some(&f) = w.starving.front() {
                    if w.dirs[f].closing || w.dirs[f].m.hold() != Hold::Pool {
                        w.starving.pop_front();
                    } else {
                        break;
                    }
                }
                let d = &mut w.dirs[k];
                if d.closing {
                    continue;
                }
                let wake = match d.next {
                    Some(Next::Pool) => !w.pool.free.is_empty() && w.starving.front() == Some(&k),
                    Some(Next::Park(at)) => w.now >= at,
                    _ => false,
                };
                if wake {
                    if d.next == Some(Next::Pool) {
                        w.starving.pop_front();
                    }
                    d.next = None;
                    w.call(k, seen, |m, c, o| m.resume(c, o));
                }
            }
        }
    }
    for (i, d) in w.dirs.iter().enumerate() {
        assert!(
            d.released,
            "seed {seed}: direction {i} never ended: {:?} {:?}",
            d.next, d.flights
        );
    }
    assert!(
        w.pool.lent.iter().all(|&l| !l),
        "seed {seed}: pipes not given back"
    );
    assert_eq!(w.budget.used, 0, "seed {seed}");
}

#[test]
fn uring_splice_directions_relay_every_byte_once_in_order_under_generated_event_orders() {
    let mut seen = Seen::default();
    for seed in 0..4000 {
        run(seed, &mut seen);
    }
    assert!(seen.stalls > 100, "stalls {}", seen.stalls);
    assert!(seen.fallbacks > 100, "fallbacks {}", seen.fallbacks);
    assert!(seen.pool_waits > 100, "pool waits {}", seen.pool_waits);
    assert!(seen.parks > 100, "parks {}", seen.parks);
    assert!(seen.quota_cuts > 10, "quota cuts {}", seen.quota_cuts);
    assert!(seen.failures > 100, "failures {}", seen.failures);
    assert!(seen.finished > 1000, "finished {}", seen.finished);
    assert!(seen.late > 100, "late completions {}", seen.late);
}
