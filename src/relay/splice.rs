//! The splice engine's direction: on readiness it moves what it can with non-blocking
//! splices, socket -> pipe -> destination, up to `ROUNDS` rounds, and says what it waits
//! for next. A pipe is borrowed from the pool only while bytes sit in it: a direction
//! reads no more than its destination takes now (`send_space`), and what the destination
//! still refuses is moved into the direction's spill so the pipe goes back at once. Only
//! when the spill budget is used up does a stalled direction keep its pipe.
//!
//! The splices run inline (the driver answers them at once), so nothing of this engine is
//! in flight on a pipe between two events: the pipe is handed back, or kept, only here.

use super::spill::Spill;
use super::{Count, Env, Flow, Hold, Next};
use crate::shaping::Grant;
use std::time::Instant;

/// Rounds of fill/drain per readiness event before yielding to other connections.
pub(crate) const ROUNDS: usize = 8;

/// The pool and the two non-blocking splices, answered at once. `P` names a pipe.
pub(crate) trait PipeEnv<P>: Env {
    /// Bytes a pipe holds at most.
    fn pipe_size(&self) -> usize;
    /// A free pipe, or `None` when every pipe is lent.
    fn borrow(&mut self) -> Option<P>;
    /// Gives back an empty pipe.
    fn give_back(&mut self, pipe: P);
    /// Splices up to `len` bytes from the source socket into `pipe`: bytes moved (0 at
    /// EOF) or errno (`EAGAIN`: nothing to read now).
    fn splice_in(&mut self, pipe: P, len: usize) -> Result<usize, i32>;
    /// Splices up to `len` bytes from `pipe` to the destination socket.
    fn splice_out(&mut self, pipe: P, len: usize) -> Result<usize, i32>;
    /// Reads exactly what `pipe` holds (`len` bytes) onto the end of `into`.
    fn drain_pipe(&mut self, pipe: P, len: usize, into: &mut Vec<u8>) -> Result<usize, i32>;
}

#[derive(Debug)]
pub(crate) struct SpliceDir<P> {
    /// The borrowed pipe, and how many bytes sit in it.
    pipe: Option<P>,
    in_pipe: usize,
    /// The source has reached EOF.
    eof: bool,
    spill: Spill,
    hold: Hold,
    pub flow: Flow,
}

/// What a direction gives back when its relay is torn down.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Leftover<P> {
    /// Its pipe, with whether bytes still sit in it (then it must be emptied first).
    pub pipe: Option<(P, bool)>,
    /// Spill bytes to give back to the budget.
    pub spill: usize,
}

impl<P: Copy> SpliceDir<P> {
    pub fn new(now: Instant) -> SpliceDir<P> {
        SpliceDir {
            pipe: None,
            in_pipe: 0,
            eof: false,
            spill: Spill::default(),
            hold: Hold::None,
            flow: Flow::new(now),
        }
    }

    pub fn hold(&self) -> Hold {
        self.hold
    }

    /// Holds a pipe (for the invariants).
    #[cfg(test)]
    pub fn holds_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// Spill bytes still to send.
    #[cfg(test)]
    pub fn spilled(&self) -> usize {
        self.spill.pending()
    }

    /// A direction in one of the worker's queues is woken: go on where it stopped.
    pub fn resume(&mut self, now: Instant, env: &mut impl PipeEnv<P>) -> Next {
        self.hold = Hold::None;
        self.pump(now, env)
    }

