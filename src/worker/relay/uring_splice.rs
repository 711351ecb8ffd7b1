//! Driver of the uring-splice engine (`crate::relay::uring_splice`): turns the direction
//! machine's operations into ring requests and their completions back into its events.
//!
//! `socket -> pipe` is hard-linked to `pipe -> peer` (one io-wq punt for both) rather
//! than submitting the second from the first's completion. Both measured the same
//! (relay_vs_direct, 2 GiB, 4 runs each: 1 pair 13.8-16.9 Gbit/s linked, 14.5-16.8
//! chained; 64 pairs 15.4-18.3 and 15.0-18.7); linked costs one io-wq punt and one
//! submission per chunk instead of two. The splices carry `SPLICE_F_NONBLOCK` on
//! non-blocking sockets, so no io-wq thread waits on a socket; the only requests that
//! wait are the polls, which a close cancels by descriptor (`end_relay` cancels by both
//! descriptors, since `pipe -> peer` and its POLLOUT wait on the peer's). The kernel
//! ignores cancels by the pipe's descriptors, but requests on pipes never wait. The
//! machine hands a pipe back only after the last completion of the splices on it.

use super::super::conn::Dir;
use super::super::pipes::Pipe;
use super::super::ring::{token, Op};
use super::super::slab::ConnId;
use super::super::Worker;
use super::env::WorkerEnv;
use super::READABLE;
use crate::relay::uring_splice::{Action, Op as UsOp, UringDir};
use io_uring::{opcode, squeue, types};

const FLAGS: u32 = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

impl Worker {
    /// Runs uring-splice direction `id`'s machine (`f`) and carries out what it asks.
    pub(in crate::worker) fn us_run(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut UringDir<Pipe>, &mut WorkerEnv<'_>, &mut Vec<Action<Pipe>>),
    ) {
        let mut out = std::mem::take(&mut self.us_actions);
        out.clear();
        let ran = self.with_dir(id, |dir, env| {
            if let Dir::UringSplice(d) = dir {
                f(d, env, &mut out);
            }
        });
        if ran.is_some() {
            for &a in &out {
                self.us_do(id, a);
            }
        }
        self.us_actions = out;
    }

    fn us_do(&mut self, id: ConnId, a: Action<Pipe>) {
        let fd = self.conns.get(id).map_or(-1, |c| c.fd);
        let peer_fd = self.side(id).map_or(-1, |s| s.peer_fd);
        if peer_fd < 0 && matches!(a, Action::Submit(_)) {
            return;
        }
        match a {
            Action::Submit(UsOp::Readable) => self.arm_poll(id, fd, READABLE, Op::UsPollIn),
            Action::Submit(UsOp::Writable) => {
                self.arm_poll(id, peer_fd, libc::POLLOUT, Op::UsPollOut)
            }
            Action::Submit(UsOp::Splice { pipe, len }) => {
                let splice_in = opcode::Splice::new(types::Fd(fd), -1, types::Fd(pipe.wr), -1, len)
                    .flags(FLAGS)
                    .build()
                    .user_data(token(Op::UsIn, id.idx, id.gen));
                // `pipe -> peer` moves what the first put in the pipe (the pipe was
                // empty); after a short or failed first splice it still runs (HARDLINK)
                // and finds what there is, possibly nothing (EAGAIN).
                let splice_out =
                    opcode::Splice::new(types::Fd(pipe.rd), -1, types::Fd(peer_fd), -1, len)
                        .flags(FLAGS)
                        .build()
                        .user_data(token(Op::UsOut, id.idx, id.gen));
                // A link must not be split across two submissions: make room for both.
                let room = {
                    let sq = self.ring.ring.submission();
                    sq.capacity() - sq.len()
                };
                if room < 2 {
                    // If this fails, `push` below retries; a link split anyway stays
                    // correct (the second splice then runs on its own and finds what
                    // there is), only slower.
                    let _ = self.ring.ring.submit();
                }
                self.push_conn_op(id, splice_in.flags(squeue::Flags::IO_HARDLINK));
                self.push_conn_op(id, splice_out);
            }
            Action::Submit(UsOp::Out { pipe, len }) => {
                let e = opcode::Splice::new(types::Fd(pipe.rd), -1, types::Fd(peer_fd), -1, len)
                    .flags(FLAGS)
                    .build()
                    .user_data(token(Op::UsOut, id.idx, id.gen));
                self.push_conn_op(id, e);
            }
            Action::Then(next) => self.after(id, next),
        }
    }

    pub(in crate::worker) fn us_on_readable(&mut self, id: ConnId, res: i32) {
        self.us_run(id, |d, env, out| d.on_readable(res, env, out));
    }

    pub(in crate::worker) fn us_on_in(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        self.us_run(id, |d, env, out| d.on_in(now, res, env, out));
    }

    pub(in crate::worker) fn us_on_out(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        self.us_run(id, |d, env, out| d.on_out(now, res, env, out));
    }

    pub(in crate::worker) fn us_on_writable(&mut self, id: ConnId, res: i32) {
        let now = self.now;
        self.us_run(id, |d, env, out| d.on_writable(now, res, env, out));
    }
}
