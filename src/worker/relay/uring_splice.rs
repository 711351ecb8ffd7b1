//! The uring-splice engine: the same per-core pipes as `splice.rs`, but the splices are
//! IORING_OP_SPLICE requests, which the kernel always runs on io-wq worker threads.
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

use super::super::ring::{token, Op};
use super::super::slab::ConnId;
use super::super::Worker;
use super::{side_of, READABLE};
use crate::shaping::Grant;
use io_uring::{opcode, squeue, types};
use std::sync::atomic::Ordering::Relaxed;

/// Link `socket -> pipe` to `pipe -> peer` (one io-wq punt for both) instead of submitting
/// the second from the first's completion. Both measured the same (relay_vs_direct, 2 GiB,
/// 4 runs each: 1 pair 13.8-16.9 Gbit/s linked, 14.5-16.8 chained; 64 pairs 15.4-18.3 and
/// 15.0-18.7); linked costs one io-wq punt and one submission per chunk instead of two.
const LINK: bool = true;

impl Worker {
    /// Waits for the connection to be readable (or hung up / in error).
    pub(in crate::worker) fn us_arm_readable(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        let fd = c.fd;
        let Some(s) = self.side(id) else {
            return;
        };
        if s.reading {
            return;
        }
        s.reading = true;
        self.arm_poll(id, fd, READABLE, Op::UsPollIn);
    }

    pub(in crate::worker) fn us_on_readable(&mut self, id: ConnId, res: i32) {
        let Some(s) = self.side(id) else {
            return;
        };
        s.reading = false;
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        self.us_start(id);
    }

    /// Borrows a pipe and splices from the socket into it (and, linked, on to the peer).
    /// Called with nothing in flight for this direction and an empty pipe.
    pub(in crate::worker) fn us_start(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        let fd = c.fd;
        let mut len = self.pipes.pipe_size();
        let Some(s) = self.side(id) else {
            return;
        };
        debug_assert!(!s.reading && !s.writing && s.in_pipe == 0);
        // A shaped stream reads no more than its tokens allow (the pipe is empty, so every
        // byte read within the quota has been delivered when it is cut).
        if s.shaper.is_some() {
            match self.shaped(id, len) {
                Grant::Go(n) => len = n,
                Grant::Wait(at) => {
                    let s = side_of(&mut self.conns, id).expect("checked above");
                    if let Some(p) = s.pipe.take() {
                        self.pipes.give_back(p);
                        self.wake_starving();
                    }
                    // Resumed by `resume_throttled`, which calls this again.
                    return self.park(id, at);
                }
                Grant::QuotaUsed => return self.quota_cut(id),
            }
        }
        // No more than the destination can take now: a stalled destination is waited for
        // holding no pipe, and what it refuses after a read stays small.
        let space = super::send_space(peer_fd_of(self, id));
        if space == 0 {
            let s = side_of(&mut self.conns, id).expect("checked above");
            if let Some(p) = s.pipe.take() {
                self.pipes.give_back(p);
                self.wake_starving();
            }
            self.stats().relay_stalls.fetch_add(1, Relaxed);
            // `us_on_writable` finds no pipe and comes back here.
            return self.us_arm_writable(id);
        }
        len = len.min(space);
        let Some(pipe) = self.pipe_of(id) else {
            return;
        };
        // Read after the borrow: creating the first pipe may settle the size.
        let pipe_size = self.pipes.pipe_size();
        let s = side_of(&mut self.conns, id).expect("checked above");
        s.reading = true;
        // Until the splice completes the pipe may hold up to all of it (see the file doc).
        s.in_pipe = pipe_size;
        let peer_fd = s.peer_fd;
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        let len = len.min(pipe_size) as u32;
        let splice_in = opcode::Splice::new(types::Fd(fd), -1, types::Fd(pipe.wr), -1, len)
            .flags(flags)
            .build()
            .user_data(token(Op::UsIn, id.idx, id.gen));
        if !LINK {
            self.push_conn_op(id, splice_in);
            return;
        }
        s.writing = true;
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
        let pipe_size = self.pipes.pipe_size();
        let Some(s) = self.side(id) else {
            return;
        };
        s.reading = false;
        // Back from the upper bound to what is really in the pipe (added first: a split
        // link may have let the second splice take some already).
        s.in_pipe = s.in_pipe + res.max(0) as usize - pipe_size;
        match res {
            n if n > 0 => {
                s.last_active = now;
                // A full pipe: more is likely waiting, so the next round skips the poll.
                s.again = n as usize == pipe_size;
                if let Some(sh) = &s.shaper {
                    sh.paid(n as usize);
                }
            }
            0 => s.eof = true,
            e if -e == libc::EAGAIN => s.again = false,
            e => {
                self.fail(id, -e);
                return;
            }
        }
        if !s.writing {
            self.us_next(id);
        }
    }

