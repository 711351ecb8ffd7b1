//! The public face of the data plane: start the workers, activate keys, read counters.

use crate::config::Config;
use crate::key::StreamKey;
use crate::rendezvous::ActivationOutcome;
use crate::stats::Stats;
use std::io;
use std::net::SocketAddr;

pub struct Server;

/// A running data plane. Cheap to share behind an `Arc`; dropping it stops the workers.
pub struct Handle {
    _private: (),
}

impl Server {
    /// Binds every listener shard and starts one worker thread per configured core.
    pub fn start(_config: Config) -> io::Result<Handle> {
        Err(io::Error::other("data plane not built yet"))
    }
}

impl Handle {
    /// The addresses actually bound (a configured port 0 resolved), one per `listen` entry.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &[]
    }

    /// Starts relaying `key` if both halves are connected. Blocks for one round trip to
    /// the key's owner core (microseconds); thread-safe.
    pub fn activate(&self, _key: &StreamKey) -> ActivationOutcome {
        ActivationOutcome::ShuttingDown
    }

    /// Like `activate`, but calls `done` on the owner core instead of blocking: for
    /// async callers (wrap a oneshot sender in it). `done` must be quick.
    pub fn activate_then(&self, _key: &StreamKey, done: Box<dyn FnOnce(ActivationOutcome) + Send>) {
        done(ActivationOutcome::ShuttingDown)
    }

    /// Counters summed over all workers.
    pub fn stats(&self) -> Stats {
        Stats::default()
    }
}
