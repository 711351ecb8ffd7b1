//! One worker per core: its own ring, listener shards, connections and rendezvous table.
//! The loop submits, reaps and dispatches completions by token to the handlers in
//! `handshake.rs`, `place.rs` and `relay/`; the protocol decisions live in the sans-IO
//! modules (`socks5`, `rendezvous`).

mod bufring;
pub(crate) mod carry;
mod conn;
mod handshake;
pub(crate) mod listen;
pub(crate) mod mailbox;
mod pipes;
mod place;
mod relay;
mod ring;
mod slab;
pub(crate) mod stream_log;

use crate::config::{Config, Engine, Socks5Auth};
use crate::key::KeyRouter;
use crate::relay::Hold;
use crate::rendezvous::Rendezvous;
use crate::stats::WorkerStats;
use bufring::BufRing;
use conn::{CloseKind, Conn, Phase};
use io_uring::{cqueue, opcode, types};
use mailbox::{Mailbox, Msg};
use pipes::PipePool;
use ring::{token, untoken, Op, Ring};
use slab::{ConnId, Slab};
use socket2::Socket;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// State shared by all workers and the `Handle`.
pub(crate) struct Shared {
    pub config: Config,
    pub auth: Option<Arc<Socks5Auth>>,
    pub router: KeyRouter,
    pub stats: Box<[WorkerStats]>,
    pub mailboxes: Box<[Mailbox]>,
    /// Client connections open, whole process (bounded by max_connections).
    pub open: AtomicUsize,
    /// Connections accepted and not yet activated, whole process (bounded by max_pending).
    pub pending: AtomicUsize,
    /// Live limits (SIGHUP may change them): `max_connections`, `max_pending`.
    pub max_connections: AtomicUsize,
    pub max_pending: AtomicUsize,
    /// Client connections the open-files limit leaves room for (`server::fd_budget`).
    pub fd_budget: usize,
    pub ip_limits: crate::limits::IpLimiter,
    /// New connections are accepted only while the component is logged in (or none is
    /// configured): a half that nothing could activate is refused at once.
    pub admitting: std::sync::atomic::AtomicBool,
    /// Bandwidth shaping and quotas; hands out nothing when both are off.
    pub shaping: Arc<crate::shaping::Shaping>,
    /// The queue of finished streams' log lines to their writer thread.
    pub stream_log: stream_log::StreamLog,
}

