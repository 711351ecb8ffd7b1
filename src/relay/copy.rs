//! The copy engine's direction: a recv into a buffer the kernel picks from the provided
//! buffer ring, then a send of it to the destination; at most two buffers per direction
//! (one being sent, one being filled), so a slow receiver stalls its sender and an idle
//! direction holds none.
//!
//! It reads no more than its destination takes now (`send_space`, less what it holds)
//! and sends without waiting: what a stalled destination refuses is copied into the
//! direction's spill, its buffers go back, and it waits on POLLOUT holding none. Only
//! once `relay.stall_bytes_per_worker` is used up does a short send wait in the kernel
//! for the rest (`MSG_WAITALL`), keeping its buffer. A zero-copy send (`relay.send_zc`)
//! is over only at its notification; a short one then spills or waits like the others.
//! Its buffer stays pinned while its bytes wait in the destination's send queue (for a
//! stalled receiver, until it reads), so the driver bounds how many are zero-copy
//! (`BufEnv::zero_copy`) and the rest are plain sends.
//!
//! The operations are ring requests, so this machine keeps what is in flight: at most one
//! recv, one send and one POLLOUT. A buffer is given back only by the handler that saw
//! the last completion of the send using it (or at teardown, when the connection has
//! nothing in flight).

use super::spill::Spill;
use super::{Count, Env, Flow, Hold, Next};
use crate::shaping::Grant;
use std::time::Instant;

/// An operation to submit; its completion comes back to the matching `on_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Recv of up to `len` bytes (0: a whole buffer) into a buffer the kernel selects.
    Recv { len: u32 },
    /// Send of `len` bytes of buffer `bid` from `off` to the destination; `wait_all`:
    /// the kernel waits for room for all of them, otherwise it does not wait. `zc`: a
    /// zero-copy send, over only at its notification (`on_send_result`, then
    /// `on_send_notif`), otherwise over at its one completion (`on_send`).
    Send {
        bid: u16,
        off: u32,
        len: u32,
        wait_all: bool,
        zc: bool,
    },
    /// POLLOUT on the destination.
    Writable,
}

/// What the driver does, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Submit(Op),
    /// Buffer `bid` goes back to the ring.
    GiveBack(u16),
    /// Stop here: the direction waits for this (never `InFlight`; nothing follows it).
    Then(Next),
}

/// The buffers and their bytes, answered at once.
pub(crate) trait BufEnv: Env {
    /// Bytes `off..off + len` of lent buffer `bid`.
    fn buffer(&self, bid: u16, off: usize, len: usize) -> &[u8];
    /// May the next send be zero-copy? (`relay.send_zc`, and few enough buffers pinned by
    /// zero-copy sends: one to a stalled receiver keeps its buffer until the receiver
    /// reads, since its bytes wait in the send queue, so their number is bounded.)
    fn zero_copy(&mut self) -> bool;
}

#[derive(Debug)]
pub(crate) struct CopyDir {
    /// Received buffers not yet fully sent: (buffer id, length, sent), oldest first.
    queue: [(u16, u32, u32); 2],
    queued: u8,
    /// A recv is in flight.
    reading: bool,
    /// A send of `queue[0]` is in flight (zero-copy: until its notification).
    writing: bool,
    /// The send in flight is zero-copy: its buffer stays pinned until the notification,
    /// which a stalled receiver may hold back indefinitely, so no second buffer is read
    /// meanwhile (a direction pins one buffer at most).
    zc_sending: bool,
    /// A POLLOUT on the destination is in flight.
    out_wait: bool,
    eof: bool,
    buffer_size: usize,
    spill: Spill,
    hold: Hold,
    pub flow: Flow,
}

/// The allowed operations in flight per direction: a recv, a send, a POLLOUT.
#[cfg(test)]
pub(crate) const MAX_IN_FLIGHT: usize = 3;

impl CopyDir {
    pub fn new(now: Instant, buffer_size: usize) -> CopyDir {
        CopyDir {
            queue: [(0, 0, 0); 2],
            queued: 0,
            reading: false,
            writing: false,
            zc_sending: false,
            out_wait: false,
            eof: false,
            buffer_size,
            spill: Spill::default(),
            hold: Hold::None,
            flow: Flow::new(now),
        }
    }

    pub fn hold(&self) -> Hold {
        self.hold
    }