    /// Its source is readable, or its destination writable (or a relay starts): moves
    /// what it can without blocking.
    pub fn pump(&mut self, now: Instant, env: &mut impl PipeEnv<P>) -> Next {
        debug_assert_eq!(self.hold, Hold::None);
        for _ in 0..ROUNDS {
            if self.spill.pending() > 0 {
                // Leftover of a stall first, in order.
                match self.spill.flush(&mut self.flow, now, env) {
                    Ok(true) => {}
                    Ok(false) => return Next::Writable,
                    Err(e) => return Next::Fail(e),
                }
            }
            let pipe_size = env.pipe_size();
            let mut would_block_in = false;
            // A shaped stream reads no more than its tokens allow; when it may read
            // nothing now, the pipe is still drained before it waits or is cut.
            let mut wait_until = None;
            let mut quota_used = false;
            if !self.eof && self.in_pipe < pipe_size {
                let mut room = pipe_size - self.in_pipe;
                if self.in_pipe == 0 {
                    let space = env.send_space();
                    if space == 0 {
                        // The destination is full: wait for it holding nothing.
                        self.give_back(env);
                        env.count(Count::Stall);
                        return Next::Writable;
                    }
                    room = room.min(space);
                }
                match env.grant(room) {
                    Grant::Go(n) => room = room.min(n),
                    Grant::Wait(at) => (wait_until, room) = (Some(at), 0),
                    Grant::QuotaUsed => (quota_used, room) = (true, 0),
                }
                if room > 0 {
                    let pipe = match self.pipe {
                        Some(p) => p,
                        None => match env.borrow() {
                            Some(p) => *self.pipe.insert(p),
                            None => {
                                self.hold = Hold::Pool;
                                return Next::Pool;
                            }
                        },
                    };
                    match env.splice_in(pipe, room) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            self.in_pipe += n;
                            self.flow.last_active = now;
                            env.paid(n);
                            // Less than asked: the socket is (almost surely) empty now,
                            // so wait for the poll instead of a round of EAGAIN.
                            would_block_in = n < room;
                        }
                        Err(libc::EAGAIN) => would_block_in = true,
                        Err(e) => return Next::Fail(e),
                    }
                }
            }
            if self.in_pipe > 0 {
                let pipe = self.pipe.expect("bytes sit in a borrowed pipe");
                match env.splice_out(pipe, self.in_pipe) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.flow.bytes += n as u64;
                        self.flow.last_active = now;
                        env.count(Count::Delivered(n));
                    }
                    Err(libc::EAGAIN) => {}
                    Err(e) => return Next::Fail(e),
                }
                if self.in_pipe > 0 {
                    // The destination took only part: wait until it takes more, holding
                    // the rest in the direction's own buffer (or, that budget used up,
                    // in the pipe).
                    self.spill_pipe(env);
                    return Next::Writable;
                }
            }
            // The pipe is empty: give it back so idle directions hold none.
            self.give_back(env);
            if self.eof {
                return Next::Finished;
            }
            if quota_used {
                return Next::QuotaCut;
            }
            if let Some(at) = wait_until {
                self.hold = Hold::Tokens;
                return Next::Park(at);
            }
            if would_block_in {
                return Next::Readable;
            }
        }
        // Still busy after a fair share: come back through the ring.
        if self.in_pipe > 0 || self.spill.pending() > 0 {
            Next::Writable
        } else {
            Next::Readable
        }
    }

    fn give_back(&mut self, env: &mut impl PipeEnv<P>) {
        debug_assert_eq!(self.in_pipe, 0);
        if let Some(p) = self.pipe.take() {
            env.give_back(p);
        }
    }

    /// Moves what sits in the pipe into the spill and gives the pipe back; keeps the pipe
    /// when the spill budget is used up.
    fn spill_pipe(&mut self, env: &mut impl PipeEnv<P>) {
        let (Some(pipe), n) = (self.pipe, self.in_pipe) else {
            return;
        };
        if !env.reserve_spill(n) {
            env.count(Count::FallbackFull);
            return;
        }
        let got = env.drain_pipe(pipe, n, self.spill.make_room(n));
        let got = got.unwrap_or(0);
        if got != n {
            // Cannot happen (the pipe holds exactly `n`): keep the pipe and what is left.
            env.release_spill(n - got);
            self.in_pipe -= got;
            return;
        }
        self.in_pipe = 0;
        self.give_back(env);
        env.count(Count::Fallback);
    }

    /// The relay is torn down: what this direction still holds goes back.
    pub fn release(&mut self) -> Leftover<P> {
        let pipe = self.pipe.take().map(|p| (p, self.in_pipe > 0));
        self.in_pipe = 0;
        Leftover {
            pipe,
            spill: self.spill.discard(),
        }
    }
}
