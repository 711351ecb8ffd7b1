//! The key's owner core: placing halves in the rendezvous table, watching waiting halves,
//! expiring them, and activating pairs on the control plane's request.

use super::conn::{AfterReply, CloseKind, Conn, Phase};
use super::ring::{token, Op};
use super::slab::ConnId;
use super::Worker;
use crate::handover::wire::Carried;
use crate::key::StreamKey;
use crate::rendezvous::{Activation, ActivationOutcome, Insert};
use crate::shaping::QuotaUsed;
use crate::socks5::{failure_reply, success_reply, Rep};
use crate::stats::Refusal;
use io_uring::opcode;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Worker {
    /// A connection whose handshake finished on another core, for a key this core owns.
    pub(super) fn handed_off(
        &mut self,
        fd: RawFd,
        src: crate::limits::Source,
        key: StreamKey,
        prefix: &[u8],
    ) {
        self.stats().open.fetch_add(1, Relaxed);
        let id = self.conns.insert(Conn::finished_handshake(fd, src));
        if self.export.is_some() {
            // An upgrade is handing this core's connections over: this one goes too.
            let mut unsent = prefix.to_vec();
            unsent.extend_from_slice(&success_reply(&key));
            self.export_now(id, Some(Carried::Placed { key, unsent }));
            return;
        }
        if self.stopping || self.draining {
            self.close(id, CloseKind::Graceful);
            return;
        }
        self.place(id, key, prefix);
    }

    /// Puts a half in the table and sends its final reply (after any `prefix` replies the
    /// handshake produced but did not send yet).
    pub(super) fn place(&mut self, id: ConnId, key: StreamKey, prefix: &[u8]) {
        let mut bytes = [0u8; 64];
        bytes[..prefix.len()].copy_from_slice(prefix);
        let (len, then) = match self.table.insert(key, id, self.now) {
            placed @ (Insert::Waiting | Insert::Paired { .. }) => {
                if matches!(placed, Insert::Paired { .. }) {
                    self.stats().pairs_matched.fetch_add(1, Relaxed);
                }
                let r = success_reply(&key);
                bytes[prefix.len()..prefix.len() + r.len()].copy_from_slice(&r);
                (prefix.len() + r.len(), AfterReply::Wait(key))
            }
            Insert::Refused(why) => {
                self.stats().refuse(why);
                let r = failure_reply(Rep::NotAllowed);
                bytes[prefix.len()..prefix.len() + r.len()].copy_from_slice(&r);
                (prefix.len() + r.len(), AfterReply::Close)
            }
        };
        self.start_reply(id, &bytes[..len], then);
    }

    pub(super) fn arm_wait_poll(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        let fd = c.fd;
        self.arm_poll(
            id,
            fd,
            libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR,
            Op::WaitPoll,
        );
    }

    /// A waiting half's peer hung up or shut down writing before activation.
    pub(super) fn on_wait_poll(&mut self, id: ConnId, res: i32) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        let Phase::Waiting { key } = c.phase else {
            // Activated meanwhile: this is the cancelled watch.
            return;
        };
        if res < 0 {
            return;
        }
        let ev = res as i16;
        let gone = if ev & (libc::POLLHUP | libc::POLLERR) != 0 {
            true
        } else {
            // FIN: leave only if nothing was sent before it (early bytes must survive).
            let mut b = 0u8;
            // SAFETY: a one-byte peek into a local on a socket we own.
            let n = unsafe {
                libc::recv(
                    c.fd,
                    (&mut b as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            n == 0
        };
        if gone {
            self.table.remove(&key, id);
            self.close(id, CloseKind::Graceful);
        }
    }

    /// The control plane asks to activate `key`, which this core owns.
    pub(super) fn activate(
        &mut self,
        key: StreamKey,
        requester: Option<&str>,
        guard: Option<Box<dyn Send>>,
        done: Box<dyn FnOnce(ActivationOutcome) + Send>,
    ) {
        if self.stopping || self.draining {
            done(ActivationOutcome::ShuttingDown);
            return;
        }
        let shaper = match self.shared.shaping.stream(requester) {
            Ok(s) => s,
            Err(QuotaUsed) => {
                self.stats().refuse(Refusal::Quota);
                done(ActivationOutcome::QuotaUsed);
                return;
            }
        };
        match self.table.activate(&key) {
            Activation::Refused(outcome) => done(outcome),
            Activation::Start { first, second } => {
                self.stats().activations.fetch_add(1, Relaxed);
                self.stats().relays_active.fetch_add(1, Relaxed);
                for id in [first, second] {
                    if let Some(c) = self.conns.get_mut(id) {
                        if c.pending {
                            c.pending = false;
                            self.shared.pending.fetch_sub(1, Relaxed);
                        }
                        if matches!(c.phase, Phase::Waiting { .. }) {
                            let e = opcode::AsyncCancel::new(token(Op::WaitPoll, id.idx, id.gen))
                                .build()
                                .user_data(token(Op::Cancel, id.idx, id.gen));
                            self.ring.push(e);
                        }
                    }
                }
                if let Some(g) = guard {
                    self.guards.insert(key, g);
                }
                done(ActivationOutcome::Activated);
                self.start_relay(key, first, second, shaper.map(Arc::new));
            }
        }
    }

    /// Closes this core's oldest half still waiting for its peer; false if it has none
    /// (among the first few in its table's queue).
    pub(super) fn shed_oldest_waiting(&mut self) -> bool {
        const SCAN: usize = 64;
        let Some(id) = self.table.shed_oldest_waiting(SCAN) else {
            return false;
        };
        if let Some(c) = self.conns.get_mut(id) {
            if matches!(c.phase, Phase::Waiting { .. }) {
                c.phase = Phase::Dead;
            }
        }
        self.close(id, CloseKind::Graceful);
        true
    }

    /// Halves whose peer never came, or whose pair was never activated, in time.
    pub(super) fn expire_unactivated(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.table.expire(self.now, &mut expired);
        for id in expired.drain(..) {
            self.stats().refuse(Refusal::ActivationTimeout);
            if let Some(c) = self.conns.get_mut(id) {
                if matches!(c.phase, Phase::Waiting { .. }) {
                    c.phase = Phase::Dead;
                }
            }
            self.close(id, CloseKind::Graceful);
        }
        self.expired = expired;
    }
}
