//! Driver of the splice engine (`crate::relay::splice`), HAProxy-style: wait for readiness
//! with a ring poll, then let the direction's machine call non-blocking splice(2) inline
//! (socket -> pipe -> peer socket) through `WorkerEnv`. IORING_OP_SPLICE would park an
//! io-wq kernel thread on every waiting splice; this keeps the worker the only thread.
//! Nothing of this engine is in flight on a pipe between events: only its polls are ring
//! requests, so a pipe is never used by the kernel when the machine hands it back.

use super::super::conn::Dir;
use super::super::ring::Op;
use super::super::slab::ConnId;
use super::super::Worker;
use super::READABLE;
use crate::relay::Next;

impl Worker {
    pub(in crate::worker) fn splice_arm_in(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        self.arm_poll(id, c.fd, READABLE, Op::PollIn);
    }

    /// Either poll fired (readable, or the peer writable): move what can move now.
    pub(in crate::worker) fn splice_on_ready(&mut self, id: ConnId, res: i32) {
        if res < 0 {
            self.fail(id, -res);
            return;
        }
        let now = self.now;
        let next = self.with_dir(id, |dir, env| match dir {
            Dir::Splice(d) => d.pump(now, env),
            _ => Next::InFlight,
        });
        self.splice_then(id, next);
    }

    /// Goes on with a direction woken from the pool's or the shaper's queue.
    pub(in crate::worker) fn splice_resume(&mut self, id: ConnId) {
        let now = self.now;
        let next = self.with_dir(id, |dir, env| match dir {
            Dir::Splice(d) => d.resume(now, env),
            _ => Next::InFlight,
        });
        self.splice_then(id, next);
    }

    fn splice_then(&mut self, id: ConnId, next: Option<Next>) {
        match next {
            None => {}
            Some(Next::Readable) => self.splice_arm_in(id),
            Some(Next::Writable) => {
                // Waits for its destination holding no pipe (unless the spill budget is
                // used up): see `SpliceDir::pump`.
                if let Some(peer_fd) = self.side(id).map(|s| s.peer_fd) {
                    self.arm_poll(id, peer_fd, libc::POLLOUT, Op::PollOut);
                }
            }
            Some(next) => self.after(id, next),
        }
    }
}
