//! Accepting connections and driving their SOCKS5 handshake (the parser is `crate::socks5`).
//! A finished handshake goes to `place.rs` on this core, or is handed to the key's owner.

use super::conn::{AfterReply, CloseKind, Conn, Hs, Phase, Reply, HS_BUF};
use super::mailbox::Msg;
use super::ring::{token, Op};
use super::slab::ConnId;
use super::Worker;
use crate::limits::Source;
use crate::socks5::{Handshake, Step};
use crate::stats::Refusal;
use io_uring::{opcode, types};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;

/// Stale handshake deadlines tolerated before the queue is compacted.
const DEADLINE_SLACK: usize = 1024;

impl Worker {
    /// A new client connection: check the limits, then start reading its greeting.
    pub(super) fn accepted(&mut self, fd: RawFd) {
        let sh = &self.shared;
        if self.draining {
            // SAFETY: we own the fresh descriptor and nothing else refers to it.
            unsafe { libc::close(fd) };
            return;
        }
        if !sh.admitting.load(Relaxed) {
            self.stats().refuse(Refusal::NotReady);
            // SAFETY: we own the fresh descriptor and nothing else refers to it.
            unsafe { libc::close(fd) };
            return;
        }
        let max_open = sh.max_connections.load(Relaxed).min(sh.fd_budget);
        let full = if sh.open.load(Relaxed) >= max_open {
            Some(Refusal::MaxConnections)
        } else if sh.pending.load(Relaxed) >= sh.max_pending.load(Relaxed) {
            Some(Refusal::MaxPending)
        } else {
            None
        };
        let src = Source::of(peer_ip(fd));
        let mut refuse = sh.ip_limits.admit(src, self.now).err();
        if let (None, Some(why)) = (refuse, full) {
            // Full: the oldest half still waiting for its peer makes room, so that a flood
            // of halves that never pair cannot lock newcomers out. Only if there is none
            // is the newcomer refused.
            if self.shed_oldest_waiting() {
                self.stats().refuse(Refusal::Shed);
            } else {
                self.shared.ip_limits.release(src);
                refuse = Some(why);
            }
        }
        if let Some(why) = refuse {
            self.stats().refuse(why);
            // SAFETY: we own the fresh descriptor and nothing else refers to it.
            unsafe { libc::close(fd) };
            return;
        }
        self.shared.open.fetch_add(1, Relaxed);
        self.shared.pending.fetch_add(1, Relaxed);
        self.stats().accepted.fetch_add(1, Relaxed);
        self.stats().open.fetch_add(1, Relaxed);
        set_nodelay(fd);
        let id = self.new_handshake(fd, src);
        self.arm_hs_recv(id);
    }

    /// Adds a connection in its handshake, with its deadline.
    pub(super) fn new_handshake(&mut self, fd: RawFd, src: Source) -> ConnId {
        let hs = Box::new(Hs {
            parser: Handshake::new(self.shared.auth.clone()),
            buf: [0; HS_BUF],
            len: 0,
            replied: 0,
            out: Vec::new(),
            sent: 0,
        });
        let id = self.conns.insert(Conn {
            fd,
            src,
            inflight: 0,
            phase: Phase::Handshake(hs),
            closing: None,
            pending: true,
            cancel_sent: false,
            exporting: false,
        });
        let deadline = self.now + self.shared.config.handshake_timeout();
        // Connections that finished (or left) their handshake early leave an entry behind
        // until its deadline: at a high connection rate those would far outnumber the
        // connections. Dropping them when they do bounds the queue by twice this core's
        // connections plus slack, with the work amortised (each pass at least halves it).
        if self.hs_deadlines.len() > 2 * self.conns.len() + DEADLINE_SLACK {
            let conns = &self.conns;
            self.hs_deadlines.retain(|&(_, id)| {
                conns
                    .get(id)
                    .is_some_and(|c| matches!(c.phase, Phase::Handshake(_)))
            });
        }
        self.hs_deadlines.push_back((deadline, id));
        id
    }

    fn arm_hs_recv(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Handshake(hs) = &mut c.phase else {
            return;
        };
        // Read what the buffer has room for, not just what the parser needs: bytes after
        // the request in the same read are trailing garbage and get refused. The longest
        // handshake (greeting 257 + auth 513 + request 47) leaves room to see them.
        let rest = &mut hs.buf[hs.len..];
        let e = opcode::Recv::new(types::Fd(c.fd), rest.as_mut_ptr(), rest.len() as u32)
            .build()
            .user_data(token(Op::HsRecv, id.idx, id.gen));
        self.push_conn_op(id, e);
    }

    pub(super) fn on_hs_recv(&mut self, id: ConnId, res: i32) {
        if res <= 0 {
            // The client left (or failed) mid-handshake.
            self.stats().handshakes_failed.fetch_add(1, Relaxed);
            self.close(id, CloseKind::Graceful);
            return;
        }
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Handshake(hs) = &mut c.phase else {
            return;
        };
        let start = hs.len;
        hs.len += res as usize;
        let step = hs.parser.feed(&hs.buf[start..hs.len], &mut hs.out);
        self.after_feed(id, step);
    }

