//! Upgrade handover, on a worker: handing every connection that is not relaying to a new
//! process (export), and taking such connections in (adopt). The new process goes on
//! exactly where the old one stopped: a handshake is replayed from the bytes read so far
//! (less the replies already sent), a placed half re-enters the rendezvous table with
//! what is left of its reply. Listeners are handed over too, never closed, so no
//! connection queued on them is lost and none is accepted by the old process after.

use super::conn::{AfterReply, CloseKind, Conn, Hs, Phase};
use super::ring::{token, Op};
use super::slab::ConnId;
use super::Worker;
use crate::handover::wire::Carried;
use crate::limits::Source;
use crate::rendezvous::Insert;
use crate::socks5::{failure_reply, Rep};
use io_uring::{opcode, types};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where the workers put what they hand over; read by `Handle::export`.
#[derive(Default)]
pub(crate) struct ExportSink {
    pub conns: Mutex<Vec<(OwnedFd, Carried)>>,
    pub listeners: Mutex<Vec<OwnedFd>>,
    /// Workers that reported (each reports once per round: export, then seal).
    reported: Mutex<usize>,
    cv: Condvar,
}

impl ExportSink {
    fn report(&self) {
        *self.reported.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// A worker that stopped before it could report: counted as reported, so nobody
    /// waits for it (what it held was closed with it).
    pub fn fail(&self) {
        self.report();
    }

    /// Waits until `n` reports arrived; false on timeout.
    pub fn wait(&self, n: usize, timeout: Duration) -> bool {
        let g = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |r| *r < n)
            .unwrap_or_else(|e| e.into_inner());
        *g >= n
    }
}

