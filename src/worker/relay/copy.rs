//! The copy engine: recv into a buffer the kernel picks from the per-core provided-buffer
//! ring, then send it to the peer. At most two buffers per direction (one being sent, one
//! being filled), so a slow receiver stalls its sender instead of growing memory, and an
//! idle direction holds no buffer at all.
//!
//! A direction reads no more than its destination can take now (`send_space`, less what
//! it already holds), and sends without waiting (`MSG_DONTWAIT`): what a stalled
//! destination refuses is copied into the direction's own small buffer (`spill`), the
//! buffers go back to the ring at once, and the direction waits on POLLOUT holding none.
//! With `relay.send_zc`, or once `relay.stall_bytes_per_worker` is used up, a short send
//! waits in the kernel for the rest (`MSG_WAITALL`) and keeps its buffer.

use super::super::conn::Phase;
use super::super::ring::{token, Op};
use super::super::slab::ConnId;
use super::super::Worker;
use crate::shaping::Grant;
use crate::worker::bufring::BGID;
use io_uring::{cqueue, opcode, squeue, types};
use std::sync::atomic::Ordering::Relaxed;

impl Worker {
    pub(in crate::worker) fn copy_arm_recv(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let fd = c.fd;
        let Phase::Relay(s) = &mut c.phase else {
            return;
        };
        if s.reading
            || s.eof
            || s.queued >= 2
            || s.starving
            || s.throttled
            || s.out_wait
            || s.spill_sent < s.spill.len()
            || c.closing.is_some()
        {
            return;
        }
        let buffer_size = self.shared.config.relay.buffer_size;
        // No more than the destination can take now, less what is already on its way.
        let held: usize = s.queue[..s.queued as usize]
            .iter()
            .map(|&(_, len, sent)| (len - sent) as usize)
            .sum();
        let space = super::send_space(s.peer_fd).saturating_sub(held);
        if space == 0 {
            if s.queued == 0 && !s.writing {
                // The destination is full: wait for it holding nothing.
                self.stats().relay_stalls.fetch_add(1, Relaxed);
                self.copy_arm_writable(id);
            }
            // Otherwise the send in flight calls back here when it is done.
            return;
        }
        // 0 = a whole buffer; a shaped stream reads no more than its tokens allow.
        let mut len = if space < buffer_size { space as u32 } else { 0 };
        let pending = s.queued > 0 || s.writing;
        if s.shaper.is_some() {
            let want = if len == 0 { buffer_size } else { len as usize };
            match self.shaped(id, want) {
                Grant::Go(n) if n < want => len = n as u32,
                Grant::Go(_) => {}
                Grant::Wait(at) => return self.park(id, at),
                // Cut once what was read within the quota is out (the send completion
                // calls back here).
                Grant::QuotaUsed if pending => return,
                Grant::QuotaUsed => return self.quota_cut(id),
            }
        }
        let Some(Phase::Relay(s)) = self.conns.get_mut(id).map(|c| &mut c.phase) else {
            return;
        };
        s.reading = true;
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len)
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(token(Op::Recv, id.idx, id.gen));
        self.push_conn_op(id, e);
    }

    pub(in crate::worker) fn copy_on_recv(&mut self, id: ConnId, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            if let Some(b) = self.bufs.as_mut() {
                b.taken();
            }
        }
        let now = self.now;
        let Some(s) = self.side(id) else {
            if let (Some(bid), Some(b)) = (bid, self.bufs.as_mut()) {
                b.give_back(bid);
                self.wake_starving();
            }
            return;
        };
        s.reading = false;
        match (res, bid) {
            (n, Some(bid)) if n > 0 => {
                if let Some(sh) = &s.shaper {
                    sh.paid(n as usize);
                }
                s.last_active = now;
                s.queue[s.queued as usize] = (bid, n as u32, 0);
                s.queued += 1;
                if s.out_wait || s.spill_sent < s.spill.len() {
                    // The destination is stalled: these bytes wait behind the spill, in the
                    // direction's own buffer too (unless that budget is used up), and
                    // `copy_on_writable` goes on.
                    self.copy_spill(id);
                    return;
                }
                let start_send = !s.writing;
                if start_send {
                    self.copy_arm_send(id);
                }
                self.copy_arm_recv(id);
            }
            (0, _) => {
                s.eof = true;
                if s.queued == 0 && !s.writing && !s.out_wait && s.spill_sent == s.spill.len() {
                    self.direction_done(id);
                }
            }
            (e, _) if -e == libc::ENOBUFS => {
                // Every buffer is lent: wait for one to come back.
                self.wait_for_pool(id);
            }
            (e, bid) => {
                if let (Some(bid), Some(b)) = (bid, self.bufs.as_mut()) {
                    b.give_back(bid);
                    self.wake_starving();
                }
                self.fail(id, -e);
            }
        }
    }

    fn copy_arm_send(&mut self, id: ConnId) {
        self.copy_arm_send_as(id, false);
    }

    fn copy_arm_send_as(&mut self, id: ConnId, wait_all: bool) {
        let Some(s) = self.side(id) else {
            return;
        };
        if s.queued == 0 || s.writing || s.out_wait || s.spill_sent < s.spill.len() {
            // Nothing to send, or a send or the spill goes first.
            return;
        }
        let (bid, len, sent) = s.queue[0];
        s.writing = true;
        let peer_fd = s.peer_fd;
        let bufs = self.bufs.as_ref().expect("copy engine has a buffer ring");
        let ptr = bufs.addr(bid, sent as usize);
        let zc = self.shared.config.relay.send_zc;
        // Plain sends do not wait (a short one spills, see the file doc). MSG_WAITALL
        // (zero-copy sends, or the stall budget used up): the kernel retries a short send
        // itself, and the buffer stays lent until all of it is out.
        let flags = if zc || wait_all {
            libc::MSG_NOSIGNAL | libc::MSG_WAITALL
        } else {
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        };
        let e = if zc {
            opcode::SendZc::new(types::Fd(peer_fd), ptr, len - sent)
                .flags(flags)
                .build()
                .user_data(token(Op::SendZc, id.idx, id.gen))
        } else {
            opcode::Send::new(types::Fd(peer_fd), ptr, len - sent)
                .flags(flags)
                .build()
                .user_data(token(Op::Send, id.idx, id.gen))
        };
        self.push_conn_op(id, e);
    }

    /// A zero-copy send completes twice: its result (with MORE when a notification
    /// follows), then the notification that the kernel no longer reads the buffer. Only
    /// then may the buffer go back to the ring, so `writing` stays set until it: one
    /// zero-copy send per direction at a time, and the notification is unambiguous.
    pub(in crate::worker) fn copy_on_send_zc(&mut self, id: ConnId, res: i32, flags: u32) {
        if cqueue::notif(flags) {
            let Some(s) = self.side(id) else {
                return;
            };
            s.writing = false;
            self.copy_send_next(id);
            return;
        }
        if !cqueue::more(flags) {
            // No notification follows (the send failed before using the buffer).
            self.copy_on_send(id, res);
            return;
        }
        let now = self.now;
        let Some(s) = self.side(id) else {
            return;
        };
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        s.last_active = now;
        s.queue[0].2 += res as u32;
    }

    pub(in crate::worker) fn copy_on_send(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        let Some(s) = self.side(id) else {
            return;
        };
        s.writing = false;
        let sent = match res {
            n if n >= 0 => n as u32,
            e if -e == libc::EAGAIN => 0,
            e => {
                self.fail(id, -e);
                return;
            }
        };
        if sent > 0 {
            s.last_active = now;
        }
        s.queue[0].2 += sent;
        let (_, len, done) = s.queue[0];
        if done < len && !self.shared.config.relay.send_zc {
            // The destination took only part: wait for it holding no buffer, or (the
            // stall budget used up) let the kernel wait with this one.
            if self.copy_spill(id) {
                self.copy_arm_writable(id);
            } else {
                self.copy_arm_send_as(id, true);
            }
            return;
        }
        self.copy_send_next(id);
    }

    /// Copies what direction `id`'s buffers still hold into its own buffer (behind what
    /// it holds already) and gives them back. False when `relay.stall_bytes_per_worker`
    /// is used up.
    fn copy_spill(&mut self, id: ConnId) -> bool {
        let limit = self.shared.config.relay.stall_bytes_per_worker;
        let spill_bytes = self.spill_bytes;
        let Some(s) = super::side_of(&mut self.conns, id) else {
            return false;
        };
        let queued = &s.queue[..s.queued as usize];
        let total: usize = queued.iter().map(|&(_, l, sent)| (l - sent) as usize).sum();
        if spill_bytes + total > limit {
            self.stats().relay_fallback_full.fetch_add(1, Relaxed);
            return false;
        }
        let Some(bufs) = self.bufs.as_mut() else {
            return false;
        };
        // Appended behind what is still to send of an earlier spill.
        s.spill.drain(..s.spill_sent);
        s.spill_sent = 0;
        s.spill.reserve_exact(total);
        let mut delivered = 0u64;
        for &(bid, len, sent) in &s.queue[..s.queued as usize] {
            s.spill
                .extend_from_slice(bufs.slice(bid, sent as usize, (len - sent) as usize));
            delivered += sent as u64;
            bufs.give_back(bid);
        }
        let returned = s.queued as usize;
        s.queued = 0;
        s.bytes += delivered;
        let first = s.first;
        self.spill_bytes += total;
        let st = self.stats();
        if first {
            st.bytes_first_to_second.fetch_add(delivered, Relaxed);
        } else {
            st.bytes_second_to_first.fetch_add(delivered, Relaxed);
        }
        st.relay_fallbacks.fetch_add(1, Relaxed);
        for _ in 0..returned {
            self.wake_starving();
        }
        true
    }

    /// Waits for the destination of direction `id` to take more (POLLOUT on the peer).
    fn copy_arm_writable(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        if s.out_wait {
            return;
        }
        s.out_wait = true;
        let peer_fd = s.peer_fd;
        self.arm_poll(id, peer_fd, libc::POLLOUT, Op::CopyPollOut);
    }

    /// The destination takes bytes again: the spill first, then the buffers and reads.
    pub(in crate::worker) fn copy_on_writable(&mut self, id: ConnId, res: i32) {
        let Some(s) = self.side(id) else {
            return;
        };
        s.out_wait = false;
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        match self.flush_spill(id) {
            Ok(true) => {}
            Ok(false) => return self.copy_arm_writable(id),
            Err(e) => return self.fail(id, e),
        }
        let Some(s) = self.side(id) else {
            return;
        };
        if s.eof && s.queued == 0 && !s.writing {
            self.direction_done(id);
            return;
        }
        self.copy_arm_send(id);
        self.copy_arm_recv(id);
    }

    /// The send of the first queued buffer is over: send the rest of it, or give it back
    /// and go on with the next.
    fn copy_send_next(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        let (bid, len, sent) = s.queue[0];
        if sent < len {
            self.copy_arm_send(id);
            return;
        }
        s.queue[0] = s.queue[1];
        s.queued -= 1;
        s.bytes += len as u64;
        let first = s.first;
        let more = s.queued > 0;
        let finished = s.eof && !more && s.spill_sent == s.spill.len();
        let st = self.stats();
        if first {
            st.bytes_first_to_second.fetch_add(len as u64, Relaxed);
        } else {
            st.bytes_second_to_first.fetch_add(len as u64, Relaxed);
        }
        if let Some(b) = self.bufs.as_mut() {
            b.give_back(bid);
        }
        if more {
            self.copy_arm_send(id);
        }
        if finished {
            self.direction_done(id);
        } else {
            self.copy_arm_recv(id);
        }
        self.wake_starving();
    }
}
