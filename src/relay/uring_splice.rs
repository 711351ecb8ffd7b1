//! The uring-splice engine's direction: the same pooled pipes as `splice.rs`, but the
//! splices are ring requests (`IORING_OP_SPLICE`, run by the kernel on io-wq threads):
//! a readiness poll, then a borrowed pipe and `socket -> pipe` hard-linked to
//! `pipe -> destination` (one io-wq punt runs both), and a POLLOUT on the destination
//! when it is full. The sockets are non-blocking and the splices carry
//! `SPLICE_F_NONBLOCK`, so every splice ends on its own.
//!
//! A pipe is borrowed only while bytes may sit in it. While a splice into it is in
//! flight, `in_pipe` counts the whole pipe (an upper bound), so a relay torn down
//! meanwhile has its pipe emptied before it is lent again (`release`). The pipe goes back
//! only from the handler of the last splice's completion, with nothing in flight on it.

use super::spill::Spill;
use super::splice::{Leftover, PipeEnv};
use super::{Count, Flow, Hold, Next};
use crate::shaping::Grant;
use std::time::Instant;

/// An operation to submit; its completion comes back to the matching `on_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op<P> {
    /// Readiness poll on the source (POLLIN | POLLRDHUP): `on_readable`.
    Readable,
    /// Splice of up to `len` bytes from the source into `pipe` (`on_in`), hard-linked to
    /// a splice of up to `len` bytes from `pipe` to the destination (`on_out`).
    Splice { pipe: P, len: u32 },
    /// Splice of `len` bytes from `pipe` to the destination: `on_out`.
    Out { pipe: P, len: u32 },
    /// POLLOUT on the destination: `on_writable`.
    Writable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action<P> {
    Submit(Op<P>),
    /// The direction waits for this (never `InFlight`); nothing follows it.
    Then(Next),
}

/// The pool and its waiters, answered at once.
pub(crate) trait UringEnv<P>: PipeEnv<P> {
    /// Other directions wait for a pipe (then an emptied pipe goes back at once).
    fn others_wait(&self) -> bool;
}

#[derive(Debug)]
pub(crate) struct UringDir<P> {
    pipe: Option<P>,
    in_pipe: usize,
    /// What `in_pipe` counted for the splice into the pipe in flight (the pipe's size).
    bound: usize,
    /// The last splice in filled the pipe, so skip the next poll.
    again: bool,
    /// A readiness poll or a `source -> pipe` splice is in flight.
    reading: bool,
    /// A `pipe -> destination` splice or a POLLOUT on the destination is in flight.
    writing: bool,
    eof: bool,
    spill: Spill,
    hold: Hold,
    pub flow: Flow,
}

impl<P: Copy> UringDir<P> {
    pub fn new(now: Instant) -> UringDir<P> {
        UringDir {
            pipe: None,
            in_pipe: 0,
            bound: 0,
            again: false,
            reading: false,
            writing: false,
            eof: false,
            spill: Spill::default(),
            hold: Hold::None,
            flow: Flow::new(now),
        }
    }

    pub fn hold(&self) -> Hold {
        self.hold
    }

