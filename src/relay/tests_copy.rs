//! The copy engine's direction under thousands of generated event orders. Its operations
//! are ring requests here too: the simulated kernel completes any of them in any order
//! once it could (a recv when bytes or EOF are there, a waiting send when the receiver made
//! room, a zero-copy send's notification later still), and torn-down relays see their
//! last completions after the teardown, as the worker's `close` does.

use super::copy::{Action, BufEnv, CopyDir, Op, MAX_IN_FLIGHT};
use super::sim::{Budget, Counts, Dest, Rng, Shaper, Source};
use super::{Hold, Next};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The provided-buffer ring.
struct Ring {
    bufs: Vec<Vec<u8>>,
    free: VecDeque<u16>,
    lent: Vec<bool>,
    /// A send in flight reads it.
    in_kernel: Vec<bool>,
    size: usize,
}

impl Ring {
    fn lent(&self) -> usize {
        self.lent.iter().filter(|&&l| l).count()
    }

    fn give_back(&mut self, bid: u16, seed: u64) {
        let b = bid as usize;
        assert!(self.lent[b], "seed {seed}: buffer {bid} given back twice");
        assert!(
            !self.in_kernel[b],
            "seed {seed}: buffer {bid} given back while a send uses it"
        );
        self.lent[b] = false;
        self.free.push_back(bid);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flight {
    Op(Op),
    /// A zero-copy send's notification, still to come.
    Notif(u16),
}

struct Dir {
    src: Source,
    dst: Dest,
    shaper: Shaper,
    counts: Counts,
    m: CopyDir,
    flights: Vec<Flight>,
    /// What the direction waits for besides its flights (`Pool`, `Park`), or how it ended.
    next: Option<Next>,
    /// Torn down: completions only count down, then it gives back what it holds.
    closing: bool,
    released: bool,
    fail_at: Option<usize>,
    zc: bool,
    /// What a waiting (`MSG_WAITALL`) send in flight has moved so far.
    partial: u32,
    /// Picks which sends are zero-copy.
    send_seq: Rng,
}

struct Ctx<'a> {
    d: &'a mut Dir,
    ring: &'a Ring,
    budget: &'a mut Budget,
    now: Instant,
}

// The common part of the simulated world (`sim.rs`).
sim_env!(Ctx);

impl BufEnv for Ctx<'_> {
    fn buffer(&self, bid: u16, off: usize, len: usize) -> &[u8] {
        assert!(self.ring.lent[bid as usize]);
        &self.ring.bufs[bid as usize][off..off + len]
    }
    fn zero_copy(&mut self) -> bool {
        // Some sends of a zero-copy direction are plain (the worker's bound on pinned
        // buffers), so both kinds interleave.
        self.d.zc && self.d.send_seq.next() % 4 != 0
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
    zc_notifs: usize,
    late_completions: usize,
}

struct World {
    seed: u64,
    rng: Rng,
    ring: Ring,
    budget: Budget,
    dirs: Vec<Dir>,
    starving: VecDeque<usize>,
    now: Instant,
}

impl World {
    /// Calls into direction `k`'s machine with `f`, then carries out its actions.
    fn call(
        &mut self,
        k: usize,
        seen: &mut Seen,
        f: impl FnOnce(&mut CopyDir, &mut Ctx, &mut Vec<Action>),
    ) {
        let seed = self.seed;
        let mut out = Vec::new();
        let d = &mut self.dirs[k];
        let mut m = std::mem::replace(&mut d.m, CopyDir::new(self.now, 1));
        let mut ctx = Ctx {
            d,
            ring: &self.ring,
            budget: &mut self.budget,
            now: self.now,
        };
        f(&mut m, &mut ctx, &mut out);
        let d = &mut self.dirs[k];
        d.m = m;
        for (i, a) in out.iter().enumerate() {
            match *a {
                Action::Submit(op) => {
                    if let Op::Send { bid, off, len, .. } = op {
                        let b = bid as usize;
                        assert!(self.ring.lent[b] && !self.ring.in_kernel[b], "seed {seed}");
                        assert!(len > 0 && (off + len) as usize <= self.ring.bufs[b].len());
                        self.ring.in_kernel[b] = true;
                    }
                    // One operation of each kind at a time.
                    assert!(
                        !d.flights.iter().any(|f| matches!(
                            (f, op),
                            (Flight::Op(Op::Recv { .. }), Op::Recv { .. })
                                | (Flight::Op(Op::Send { .. }), Op::Send { .. })
                                | (Flight::Notif(_), Op::Send { .. })
                                | (Flight::Op(Op::Writable), Op::Writable)
                        )),
                        "seed {seed}: two {op:?} in flight"
                    );
                    d.flights.push(Flight::Op(op));
                }
                Action::GiveBack(bid) => {
                    self.ring.give_back(bid, seed);
                }
                Action::Then(next) => {
                    assert_eq!(i, out.len() - 1, "seed {seed}: actions after {next:?}");
                    d.next = Some(next);
                    match next {
                        Next::Pool => {
                            assert!(self.ring.free.is_empty() || !d.flights.is_empty());
                            assert_eq!(d.m.hold(), Hold::Pool);
                            self.starving.push_back(k);
                            seen.pool_waits += 1;
                        }
                        Next::Park(at) => {
                            assert!(at > self.now && d.shaper.on, "seed {seed}");
                            assert_eq!(d.m.hold(), Hold::Tokens);
                            seen.parks += 1;
                        }
                        Next::Finished => {
                            // EOF propagates only after every byte, with nothing in flight.
                            assert!(d.flights.is_empty(), "seed {seed}");
                            assert!(d.src.eof && d.src.read == d.src.data.len());
                            assert_eq!(d.dst.got, d.src.data, "seed {seed}");
                            assert_eq!(d.m.buffers(), 0);
                            d.dst.shut = true;
                            d.closing = true;
                            seen.finished += 1;
                        }
                        Next::QuotaCut => {
                            assert!(d.shaper.cut(), "seed {seed}");
                            // What was read within the quota is out.
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
                        Next::Readable | Next::Writable | Next::InFlight => {
                            panic!("seed {seed}: copy waits through its flights, not {next:?}")
                        }
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
            assert_eq!(d.m.in_flight(), d.flights.len(), "seed {seed}");
            assert!(d.flights.len() <= MAX_IN_FLIGHT);
            // A zero-copy send awaiting its notification pins its buffer, and only it.
            if d.flights.iter().any(|f| matches!(f, Flight::Notif(_))) {
                assert_eq!(d.m.buffers(), 1, "seed {seed}: buffers beside a pinned one");
            }
            // A direction waiting only for its destination holds no buffer, unless the
            // spill budget ran out.
            if d.flights == [Flight::Op(Op::Writable)] && d.m.buffers() > 0 {
                assert!(
                    d.counts.fallback_full > 0,
                    "seed {seed}: stalled holding buffers"
                );
            }
        }
        self.release_if_done(k);
        // The budget accounts for exactly what the directions spilled.
        assert_eq!(
            self.budget.used,
            self.dirs.iter().map(|d| d.m.spilled()).sum::<usize>(),
            "seed {seed}"
        );
        seen.fallbacks += std::mem::take(&mut self.dirs[k].counts.fallbacks);
    }

    /// A torn-down direction whose last completion has come gives back what it holds.
    fn release_if_done(&mut self, k: usize) {
        let d = &mut self.dirs[k];
        if d.closing && d.flights.is_empty() && !d.released {
            d.released = true;
            let (bids, spill) = d.m.release();
            for bid in bids {
                self.ring.give_back(bid, self.seed);
            }
            self.budget.release(spill);
        }
    }

    /// The kernel completes flight `j` of direction `k`, if it can now.
    fn complete(&mut self, k: usize, j: usize, seen: &mut Seen) {
        let now = self.now;
        let seed = self.seed;
        let d = &mut self.dirs[k];
        let f = d.flights[j];
        // (result, buffer selected, more follows)
        let (res, bid, more) = match f {
            Flight::Op(Op::Recv { len }) => {
                if !d.src.readable() {
                    return;
                }
                let len = if len == 0 {
                    self.ring.size
                } else {
                    len as usize
                };
                if d.src.error.is_some() {
                    (-libc::ECONNRESET, None, false)
                } else if d.src.eof && d.src.read == d.src.arrived {
                    (0, None, false)
                } else if let Some(bid) = self.ring.free.pop_front() {
                    let bytes = d.src.read(len).expect("readable");
                    let b = &mut self.ring.bufs[bid as usize];
                    b.clear();
                    b.extend_from_slice(bytes);
                    b.resize(self.ring.size, 0xEE);
                    self.ring.lent[bid as usize] = true;
                    (bytes.len() as i32, Some(bid), false)
                } else {
                    (-libc::ENOBUFS, None, false)
                }
            }
            Flight::Op(Op::Send {
                bid,
                off,
                len,
                wait_all,
                zc,
            }) => {
                let bytes = &self.ring.bufs[bid as usize][off as usize..(off + len) as usize];
                let mut res = match d.dst.write(bytes) {
                    Ok(n) => n as i32,
                    Err(e) => -e,
                };
                if wait_all && (res == -libc::EAGAIN || (res >= 0 && (res as u32) < len)) {
                    // MSG_WAITALL: the kernel goes on as the receiver makes room, and
                    // completes once with the whole length.
                    res = res.max(0);
                    let (o, l) = (off + res as u32, len - res as u32);
                    d.flights[j] = Flight::Op(Op::Send {
                        bid,
                        off: o,
                        len: l,
                        wait_all,
                        zc,
                    });
                    d.partial += res as u32;
                    return;
                }
                if wait_all && res >= 0 {
                    res += std::mem::take(&mut d.partial) as i32;
                }
                // A zero-copy send that used its buffer has a notification to come.
                let more = zc && (res >= 0 || self.rng.percent(50));
                if !more {
                    self.ring.in_kernel[bid as usize] = false;
                }
                (res, None, more)
            }
            Flight::Op(Op::Writable) => {
                if d.dst.space() == 0 && d.dst.error.is_none() {
                    return;
                }
                (
                    if d.dst.error.is_some() {
                        -libc::EPIPE
                    } else {
                        0
                    },
                    None,
                    false,
                )
            }
            Flight::Notif(bid) => {
                self.ring.in_kernel[bid as usize] = false;
                seen.zc_notifs += 1;
                (0, None, false)
            }
        };
        d.flights.remove(j);
        if let (Flight::Op(Op::Send { bid, .. }), true) = (f, more) {
            d.flights.push(Flight::Notif(bid));
        }
        if d.closing {
            // The worker's close: only count down; a buffer a racing recv took goes back.
            seen.late_completions += 1;
            if let Some(bid) = bid {
                self.ring.give_back(bid, seed);
            }
            self.release_if_done(k);
            return;
        }
        match f {
            Flight::Op(Op::Recv { .. }) => {
                self.call(k, seen, |m, c, o| m.on_recv(now, res, bid, c, o))
            }
            Flight::Op(Op::Send { .. }) if more => {
                self.call(k, seen, |m, _, o| m.on_send_result(now, res, o))
            }
            Flight::Op(Op::Send { .. }) => self.call(k, seen, |m, c, o| m.on_send(now, res, c, o)),
            Flight::Op(Op::Writable) => self.call(k, seen, |m, c, o| m.on_writable(now, res, c, o)),
            Flight::Notif(_) => self.call(k, seen, |m, c, o| m.on_send_notif(now, c, o)),
        }
    }
}

fn run(seed: u64, seen: &mut Seen) {
    let mut rng = Rng::new(seed);
    let now = Instant::now();
    let nbufs = rng.upto(3);
    let size = rng.upto(64);
    let ring = Ring {
        bufs: vec![Vec::new(); nbufs],
        free: (0..nbufs as u16).collect(),
        lent: vec![false; nbufs],
        in_kernel: vec![false; nbufs],
        size,
    };
    let budget = Budget::new(&mut rng);
    let ndirs = rng.upto(3);
    let dirs = (0..ndirs)
        .map(|_| {
            let mut src = Source::new(&mut rng, 1500);
            src.arrived = rng.below(src.data.len() + 1);
            let zc = rng.percent(30);
            Dir {
                dst: Dest::new(&mut rng),
                shaper: Shaper::new(&mut rng, now),
                counts: Counts::default(),
                m: CopyDir::new(now, size),
                flights: Vec::new(),
                next: None,
                closing: false,
                released: false,
                fail_at: rng.percent(25).then(|| rng.below(600)),
                zc,
                partial: 0,
                send_seq: Rng::new(rng.next()),
                src,
            }
        })
        .collect();
    let mut w = World {
        seed,
        rng,
        ring,
        budget,
        dirs,
        starving: VecDeque::new(),
        now,
    };
    for k in 0..ndirs {
        w.call(k, seen, |m, c, o| m.resume(c, o));
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
                // Entries of directions torn down while waiting are skipped, as the
                // worker's `wake_waiters` does.
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
                    Some(Next::Pool) => !w.ring.free.is_empty() && w.starving.front() == Some(&k),
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
        let d = &w.dirs[k];
        seen.stalls += d.counts.stalls;
        seen.fallback_full += d.counts.fallback_full;
        assert!(w.budget.used <= w.budget.limit);
    }
    for (i, d) in w.dirs.iter().enumerate() {
        assert!(d.released, "seed {seed}: direction {i} never ended: {:?} {:?} {:?} src {}/{}/{} eof {} dst q{} cap{} got{} {:?}", d.next, d.flights, d.m, d.src.read, d.src.arrived, d.src.data.len(), d.src.eof, d.dst.queued, d.dst.capacity, d.dst.got.len(), w.ring.free);
    }
    assert_eq!(w.ring.lent(), 0, "seed {seed}: buffers not given back");
    assert_eq!(w.budget.used, 0, "seed {seed}");
}

#[test]
fn copy_directions_relay_every_byte_once_in_order_under_generated_event_orders() {
    let mut seen = Seen::default();
    for seed in 0..4000 {
        run(seed, &mut seen);
    }
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
    assert!(
        seen.zc_notifs > 1000,
        "zero-copy notifications {}",
        seen.zc_notifs
    );
    assert!(
        seen.late_completions > 100,
        "late completions {}",
        seen.late_completions
    );
}
