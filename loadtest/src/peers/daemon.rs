//! A peer's server process: started in its temp dir, waited for until its ports open,
//! stopped with everything it started (SIGTERM, then SIGKILL) when dropped.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub name: &'static str,
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// Its log files in `dir`, quoted when it fails.
    logs: Vec<&'static str>,
}

impl Daemon {
    /// Runs `cmd` with output to `stdout.log` in `dir`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        dir: tempfile::TempDir,
        logs: &[&'static str],
    ) -> anyhow::Result<Daemon> {
        let log = std::fs::File::create(dir.path().join("stdout.log"))?;
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("start {name}: {e}"))?;
        let mut l = vec!["stdout.log"];
        l.extend_from_slice(logs);
        Ok(Daemon {
            name,
            child,
            dir,
            logs: l,
        })
    }

    /// Waits until every address accepts a connection.
    pub fn wait_open(&mut self, addrs: &[SocketAddr], ready: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + ready;
        for addr in addrs {
            while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
                if let Ok(Some(st)) = self.child.try_wait() {
                    anyhow::bail!("{} exited at start ({st}): {}", self.name, self.log_tail());
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} did not open {addr} within {ready:?}: {}",
                    self.name,
                    self.log_tail()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in &self.logs {
            let t = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let start = t.len().saturating_sub(2000);
            s.push_str(t.get(start..).unwrap_or_default());
        }
        s
    }
}

/// Fields 4 (ppid) and 22 (start time) of /proc/PID/stat, counted after the name's
/// closing parenthesis (the name may hold spaces).
fn ppid_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// The processes under `pid` (children, their children, ...) with their start times.
fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| ppid_and_start(p).map(|(pp, st)| (p, pp, st)))
        .collect();
    let mut out: Vec<(u32, u64)> = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for &(p, pp, st) in &all {
            if pp == parent {
                out.push((p, st));
                parents.push(p);
            }
        }
    }
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Its helpers (Erlang's port programs) can outlive it: note them first.
        let under = descendants(self.child.id());
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for (p, start) in under {
            // Only the same process (same start time), not one that reused its pid.
            if ppid_and_start(p).map(|x| x.1) == Some(start) {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
            }
        }
    }
}
