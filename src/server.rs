//! The public face of the data plane: start the workers, activate keys, read counters.

use crate::config::Config;
use crate::key::{KeyRouter, StreamKey};
use crate::rendezvous::ActivationOutcome;
use crate::stats::{Stats, WorkerStats};
use crate::worker::listen::bind_shards;
use crate::worker::mailbox::{Mailbox, Msg};
use crate::worker::{run_worker, Shared};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

pub struct Server;

/// A running data plane. Share it behind an `Arc`; dropping it stops the workers and
/// closes every connection (see `shutdown`).
pub struct Handle {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Validates the config, binds every listener shard and starts one worker thread per
    /// configured core. Returns once every worker's ring is up.
    pub fn start(config: Config) -> io::Result<Handle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let workers = config.worker_count();
        let (shards, addrs) = bind_shards(&config.listen, workers, config.backlog)?;
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
            config,
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handle = Handle {
            shared: shared.clone(),
            addrs,
            threads: Vec::new(),
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
        let owner = self.shared.router.owner(key);
        self.shared.mailboxes[owner].send(Msg::Activate { key: *key, done });
    }

    /// Counters summed over all workers.
    pub fn stats(&self) -> Stats {
        Stats::sum(&self.shared.stats)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.threads.len()
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
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}