    #[cfg(test)]
    pub fn holds_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.reading as usize + self.writing as usize
    }

    #[cfg(test)]
    pub fn spilled(&self) -> usize {
        self.spill.pending()
    }

    /// The relay starts: wait for the source (bytes that came early are found at once).
    pub fn start(&mut self, out: &mut Vec<Action<P>>) {
        self.arm_readable(out);
    }

    /// Woken from the pool's or the shaper's queue.
    pub fn resume(&mut self, env: &mut impl UringEnv<P>, out: &mut Vec<Action<P>>) {
        self.hold = Hold::None;
        self.begin(env, out);
    }

    fn arm_readable(&mut self, out: &mut Vec<Action<P>>) {
        if self.reading {
            return;
        }
        self.reading = true;
        out.push(Action::Submit(Op::Readable));
    }

    pub fn on_readable(&mut self, res: i32, env: &mut impl UringEnv<P>, out: &mut Vec<Action<P>>) {
        assert!(self.reading);
        self.reading = false;
        if res < 0 {
            return out.push(Action::Then(Next::Fail(-res)));
        }
        self.begin(env, out);
    }

    fn give_back(&mut self, env: &mut impl UringEnv<P>) {
        if let Some(p) = self.pipe.take() {
            env.give_back(p);
        }
    }

    /// Borrows a pipe and splices the source into it (and, linked, on to the
    /// destination). Called with nothing in flight and an empty pipe.
    fn begin(&mut self, env: &mut impl UringEnv<P>, out: &mut Vec<Action<P>>) {
        assert!(!self.reading && !self.writing && self.in_pipe == 0);
        let mut len = env.pipe_size();
        // A shaped stream reads no more than its tokens allow (the pipe is empty, so
        // every byte read within the quota has been delivered when it is cut).
        match env.grant(len) {
            Grant::Go(n) => len = len.min(n),
            Grant::Wait(at) => {
                self.give_back(env);
                self.hold = Hold::Tokens;
                return out.push(Action::Then(Next::Park(at)));
            }
            Grant::QuotaUsed => return out.push(Action::Then(Next::QuotaCut)),
        }
        // No more than the destination can take now: a stalled destination is waited
        // for holding no pipe, and what it refuses after a read stays small.
        let space = env.send_space();
        if space == 0 {
            self.give_back(env);
            env.count(Count::Stall);
            // `on_writable` finds no pipe and comes back here.
            return self.arm_writable(out);
        }
        len = len.min(space);
        let pipe = match self.pipe {
            Some(p) => p,
            None => match env.borrow() {
                Some(p) => *self.pipe.insert(p),
                None => {
                    self.hold = Hold::Pool;
                    return out.push(Action::Then(Next::Pool));
                }
            },
        };
        // Read after the borrow: the first loan may settle the size.
        let pipe_size = env.pipe_size();
        self.reading = true;
        self.writing = true;
        self.bound = pipe_size;
        self.in_pipe = pipe_size;
        out.push(Action::Submit(Op::Splice {
            pipe,
            len: len.min(pipe_size) as u32,
        }));
    }

    /// The splice into the pipe completed: `res` bytes, 0 at EOF, or -errno.
    pub fn on_in(
        &mut self,
        now: Instant,
        res: i32,
        env: &mut impl UringEnv<P>,
        out: &mut Vec<Action<P>>,
    ) {
        assert!(self.reading);
        self.reading = false;
        // Back from the upper bound to what is really in the pipe (added first: the
        // linked splice out may have taken some already).
        self.in_pipe = self.in_pipe + res.max(0) as usize - self.bound;
        match res {
            n if n > 0 => {
                self.flow.last_active = now;
                // A full pipe: more is likely waiting, so the next round skips the poll.
                self.again = n as usize == self.bound;
                env.paid(n as usize);
            }
            0 => self.eof = true,
            e if -e == libc::EAGAIN => self.again = false,
            e => return out.push(Action::Then(Next::Fail(-e))),
        }
        if !self.writing {
            self.next(env, out);
        }
    }

    /// A splice out of the pipe completed.
    pub fn on_out(
        &mut self,
        now: Instant,
        res: i32,
        env: &mut impl UringEnv<P>,
        out: &mut Vec<Action<P>>,
    ) {
        assert!(self.writing);
        self.writing = false;
        match res {
            n if n > 0 => {
                let n = n as usize;
                self.in_pipe -= n;
                self.flow.bytes += n as u64;
                self.flow.last_active = now;
                env.count(Count::Delivered(n));
            }
            e if e == 0 || -e == libc::EAGAIN => {}
            e => return out.push(Action::Then(Next::Fail(-e))),
        }
        if self.reading {
            // Linked, and the splice in's completion is still to come.
            return;
        }
        if self.in_pipe > 0 {
            // The destination took only part: wait until it takes more, holding the rest
            // in the direction's own buffer (nothing is in flight on the pipe now), or,
            // that budget used up, in the pipe.
            self.spill_pipe(env);
            return self.arm_writable(out);
        }
        self.next(env, out);
    }

    fn arm_writable(&mut self, out: &mut Vec<Action<P>>) {
        self.writing = true;
        out.push(Action::Submit(Op::Writable));
    }

    /// The destination takes bytes again: the spill first, then the pipe.
    pub fn on_writable(
        &mut self,
        now: Instant,
        res: i32,
        env: &mut impl UringEnv<P>,
        out: &mut Vec<Action<P>>,
    ) {
        assert!(self.writing);
        self.writing = false;
        if res < 0 {
            return out.push(Action::Then(Next::Fail(-res)));
        }
        match self.spill.flush(&mut self.flow, now, env) {
            Ok(true) => {}
            Ok(false) => return self.arm_writable(out),
            Err(e) => return out.push(Action::Then(Next::Fail(e))),
        }
        self.next(env, out);
    }

    /// Nothing in flight for this direction: move on.
    fn next(&mut self, env: &mut impl UringEnv<P>, out: &mut Vec<Action<P>>) {
        if self.in_pipe > 0 {
            let pipe = self.pipe.expect("bytes sit in a borrowed pipe");
            self.writing = true;
            return out.push(Action::Submit(Op::Out {
                pipe,
                len: self.in_pipe as u32,
            }));
        }
        if self.again && !self.eof && !env.others_wait() {
            // Keep the (empty) pipe for the next round.
            return self.begin(env, out);
        }
        // The pipe is empty: give it back so idle directions hold none.
        self.give_back(env);
        if self.eof {
            out.push(Action::Then(Next::Finished));
        } else if self.again {
            self.begin(env, out);
        } else {
            self.arm_readable(out);
        }
    }

    /// Moves what sits in the pipe (nothing in flight on it) into the spill and gives the
    /// pipe back; keeps it when the spill budget is used up.
    fn spill_pipe(&mut self, env: &mut impl UringEnv<P>) {
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

    /// The relay is torn down and its connection has nothing in flight.
    pub fn release(&mut self) -> Leftover<P> {
        let pipe = self.pipe.take().map(|p| (p, self.in_pipe > 0));
        self.in_pipe = 0;
        Leftover {
            pipe,
            spill: self.spill.discard(),
        }
    }
}