const TICK: Duration = Duration::from_millis(250);
/// Idle relays are looked for every this many ticks.
const IDLE_SWEEP_TICKS: u32 = 8;
/// Waiting directions woken per ring-loop round at most; the rest wait for the next round
/// (which then does not block), so no event does work that grows with the queue.
const WAKE_BUDGET: usize = 256;
/// At most one `accept failed` log line per listener this often; the rest are counted.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Worker {
    id: usize,
    shared: Arc<Shared>,
    ring: Ring,
    listeners: Vec<Socket>,
    conns: Slab<Conn>,
    table: Rendezvous<ConnId>,
    /// Handshake deadlines in accept order (one timeout for all, so already sorted).
    hs_deadlines: VecDeque<(Instant, ConnId)>,
    bufs: Option<BufRing>,
    pipes: PipePool,
    /// Directions waiting for a buffer or pipe to come free, longest first. Bounded by
    /// the connections (a direction is in it once while `starving`, plus entries of
    /// connections closed meanwhile, dropped when reached or compacted).
    starving: VecDeque<ConnId>,
    /// Directions in `starving` that still wait (`Side::starving` set).
    waiting: usize,
    /// Buffers or pipes given back since the waiters were last woken: that many waiters
    /// are woken by the ring loop (`wake_waiters`), never from inside the hand-back.
    wakes_owed: usize,
    /// Bytes held in stalled directions' own buffers (their machines' spills), bounded by
    /// `relay.stall_bytes_per_worker`.
    spill_bytes: usize,
    /// Buffers pinned by zero-copy sends in flight (bounded: `relay::ZC_PINNED_SHARE`).
    zc_pinned: usize,
    /// Last `accept failed` line logged, and failures since then not logged.
    accept_log: Option<Instant>,
    accept_unlogged: u64,
    wake_buf: Box<u64>,
    tick_ts: Box<types::Timespec>,
    ticks: u32,
    now: Instant,
    stopping: bool,
    /// Not accepting any more; relays run to their end.
    draining: bool,
    /// Listeners whose multishot accept ended on an error (e.g. EMFILE): re-armed next tick.
    accept_rearm: Vec<usize>,
    msgs: Vec<Msg>,
    expired: Vec<ConnId>,
    /// Directions waiting for shaping tokens: (when, slot index, generation), soonest first.
    throttled: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u32, u32)>>,
    /// What a copy direction's machine asked for last (kept to reuse its allocation).
    actions: Vec<crate::relay::copy::Action>,
    us_actions: Vec<crate::relay::uring_splice::Action<pipes::Pipe>>,
    /// Guards of running relays by key, dropped when the relay ends.
    guards: std::collections::HashMap<crate::key::StreamKey, Box<dyn Send>>,
    /// Set while an upgrade hands this worker's connections to a new process.
    export: Option<Arc<carry::ExportSink>>,
    /// Connections being handed over with operations still in flight.
    exporting: usize,
    /// Multishot accepts not yet ended while handing over.
    accepts_live: usize,
    /// The hand-over of this worker's share is complete and reported.
    export_reported: bool,
    /// Connections that finished leaving after the handover gave up (`abandon`): taken
    /// back here once the worker serves again.
    kept_back: Vec<(std::os::fd::OwnedFd, crate::handover::wire::Carried)>,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>, listeners: Vec<Socket>) -> io::Result<Worker> {
        let ring = Ring::new(4096)?;
        let relay = &shared.config.relay;
        let bufs = match relay.engine {
            Engine::Copy => Some(BufRing::new(
                &ring.ring,
                relay.buffers_per_worker,
                relay.buffer_size,
            )?),
            Engine::Splice | Engine::UringSplice => None,
        };
        // Every pipe is made now, so no running relay ever needs a new descriptor.
        let npipes = match relay.engine {
            Engine::Copy => 0,
            Engine::Splice | Engine::UringSplice => relay.pipes_per_worker,
        };
        let pipes = PipePool::new(npipes, relay.pipe_size)?;
        let table = Rendezvous::new(shared.config.activation_timeout());
        Ok(Worker {
            id,
            ring,
            listeners,
            conns: Slab::new(),
            table,
            hs_deadlines: VecDeque::new(),
            bufs,
            pipes,
            starving: VecDeque::new(),
            waiting: 0,
            wakes_owed: 0,
            spill_bytes: 0,
            zc_pinned: 0,
            accept_log: None,
            accept_unlogged: 0,
            wake_buf: Box::new(0),
            tick_ts: Box::new(types::Timespec::from(TICK)),
            ticks: 0,
            now: Instant::now(),
            stopping: false,
            draining: false,
            accept_rearm: Vec::new(),
            msgs: Vec::new(),
            expired: Vec::new(),
            guards: Default::default(),
            actions: Vec::new(),
            us_actions: Vec::new(),
            throttled: Default::default(),
            export: None,
            exporting: 0,
            accepts_live: 0,
            export_reported: false,
            kept_back: Vec::new(),
            shared,
        })
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.id]
    }

    pub fn run(mut self) -> io::Result<()> {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_wake();
        let tick = opcode::Timeout::new(&*self.tick_ts)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(token(Op::Tick, 0, 0));
        self.ring.push(tick);

        while !self.stopping {
            // Shaped directions wake the ring when their tokens are due; with shaping off
            // the heap is empty and the ring waits for completions only.
            let wait = if self.wakes_owed > 0 {
                // Waiters left over from the last round's budget: do not block.
                Some(Duration::ZERO)
            } else {
                self.throttled
                    .peek()
                    .map(|r| r.0 .0.saturating_duration_since(Instant::now()))
            };
            let cqes = self.ring.submit_and_reap(wait)?;
            self.now = Instant::now();
            for cqe in &cqes {
                self.dispatch(cqe);
            }
            self.ring.recycle(cqes);
            if !self.throttled.is_empty() {
                self.resume_throttled();
            }
            self.wake_waiters();
            self.publish_gauges();
        }
        self.shutdown_now();
        Ok(())
    }

    fn dispatch(&mut self, cqe: &cqueue::Entry) {
        let Some((op, idx, gen)) = untoken(cqe.user_data()) else {
            return;
        };
        let res = cqe.result();
        let flags = cqe.flags();
        match op {
            Op::Accept => self.on_accept(idx as usize, res, flags),
            Op::Wake => self.on_wake(),
            Op::Tick => self.on_tick(),
            Op::Cancel => {}
            _ => {
                let id = ConnId { idx, gen };
                // Multishot completions with MORE still have their operation in flight.
                let last = !cqueue::more(flags);
                let Some(c) = self.conns.get_mut(id) else {
                    return;
                };
                if last {
                    c.inflight -= 1;
                    if op == Op::SendZc {
                        // The zero-copy send's last completion: its buffer is unpinned.
                        self.zc_pinned -= 1;
                    }
                }
                if c.exporting {
                    self.export_completion(id, op, res);
                    return;
                }
                if c.closing.is_some() {
                    let done = c.inflight == 0;
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        // A recv that raced the cancel took a buffer: give it back.
                        if let Some(b) = self.bufs.as_mut() {
                            b.taken();
                            b.give_back(bid);
                            self.wake_starving();
                        }
                    }
                    if done {
                        self.finalize(id);
                    }
                    return;
                }
                match op {
                    Op::HsRecv => self.on_hs_recv(id, res),
                    Op::HsSend => self.on_hs_send(id, res),
                    Op::Reply => self.on_reply_sent(id, res),
                    Op::WaitPoll => self.on_wait_poll(id, res),
                    Op::Recv => self.copy_on_recv(id, res, flags),
                    Op::Send => self.copy_on_send(id, res),
                    Op::PollIn | Op::PollOut => self.splice_on_ready(id, res),
                    Op::SendZc => self.copy_on_send_zc(id, res, flags),
                    Op::UsPollIn => self.us_on_readable(id, res),
                    Op::UsPollOut => self.us_on_writable(id, res),
                    Op::UsIn => self.us_on_in(id, res),
                    Op::UsOut => self.us_on_out(id, res),
                    Op::CopyPollOut => self.copy_on_writable(id, res),
                    Op::Accept | Op::Wake | Op::Tick | Op::Cancel => unreachable!(),
                }
            }
        }
    }

    /// Submits an operation on behalf of a connection, counting it in flight.
    fn push_conn_op(&mut self, id: ConnId, entry: io_uring::squeue::Entry) {
        if let Some(c) = self.conns.get_mut(id) {
            c.inflight += 1;
        }
        self.ring.push(entry);
    }

    /// Arms a one-shot poll on `fd` (a connection's socket or its peer's) for `events`;
    /// its completion comes back as `op` for connection `id`.
    fn arm_poll(&mut self, id: ConnId, fd: RawFd, events: i16, op: Op) {
        let e = opcode::PollAdd::new(types::Fd(fd), events as u32)
            .build()
            .user_data(token(op, id.idx, id.gen));
        self.push_conn_op(id, e);
    }

    fn arm_accept(&mut self, i: usize) {
        let fd = self.listeners[i].as_raw_fd();
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token(Op::Accept, i as u32, 0));
        self.ring.push(e);
    }

    fn arm_wake(&mut self) {
        let efd = self.shared.mailboxes[self.id].efd;
        let e = opcode::Read::new(types::Fd(efd), (&mut *self.wake_buf as *mut u64).cast(), 8)
            .build()
            .user_data(token(Op::Wake, 0, 0));
        self.ring.push(e);
    }

    fn on_accept(&mut self, listener: usize, res: i32, flags: u32) {
        if self.export.is_some() {
            if res >= 0 {
                // SAFETY: a fresh descriptor from accept, owned by nobody else.
                self.export_fresh(unsafe { std::os::fd::OwnedFd::from_raw_fd(res) });
            }
            if !cqueue::more(flags) {
                self.export_accept_ended();
            }
            return;
        }
        if !cqueue::more(flags) && !self.stopping && !self.draining {
            if res < 0 {
                // EMFILE and friends end the multishot; retry on the next tick, not in a spin.
                self.accept_failed(-res);
                self.accept_rearm.push(listener);
            } else {
                self.arm_accept(listener);
            }
        }
        if res < 0 {
            return;
        }
        self.accepted(res);
    }

    /// Counts an accept failure and logs it at most once per `ACCEPT_LOG_EVERY`, with the
    /// number of failures since the last line.
    fn accept_failed(&mut self, errno: i32) {
        self.stats().accept_errors.fetch_add(1, Relaxed);
        self.accept_unlogged += 1;
        if self
            .accept_log
            .is_some_and(|t| self.now.duration_since(t) < ACCEPT_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            worker = self.id,
            error = %io::Error::from_raw_os_error(errno),
            failures = self.accept_unlogged,
            "accept failed (at most one line per 10 s; retried every tick)"
        );
        self.accept_log = Some(self.now);
        self.accept_unlogged = 0;
    }

    /// Wakes up to `WAKE_BUDGET` of the directions owed a wakeup (a pipe or buffer came
    /// back for each), longest waiting first. Called by the ring loop only, so a wakeup
    /// that frees a pipe again queues the next one instead of calling into it.
    fn wake_waiters(&mut self) {
        let mut budget = WAKE_BUDGET;
        while self.wakes_owed > 0 && budget > 0 {
            let Some(id) = self.starving.pop_front() else {
                self.wakes_owed = 0;
                break;
            };
            if relay::side_of(&mut self.conns, id).is_none_or(|s| s.dir.hold() != Hold::Pool) {
                continue;
            }
            self.waiting -= 1;
            self.wakes_owed -= 1;
            budget -= 1;
            self.resume_reading(id);
        }
        if self.waiting == 0 {
            // Nobody waits: stale entries (closed connections) go, owed wakeups lapse.
            self.starving.clear();
            self.wakes_owed = 0;
        } else if self.wakes_owed > 0 {
            self.stats().relay_wakeups_deferred.fetch_add(1, Relaxed);
        } else if self.starving.len() > 2 * self.waiting + 1024 {
            // Entries of connections that closed while waiting: drop them (bounded work,
            // amortised over the entries that made the queue grow).
            let conns = &mut self.conns;
            self.starving.retain(|&id| {
                relay::side_of(conns, id).is_some_and(|s| s.dir.hold() == Hold::Pool)
            });
        }
    }

    /// The gauges only the worker knows, published once per ring-loop round.
    fn publish_gauges(&self) {
        let st = self.stats();
        st.relay_directions_waiting
            .store(self.waiting as u64, Relaxed);
        st.relay_pipes_lent.store(self.pipes.lent() as u64, Relaxed);
        let bufs = self.bufs.as_ref().map_or(0, |b| b.lent);
        st.relay_buffers_lent.store(bufs as u64, Relaxed);
        st.relay_fallback_bytes
            .store(self.spill_bytes as u64, Relaxed);
        st.deadline_entries.store(
            (self.hs_deadlines.len() + self.table.queued()) as u64,
            Relaxed,
        );
    }

    fn on_wake(&mut self) {
        let mut msgs = std::mem::take(&mut self.msgs);
        self.shared.mailboxes[self.id].drain(&mut msgs);
        for m in msgs.drain(..) {
            match m {
                Msg::HandOff {
                    fd,
                    src,
                    key,
                    prefix,
                } => self.handed_off(fd, src, key, &prefix.0[..prefix.1 as usize]),
                Msg::Activate {
                    key,
                    requester,
                    guard,
                    done,
                } => self.activate(key, requester.as_deref(), guard, done),
                Msg::Drain => self.drain(),
                Msg::Shutdown => self.stopping = true,
                Msg::Export(sink) => self.start_export(sink),
                Msg::ExportSeal(sink) => self.export_seal(sink),
                Msg::Adopt {
                    fd,
                    carried,
                    restored,
                } => self.adopt(fd, carried, restored),
                Msg::Restore(listeners) => self.restore(listeners),
            }
        }
        self.msgs = msgs;
        if !self.stopping {
            self.arm_wake();
        }
    }

    fn on_tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        self.stats().ticks.fetch_add(1, Relaxed);
        for l in std::mem::take(&mut self.accept_rearm) {
            if !self.draining {
                self.arm_accept(l);
            }
        }
        self.expire_handshakes();
        self.expire_unactivated();
        if self.ticks % IDLE_SWEEP_TICKS == 0 {
            self.sweep_idle_relays();
            if self.id == 0 {
                self.shared.ip_limits.sweep(self.now);
            }
        }
    }

    /// Stops accepting (the listeners leave the SO_REUSEPORT group, so a new process bound
    /// to the same ports gets every new connection) and closes every connection that is
    /// not relaying. Running relays go on until they end.
    fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        for i in 0..self.listeners.len() {
            let fd = self.listeners[i].as_raw_fd();
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(token(Op::Cancel, u32::MAX, 0));
            self.ring.push(e);
        }
        // The cancels look the listeners up by fd, so they must run before the close.
        if let Err(e) = self.ring.ring.submit() {
            tracing::warn!(worker = self.id, error = %e, "submitting listener cancels");
        }
        self.listeners.clear();
        for id in self.conns.ids() {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            match &c.phase {
                Phase::Relay(_) => continue,
                Phase::Waiting { key } => {
                    let key = *key;
                    self.table.remove(&key, id);
                }
                _ => {}
            }
            self.close(id, CloseKind::Graceful);
        }
    }

    /// Starts closing a connection: cancels what is in flight, closes when nothing is.
    fn close(&mut self, id: ConnId, kind: CloseKind) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        match c.closing {
            Some(CloseKind::Abort) => return,
            Some(CloseKind::Graceful) if kind == CloseKind::Graceful => return,
            _ => c.closing = Some(kind),
        }
        if c.inflight == 0 {
            self.finalize(id);
        } else {
            self.cancel_ops(id);
        }
    }

    /// Cancels every operation in flight on a connection's descriptor (once).
    fn cancel_ops(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.cancel_sent {
            return;
        }
        c.cancel_sent = true;
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(c.fd)).all())
            .build()
            .user_data(token(Op::Cancel, id.idx, id.gen));
        self.ring.push(e);
    }

    /// Frees a connection with nothing in flight: returns what it borrowed, closes its fd.
    fn finalize(&mut self, id: ConnId) {
        let Some(c) = self.conns.remove(id) else {
            return;
        };
        debug_assert_eq!(c.inflight, 0);
        let mut c = c;
        if let Phase::Relay(side) = &mut c.phase {
            self.release_side(side);
        }
        if c.closing == Some(CloseKind::Abort) {
            set_linger_zero(c.fd);
        }
        // SAFETY: the connection owns its descriptor; nothing is in flight on it.
        unsafe { libc::close(c.fd) };
        if c.pending {
            self.shared.pending.fetch_sub(1, Relaxed);
        }
        self.shared.ip_limits.release(c.src);
        self.shared.open.fetch_sub(1, Relaxed);
        self.stats().open.fetch_sub(1, Relaxed);
    }

    /// Gives back what a relay direction holds (its connection is going away, with nothing
    /// in flight): buffers, pipe, spill bytes, its place among the waiters.
    fn release_side(&mut self, side: &mut conn::Side) {
        if side.dir.hold() == Hold::Pool {
            self.waiting -= 1;
        }
        let (pipe, spill) = match &mut side.dir {
            conn::Dir::Splice(d) => {
                let left = d.release();
                (left.pipe, left.spill)
            }
            conn::Dir::UringSplice(d) => {
                let left = d.release();
                (left.pipe, left.spill)
            }
            conn::Dir::Copy(d) => {
                let (bids, spill) = d.release();
                if let Some(b) = self.bufs.as_mut() {
                    for &bid in &bids {
                        b.give_back(bid);
                    }
                }
                if !bids.is_empty() {
                    self.wake_starving();
                }
                (None, spill)
            }
        };
        if let Some((p, dirty)) = pipe {
            if dirty {
                self.pipes.discard(p);
            } else {
                self.pipes.give_back(p);
            }
            self.wake_starving();
        }
        self.spill_bytes -= spill;
    }

    /// Stops at once: cancels every operation, waits (bounded) for the kernel to finish
    /// with our buffers, then closes every connection. Fields drop in declaration order,
    /// so the ring goes before the buffer ring's memory.
    fn shutdown_now(mut self) {
        let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(token(Op::Cancel, u32::MAX, 0));
        self.ring.push(any);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && self
                .conns
                .ids()
                .iter()
                .any(|&id| self.conns.get(id).is_some_and(|c| c.inflight > 0))
        {
            let Ok(cqes) = self.ring.reap_for(Duration::from_millis(50)) else {
                break;
            };
            for cqe in &cqes {
                if let Some((_, idx, gen)) = untoken(cqe.user_data()) {
                    if let Some(c) = self.conns.get_mut(ConnId { idx, gen }) {
                        if !cqueue::more(cqe.flags()) && c.inflight > 0 {
                            c.inflight -= 1;
                        }
                    }
                }
            }
            self.ring.recycle(cqes);
        }
        let mut leaked = 0;
        for id in self.conns.ids() {
            if let Some(mut c) = self.conns.remove(id) {
                if c.inflight > 0 {
                    // The kernel may still read or write its buffers (a reply, a recv):
                    // never free them under it. The process is stopping.
                    leaked += 1;
                } else if let Phase::Relay(side) = &mut c.phase {
                    self.release_side(side);
                }
                // SAFETY: each abandoned connection's descriptor is closed once.
                unsafe { libc::close(c.fd) };
                if c.pending {
                    self.shared.pending.fetch_sub(1, Relaxed);
                }
                self.shared.ip_limits.release(c.src);
                self.shared.open.fetch_sub(1, Relaxed);
                self.stats().open.fetch_sub(1, Relaxed);
                if c.inflight > 0 {
                    std::mem::forget(c);
                }
            }
        }
        if leaked > 0 {
            tracing::warn!(
                worker = self.id,
                connections = leaked,
                "operations still in flight at shutdown: their memory is left allocated"
            );
            // The buffer ring's memory too may still be written by a recv.
            if let Some(b) = self.bufs.take() {
                std::mem::forget(b);
            }
        }
    }
}

fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on a socket we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Runs a worker thread to completion.
pub(crate) fn run_worker(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<Socket>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let cpus = &shared.config.worker_cpus;
    if !cpus.is_empty() {
        // Validated at start; a failure here (the mask changed since) costs only the pinning.
        if let Err(e) = crate::affinity::pin_current_thread(&[cpus[id % cpus.len()]]) {
            tracing::warn!(worker = id, error = %e, "cannot pin worker to its CPU");
        }
    }
    match Worker::new(id, shared, listeners) {
        Ok(w) => {
            let _ = ready.send(Ok(()));
            // A worker that stops on its own leaves its connections, keys and activations
            // unanswered (and `/ready` green): never go on without it. Exit the process
            // with a clear line so the service manager restarts it.
            let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())) {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
            };
            worker_failed(id, &why);
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// Exit status of a process whose worker failed (EX_SOFTWARE).
pub const WORKER_FAILED_EXIT: i32 = 70;

/// A worker's ring failed or it panicked: logs it and exits the whole process.
fn worker_failed(id: usize, why: &str) -> ! {
    tracing::error!(
        worker = id,
        error = why,
        "worker failed: exiting the process so that it is restarted"
    );
    eprintln!("streamhost: worker {id} failed ({why}); exiting");
    std::process::exit(WORKER_FAILED_EXIT);
}
