//! The relay of an activated pair: both directions at once until both end. EOF on one side
//! shuts down writing on the other (half-close); an error tears the pair down with RST.
//! The engines (`copy`, `splice`, `uring_splice`) move the bytes; this file starts and
//! ends relays.

mod copy;
mod splice;
mod uring_splice;

use super::conn::{CloseKind, Conn, Phase, Side};
use super::pipes::Pipe;
use super::ring::{token, Op};
use super::slab::{ConnId, Slab};
use super::Worker;
use crate::config::Engine;
use crate::key::StreamKey;
use crate::shaping::{Grant, StreamShaper};
use crate::stats::Refusal;
use io_uring::{opcode, types};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// What a relay direction waits for before it reads: data, or the peer's shutdown.
const READABLE: i16 = libc::POLLIN | libc::POLLRDHUP;

impl Worker {
    /// Both halves are activated; starts moving bytes once both final replies are out.
    pub(in crate::worker) fn start_relay(
        &mut self,
        key: StreamKey,
        first: ConnId,
        second: ConnId,
        shaper: Option<Arc<StreamShaper>>,
    ) {
        for id in [first, second] {
            match self.conns.get_mut(id).map(|c| (&mut c.phase, c.closing)) {
                Some((Phase::Reply(r), None)) => {
                    // Its reply is still being sent: resume when it is out.
                    r.activated = Some((first, second, shaper));
                    return;
                }
                Some((Phase::Waiting { .. }, None)) => {}
                _ => {
                    self.abort_activation(key, first, second);
                    return;
                }
            }
        }
        let fds = [first, second].map(|id| self.conns.get(id).map_or(-1, |c| c.fd));
        let now = self.now;
        for (i, (id, peer)) in [(first, second), (second, first)].into_iter().enumerate() {
            if let Some(c) = self.conns.get_mut(id) {
                let side = Side::new(key, peer, fds[1 - i], i == 0, now, shaper.clone());
                c.phase = Phase::Relay(Box::new(side));
            }
        }
        match self.shared.config.relay.engine {
            Engine::Copy => {
                self.copy_arm_recv(first);
                self.copy_arm_recv(second);
            }
            Engine::Splice => {
                for fd in fds {
                    set_nonblocking(fd);
                }
                self.splice_arm_in(first);
                self.splice_arm_in(second);
            }
            Engine::UringSplice => {
                for fd in fds {
                    set_nonblocking(fd);
                }
                self.us_arm_readable(first);
                self.us_arm_readable(second);
            }
        }
    }

    /// An activated pair that cannot start (a half vanished before its reply was out).
    pub(in crate::worker) fn abort_activation(
        &mut self,
        key: StreamKey,
        first: ConnId,
        second: ConnId,
    ) {
        self.table.finish(&key);
        self.guards.remove(&key);
        self.stats().relays_active.fetch_sub(1, Relaxed);
        self.stats().relays_finished.fetch_add(1, Relaxed);
        for id in [first, second] {
            if let Some(c) = self.conns.get_mut(id) {
                if !matches!(c.phase, Phase::Relay(_)) {
                    c.phase = Phase::Dead;
                }
            }
            self.close(id, CloseKind::Abort);
        }
    }

    fn side(&mut self, id: ConnId) -> Option<&mut Side> {
        side_of(&mut self.conns, id)
    }

    /// One direction finished: EOF read and every byte written. Ends the pair when the
    /// other direction is finished too.
    fn direction_done(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        s.done = true;
        let peer_fd = s.peer_fd;
        let peer = s.peer;
        // SAFETY: shutdown on the peer's socket, which stays open while this pair lives.
        unsafe { libc::shutdown(peer_fd, libc::SHUT_WR) };
        if self.side(peer).is_some_and(|p| p.done) {
            self.end_relay(id, CloseKind::Graceful);
        }
    }

    /// Ends the pair `id` belongs to, once: counters, log line, close both halves.
    pub(in crate::worker) fn end_relay(&mut self, id: ConnId, kind: CloseKind) {
        self.end_relay_as(id, kind, kind);
    }

