//! The public face of the data plane: start the workers, activate keys, read counters.

use crate::config::Config;
use crate::handover::wire::Carried;
use crate::key::{KeyRouter, StreamKey};
use crate::rendezvous::ActivationOutcome;
use crate::shaping::Shaping;
use crate::stats::{Stats, WorkerStats};
use crate::worker::carry::ExportSink;
use crate::worker::listen::bind_shards;
use crate::worker::mailbox::{Mailbox, Msg};
use crate::worker::{run_worker, Shared};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

pub struct Server;

/// What an old process hands over (`Handle::export`).
pub struct Exported {
    pub listeners: Vec<OwnedFd>,
    pub conns: Vec<(OwnedFd, Carried)>,
}

/// One worker thread's health (`Handle::worker_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerHealth {
    /// The thread has not exited (a worker exits only on shutdown or a ring failure).
    pub alive: bool,
    /// Its loop's 250 ms timer ticks so far: they stop advancing when the loop is stuck.
    pub ticks: u64,
}

/// Connection counts and their live limits (`Handle::load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub open: usize,
    pub pending: usize,
    pub max_connections: usize,
    pub max_pending: usize,
}

/// A running data plane. Share it behind an `Arc`; dropping it stops the workers and
/// closes every connection (see `shutdown`).
pub struct Handle {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    /// Saves the quota counts now and then, and once more when the workers have stopped.
    flusher: Option<crate::shaping::Flusher>,
}

/// Descriptors kept free of client connections: the metrics endpoint (16 clients and its
/// listener), the component link, the quota store, logging, and slack for connections
/// accepted only to be refused or to replace a shed half.
const FD_RESERVE: usize = 96;

/// Client connections this process may hold: its open-files limit less what its own
/// threads need (rings, mailboxes, listeners, every pipe) and `FD_RESERVE`, so that at
/// the limit new clients are refused (or shed older halves) while `/metrics` and `/ready`
/// still answer and no running relay ever meets `EMFILE`.
fn fd_budget(config: &Config, workers: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return usize::MAX;
    }
    let per_worker = 4 + config.listen.len() + 2 * config.relay.pipes_per_worker;
    (lim.rlim_cur as usize).saturating_sub(FD_RESERVE + workers * per_worker)
}

/// How often the quota counts are written to their store.
const QUOTA_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

impl Server {
    /// Validates the config, binds every listener shard and starts one worker thread per
    /// configured core. Returns once every worker's ring is up.
    pub fn start(config: Config) -> io::Result<Handle> {
        Server::start_with(config, Vec::new())
    }

    /// Like `start`, serving `inherited` listeners (handed over by an old process during
    /// an upgrade: `crate::handover`) on their addresses instead of binding new ones.
    pub fn start_with(config: Config, inherited: Vec<OwnedFd>) -> io::Result<Handle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let workers = config.worker_count();
        // A process that took over admits from the start (the old link forwards to it):
        // what queued on the inherited listeners is accepted as soon as a worker runs.
        let admitting = config.component.is_none() || !inherited.is_empty();
        let inherited = inherited
            .into_iter()
            .filter_map(|fd| {
                let s = socket2::Socket::from(fd);
                let addr = s.local_addr().ok()?.as_socket()?;
                Some((addr, s))
            })
            .collect();
        let (shards, addrs) = bind_shards(&config.listen, workers, config.backlog, inherited)?;
        let shaping = Shaping::new(&config.shaping, &config.quota)?;
        let mailboxes = (0..workers)
            .map(|_| Mailbox::new())
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            auth: config.socks5_auth.clone().map(Arc::new),
            router: KeyRouter::new(workers),
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            mailboxes: mailboxes.into_boxed_slice(),
            open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(config.max_connections),
            max_pending: AtomicUsize::new(config.max_pending),
            fd_budget: fd_budget(&config, workers),
            ip_limits: crate::limits::IpLimiter::new(config.source_limits()),
            admitting: std::sync::atomic::AtomicBool::new(admitting),
            shaping: shaping.clone(),
            stream_log: crate::worker::stream_log::StreamLog::start()?,
            config,
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handle = Handle {
            shared: shared.clone(),
            addrs,
            threads: Vec::new(),
            flusher: shaping.spawn_flusher(QUOTA_FLUSH),
        };
        for (id, listeners) in shards.into_iter().enumerate() {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("streamhost-w{id}"))
                .spawn(move || run_worker(id, shared, listeners, ready))?;
            handle.threads.push(t);
        }
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("worker ring: {e}"))),
                Err(_) => return Err(io::Error::other("a worker died while starting")),
            }
        }
        Ok(handle)
    }
}

