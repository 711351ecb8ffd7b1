//! Driver of the copy engine (`crate::relay::copy`): turns the direction machine's
//! operations into ring requests (a `BUFFER_SELECT` recv from the provided-buffer ring, a
//! send or zero-copy send to the peer, a POLLOUT on the peer) and their completions back
//! into the machine's events. The machine gives a buffer back only from the handler of
//! the last completion of the send using it, so `GiveBack` here never returns a buffer
//! the kernel still reads.

use super::super::conn::Dir;
use super::super::ring::{token, Op};
use super::super::slab::ConnId;
use super::super::Worker;
use super::env::WorkerEnv;
use crate::relay::copy::{Action, CopyDir, Op as CopyOp};
use crate::worker::bufring::BGID;
use io_uring::{cqueue, opcode, squeue, types};

impl Worker {
    /// Runs copy direction `id`'s machine (`f`) and carries out what it asks, in order.
    pub(in crate::worker) fn copy_run(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut CopyDir, &mut WorkerEnv<'_>, &mut Vec<Action>),
    ) {
        let mut out = std::mem::take(&mut self.actions);
        out.clear();
        let ran = self.with_dir(id, |dir, env| {
            if let Dir::Copy(d) = dir {
                f(d, env, &mut out);
            }
        });
        if ran.is_some() {
            for &a in &out {
                self.copy_do(id, a);
            }
        }
        self.actions = out;
    }

    fn copy_do(&mut self, id: ConnId, a: Action) {
        let fd = self.conns.get(id).map_or(-1, |c| c.fd);
        let peer_fd = self.side(id).map_or(-1, |s| s.peer_fd);
        if peer_fd < 0 && matches!(a, Action::Submit(_)) {
            return;
        }
        match a {
            Action::Submit(CopyOp::Recv { len }) => {
                let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len)
                    .buf_group(BGID)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
                    .user_data(token(Op::Recv, id.idx, id.gen));
                self.push_conn_op(id, e);
            }
            Action::Submit(CopyOp::Send {
                bid,
                off,
                len,
                wait_all,
                zc,
            }) => {
                let bufs = self.bufs.as_ref().expect("copy engine has a buffer ring");
                let ptr = bufs.addr(bid, off as usize);
                // A plain send does not wait (a short one spills, see the machine);
                // MSG_WAITALL (the spill budget used up): the kernel retries a short send
                // itself, and the buffer stays lent until all of it is out.
                let flags = libc::MSG_NOSIGNAL
                    | if wait_all {
                        libc::MSG_WAITALL
                    } else {
                        libc::MSG_DONTWAIT
                    };
                // The buffer stays lent to this direction until the send's last completion
                // (for a zero-copy send, its notification), which `copy_on_send*` feed to
                // the machine before it may give the buffer back.
                let e = if zc {
                    opcode::SendZc::new(types::Fd(peer_fd), ptr, len)
                        .flags(flags)
                        .build()
                        .user_data(token(Op::SendZc, id.idx, id.gen))
                } else {
                    opcode::Send::new(types::Fd(peer_fd), ptr, len)
                        .flags(flags)
                        .build()
                        .user_data(token(Op::Send, id.idx, id.gen))
                };
                self.push_conn_op(id, e);
            }
            Action::Submit(CopyOp::Writable) => {
                self.arm_poll(id, peer_fd, libc::POLLOUT, Op::CopyPollOut);
            }
            Action::GiveBack(bid) => {
                if let Some(b) = self.bufs.as_mut() {
                    b.give_back(bid);
                }
                self.wake_starving();
            }
            Action::Then(next) => self.after(id, next),
        }
    }

    pub(in crate::worker) fn copy_on_recv(&mut self, id: ConnId, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        if let (Some(_), Some(b)) = (bid, self.bufs.as_mut()) {
            b.taken();
        }
        if self.side(id).is_none() {
            if let (Some(bid), Some(b)) = (bid, self.bufs.as_mut()) {
                b.give_back(bid);
                self.wake_starving();
            }
            return;
        }
        let now = self.now;
        self.copy_run(id, |d, env, out| d.on_recv(now, res, bid, env, out));
    }

    pub(in crate::worker) fn copy_on_send(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        self.copy_run(id, |d, env, out| d.on_send(now, res, env, out));
    }

    /// A zero-copy send completes twice: its result (with MORE when a notification
    /// follows), then the notification that the kernel no longer reads the buffer.
    pub(in crate::worker) fn copy_on_send_zc(&mut self, id: ConnId, res: i32, flags: u32) {
        let now = self.now;
        if cqueue::notif(flags) {
            self.copy_run(id, |d, env, out| d.on_send_notif(now, env, out));
        } else if !cqueue::more(flags) {
            // No notification follows (the send failed before using the buffer).
            self.copy_run(id, |d, env, out| d.on_send(now, res, env, out));
        } else {
            self.copy_run(id, |d, _, out| d.on_send_result(now, res, out));
        }
    }

    /// The destination takes bytes again: the spill first, then the buffers and reads.
    pub(in crate::worker) fn copy_on_writable(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        self.copy_run(id, |d, env, out| d.on_writable(now, res, env, out));
    }
}
