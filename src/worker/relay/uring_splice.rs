//! The uring-splice engine: the same per-core pipes as the splice engine, but the splices
//! are IORING_OP_SPLICE requests, which the kernel always runs on io-wq worker threads.
//! Its direction state is its own type, `UringDir`; the shared decisions (the spill, the
//! counters, the shaper and the pool) go through the same `WorkerEnv` as the sans-IO
//! engines.
//!
//! Per direction: a readiness poll (so an idle direction holds no pipe and parks no io-wq
//! thread), then a borrowed pipe and `socket -> pipe` hard-linked to `pipe -> peer socket`
//! (one io-wq punt runs both). The sockets are non-blocking and the splices carry
//! `SPLICE_F_NONBLOCK`, so every splice finishes at once: the only requests that wait are
//! polls on the two sockets, which a close cancels by descriptor (`end_relay` cancels by
//! both descriptors, since `pipe -> peer` and its POLLOUT wait on the peer's). The kernel
//! ignores cancels by the pipe's descriptors, but requests on pipes never wait.
//!
//! A pipe is borrowed only while bytes may sit in it. While a `socket -> pipe` splice is in
//! flight, `in_pipe` counts the whole pipe (an upper bound), so a relay torn down meanwhile
//! discards the pipe instead of lending stale bytes to another relay (`finalize`).

use super::super::conn::Dir;
use super::super::pipes::Pipe;
use super::super::ring::{token, Op};
use super::super::slab::ConnId;
use super::super::Worker;
use super::env::WorkerEnv;
use super::READABLE;
use crate::relay::spill::Spill;
use crate::relay::splice::PipeEnv;
use crate::relay::{Count, Env, Flow, Hold};
use crate::shaping::Grant;
use io_uring::{opcode, squeue, types};
use std::time::Instant;

/// Link `socket -> pipe` to `pipe -> peer` (one io-wq punt for both) instead of submitting
/// the second from the first's completion. Both measured the same (relay_vs_direct, 2 GiB,
/// 4 runs each: 1 pair 13.8-16.9 Gbit/s linked, 14.5-16.8 chained; 64 pairs 15.4-18.3 and
/// 15.0-18.7); linked costs one io-wq punt and one submission per chunk instead of two.
const LINK: bool = true;

/// One direction of the uring-splice engine.
pub(in crate::worker) struct UringDir {
    /// The borrowed pipe, and how many bytes sit in it (all of it while a splice into it
    /// is in flight).
    pipe: Option<Pipe>,
    pub in_pipe: usize,
    /// The last splice in filled the pipe, so skip the next poll.
    again: bool,
    /// A readiness poll or a `socket -> pipe` splice is in flight.
    reading: bool,
    /// A `pipe -> peer` splice or a POLLOUT on the peer is in flight.
    writing: bool,
    eof: bool,
    spill: Spill,
    pub hold: Hold,
    pub flow: Flow,
}

impl UringDir {
    pub fn new(now: Instant) -> UringDir {
        UringDir {
            pipe: None,
            in_pipe: 0,
            again: false,
            reading: false,
            writing: false,
            eof: false,
            spill: Spill::default(),
            hold: Hold::None,
            flow: Flow::new(now),
        }
    }

    /// The relay is torn down and nothing is in flight: its pipe (with whether bytes may
    /// sit in it) and its spill bytes.
    pub fn release(&mut self) -> (Option<(Pipe, bool)>, usize) {
        let pipe = self.pipe.take().map(|p| (p, self.in_pipe > 0));
        self.in_pipe = 0;
        (pipe, self.spill.discard())
    }

    fn give_back(&mut self, env: &mut WorkerEnv<'_>) {
        if let Some(p) = self.pipe.take() {
            env.give_back(p);
        }
    }

    /// Moves what sits in the pipe (nothing is in flight on it) into the spill and gives
    /// the pipe back; keeps it when the spill budget is used up.
    fn spill_pipe(&mut self, env: &mut WorkerEnv<'_>) {
        let (Some(pipe), n) = (self.pipe, self.in_pipe) else {
            return;
        };
        if !env.reserve_spill(n) {
            env.count(Count::FallbackFull);
            return;
        }
        let got = env
            .drain_pipe(pipe, n, self.spill.make_room(n))
            .unwrap_or(0);
        if got != n {
            env.release_spill(n - got);
            self.in_pipe -= got;
            return;
        }
        self.in_pipe = 0;
        self.give_back(env);
        env.count(Count::Fallback);
    }
}

/// What `us_start` found.
enum Start {
    Go { pipe: Pipe, len: u32 },
    Park(Instant),
    Quota,
    Stalled,
    Pool,
}