impl Worker {
    /// Starts handing over: accepts are cancelled (the listeners stay open), every
    /// connection not relaying is frozen and leaves once nothing is in flight on it.
    pub(super) fn start_export(&mut self, sink: Arc<ExportSink>) {
        if self.export.is_some() || self.stopping {
            sink.report();
            return;
        }
        self.draining = true;
        self.export = Some(sink);
        self.accepts_live = self.listeners.len().saturating_sub(self.accept_rearm.len());
        self.accept_rearm.clear();
        for l in &self.listeners {
            let e =
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(l.as_raw_fd())).all())
                    .build()
                    .user_data(token(Op::Cancel, u32::MAX, 0));
            self.ring.push(e);
        }
        for id in self.conns.ids() {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.closing.is_some() {
                continue;
            }
            let key = match &c.phase {
                Phase::Handshake(_) => None,
                Phase::Reply(r) => match (r.then, &r.activated) {
                    (AfterReply::Wait(key), None) => Some(key),
                    // Refused (closes after its reply) or activated (about to relay).
                    _ => continue,
                },
                Phase::Waiting { key } => Some(*key),
                Phase::Relay(_) | Phase::Dead => continue,
            };
            if let Some(key) = key {
                // From now on an activation for it finds nothing here.
                self.table.remove(&key, id);
            }
            c.exporting = true;
            self.exporting += 1;
            if c.inflight == 0 {
                self.export_now(id, None);
            } else {
                self.cancel_ops(id);
            }
        }
        self.export_progress();
    }

    /// A completion for a connection being handed over: what it did still counts (bytes
    /// read or sent); once nothing is in flight the connection leaves.
    pub(super) fn export_completion(&mut self, id: ConnId, op: Op, res: i32) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let cancelled = res == -libc::ECANCELED;
        let gone = match (&mut c.phase, op) {
            (Phase::Handshake(hs), Op::HsRecv) if res > 0 => {
                hs.len += res as usize;
                false
            }
            (Phase::Handshake(hs), Op::HsSend) if res > 0 => {
                hs.sent += res as usize;
                hs.replied += res as usize;
                false
            }
            (Phase::Reply(r), Op::Reply) if res > 0 => {
                r.sent += res as usize;
                false
            }
            (Phase::Waiting { .. }, Op::WaitPoll) => {
                res > 0 && (res as i16 & (libc::POLLHUP | libc::POLLERR)) != 0
            }
            // EOF or an error: the client is gone, nothing to hand over.
            _ => !cancelled,
        };
        if gone {
            c.exporting = false;
            self.exporting -= 1;
            self.close(id, CloseKind::Graceful);
        } else if c.inflight == 0 {
            self.export_now(id, None);
        }
        self.export_progress();
    }

    /// A final accept completion while handing over: one listener fewer to wait for.
    pub(super) fn export_accept_ended(&mut self) {
        self.accepts_live = self.accepts_live.saturating_sub(1);
        self.export_progress();
    }

    /// Moves a connection with nothing in flight into the sink (`carried` given for one
    /// that is not in the slab's usual phases, such as a hand-off from another core).
    pub(super) fn export_now(&mut self, id: ConnId, carried: Option<Carried>) {
        let Some(c) = self.conns.remove(id) else {
            return;
        };
        if c.exporting {
            self.exporting -= 1;
        }
        let carried = carried.or(match c.phase {
            Phase::Handshake(hs) => Some(Carried::Handshake {
                received: hs.buf[..hs.len].to_vec(),
                replied: hs.replied as u32,
            }),
            Phase::Reply(r) => match r.then {
                AfterReply::Wait(key) => Some(Carried::Placed {
                    key,
                    unsent: r.bytes[r.sent..r.len].to_vec(),
                }),
                AfterReply::Close => None,
            },
            Phase::Waiting { key } => Some(Carried::Placed {
                key,
                unsent: Vec::new(),
            }),
            Phase::Relay(_) | Phase::Dead => None,
        });
        if c.pending {
            self.shared.pending.fetch_sub(1, Relaxed);
        }
        self.shared.ip_limits.release(c.src);
        self.shared.open.fetch_sub(1, Relaxed);
        self.stats().open.fetch_sub(1, Relaxed);
        // SAFETY: the connection owned its descriptor and nothing is in flight on it.
        let fd = unsafe { OwnedFd::from_raw_fd(c.fd) };
        // Nothing to carry: closed here (dropping `fd`).
        if let (Some(carried), Some(sink)) = (carried, &self.export) {
            self.stats().handed_over.fetch_add(1, Relaxed);
            sink.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((fd, carried));
        }
    }

    /// A connection accepted while handing over goes over untouched.
    pub(super) fn export_fresh(&mut self, fd: OwnedFd) {
        if let Some(sink) = &self.export {
            self.stats().handed_over.fetch_add(1, Relaxed);
            sink.conns.lock().unwrap_or_else(|e| e.into_inner()).push((
                fd,
                Carried::Handshake {
                    received: Vec::new(),
                    replied: 0,
                },
            ));
        }
    }

    /// Reports once every accept has ended and every connection has left; the listeners
    /// go into the sink then.
    fn export_progress(&mut self) {
        if self.export_reported || self.accepts_live > 0 || self.exporting > 0 {
            return;
        }
        let Some(sink) = self.export.clone() else {
            return;
        };
        self.export_reported = true;
        let ls = std::mem::take(&mut self.listeners);
        sink.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ls.into_iter().map(OwnedFd::from));
        sink.report();
    }

    /// The second round: every hand-off sent before the other cores reported has been
    /// seen (mailboxes are in order), so the sink is complete once all have sealed.
    pub(super) fn export_seal(&mut self, sink: Arc<ExportSink>) {
        sink.report();
    }

    /// The handover failed after this worker exported: it serves `listeners` again (the
    /// connections come back through `adopt`).
    pub(super) fn restore(&mut self, listeners: Vec<OwnedFd>) {
        if self.export.take().is_none() || self.stopping {
            return;
        }
        self.draining = false;
        self.export_reported = false;
        self.accepts_live = 0;
        for fd in listeners {
            self.listeners.push(socket2::Socket::from(fd));
            self.arm_accept(self.listeners.len() - 1);
        }
    }

    /// A connection handed over by an old process.
    pub(super) fn adopt(&mut self, fd: OwnedFd, carried: Carried) {
        if self.stopping || self.draining {
            return;
        }
        let src = Source::of(super::handshake::peer_ip(fd.as_raw_fd()));
        // Admitted by the old process already: counted here without a second check.
        self.shared.ip_limits.count(src);
        self.shared.open.fetch_add(1, Relaxed);
        self.shared.pending.fetch_add(1, Relaxed);
        self.stats().open.fetch_add(1, Relaxed);
        self.stats().adopted.fetch_add(1, Relaxed);
        let fd = fd.into_raw_fd();
        match carried {
            Carried::Handshake { received, replied } => {
                let id = self.new_handshake(fd, src);
                let Some(Phase::Handshake(hs)) = self.conns.get_mut(id).map(|c| &mut c.phase)
                else {
                    return;
                };
                if received.len() > hs.buf.len() {
                    self.close(id, CloseKind::Graceful);
                    return;
                }
                let step = replay(hs, &received, replied as usize);
                self.after_feed(id, step);
            }
            Carried::Placed { key, unsent } => {
                let id = self.conns.insert(Conn::finished_handshake(fd, src));
                match self.table.insert(key, id, self.now) {
                    placed @ (Insert::Waiting | Insert::Paired { .. }) => {
                        if matches!(placed, Insert::Paired { .. }) {
                            self.stats().pairs_matched.fetch_add(1, Relaxed);
                        }
                        if unsent.is_empty() {
                            if let Some(c) = self.conns.get_mut(id) {
                                c.phase = Phase::Waiting { key };
                            }
                            self.arm_wait_poll(id);
                        } else {
                            self.start_reply(id, &unsent, AfterReply::Wait(key));
                        }
                    }
                    Insert::Refused(why) => {
                        self.stats().refuse(why);
                        if unsent.is_empty() {
                            // Its success reply is out: all that is left is to close.
                            self.close(id, CloseKind::Graceful);
                        } else {
                            self.start_reply(
                                id,
                                &failure_reply(Rep::NotAllowed),
                                AfterReply::Close,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Feeds a fresh parser every byte the old process read; the replies it had sent already
/// count as sent.
fn replay(hs: &mut Hs, received: &[u8], replied: usize) -> crate::socks5::Step {
    hs.buf[..received.len()].copy_from_slice(received);
    hs.len = received.len();
    let step = hs.parser.feed(received, &mut hs.out);
    hs.replied = replied;
    hs.sent = replied.min(hs.out.len());
    if hs.sent == hs.out.len() {
        hs.out.clear();
        hs.sent = 0;
    }
    step
}