impl Handle {
    /// The addresses actually bound (a configured port 0 resolved), one per `listen` entry.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Starts relaying `key` if both halves are connected. Blocks for one round trip to
    /// the key's owner core (microseconds); thread-safe.
    pub fn activate(&self, key: &StreamKey) -> ActivationOutcome {
        let (tx, rx) = mpsc::sync_channel(1);
        self.activate_then(
            key,
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
        );
        rx.recv().unwrap_or(ActivationOutcome::ShuttingDown)
    }

    /// Like `activate`, but calls `done` on the owner core instead of blocking: for
    /// async callers (wrap a oneshot sender in it). `done` must be quick.
    pub fn activate_then(&self, key: &StreamKey, done: Box<dyn FnOnce(ActivationOutcome) + Send>) {
        self.send_activate(key, None, None, done);
    }

    /// Like `activate_then`, on behalf of `requester` (a bare JID: its account and domain
    /// buckets and quotas apply). `guard` is kept until the relay ends (dropped at once if
    /// the activation is refused), so a caller can count running relays with it.
    pub fn activate_for(
        &self,
        key: &StreamKey,
        requester: &str,
        guard: Box<dyn Send>,
        done: Box<dyn FnOnce(ActivationOutcome) + Send>,
    ) {
        self.send_activate(key, Some(requester.into()), Some(guard), done);
    }

    /// Hands an activation to the key's owner core.
    fn send_activate(
        &self,
        key: &StreamKey,
        requester: Option<Box<str>>,
        guard: Option<Box<dyn Send>>,
        done: Box<dyn FnOnce(ActivationOutcome) + Send>,
    ) {
        let owner = self.shared.router.owner(key);
        self.shared.mailboxes[owner].send(Msg::Activate {
            key: *key,
            requester,
            guard,
            done,
        });
    }

    /// Bytes relayed in the current period for a quota key, as counted against the
    /// quotas: "jid:<bare jid>" or "domain:<domain>" today, the same with "month-" in
    /// front this month (0 when there is no quota store).
    pub fn quota_used(&self, key: &str) -> u64 {
        self.shared.shaping.used_now(key)
    }