    pub(in crate::worker) fn us_on_out(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        let Some(s) = self.side(id) else {
            return;
        };
        s.writing = false;
        match res {
            n if n > 0 => {
                let n = n as usize;
                s.in_pipe -= n;
                s.bytes += n as u64;
                s.last_active = now;
                let first = s.first;
                let st = self.stats();
                if first {
                    st.bytes_first_to_second.fetch_add(n as u64, Relaxed);
                } else {
                    st.bytes_second_to_first.fetch_add(n as u64, Relaxed);
                }
            }
            e if e == 0 || -e == libc::EAGAIN => {}
            e => {
                self.fail(id, -e);
                return;
            }
        }
        let Some(s) = self.side(id) else {
            return;
        };
        if s.reading {
            // Linked, and the first splice's completion is still to come.
            return;
        }
        if s.in_pipe > 0 {
            // The peer took only part (its send buffer is full): wait until it takes more,
            // holding the rest in the direction's own buffer (nothing is in flight on the
            // pipe now), or, that budget used up, in the pipe.
            self.spill_pipe(id);
            self.us_arm_writable(id);
            return;
        }
        self.us_next(id);
    }

    fn us_arm_writable(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        s.writing = true;
        let peer_fd = s.peer_fd;
        self.arm_poll(id, peer_fd, libc::POLLOUT, Op::UsPollOut);
    }

    pub(in crate::worker) fn us_on_writable(&mut self, id: ConnId, res: i32) {
        let Some(s) = self.side(id) else {
            return;
        };
        s.writing = false;
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        if s.spill_sent < s.spill.len() {
            match self.flush_spill(id) {
                Ok(true) => {}
                Ok(false) => return self.us_arm_writable(id),
                Err(e) => return self.fail(id, e),
            }
        }
        let Some(s) = self.side(id) else {
            return;
        };
        if s.pipe.is_none() || s.in_pipe == 0 {
            // Waited for a full destination before reading, or its spill is out.
            self.us_next(id);
            return;
        }
        self.us_splice_out(id);
    }

    fn us_splice_out(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        let Some(pipe) = s.pipe else {
            return;
        };
        s.writing = true;
        let e = opcode::Splice::new(
            types::Fd(pipe.rd),
            -1,
            types::Fd(s.peer_fd),
            -1,
            s.in_pipe as u32,
        )
        .flags(libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
        .build()
        .user_data(token(Op::UsOut, id.idx, id.gen));
        self.push_conn_op(id, e);
    }

    /// Nothing in flight for this direction: move on.
    fn us_next(&mut self, id: ConnId) {
        let nobody_waits = self.starving.is_empty();
        let Some(s) = self.side(id) else {
            return;
        };
        if s.in_pipe > 0 {
            self.us_splice_out(id);
            return;
        }
        if s.again && !s.eof && nobody_waits {
            // Keep the (empty) pipe for the next round.
            self.us_start(id);
            return;
        }
        // The pipe is empty: give it back so idle directions hold none.
        if let Some(p) = s.pipe.take() {
            self.pipes.give_back(p);
            self.wake_starving();
        }
        let Some(s) = self.side(id) else {
            return;
        };
        if s.eof {
            self.direction_done(id);
        } else if s.again {
            self.us_start(id);
        } else {
            self.us_arm_readable(id);
        }
    }
}

fn peer_fd_of(w: &mut Worker, id: ConnId) -> i32 {
    side_of(&mut w.conns, id).map_or(-1, |s| s.peer_fd)
}