impl Worker {
    fn us(&mut self, id: ConnId) -> Option<&mut UringDir> {
        match self.side(id).map(|s| &mut s.dir) {
            Some(Dir::UringSplice(d)) => Some(d),
            _ => None,
        }
    }

    /// Runs `f` on direction `id` with the worker as its world.
    fn us_with<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut UringDir, &mut WorkerEnv<'_>) -> R,
    ) -> Option<R> {
        self.with_dir(id, |dir, env| match dir {
            Dir::UringSplice(d) => Some(f(d, env)),
            _ => None,
        })
        .flatten()
    }

    /// Waits for the connection to be readable (or hung up / in error).
    pub(in crate::worker) fn us_arm_readable(&mut self, id: ConnId) {
        let Some(fd) = self.conns.get(id).map(|c| c.fd) else {
            return;
        };
        let Some(d) = self.us(id) else {
            return;
        };
        if d.reading {
            return;
        }
        d.reading = true;
        self.arm_poll(id, fd, READABLE, Op::UsPollIn);
    }

    pub(in crate::worker) fn us_on_readable(&mut self, id: ConnId, res: i32) {
        let Some(d) = self.us(id) else {
            return;
        };
        d.reading = false;
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        self.us_start(id);
    }

    /// Borrows a pipe and splices from the socket into it (and, linked, on to the peer).
    /// Called with nothing in flight for this direction and an empty pipe.
    pub(in crate::worker) fn us_start(&mut self, id: ConnId) {
        let Some(fd) = self.conns.get(id).map(|c| c.fd) else {
            return;
        };
        let start = self.us_with(id, |d, env| {
            debug_assert!(!d.reading && !d.writing && d.in_pipe == 0);
            let mut len = env.pipe_size();
            // A shaped stream reads no more than its tokens allow (the pipe is empty, so
            // every byte read within the quota has been delivered when it is cut).
            match env.grant(len) {
                Grant::Go(n) => len = len.min(n),
                Grant::Wait(at) => {
                    d.give_back(env);
                    d.hold = Hold::Tokens;
                    return Start::Park(at);
                }
                Grant::QuotaUsed => return Start::Quota,
            }
            // No more than the destination can take now: a stalled destination is waited
            // for holding no pipe, and what it refuses after a read stays small.
            let space = env.send_space();
            if space == 0 {
                d.give_back(env);
                env.count(Count::Stall);
                return Start::Stalled;
            }
            len = len.min(space);
            let pipe = match d.pipe {
                Some(p) => p,
                None => match env.borrow() {
                    Some(p) => *d.pipe.insert(p),
                    None => {
                        d.hold = Hold::Pool;
                        return Start::Pool;
                    }
                },
            };
            // Read after the borrow: the first loan may settle the size.
            let pipe_size = env.pipe_size();
            d.reading = true;
            // Until the splice completes the pipe may hold up to all of it (file doc).
            d.in_pipe = pipe_size;
            d.writing = LINK;
            Start::Go {
                pipe,
                len: len.min(pipe_size) as u32,
            }
        });
        let pipe_len = match start {
            None => return,
            Some(Start::Park(at)) => return self.park(id, at),
            Some(Start::Quota) => return self.quota_cut(id),
            // `us_on_writable` finds no pipe and comes back here.
            Some(Start::Stalled) => return self.us_arm_writable(id),
            Some(Start::Pool) => return self.wait_for_pool(id),
            Some(Start::Go { pipe, len }) => (pipe, len),
        };
        let (pipe, len) = pipe_len;
        let Some(peer_fd) = self.side(id).map(|s| s.peer_fd) else {
            return;
        };
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        let splice_in = opcode::Splice::new(types::Fd(fd), -1, types::Fd(pipe.wr), -1, len)
            .flags(flags)
            .build()
            .user_data(token(Op::UsIn, id.idx, id.gen));
        if !LINK {
            self.push_conn_op(id, splice_in);
            return;
        }
        // `pipe -> peer` moves what the first put in the pipe (the pipe was empty); after a
        // short or failed first splice it still runs (HARDLINK) and finds what there is,
        // possibly nothing (EAGAIN).
        let splice_out = opcode::Splice::new(types::Fd(pipe.rd), -1, types::Fd(peer_fd), -1, len)
            .flags(flags)
            .build()
            .user_data(token(Op::UsOut, id.idx, id.gen));
        // A link must not be split across two submissions: make room for both first.
        let room = {
            let sq = self.ring.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 2 {
            // If this fails, `push` below retries; a link split anyway stays correct (the
            // second splice then runs on its own and finds what there is), only slower.
            let _ = self.ring.ring.submit();
        }
        self.push_conn_op(id, splice_in.flags(squeue::Flags::IO_HARDLINK));
        self.push_conn_op(id, splice_out);
    }

    pub(in crate::worker) fn us_on_in(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        let r = self.us_with(id, |d, env| {
            let pipe_size = env.pipe_size();
            d.reading = false;
            // Back from the upper bound to what is really in the pipe (added first: a
            // split link may have let the second splice take some already).
            d.in_pipe = d.in_pipe + res.max(0) as usize - pipe_size;
            match res {
                n if n > 0 => {
                    d.flow.last_active = now;
                    // A full pipe: more is likely waiting, so the next round skips the poll.
                    d.again = n as usize == pipe_size;
                    env.paid(n as usize);
                }
                0 => d.eof = true,
                e if -e == libc::EAGAIN => d.again = false,
                e => return Err(-e),
            }
            Ok(d.writing)
        });
        match r {
            Some(Ok(false)) => self.us_next(id),
            Some(Err(e)) => self.fail(id, e),
            _ => {}
        }
    }

    pub(in crate::worker) fn us_on_out(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        let r = self.us_with(id, |d, env| {
            d.writing = false;
            match res {
                n if n > 0 => {
                    let n = n as usize;
                    d.in_pipe -= n;
                    d.flow.bytes += n as u64;
                    d.flow.last_active = now;
                    env.count(Count::Delivered(n));
                }
                e if e == 0 || -e == libc::EAGAIN => {}
                e => return Err(-e),
            }
            if d.reading {
                // Linked, and the first splice's completion is still to come.
                return Ok(false);
            }
            if d.in_pipe > 0 {
                // The peer took only part (its send buffer is full): wait until it takes
                // more, holding the rest in the direction's own buffer (nothing is in
                // flight on the pipe now), or, that budget used up, in the pipe.
                d.spill_pipe(env);
                return Ok(true);
            }
            Ok(false)
        });
        match r {
            Some(Ok(true)) => self.us_arm_writable(id),
            Some(Ok(false)) if self.us(id).is_some_and(|d| !d.reading) => self.us_next(id),
            Some(Err(e)) => self.fail(id, e),
            _ => {}
        }
    }

    fn us_arm_writable(&mut self, id: ConnId) {
        let Some(peer_fd) = self.side(id).map(|s| s.peer_fd) else {
            return;
        };
        let Some(d) = self.us(id) else {
            return;
        };
        d.writing = true;
        self.arm_poll(id, peer_fd, libc::POLLOUT, Op::UsPollOut);
    }

    pub(in crate::worker) fn us_on_writable(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        let Some(d) = self.us(id) else {
            return;
        };
        d.writing = false;
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        let r = self.us_with(id, |d, env| {
            if d.spill.pending() > 0 {
                d.spill.flush(&mut d.flow, now, env)?;
                if d.spill.pending() > 0 {
                    return Ok(None);
                }
            }
            // Waited for a full destination before reading, or its spill is out.
            Ok(Some(d.pipe.is_some() && d.in_pipe > 0))
        });
        match r {
            Some(Ok(Some(true))) => self.us_splice_out(id),
            Some(Ok(Some(false))) => self.us_next(id),
            Some(Ok(None)) => self.us_arm_writable(id),
            Some(Err(e)) => self.fail(id, e),
            None => {}
        }
    }

    fn us_splice_out(&mut self, id: ConnId) {
        let Some(peer_fd) = self.side(id).map(|s| s.peer_fd) else {
            return;
        };
        let Some(d) = self.us(id) else {
            return;
        };
        let Some(pipe) = d.pipe else {
            return;
        };
        d.writing = true;
        let e = opcode::Splice::new(
            types::Fd(pipe.rd),
            -1,
            types::Fd(peer_fd),
            -1,
            d.in_pipe as u32,
        )
        .flags(libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
        .build()
        .user_data(token(Op::UsOut, id.idx, id.gen));
        self.push_conn_op(id, e);
    }

    /// Nothing in flight for this direction: move on.
    fn us_next(&mut self, id: ConnId) {
        let nobody_waits = self.starving.is_empty();
        let Some(d) = self.us(id) else {
            return;
        };
        if d.in_pipe > 0 {
            self.us_splice_out(id);
            return;
        }
        if d.again && !d.eof && nobody_waits {
            // Keep the (empty) pipe for the next round.
            self.us_start(id);
            return;
        }
        // The pipe is empty: give it back so idle directions hold none.
        let r = self.us_with(id, |d, env| {
            d.give_back(env);
            (d.eof, d.again)
        });
        match r {
            Some((true, _)) => self.direction_done(id),
            Some((false, true)) => self.us_start(id),
            Some((false, false)) => self.us_arm_readable(id),
            None => {}
        }
    }
}