    /// Operations in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.reading as usize + self.writing as usize + self.out_wait as usize
    }

    /// Buffers it holds.
    #[cfg(test)]
    pub fn buffers(&self) -> usize {
        self.queued as usize
    }

    #[cfg(test)]
    pub fn spilled(&self) -> usize {
        self.spill.pending()
    }

    /// The relay starts, or a direction in one of the worker's queues is woken.
    pub fn resume(&mut self, env: &mut impl BufEnv, out: &mut Vec<Action>) {
        self.hold = Hold::None;
        self.arm_recv(env, out);
    }

    fn held(&self) -> usize {
        self.queue[..self.queued as usize]
            .iter()
            .map(|&(_, len, sent)| (len - sent) as usize)
            .sum()
    }

    fn arm_recv(&mut self, env: &mut impl BufEnv, out: &mut Vec<Action>) {
        if self.reading
            || self.eof
            || self.queued >= 2
            || (self.writing && self.zc_sending)
            || self.hold != Hold::None
            || self.out_wait
            || self.spill.pending() > 0
        {
            return;
        }
        // No more than the destination can take now, less what is already on its way.
        let space = env.send_space().saturating_sub(self.held());
        if space == 0 {
            if self.queued == 0 && !self.writing {
                // The destination is full: wait for it holding nothing.
                env.count(Count::Stall);
                self.arm_writable(out);
            }
            // Otherwise the send in flight calls back here when it is done.
            return;
        }
        let want = space.min(self.buffer_size);
        let pending = self.queued > 0 || self.writing;
        let len = match env.grant(want) {
            Grant::Go(n) => n.min(want),
            Grant::Wait(at) => {
                self.hold = Hold::Tokens;
                out.push(Action::Then(Next::Park(at)));
                return;
            }
            // Cut once what was read within the quota is out (the send completion calls
            // back here).
            Grant::QuotaUsed if pending => return,
            Grant::QuotaUsed => {
                out.push(Action::Then(Next::QuotaCut));
                return;
            }
        };
        self.reading = true;
        // 0 = a whole buffer.
        let len = if len >= self.buffer_size {
            0
        } else {
            len as u32
        };
        out.push(Action::Submit(Op::Recv { len }));
    }

    /// The recv completed: `res` bytes (or -errno) into buffer `bid` if one was taken.
    pub fn on_recv(
        &mut self,
        now: Instant,
        res: i32,
        bid: Option<u16>,
        env: &mut impl BufEnv,
        out: &mut Vec<Action>,
    ) {
        assert!(self.reading);
        self.reading = false;
        match (res, bid) {
            (n, Some(bid)) if n > 0 => {
                env.paid(n as usize);
                self.flow.last_active = now;
                self.queue[self.queued as usize] = (bid, n as u32, 0);
                self.queued += 1;
                if self.out_wait || self.spill.pending() > 0 {
                    // The destination is stalled: these bytes wait behind the spill, in
                    // the direction's own buffer too (unless that budget is used up), and
                    // `on_writable` goes on.
                    self.spill_buffers(env, out);
                    return;
                }
                self.arm_send(false, env, out);
                self.arm_recv(env, out);
            }
            (n, bid) if n >= 0 => {
                if let Some(bid) = bid {
                    out.push(Action::GiveBack(bid));
                }
                if n > 0 {
                    // Bytes without a buffer: the kernel broke its promise.
                    out.push(Action::Then(Next::Fail(libc::EIO)));
                    return;
                }
                self.eof = true;
                self.finish_if_done(out);
            }
            (e, None) if -e == libc::ENOBUFS => {
                // Every buffer is lent: wait for one to come back.
                self.hold = Hold::Pool;
                out.push(Action::Then(Next::Pool));
            }
            (e, bid) => {
                if let Some(bid) = bid {
                    out.push(Action::GiveBack(bid));
                }
                out.push(Action::Then(Next::Fail(-e)));
            }
        }
    }

    fn finish_if_done(&mut self, out: &mut Vec<Action>) {
        if self.eof
            && self.queued == 0
            && !self.writing
            && !self.out_wait
            && self.spill.pending() == 0
        {
            out.push(Action::Then(Next::Finished));
        }
    }

    fn arm_send(&mut self, wait_all: bool, env: &mut impl BufEnv, out: &mut Vec<Action>) {
        if self.queued == 0 || self.writing || self.out_wait || self.spill.pending() > 0 {
            // Nothing to send, or a send or the spill goes first.
            return;
        }
        let (bid, len, sent) = self.queue[0];
        self.writing = true;
        // Only a lone buffer with no recv in flight goes zero-copy, so a pinned direction
        // holds that one alone.
        self.zc_sending = self.queued == 1 && !self.reading && env.zero_copy();
        out.push(Action::Submit(Op::Send {
            bid,
            off: sent,
            len: len - sent,
            wait_all,
            zc: self.zc_sending,
        }));
    }

    /// The send completed for the last time (a plain send, or a zero-copy send that
    /// failed before using its buffer): `res` bytes or -errno.
    pub fn on_send(
        &mut self,
        now: Instant,
        res: i32,
        env: &mut impl BufEnv,
        out: &mut Vec<Action>,
    ) {
        assert!(self.writing);
        self.writing = false;
        if !self.sent(now, res, out) {
            return;
        }
        self.send_over(now, env, out);
    }

    /// A zero-copy send's result; its notification follows (`on_send_notif`), and until
    /// then the kernel may still read the buffer.
    pub fn on_send_result(&mut self, now: Instant, res: i32, out: &mut Vec<Action>) {
        assert!(self.writing);
        self.sent(now, res, out);
    }

    /// A zero-copy send's notification: the buffer is the direction's again.
    pub fn on_send_notif(&mut self, now: Instant, env: &mut impl BufEnv, out: &mut Vec<Action>) {
        assert!(self.writing);
        self.writing = false;
        self.send_over(now, env, out);
    }

    /// Counts what a send took; false (after a `Fail`) on an error.
    fn sent(&mut self, now: Instant, res: i32, out: &mut Vec<Action>) -> bool {
        let n = match res {
            n if n >= 0 => n as u32,
            e if -e == libc::EAGAIN => 0,
            e => {
                out.push(Action::Then(Next::Fail(-e)));
                return false;
            }
        };
        if n > 0 {
            self.flow.last_active = now;
        }
        self.queue[0].2 = (self.queue[0].2 + n).min(self.queue[0].1);
        true
    }

    /// The kernel is done with the head buffer's send.
    fn send_over(&mut self, now: Instant, env: &mut impl BufEnv, out: &mut Vec<Action>) {
        let (bid, len, sent) = self.queue[0];
        if sent < len {
            // The destination took only part: wait for it holding no buffer, or (the
            // spill budget used up) let the kernel wait with this one.
            if self.spill_buffers(env, out) {
                self.arm_writable(out);
            } else {
                self.arm_send(true, env, out);
            }
            return;
        }
        self.queue[0] = self.queue[1];
        self.queued -= 1;
        self.flow.bytes += len as u64;
        self.flow.last_active = now;
        env.count(Count::Delivered(len as usize));
        out.push(Action::GiveBack(bid));
        self.arm_send(false, env, out);
        self.finish_if_done(out);
        self.arm_recv(env, out);
    }

    /// Copies what the buffers still hold into the spill (behind what it holds already)
    /// and gives them back. False when the spill budget is used up. Never called with a
    /// send in flight (its buffer is the kernel's until the send's last completion).
    fn spill_buffers(&mut self, env: &mut impl BufEnv, out: &mut Vec<Action>) -> bool {
        assert!(!self.writing);
        let total = self.held();
        if !env.reserve_spill(total) {
            env.count(Count::FallbackFull);
            return false;
        }
        let mut delivered = 0usize;
        for i in 0..self.queued as usize {
            let (bid, len, sent) = self.queue[i];
            let bytes = env.buffer(bid, sent as usize, (len - sent) as usize);
            self.spill.make_room(bytes.len()).extend_from_slice(bytes);
            delivered += sent as usize;
            out.push(Action::GiveBack(bid));
        }
        self.queued = 0;
        self.flow.bytes += delivered as u64;
        if delivered > 0 {
            env.count(Count::Delivered(delivered));
        }
        env.count(Count::Fallback);
        true
    }

    fn arm_writable(&mut self, out: &mut Vec<Action>) {
        if self.out_wait {
            return;
        }
        self.out_wait = true;
        out.push(Action::Submit(Op::Writable));
    }

    /// The destination takes bytes again: the spill first, then the buffers and reads.
    pub fn on_writable(
        &mut self,
        now: Instant,
        res: i32,
        env: &mut impl BufEnv,
        out: &mut Vec<Action>,
    ) {
        assert!(self.out_wait);
        self.out_wait = false;
        if res < 0 {
            out.push(Action::Then(Next::Fail(-res)));
            return;
        }
        match self.spill.flush(&mut self.flow, now, env) {
            Ok(true) => {}
            Ok(false) => return self.arm_writable(out),
            Err(e) => return out.push(Action::Then(Next::Fail(e))),
        }
        if self.eof && self.queued == 0 && !self.writing {
            out.push(Action::Then(Next::Finished));
            return;
        }
        self.arm_send(false, env, out);
        self.arm_recv(env, out);
    }

    /// The relay is torn down and its connection has nothing in flight: the buffers it
    /// holds, and the spill bytes to give back to the budget.
    pub fn release(&mut self) -> (Vec<u16>, usize) {
        let bids = self.queue[..self.queued as usize]
            .iter()
            .map(|&(bid, _, _)| bid)
            .collect();
        self.queued = 0;
        (bids, self.spill.discard())
    }
}