    /// `end_relay`, closing `id` with `kind` and its peer with `peer_kind`.
    fn end_relay_as(&mut self, id: ConnId, kind: CloseKind, peer_kind: CloseKind) {
        let Some(s) = self.conns.get_mut(id).and_then(|c| match &mut c.phase {
            Phase::Relay(s) => Some(s),
            _ => None,
        }) else {
            return;
        };
        if s.ended {
            return;
        }
        s.ended = true;
        let (key, peer, first, bytes, started) = (s.key, s.peer, s.first, s.bytes, s.started);
        let peer_bytes = match self.conns.get_mut(peer).map(|c| &mut c.phase) {
            Some(Phase::Relay(p)) => {
                p.ended = true;
                p.bytes
            }
            _ => 0,
        };
        let (f2s, s2f) = if first {
            (bytes, peer_bytes)
        } else {
            (peer_bytes, bytes)
        };
        self.table.finish(&key);
        self.guards.remove(&key);
        self.stats().relays_active.fetch_sub(1, Relaxed);
        self.stats().relays_finished.fetch_add(1, Relaxed);
        tracing::info!(
            target: "streamhost::stream",
            key = %key,
            bytes_first_to_second = f2s,
            bytes_second_to_first = s2f,
            duration_ms = self.now.duration_since(started).as_millis() as u64,
            outcome = if kind == CloseKind::Graceful { "done" } else { "aborted" },
            "stream finished"
        );
        self.cancel_cross_ops(id, peer);
        self.close(id, kind);
        self.close(peer, peer_kind);
    }

