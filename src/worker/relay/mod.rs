//! The relay of an activated pair: both directions at once until both end. EOF on one side
//! shuts down writing on the other (half-close); an error tears the pair down with RST
//! (`crate::relay::pair`). Each direction is a sans-IO state machine (`crate::relay`);
//! the engines' files here are its thin drivers (completions in, SQEs and syscalls out),
//! and this file starts and ends relays and keeps the worker's queues of waiting
//! directions.

mod copy;
mod env;
mod splice;
mod uring_splice;

use super::conn::{CloseKind, Conn, Dir, Phase, Side};
use super::ring::{token, Op};
use super::slab::{ConnId, Slab};
use super::Worker;
use crate::config::Engine;
use crate::key::StreamKey;
use crate::relay::copy::CopyDir;
use crate::relay::pair::{self, PairStep};
use crate::relay::splice::SpliceDir;
use crate::relay::uring_splice::UringDir;
use crate::relay::{Hold, Next};
use crate::shaping::StreamShaper;
use crate::stats::Refusal;
use env::WorkerEnv;
use io_uring::{opcode, types};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// At most this share of the provided buffers (1/2) are pinned by zero-copy sends; the
/// rest of the sends are plain, so receivers that stall after a zero-copy send never take
/// the whole ring.
const ZC_PINNED_SHARE: usize = 2;

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
        let relay = &self.shared.config.relay;
        let (engine, buffer_size) = (relay.engine, relay.buffer_size);
        for (i, (id, peer)) in [(first, second), (second, first)].into_iter().enumerate() {
            if let Some(c) = self.conns.get_mut(id) {
                let dir = match engine {
                    Engine::Copy => Dir::Copy(CopyDir::new(now, buffer_size)),
                    Engine::Splice => Dir::Splice(SpliceDir::new(now)),
                    Engine::UringSplice => Dir::UringSplice(UringDir::new(now)),
                };
                let side = Side::new(key, peer, fds[1 - i], i == 0, now, shaper.clone(), dir);
                c.phase = Phase::Relay(Box::new(side));
            }
        }
        if engine != Engine::Copy {
            for fd in fds {
                set_nonblocking(fd);
            }
        }
        if relay.socket_buffer > 0 {
            // What a stalled stream can make the kernel hold for it: the bytes its
            // sender pushes wait in one socket's receive queue, those for its receiver
            // in the other's send queue.
            for fd in fds {
                set_buffer(fd, libc::SO_SNDBUF, relay.socket_buffer);
                set_buffer(fd, libc::SO_RCVBUF, relay.socket_buffer);
            }
        }
        for id in [first, second] {
            match engine {
                // Bytes that came before the activation wait in the kernel: the first read
                // (or readiness poll) finds them.
                Engine::Copy => self.copy_run(id, |d, env, out| d.resume(env, out)),
                Engine::Splice => self.splice_arm_in(id),
                Engine::UringSplice => self.us_run(id, |d, _, out| d.start(out)),
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
                // Only a phase that owns no buffer is dropped here: a reply may still be
                // being sent from its buffer, which stays until the close's last
                // completion (`finalize`).
                if matches!(c.phase, Phase::Waiting { .. }) {
                    c.phase = Phase::Dead;
                }
            }
            self.close(id, CloseKind::Abort);
        }
    }

    fn side(&mut self, id: ConnId) -> Option<&mut Side> {
        side_of(&mut self.conns, id)
    }

    /// Runs direction `id`'s state machine with this worker as its world: `f` gets the
    /// direction and a `WorkerEnv` for it. `None` when `id` is no live relay half.
    fn with_dir<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Dir, &mut WorkerEnv<'_>) -> R,
    ) -> Option<R> {
        let fd = self.conns.get(id)?.fd;
        let Side {
            dir,
            shaper,
            peer_fd,
            first,
            ..
        } = side_of(&mut self.conns, id)?;
        let mut env = WorkerEnv {
            fd,
            peer_fd: *peer_fd,
            first: *first,
            now: self.now,
            shaper: shaper.as_deref(),
            pipes: &mut self.pipes,
            bufs: self.bufs.as_ref(),
            spill_bytes: &mut self.spill_bytes,
            spill_limit: self.shared.config.relay.stall_bytes_per_worker,
            stats: &self.shared.stats[self.id],
            zc_pinned: &mut self.zc_pinned,
            zc_limit: if self.shared.config.relay.send_zc {
                self.shared.config.relay.buffers_per_worker / ZC_PINNED_SHARE
            } else {
                0
            },
            waiting: self.waiting,
            others_wait: !self.starving.is_empty(),
            wakes_owed: &mut self.wakes_owed,
        };
        Some(f(dir, &mut env))
    }

    /// What a direction's machine waits for, or how it ended, that every engine handles
    /// alike (the engines arm their own polls for `Readable` / `Writable`).
    fn after(&mut self, id: ConnId, next: Next) {
        match next {
            Next::InFlight | Next::Readable | Next::Writable => {}
            Next::Pool => self.wait_for_pool(id),
            Next::Park(at) => self.park(id, at),
            Next::Finished => self.direction_done(id),
            Next::QuotaCut => self.quota_cut(id),
            Next::Fail(e) => self.fail(id, e),
        }
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
        let peer_done = self.side(peer).is_some_and(|p| p.done);
        let step = pair::direction_ended(Next::Finished, peer_done);
        // SAFETY: shutdown on the peer's socket, which stays open while this pair lives.
        unsafe { libc::shutdown(peer_fd, libc::SHUT_WR) };
        if step == Some(PairStep::HalfCloseAndEnd) {
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
        let (key, peer, first, started) = (s.key, s.peer, s.first, s.started);
        let bytes = s.dir.flow().bytes;
        let peer_bytes = match self.conns.get_mut(peer).map(|c| &mut c.phase) {
            Some(Phase::Relay(p)) => {
                p.ended = true;
                p.dir.flow().bytes
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
        // Written by the log thread: a stalled journal never blocks the relays.
        let line = super::stream_log::Finished {
            key,
            first_to_second: f2s,
            second_to_first: s2f,
            duration_ms: self.now.duration_since(started).as_millis() as u64,
            aborted: kind == CloseKind::Abort,
        };
        if !self.shared.stream_log.record(line) {
            self.stats().stream_log_dropped.fetch_add(1, Relaxed);
        }
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
        if let Some(PairStep::End { this, peer }) = pair::direction_ended(Next::Fail(err), false) {
            self.end_relay_as(id, this, peer);
        }
    }

    /// Direction `id` found every pipe or buffer lent: it waits in `starving` (nothing is
    /// armed for it) until the ring loop wakes it (`wake_waiters`).
    pub(in crate::worker) fn wait_for_pool(&mut self, id: ConnId) {
        let Some(s) = self.side(id) else {
            return;
        };
        debug_assert_eq!(s.dir.hold(), Hold::Pool);
        self.waiting += 1;
        self.starving.push_back(id);
        self.stats().relay_waits.fetch_add(1, Relaxed);
    }

    /// A buffer or pipe came free: the longest-waiting direction gets it, woken by the
    /// ring loop after this event (never from here: a chain of wakeups, each freeing the
    /// pipe again, once recursed as deep as the queue was long).
    pub(in crate::worker) fn wake_starving(&mut self) {
        if self.waiting > 0 {
            self.wakes_owed += 1;
        }
    }

    /// Goes on with a direction that waited for a pipe or buffer, or for shaping tokens.
    pub(in crate::worker) fn resume_reading(&mut self, id: ConnId) {
        match self.side(id).map(|s| &s.dir) {
            Some(Dir::Copy(_)) => self.copy_run(id, |d, env, out| d.resume(env, out)),
            Some(Dir::Splice(_)) => self.splice_resume(id),
            Some(Dir::UringSplice(_)) => self.us_run(id, |d, env, out| d.resume(env, out)),
            None => {}
        }
    }

    /// Parks a direction until its shaping tokens come in (`at`); no read is armed
    /// meanwhile. Its machine holds `Hold::Tokens` until `resume_reading`.
    fn park(&mut self, id: ConnId, at: Instant) {
        if self.side(id).is_none() {
            return;
        }
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
        if let Some(PairStep::End { this, peer }) = pair::direction_ended(Next::QuotaCut, false) {
            self.end_relay_as(id, this, peer);
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
            if self.side(id).is_none_or(|s| s.dir.hold() != Hold::Tokens) {
                continue;
            }
            self.resume_reading(id);
        }
    }

    /// Ends relays that moved nothing either way for `idle_timeout` (a stalled direction
    /// that still moves some bytes is not idle; one whose receiver reads nothing is).
    pub(in crate::worker) fn sweep_idle_relays(&mut self) {
        let Some(limit) = self.shared.config.idle_timeout() else {
            return;
        };
        let now = self.now;
        for id in self.conns.ids() {
            let Some(s) = self.side(id) else {
                continue;
            };
            if !s.first || now.duration_since(s.dir.flow().last_active) < limit {
                continue;
            }
            let peer = s.peer;
            let peer_idle = self
                .side(peer)
                .is_none_or(|p| now.duration_since(p.dir.flow().last_active) >= limit);
            if peer_idle {
                self.end_relay(id, CloseKind::Abort);
            }
        }
    }
}

/// Free room in the send buffer of socket `fd` (`SO_SNDBUF` less what is queued,
/// `SIOCOUTQ`): about how much a send would take now. A direction reads no more than this,
/// so what it cannot deliver at once stays small (and the kernel's, not a pool's, pipe or
/// buffer holds the stalled stream). `usize::MAX` when it cannot be read.
fn send_space(fd: std::os::fd::RawFd) -> usize {
    let mut sndbuf: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let mut outq: libc::c_int = 0;
    // SAFETY: getsockopt and ioctl(SIOCOUTQ) on a socket the worker owns, each writing one
    // c_int we pass with its size.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut sndbuf as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
            && libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) == 0
    };
    if !ok {
        return usize::MAX;
    }
    (sndbuf.max(0) as usize).saturating_sub(outq.max(0) as usize)
}

/// The relay side of a live (not closing) connection. A free function so callers can
/// borrow other worker fields at the same time.
pub(in crate::worker) fn side_of(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Side> {
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

/// Sets a socket's `SO_SNDBUF` or `SO_RCVBUF`: the kernel doubles it for its bookkeeping
/// and stops autotuning it. A failure leaves the kernel's own value.
fn set_buffer(fd: std::os::fd::RawFd, opt: libc::c_int, bytes: usize) {
    let v = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt with a correctly sized int on a socket the worker owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
