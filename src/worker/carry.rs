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
use crate::socks5::{failure_reply, success_reply, Rep};
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
    /// The handover gave up waiting (`abandon`); set with `listeners` locked.
    abandoned: std::sync::atomic::AtomicBool,
}

impl ExportSink {
    /// The handover gives up waiting for the workers: what is in the sink is taken (to
    /// be restored), and a worker that reports later keeps its listeners and serves them.
    pub fn abandon(&self) -> (Vec<OwnedFd>, Vec<(OwnedFd, Carried)>) {
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        self.abandoned.store(true, Relaxed);
        let ls = std::mem::take(&mut *ls);
        // After the flag: a connection pushed before is taken here, one after is refused.
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        (ls, conns)
    }

    /// Puts a connection in the sink; gives it back if the handover gave up meanwhile
    /// (checked under the lock `abandon` takes the connections with, so none falls
    /// between).
    fn push_conn(&self, fd: OwnedFd, carried: Carried) -> Option<(OwnedFd, Carried)> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if self.abandoned.load(Relaxed) {
            return Some((fd, carried));
        }
        conns.push((fd, carried));
        None
    }

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
            // Activated (no longer pending): its relay starts here once a reply is out,
            // even where this half waits or its own reply is not the one activated.
            if c.closing.is_some() || !c.pending {
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
        if let Some(carried) = carried {
            self.carry_out(fd, carried);
        }
    }

    /// Into the sink; or, when the handover gave up meanwhile, kept to be taken back
    /// (at once when this worker serves again already).
    fn carry_out(&mut self, fd: OwnedFd, carried: Carried) {
        let back = match &self.export {
            Some(sink) => sink.push_conn(fd, carried),
            None => Some((fd, carried)),
        };
        if let Some(conn) = back {
            self.kept_back.push(conn);
            if self.export.is_none() {
                self.take_back_kept();
            }
        }
    }

    /// The connections kept back from a handover that gave up go on here.
    fn take_back_kept(&mut self) {
        for (fd, carried) in std::mem::take(&mut self.kept_back) {
            self.adopt(fd, carried, true);
        }
    }

    /// A connection accepted while handing over goes over untouched.
    pub(super) fn export_fresh(&mut self, fd: OwnedFd) {
        self.carry_out(
            fd,
            Carried::Handshake {
                received: Vec::new(),
                replied: 0,
            },
        );
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
        let mut given = sink.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if sink.abandoned.load(Relaxed) {
            // Too late: the handover gave up. Every accept has ended: serve them again.
            self.export = None;
            self.draining = false;
            self.export_reported = false;
            for i in 0..self.listeners.len() {
                self.arm_accept(i);
            }
        } else {
            given.extend(
                std::mem::take(&mut self.listeners)
                    .into_iter()
                    .map(OwnedFd::from),
            );
        }
        drop(given);
        sink.report();
        // Given up: what finished leaving after that goes on here.
        if self.export.is_none() {
            self.take_back_kept();
        }
    }

    /// The second round: every hand-off sent before the other cores reported has been
    /// seen (mailboxes are in order), so the sink is complete once all have sealed.
    pub(super) fn export_seal(&mut self, sink: Arc<ExportSink>) {
        sink.report();
    }

    /// The handover failed after this worker exported: it serves `listeners` again (the
    /// connections come back through `adopt`).
    pub(super) fn restore(&mut self, listeners: Vec<OwnedFd>) {
        if self.stopping {
            return;
        }
        // A worker that had not reported yet (the export timed out) keeps its own
        // listeners: their cancelled accepts are re-armed on the next tick.
        if self.export.take().is_some() {
            self.draining = false;
            self.export_reported = false;
            self.accepts_live = 0;
        }
        self.take_back_kept();
        // Served here whatever this worker's state: dropped, they would close.
        for fd in listeners {
            self.listeners.push(socket2::Socket::from(fd));
            self.arm_accept(self.listeners.len() - 1);
        }
    }

    /// A connection handed over by an old process (or taken back by this one after a
    /// failed handover: `restored`, not counted as adopted).
    pub(super) fn adopt(&mut self, fd: OwnedFd, carried: Carried, restored: bool) {
        if self.stopping || self.draining {
            return;
        }
        let src = Source::of(super::handshake::peer_ip(fd.as_raw_fd()));
        // Admitted by the old process already: counted here without a second check.
        self.shared.ip_limits.count(src);
        self.shared.open.fetch_add(1, Relaxed);
        self.shared.pending.fetch_add(1, Relaxed);
        self.stats().open.fetch_add(1, Relaxed);
        if !restored {
            self.stats().adopted.fetch_add(1, Relaxed);
        }
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
                        // `unsent` ends with the success reply, after any intermediate
                        // replies still owed: those go out before the refusal, as in
                        // `place`.
                        let owed = unsent.len().checked_sub(success_reply(&key).len());
                        match owed {
                            // Its success reply is (partly) out: all that is left is to close.
                            None => self.close(id, CloseKind::Graceful),
                            Some(n) => {
                                let mut bytes = unsent[..n].to_vec();
                                bytes.extend_from_slice(&failure_reply(Rep::NotAllowed));
                                self.start_reply(id, &bytes, AfterReply::Close);
                            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Socks5Auth};
    use crate::key::{KeyRouter, StreamKey};
    use crate::socks5::{Handshake, Step};
    use crate::stats::WorkerStats;
    use crate::worker::conn::HS_BUF;
    use crate::worker::mailbox::Mailbox;
    use crate::worker::Shared;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn key() -> StreamKey {
        StreamKey::from_parts("sid", "a@x/r", "b@x/r")
    }

    fn request(key: &StreamKey) -> Vec<u8> {
        let mut r = vec![5, 1, 0, 3, StreamKey::LEN as u8];
        r.extend_from_slice(key.as_bytes());
        r.extend_from_slice(&[0, 0]);
        r
    }

    fn auth() -> Arc<Socks5Auth> {
        Arc::new(Socks5Auth {
            username: "user".into(),
            password: "secret".into(),
        })
    }

    /// A whole client handshake: greeting, the RFC 1929 exchange when `auth`, request.
    fn handshake(auth: bool) -> Vec<u8> {
        let mut b = if auth { vec![5, 1, 2] } else { vec![5, 1, 0] };
        if auth {
            b.extend_from_slice(&[1, 4]);
            b.extend_from_slice(b"user");
            b.push(6);
            b.extend_from_slice(b"secret");
        }
        b.extend_from_slice(&request(&key()));
        b
    }

    fn fresh_hs(auth: Option<Arc<Socks5Auth>>) -> Hs {
        Hs {
            parser: Handshake::new(auth),
            buf: [0; HS_BUF],
            len: 0,
            replied: 0,
            out: Vec::new(),
            sent: 0,
        }
    }

    /// Every split of a real handshake, with every count of intermediate reply bytes the
    /// old process may have sent by then: the new process sends exactly the rest of the
    /// replies (none twice, none skipped) and ends with the same key.
    #[test]
    fn replay_goes_on_exactly_where_any_split_stopped() {
        for with_auth in [false, true] {
            let a = with_auth.then(auth);
            let full = handshake(with_auth);
            let mut all_replies = Vec::new();
            let end = Handshake::new(a.clone()).feed(&full, &mut all_replies);
            assert_eq!(end, Step::Done(key()));
            let expected = if with_auth {
                vec![5, 2, 1, 0]
            } else {
                vec![5, 0]
            };
            assert_eq!(all_replies, expected);
            for k in 0..=full.len() {
                let mut produced = Vec::new();
                Handshake::new(a.clone()).feed(&full[..k], &mut produced);
                for replied in 0..=produced.len() {
                    let mut hs = fresh_hs(a.clone());
                    let step = replay(&mut hs, &full[..k], replied);
                    let what = format!("auth {with_auth}, split {k}, replied {replied}");
                    assert_eq!(&hs.buf[..hs.len], &full[..k], "{what}");
                    assert_eq!(hs.replied, replied, "{what}");
                    assert_eq!(hs.out[hs.sent..], produced[replied..], "{what}");
                    let rest = hs.parser.feed(&full[k..], &mut hs.out);
                    let last = if k == full.len() { step } else { rest };
                    assert_eq!(last, Step::Done(key()), "{what}");
                    assert_eq!(hs.out[hs.sent..], all_replies[replied..], "{what}");
                }
            }
        }
    }

    /// A handshake that fails on replay (wrong password) fails the same way and queues
    /// the same refusal after what was sent.
    #[test]
    fn replay_of_a_bad_password_refuses_it_again() {
        let mut full = handshake(true);
        // The password's first byte (greeting 3, auth header 2, user 4, its length 1).
        let p = 3 + 2 + 4 + 1;
        assert_eq!(full[p], b's');
        full[p] = b'S';
        let cut = p + 6;
        let mut produced = Vec::new();
        let want = Handshake::new(Some(auth())).feed(&full[..cut], &mut produced);
        assert!(matches!(want, Step::Failed(_)), "{want:?}");
        let mut hs = fresh_hs(Some(auth()));
        assert_eq!(replay(&mut hs, &full[..cut], 2), want);
        assert_eq!(hs.out[hs.sent..], produced[2..]);
    }

    fn worker() -> Worker {
        let mut config = Config {
            workers: 1,
            ..Config::default()
        };
        config.relay.buffers_per_worker = 64;
        let shared = Arc::new(Shared {
            auth: None,
            router: KeyRouter::new(1),
            stats: vec![WorkerStats::default()].into_boxed_slice(),
            mailboxes: vec![Mailbox::new().unwrap()].into_boxed_slice(),
            open: Default::default(),
            pending: Default::default(),
            max_connections: config.max_connections.into(),
            max_pending: config.max_pending.into(),
            fd_budget: usize::MAX,
            ip_limits: crate::limits::IpLimiter::new(config.source_limits()),
            admitting: true.into(),
            shaping: crate::shaping::Shaping::new(&config.shaping, &config.quota).unwrap(),
            stream_log: crate::worker::stream_log::StreamLog::start().unwrap(),
            config,
        });
        Worker::new(0, shared, Vec::new()).unwrap()
    }

    /// A client connection accepted on `l`, counted as `accepted` counts it, not placed yet.
    fn half(w: &mut Worker, l: &TcpListener) -> (TcpStream, ConnId) {
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        w.shared.open.fetch_add(1, Relaxed);
        w.shared.pending.fetch_add(1, Relaxed);
        w.stats().open.fetch_add(1, Relaxed);
        let id = w.conns.insert(Conn::finished_handshake(
            server.into_raw_fd(),
            Source::of(std::net::Ipv4Addr::LOCALHOST.into()),
        ));
        (client, id)
    }

    /// Runs the worker's ring (as its loop does) until `done` or 5 s.
    fn pump(w: &mut Worker, mut done: impl FnMut(&Worker) -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !done(w) && Instant::now() < end {
            let cqes = w
                .ring
                .submit_and_reap(Some(Duration::from_millis(20)))
                .unwrap();
            w.now = Instant::now();
            for cqe in &cqes {
                w.dispatch(cqe);
            }
            w.ring.recycle(cqes);
        }
    }

    fn relaying(w: &Worker, id: ConnId) -> bool {
        w.conns
            .get(id)
            .is_some_and(|c| matches!(c.phase, Phase::Relay(_)))
    }

    /// An activation answered while a half's success reply is still going out leaves the
    /// pair to start relaying when it is out (`Reply::activated`). A handover at that
    /// moment must leave both halves here: the requester was told "activated", and the
    /// new process can never activate them again.
    #[test]
    fn an_export_leaves_a_pair_activated_during_its_reply_here() {
        // Whether the first half's reply is out (it waits) when the pair is activated.
        for first_waiting in [true, false] {
            let mut w = worker();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let (mut ca, a) = half(&mut w, &l);
            let (mut cb, b) = half(&mut w, &l);
            w.place(a, key(), &[]);
            if first_waiting {
                pump(&mut w, |w| {
                    w.conns
                        .get(a)
                        .is_some_and(|c| matches!(c.phase, Phase::Waiting { .. }))
                });
            }
            // The second half's reply is queued, not yet out, when the activation comes.
            w.place(b, key(), &[]);
            let outcome = Arc::new(Mutex::new(None));
            let o = outcome.clone();
            w.activate(
                key(),
                None,
                None,
                Box::new(move |r| *o.lock().unwrap() = Some(r)),
            );
            assert_eq!(
                *outcome.lock().unwrap(),
                Some(crate::rendezvous::ActivationOutcome::Activated)
            );
            let sink = Arc::new(ExportSink::default());
            w.start_export(sink.clone());
            pump(&mut w, |w| {
                sink.wait(1, Duration::ZERO) && relaying(w, a) && relaying(w, b)
            });
            let what = format!("first half waiting: {first_waiting}");
            assert!(sink.wait(1, Duration::ZERO), "{what}: the export reported");
            assert_eq!(
                sink.conns.lock().unwrap().len(),
                0,
                "{what}: an activated half was handed over"
            );
            assert!(relaying(&w, a) && relaying(&w, b), "{what}: not relaying");
            // Both replies arrived, and the stream carries bytes.
            for c in [&mut ca, &mut cb] {
                let mut reply = [0u8; 47];
                c.read_exact(&mut reply).unwrap();
                assert_eq!(reply, success_reply(&key()), "{what}");
            }
            ca.write_all(b"ping").unwrap();
            cb.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            pump(&mut w, |_| {
                let mut b = [0u8; 8];
                if let Ok(n) = cb.read(&mut b) {
                    got.extend_from_slice(&b[..n]);
                }
                got.len() >= 4
            });
            assert_eq!(got, b"ping", "{what}");
            w.shutdown_now();
        }
    }

    /// A client connection and the server side's descriptor (for `Worker::accepted`).
    fn accept(l: &TcpListener) -> (TcpStream, RawFdHolder) {
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, RawFdHolder(server.into_raw_fd()))
    }

    /// A server-side descriptor not yet given to a worker.
    struct RawFdHolder(i32);

    fn counts(w: &Worker) -> (usize, usize) {
        (w.shared.open.load(Relaxed), w.shared.pending.load(Relaxed))
    }

    /// Export then adoption over real sockets: a handshake whose read completes with the
    /// greeting during the cancel, a client that leaves during the export, a waiting
    /// half. The counters return to zero on the old side and count what came over on the
    /// new one; the adopted handshake gets each reply byte exactly once.
    #[test]
    fn export_then_adopt_goes_on_where_the_old_worker_stopped() {
        let mut old = worker();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // x: its greeting is in the socket when the export cancels its read.
        let (mut x, xfd) = accept(&l);
        x.write_all(&[5, 1, 0]).unwrap();
        // y: gone before the export.
        let (y, yfd) = accept(&l);
        drop(y);
        // z: a whole pipelined handshake, placed and waiting for its peer.
        let (mut z, zfd) = accept(&l);
        z.write_all(&[&[5, 1, 0][..], &request(&key())].concat())
            .unwrap();
        old.accepted(zfd.0);
        pump(&mut old, |w| {
            w.conns.ids().iter().any(|&id| {
                w.conns
                    .get(id)
                    .is_some_and(|c| matches!(c.phase, Phase::Waiting { .. }))
            })
        });
        let mut zr = [0u8; 49];
        z.read_exact(&mut zr).unwrap();
        assert_eq!(zr[..2], [5, 0]);
        assert_eq!(zr[2..], success_reply(&key()));
        old.accepted(xfd.0);
        old.accepted(yfd.0);
        assert_eq!(counts(&old), (3, 3));
        let sink = Arc::new(ExportSink::default());
        old.start_export(sink.clone());
        pump(&mut old, |_| sink.wait(1, Duration::ZERO));
        assert!(sink.wait(1, Duration::ZERO), "the export reported");
        assert_eq!(counts(&old), (0, 0), "open, pending after the export");
        assert_eq!(old.stats().open.load(Relaxed), 0);
        let mut carried = std::mem::take(&mut *sink.conns.lock().unwrap());
        carried.sort_by_key(|(_, c)| matches!(c, Carried::Placed { .. }));
        let kinds: Vec<_> = carried.iter().map(|(_, c)| c.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                Carried::Handshake {
                    received: vec![5, 1, 0],
                    replied: 0
                },
                Carried::Placed {
                    key: key(),
                    unsent: Vec::new()
                },
            ]
        );
        old.shutdown_now();

        let mut new = worker();
        for (fd, c) in carried {
            new.adopt(fd, c, false);
        }
        assert_eq!(counts(&new), (2, 2));
        assert_eq!(new.stats().adopted.load(Relaxed), 2);
        let mut got = Vec::new();
        x.set_nonblocking(true).unwrap();
        pump(&mut new, |_| {
            let mut b = [0u8; 64];
            if let Ok(n) = x.read(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
            got.len() >= 2
        });
        assert_eq!(got, [5, 0], "the method reply, once");
        x.write_all(&request(&key())).unwrap();
        got.clear();
        pump(&mut new, |_| {
            let mut b = [0u8; 64];
            if let Ok(n) = x.read(&mut b) {
                got.extend_from_slice(&b[..n]);
            }
            got.len() >= 47
        });
        assert_eq!(got, success_reply(&key()), "the success reply, once");
        // x and z are now the two halves of the key: paired in the new worker's table.
        assert!(matches!(
            new.table.activate(&key()),
            crate::rendezvous::Activation::Start { .. }
        ));
        new.shutdown_now();
    }

    /// A third half adopted for a complete pair is refused as the old process would have
    /// refused it: the intermediate replies it still owed go out before the refusal.
    #[test]
    fn an_adopted_third_half_gets_its_owed_replies_then_the_refusal() {
        let mut new = worker();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        for owed in [&[][..], &[][..], &[5, 0][..]] {
            let (c, fd) = accept(&l);
            // SAFETY: the descriptor came from a socket this test owns and gives away.
            let fd = unsafe { OwnedFd::from_raw_fd(fd.0) };
            let mut unsent = owed.to_vec();
            unsent.extend_from_slice(&success_reply(&key()));
            new.adopt(fd, Carried::Placed { key: key(), unsent }, false);
            clients.push(c);
        }
        let mut third = clients.pop().unwrap();
        third.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut closed = false;
        pump(&mut new, |_| {
            let mut b = [0u8; 64];
            match third.read(&mut b) {
                Ok(0) => closed = true,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(_) => {}
            }
            closed
        });
        let mut want = vec![5, 0];
        want.extend_from_slice(&failure_reply(Rep::NotAllowed));
        assert_eq!(got, want);
        assert!(closed, "refused and closed");
        new.shutdown_now();
    }
}