    /// Goes on from the parser's `step`: more to read (after sending what it produced),
    /// a refusal, or a finished handshake placed here or handed to the key's owner.
    pub(super) fn after_feed(&mut self, id: ConnId, step: Step) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Handshake(hs) = &mut c.phase else {
            return;
        };
        // Replies produced but not yet sent travel with the final reply.
        let unsent_len = hs.out.len().saturating_sub(hs.sent);
        if step == Step::NeedMore {
            if unsent_len > 0 {
                self.arm_hs_send(id);
            } else if hs.len < HS_BUF {
                self.arm_hs_recv(id);
            } else {
                // Cannot happen with the parser's own bounds; never spin on a full buffer.
                self.stats().handshakes_failed.fetch_add(1, Relaxed);
                self.close(id, CloseKind::Graceful);
            }
            return;
        }
        let mut unsent = [0u8; 64];
        let n = unsent_len.min(unsent.len());
        unsent[..n].copy_from_slice(&hs.out[hs.sent..hs.sent + n]);
        let unsent = &unsent[..n];
        match step {
            Step::NeedMore => unreachable!(),
            Step::Failed(why) => {
                self.stats().refuse(why);
                self.stats().handshakes_failed.fetch_add(1, Relaxed);
                if unsent.is_empty() {
                    self.close(id, CloseKind::Graceful);
                } else {
                    self.start_reply(id, unsent, AfterReply::Close);
                }
            }
            Step::Done(key) => {
                self.stats().handshakes_ok.fetch_add(1, Relaxed);
                let owner = self.shared.router.owner(&key);
                if owner == self.id {
                    self.place(id, key, unsent);
                    return;
                }
                // Nothing is in flight (the recv just completed), so the descriptor can
                // move to the owner core.
                let Some(c) = self.conns.remove(id) else {
                    return;
                };
                let mut prefix = ([0u8; 4], 0u8);
                let p = unsent.len().min(4);
                prefix.0[..p].copy_from_slice(&unsent[..p]);
                prefix.1 = p as u8;
                self.stats().open.fetch_sub(1, Relaxed);
                self.stats().handoffs.fetch_add(1, Relaxed);
                self.shared.mailboxes[owner].send(Msg::HandOff {
                    fd: c.fd,
                    src: c.src,
                    key,
                    prefix,
                });
            }
        }
    }

    fn arm_hs_send(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        let Phase::Handshake(hs) = &c.phase else {
            return;
        };
        let rest = &hs.out[hs.sent..];
        let (fd, ptr, len) = (c.fd, rest.as_ptr(), rest.len());
        self.push_small_send(id, Op::HsSend, fd, ptr, len);
    }

    /// A send of handshake bytes the connection owns (they stay put until it completes).
    fn push_small_send(&mut self, id: ConnId, op: Op, fd: RawFd, ptr: *const u8, len: usize) {
        let e = opcode::Send::new(types::Fd(fd), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token(op, id.idx, id.gen));
        self.push_conn_op(id, e);
    }

    pub(super) fn on_hs_send(&mut self, id: ConnId, res: i32) {
        if res < 0 {
            self.stats().handshakes_failed.fetch_add(1, Relaxed);
            self.close(id, CloseKind::Graceful);
            return;
        }
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Handshake(hs) = &mut c.phase else {
            return;
        };
        hs.sent += res as usize;
        hs.replied += res as usize;
        if hs.sent < hs.out.len() {
            self.arm_hs_send(id);
        } else {
            hs.out.clear();
            hs.sent = 0;
            self.arm_hs_recv(id);
        }
    }

    /// Sends a final reply (success or refusal) from the key's owner, then waits or closes.
    pub(super) fn start_reply(&mut self, id: ConnId, bytes: &[u8], then: AfterReply) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let mut r = Box::new(Reply {
            bytes: [0; 64],
            len: bytes.len().min(64),
            sent: 0,
            then,
            activated: None,
        });
        r.bytes[..r.len].copy_from_slice(&bytes[..r.len]);
        c.phase = Phase::Reply(r);
        self.arm_reply(id);
    }

    fn arm_reply(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Reply(r) = &c.phase else {
            return;
        };
        let rest = &r.bytes[r.sent..r.len];
        let (fd, ptr, len) = (c.fd, rest.as_ptr(), rest.len());
        self.push_small_send(id, Op::Reply, fd, ptr, len);
    }

    pub(super) fn on_reply_sent(&mut self, id: ConnId, res: i32) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Phase::Reply(r) = &mut c.phase else {
            return;
        };
        if res < 0 {
            match (r.then, r.activated.take()) {
                (AfterReply::Wait(key), Some((first, second, _))) => {
                    self.abort_activation(key, first, second)
                }
                (AfterReply::Wait(key), None) => {
                    self.table.remove(&key, id);
                }
                (AfterReply::Close, _) => {}
            }
            self.close(id, CloseKind::Graceful);
            return;
        }
        r.sent += res as usize;
        if r.sent < r.len {
            self.arm_reply(id);
            return;
        }
        match (r.then, r.activated.take()) {
            (AfterReply::Close, _) => self.close(id, CloseKind::Graceful),
            (AfterReply::Wait(key), Some((first, second, shaper))) => {
                c.phase = Phase::Waiting { key };
                self.start_relay(key, first, second, shaper);
            }
            (AfterReply::Wait(key), None) => {
                c.phase = Phase::Waiting { key };
                self.arm_wait_poll(id);
            }
        }
    }

    pub(super) fn expire_handshakes(&mut self) {
        while let Some(&(at, id)) = self.hs_deadlines.front() {
            if at > self.now {
                break;
            }
            self.hs_deadlines.pop_front();
            let in_handshake = self
                .conns
                .get(id)
                .is_some_and(|c| c.closing.is_none() && matches!(c.phase, Phase::Handshake(_)));
            if in_handshake {
                self.stats().refuse(Refusal::HandshakeTimeout);
                self.stats().handshakes_failed.fetch_add(1, Relaxed);
                self.close(id, CloseKind::Graceful);
            }
        }
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a correctly sized int on a socket we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The client's address (unspecified if the socket has none, which never limits anyone).
pub(super) fn peer_ip(fd: RawFd) -> std::net::IpAddr {
    // SAFETY: the descriptor is open and owned by the caller for the duration of this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd)
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip())
}