    /// Applies what can change while running (SIGHUP): the connection limits, shaping
    /// rates and quotas (running streams too). Returns the keys that differ but need a
    /// restart to take effect.
    pub fn reload(&self, new: &Config) -> Vec<&'static str> {
        use std::sync::atomic::Ordering::Relaxed;
        self.shared
            .max_connections
            .store(new.max_connections, Relaxed);
        self.shared.max_pending.store(new.max_pending, Relaxed);
        self.shared.ip_limits.set(new.source_limits());
        let mut restart = self.shared.shaping.set(&new.shaping, &new.quota);
        let old = &self.shared.config;
        if old.listen != new.listen {
            restart.push("listen");
        }
        if old.worker_count() != new.worker_count() {
            restart.push("workers");
        }
        if old.worker_cpus != new.worker_cpus {
            restart.push("worker_cpus");
        }
        if old.relay != new.relay {
            restart.push("relay");
        }
        if (
            old.handshake_timeout,
            old.activation_timeout,
            old.idle_timeout,
        ) != (
            new.handshake_timeout,
            new.activation_timeout,
            new.idle_timeout,
        ) {
            restart.push("timeouts");
        }
        if old.socks5_auth != new.socks5_auth {
            restart.push("socks5_auth");
        }
        restart
    }

    /// Whether new SOCKS5 connections are accepted: the control plane says so while its
    /// component is logged in (from the start when no component is configured).
    pub fn set_admitting(&self, on: bool) {
        self.shared
            .admitting
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Upgrade handover, old side: every worker stops accepting and hands over its
    /// listeners and every connection that is not relaying (running relays stay and go
    /// on). Waits at most `timeout` for the workers.
    pub fn export(&self, timeout: std::time::Duration) -> io::Result<Exported> {
        let sink = Arc::new(ExportSink::default());
        let n = self.shared.mailboxes.len();
        for m in self.shared.mailboxes.iter() {
            m.send(Msg::Export(sink.clone()));
        }
        if !sink.wait(n, timeout) {
            return Err(self.abandon(&sink, "workers did not hand over in time"));
        }
        // Hand-offs between cores sent before a worker reported are in the mailboxes
        // ahead of this second round.
        for m in self.shared.mailboxes.iter() {
            m.send(Msg::ExportSeal(sink.clone()));
        }
        if !sink.wait(2 * n, timeout) {
            return Err(self.abandon(&sink, "workers did not seal the handover in time"));
        }
        Ok(Exported {
            listeners: take_all(&sink.listeners),
            conns: take_all(&sink.conns),
        })
    }

    /// An export that timed out: what the workers handed over so far is restored, and
    /// those that report later serve their own listeners again (`ExportSink::abandon`).
    fn abandon(&self, sink: &ExportSink, why: &str) -> io::Error {
        let (listeners, conns) = sink.abandon();
        self.restore(Exported { listeners, conns });
        io::Error::other(why.to_string())
    }

    /// A handover that failed after `export`: the workers serve the listeners again and
    /// take the connections back, as if nothing had happened.
    pub fn restore(&self, exported: Exported) {
        let n = self.shared.mailboxes.len();
        let mut per: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
        for (i, fd) in exported.listeners.into_iter().enumerate() {
            per[i % n].push(fd);
        }
        for (m, ls) in self.shared.mailboxes.iter().zip(per) {
            m.send(Msg::Restore(ls));
        }
        self.send_adopt(exported.conns, true);
    }

    /// The old side's count of connections handed over, once they went (a handover that
    /// fails and restores them moved nothing).
    pub fn handed_over(&self, conns: usize) {
        self.shared.stats[0]
            .handed_over
            .fetch_add(conns as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Upgrade handover, new side: connections the old process handed over. A placed
    /// half goes to its key's owner core, a handshake to any.
    pub fn adopt(&self, conns: Vec<(OwnedFd, Carried)>) {
        self.send_adopt(conns, false);
    }

    fn send_adopt(&self, conns: Vec<(OwnedFd, Carried)>, restored: bool) {
        let n = self.shared.mailboxes.len();
        for (i, (fd, carried)) in conns.into_iter().enumerate() {
            let to = match &carried {
                Carried::Placed { key, .. } => self.shared.router.owner(key),
                Carried::Handshake { .. } => i % n,
            };
            self.shared.mailboxes[to].send(Msg::Adopt {
                fd,
                carried,
                restored,
            });
        }
    }

    /// Counters summed over all workers.
    pub fn stats(&self) -> Stats {
        Stats::sum(&self.shared.stats)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// The health of each worker thread, in worker order.
    pub fn worker_health(&self) -> Vec<WorkerHealth> {
        use std::sync::atomic::Ordering::Relaxed;
        self.threads
            .iter()
            .zip(self.shared.stats.iter())
            .map(|(t, s)| WorkerHealth {
                alive: !t.is_finished(),
                ticks: s.ticks.load(Relaxed),
            })
            .collect()
    }

    /// Connections open and pending (in handshake or waiting for their peer or
    /// activation), whole process, with the live limits on them.
    pub fn load(&self) -> Load {
        use std::sync::atomic::Ordering::Relaxed;
        let sh = &self.shared;
        Load {
            open: sh.open.load(Relaxed),
            pending: sh.pending.load(Relaxed),
            max_connections: sh.max_connections.load(Relaxed),
            max_pending: sh.max_pending.load(Relaxed),
        }
    }

    /// Quota store flushes so far, (succeeded, failed); `None` without `quota.store`.
    pub fn quota_flushes(&self) -> Option<(u64, u64)> {
        self.shared.shaping.flushes()
    }

    /// Graceful stop: every worker stops accepting and closes what is not relaying, then
    /// running relays get up to `deadline` to finish before the rest is cut. Returns the
    /// number of relays that were still running at the deadline (0 = nothing lost).
    pub fn drain(self, deadline: std::time::Duration) -> u64 {
        for m in self.shared.mailboxes.iter() {
            m.send(Msg::Drain);
        }
        let end = std::time::Instant::now() + deadline;
        loop {
            let s = self.stats();
            if s.open == 0 {
                break;
            }
            if std::time::Instant::now() >= end {
                tracing::warn!(
                    relays = s.relays_active,
                    "drain deadline reached, cutting relays"
                );
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let left = self.stats().relays_active;
        self.shutdown();
        left
    }

    /// Stops every worker: listeners close, connections are closed, threads joined.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for m in self.shared.mailboxes.iter() {
            m.send(Msg::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Last flush of the quota counts, now that no relay adds to them.
        drop(self.flusher.take());
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn take_all<T>(v: &std::sync::Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *v.lock().unwrap_or_else(|e| e.into_inner()))
}
