//! The splice engine, HAProxy-style: wait for readiness with a ring poll, then call
//! non-blocking splice(2) inline (socket -> pipe -> peer socket). IORING_OP_SPLICE would
//! park an io-wq kernel thread on every waiting splice; this keeps the worker the only
//! thread. A pipe is borrowed from the per-core pool only while bytes sit in it.

use super::super::ring::Op;
use super::super::slab::ConnId;
use super::super::Worker;
use super::{side_of, READABLE};
use crate::shaping::Grant;
use std::sync::atomic::Ordering::Relaxed;

/// Rounds of fill/drain per readiness event before yielding to other connections.
const ROUNDS: usize = 8;

impl Worker {
    pub(in crate::worker) fn splice_arm_in(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        self.arm_poll(id, c.fd, READABLE, Op::PollIn);
    }

    fn splice_arm_out(&mut self, id: ConnId, peer_fd: i32) {
        if let Some(s) = self.side(id) {
            s.out_wait = true;
        }
        self.arm_poll(id, peer_fd, libc::POLLOUT, Op::PollOut);
    }

    /// Either poll fired (readable, or the peer writable): move what can move now.
    pub(in crate::worker) fn splice_on_ready(&mut self, id: ConnId, res: i32) {
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        self.splice_pump(id);
    }

    /// Moves what it can without blocking, then arms the poll it is waiting on.
    ///
    /// A direction reads no more than its destination can take now (`send_space`), so it
    /// borrows a pipe only within this call: what the destination still refuses is moved
    /// into the direction's own small buffer (`spill_pipe`) and the pipe goes back. A
    /// stalled direction then waits on POLLOUT holding no pipe, and its bytes wait in the
    /// kernel's socket buffers, not in the pool.
    pub(in crate::worker) fn splice_pump(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        let fd = c.fd;
        for _ in 0..ROUNDS {
            let now = self.now;
            let pipe_size = self.pipes.pipe_size();
            let Some(s) = side_of(&mut self.conns, id) else {
                return;
            };
            let peer_fd = s.peer_fd;
            s.out_wait = false;
            if s.spill_sent < s.spill.len() {
                // Leftover of a stall first, in order.
                match self.flush_spill(id) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.splice_arm_out(id, peer_fd);
                        return;
                    }
                    Err(e) => {
                        self.fail(id, e);
                        return;
                    }
                }
            }
            let s = side_of(&mut self.conns, id).expect("checked above");
            let mut would_block_in = false;
            // A shaped stream reads no more than its tokens allow; when it may read
            // nothing now, the pipe is still drained before it waits or is cut.
            let mut wait_until = None;
            let mut quota_used = false;
            if !s.eof && s.in_pipe < pipe_size {
                let mut room = pipe_size - s.in_pipe;
                if s.in_pipe == 0 {
                    let space = super::send_space(peer_fd);
                    if space == 0 {
                        // The destination is full: wait for it holding nothing.
                        if let Some(p) = s.pipe.take() {
                            self.pipes.give_back(p);
                            self.wake_starving();
                        }
                        self.stats().relay_stalls.fetch_add(1, Relaxed);
                        self.splice_arm_out(id, peer_fd);
                        return;
                    }
                    room = room.min(space);
                }
                if s.shaper.is_some() {
                    match self.shaped(id, room) {
                        Grant::Go(n) => room = n,
                        Grant::Wait(at) => (wait_until, room) = (Some(at), 0),
                        Grant::QuotaUsed => (quota_used, room) = (true, 0),
                    }
                }
                if room > 0 {
                    let Some(pipe) = self.pipe_of(id) else {
                        return;
                    };
                    let s = side_of(&mut self.conns, id).expect("checked above");
                    match splice(fd, pipe.wr, room) {
                        Ok(0) => s.eof = true,
                        Ok(n) => {
                            s.in_pipe += n;
                            s.last_active = now;
                            // Less than asked: the socket is (almost surely) empty now, so
                            // wait for the poll instead of a round that only gets EAGAIN.
                            if n < room {
                                would_block_in = true;
                            }
                            if let Some(sh) = &s.shaper {
                                sh.paid(n);
                            }
                        }
                        Err(libc::EAGAIN) => would_block_in = true,
                        Err(e) => {
                            self.fail(id, e);
                            return;
                        }
                    }
                }
            }
            let s = side_of(&mut self.conns, id).expect("checked above");
            if s.in_pipe > 0 {
                let pipe = s.pipe.expect("bytes sit in a borrowed pipe");
                match splice(pipe.rd, peer_fd, s.in_pipe) {
                    Ok(n) => {
                        s.in_pipe -= n;
                        s.bytes += n as u64;
                        s.last_active = now;
                        let st = &self.shared.stats[self.id];
                        if s.first {
                            st.bytes_first_to_second.fetch_add(n as u64, Relaxed);
                        } else {
                            st.bytes_second_to_first.fetch_add(n as u64, Relaxed);
                        }
                    }
                    Err(libc::EAGAIN) => {}
                    Err(e) => {
                        self.fail(id, e);
                        return;
                    }
                }
                if s.in_pipe > 0 {
                    // The peer took only part: wait until it can take more, holding the
                    // rest in the direction's own buffer (or, that budget used up, in the
                    // pipe).
                    self.spill_pipe(id);
                    self.splice_arm_out(id, peer_fd);
                    return;
                }
            }
            let s = side_of(&mut self.conns, id).expect("checked above");
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
                return;
            }
            if quota_used {
                self.quota_cut(id);
                return;
            }
            if let Some(at) = wait_until {
                // Resumed by `resume_throttled` when the tokens are due.
                self.park(id, at);
                return;
            }
            if would_block_in {
                self.splice_arm_in(id);
                return;
            }
        }
        // Still busy after a fair share: come back through the ring.
        let Some(s) = self.side(id) else {
            return;
        };
        if s.in_pipe > 0 || s.spill_sent < s.spill.len() {
            let peer_fd = s.peer_fd;
            self.splice_arm_out(id, peer_fd);
        } else {
            self.splice_arm_in(id);
        }
    }
}

/// Non-blocking splice of up to `len` bytes; `Err(errno)` on failure.
fn splice(from: i32, to: i32, len: usize) -> Result<usize, i32> {
    // SAFETY: splice between descriptors this worker owns, with null offsets (sockets and
    // pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(n as usize)
    }
}
