//! The load scenarios. Each one is bounded in count and in time, verifies every byte,
//! and runs the same code against the proxy and against direct loopback TCP.

pub mod abuse;
pub mod bulk;
pub mod idle;
pub mod mixed;
pub mod peers;
pub mod peers_setup_idle;
pub mod setup;
pub mod setup_stream;
pub mod timed_bulk;

use crate::pairs::{Pair, Target};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

/// What every scenario needs.
#[derive(Clone)]
pub struct Ctx {
    /// The proxy, or `None` for a direct-only run.
    pub proxy: Option<Target>,
    /// Also run the direct baseline (always run when there is no proxy).
    pub baseline: bool,
    pub seed: u64,
    /// Read/write timeout of every data socket: a stalled relay fails instead of hanging.
    pub io_timeout: Duration,
    /// No scenario starts new work after this.
    pub deadline: Instant,
    /// The spawned proxy's pid, for /proc figures.
    pub proxy_pid: Option<u32>,
    /// The spawned proxy's Prometheus endpoint, when it was given one (`abuse`).
    pub metrics: Option<std::net::SocketAddr>,
    pub tag: String,
    /// Alternating rounds (direct, proxy, direct, proxy, ...) per measurement; ratios are
    /// medians of the rounds' own ratios.
    pub rounds: usize,
}

impl Ctx {
    /// The targets to run, the proxy first.
    pub fn targets(&self) -> Vec<Target> {
        let mut v = Vec::new();
        if let Some(p) = &self.proxy {
            v.push(p.clone());
        }
        if self.baseline || self.proxy.is_none() {
            v.push(Target::Direct);
        }
        v
    }

    /// The targets of one round in the order they run: direct first, then the proxy, so
    /// that rounds alternate direct, proxy, direct, proxy. Each proxy run's ratio is taken
    /// against the direct run just before it.
    pub fn round_targets(&self) -> Vec<Target> {
        let mut v = self.targets();
        v.reverse();
        v
    }

    pub fn apply_timeouts(&self, p: &Pair) -> anyhow::Result<()> {
        for s in [&p.requester, &p.target] {
            s.set_read_timeout(Some(self.io_timeout))?;
            s.set_write_timeout(Some(self.io_timeout))?;
        }
        Ok(())
    }

    pub fn check_deadline(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            Instant::now() < self.deadline,
            "time limit reached before {what}"
        );
        Ok(())
    }
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
pub fn progress(len: u64, msg: &str, bytes: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let tmpl = if bytes {
        "{msg:24} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}"
    } else {
        "{msg:24} [{bar:30}] {pos}/{len} {per_sec} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(tmpl) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// Finds the direct figure matching a proxy figure.
pub fn direct_of(results: &[(String, f64)], name: &str) -> Option<f64> {
    results.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}