    /// A half's operations may wait on its peer's socket (a send, a splice or POLLOUT to
    /// the peer), which a close does not cancel (it cancels by the half's own descriptor),
    /// and a half with nothing in flight is closed at once, fd included. So before either
    /// closes, cancel by both descriptors, submitted now while both are open; otherwise a
    /// send to a receiver that never reads would keep its half (and the peer's socket)
    /// forever.
    fn cancel_cross_ops(&mut self, a: ConnId, b: ConnId) {
        let busy = |w: &Self, id| w.conns.get(id).is_some_and(|c| c.inflight > 0);
        if !busy(self, a) && !busy(self, b) {
            return;
        }
        for id in [a, b] {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.closing.is_some() || c.cancel_sent {
                continue;
            }
            if c.inflight > 0 {
                // This cancel is the one `close` would send.
                c.cancel_sent = true;
            }
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(c.fd)).all())
                .build()
                .user_data(token(Op::Cancel, id.idx, id.gen));
            self.ring.push(e);
        }
        if let Err(e) = self.ring.ring.submit() {
            tracing::warn!(worker = self.id, error = %e, "submitting relay cancels");
        }
    }

    /// A direction failed: tear the pair down with RST.
    fn fail(&mut self, id: ConnId, err: i32) {
        if err != libc::ECONNRESET && err != libc::EPIPE && err != libc::ECANCELED {
            self.stats().relay_errors.fetch_add(1, Relaxed);
            tracing::debug!(error = %std::io::Error::from_raw_os_error(err), "relay error");
        }
        self.end_relay(id, CloseKind::Abort);
    }

    /// The pipe of splice direction `id`, borrowed from the pool if it holds none. `None`
    /// when the pool is empty (the direction then waits in `starving` for one to come
    /// back) or a pipe cannot be made (the pair fails).
    fn pipe_of(&mut self, id: ConnId) -> Option<Pipe> {
        let s = self.side(id)?;
        if let Some(p) = s.pipe {
            return Some(p);
        }
        match self.pipes.borrow() {
            Ok(Some(p)) => {
                side_of(&mut self.conns, id)?.pipe = Some(p);
                Some(p)
            }
            Ok(None) => {
                side_of(&mut self.conns, id)?.starving = true;
                self.starving.push_back(id);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a pipe");
                self.fail(id, e.raw_os_error().unwrap_or(libc::EMFILE));
                None
            }
        }
    }

    /// A buffer or pipe came free: let the longest-waiting direction take it.
    pub(in crate::worker) fn wake_starving(&mut self) {
        while let Some(id) = self.starving.pop_front() {
            let Some(s) = self.side(id) else {
                continue;
            };
            if !s.starving {
                continue;
            }
            s.starving = false;
            self.resume_reading(id);
            return;
        }
    }

    /// Goes on with a direction that waited for a pipe or buffer, or for shaping tokens:
    /// it stopped where its engine reads next (for uring-splice, in `us_start` with
    /// nothing in flight and an empty pipe).
    fn resume_reading(&mut self, id: ConnId) {
        match self.shared.config.relay.engine {
            Engine::Copy => self.copy_arm_recv(id),
            Engine::Splice => self.splice_pump(id),
            Engine::UringSplice => self.us_start(id),
        }
    }

    /// Parks a direction until its shaping tokens come in (`at`); no read is armed meanwhile.
    fn park(&mut self, id: ConnId, at: Instant) {
        let Some(s) = self.side(id) else {
            return;
        };
        if s.throttled {
            return;
        }
        s.throttled = true;
        self.throttled.push(std::cmp::Reverse((at, id.idx, id.gen)));
        self.stats().shaping_waits.fetch_add(1, Relaxed);
    }

    /// The stream's quota ran out while `id` was sending: its sender gets a reset
    /// (its further bytes are refused), the receiver a FIN after every byte read within
    /// the quota (a reset would discard what still sits in its socket's send queue).
    fn quota_cut(&mut self, id: ConnId) {
        if let Some(s) = self.side(id) {
            tracing::info!(key = %s.key, "quota used up: stream cut");
        }
        self.stats().refuse(Refusal::Quota);
        self.end_relay_as(id, CloseKind::Abort, CloseKind::Graceful);
    }

    /// What the stream's shaper says about reading up to `want` bytes now (always
    /// `Go(want)` for an unshaped stream). Only asks; the engine acts on the answer.
    fn shaped(&mut self, id: ConnId, want: usize) -> Grant {
        let now = self.now;
        match self.side(id).and_then(|s| s.shaper.as_ref()) {
            Some(sh) => sh.grant(now, want),
            None => Grant::Go(want),
        }
    }

    /// Resumes the directions whose shaping wait is over.
    pub(in crate::worker) fn resume_throttled(&mut self) {
        while let Some(&std::cmp::Reverse((at, idx, gen))) = self.throttled.peek() {
            if at > self.now {
                return;
            }
            self.throttled.pop();
            let id = ConnId { idx, gen };
            let Some(s) = self.side(id) else {
                continue;
            };
            if !s.throttled {
                continue;
            }
            s.throttled = false;
            self.resume_reading(id);
        }
    }

    /// Ends relays that moved nothing either way for `idle_timeout`.
    pub(in crate::worker) fn sweep_idle_relays(&mut self) {
        let Some(limit) = self.shared.config.idle_timeout() else {
            return;
        };
        let now = self.now;
        for id in self.conns.ids() {
            let Some(s) = self.side(id) else {
                continue;
            };
            if !s.first || now.duration_since(s.last_active) < limit {
                continue;
            }
            let peer = s.peer;
            let peer_idle = self
                .side(peer)
                .is_none_or(|p| now.duration_since(p.last_active) >= limit);
            if peer_idle {
                self.end_relay(id, CloseKind::Abort);
            }
        }
    }
}

/// The relay side of a live (not closing) connection. A free function so callers can
/// borrow other worker fields at the same time.
fn side_of(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Side> {
    match conns.get_mut(id) {
        Some(c) if c.closing.is_none() => match &mut c.phase {
            Phase::Relay(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn set_nonblocking(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on a socket we own; failure leaves it blocking and splice then
    // simply blocks the worker less gracefully, so it is checked in debug builds only.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        let r = libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        debug_assert!(r == 0);
    }
}
