//! The copy engine: recv into a buffer the kernel picks from the per-core provided-buffer
//! ring, then send it to the peer. At most two buffers per direction (one being sent, one
//! being filled), so a slow receiver stalls its sender instead of growing memory, and an
//! idle direction holds no buffer at all.

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
        if s.reading || s.eof || s.queued >= 2 || s.starving || s.throttled || c.closing.is_some() {
            return;
        }
        // 0 = a whole buffer; a shaped stream reads no more than its tokens allow.
        let mut len = 0;
        if s.shaper.is_some() {
            let pending = s.queued > 0 || s.writing;
            let want = self.shared.config.relay.buffer_size;
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
                let start_send = !s.writing;
                if start_send {
                    self.copy_arm_send(id);
                }
                self.copy_arm_recv(id);
            }
            (0, _) => {
                s.eof = true;
                if s.queued == 0 {
                    self.direction_done(id);
                }
            }
            (e, _) if -e == libc::ENOBUFS => {
                // Every buffer is lent: wait for one to come back.
                s.starving = true;
                self.starving.push_back(id);
            }
            (e, bid) => {
                if let (Some(bid), Some(b)) = (bid, self.bufs.as_mut()) {
                    b.give_back(bid);
                }
                self.fail(id, -e);
            }
        }
    }

    fn copy_arm_send(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        if s.queued == 0 {
            return;
        }
        let (bid, len, sent) = s.queue[0];
        s.writing = true;
        let peer_fd = s.peer_fd;
        let bufs = self.bufs.as_ref().expect("copy engine has a buffer ring");
        let ptr = bufs.addr(bid, sent as usize);
        // MSG_WAITALL: the kernel retries a short send itself instead of completing it,
        // so a buffer costs one completion however small the peer's send buffer is.
        let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        let e = if self.shared.config.relay.send_zc {
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
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        s.last_active = now;
        s.queue[0].2 += res as u32;
        self.copy_send_next(id);
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
        let finished = s.eof && !more;
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
