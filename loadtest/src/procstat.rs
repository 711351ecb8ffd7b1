//! Memory and descriptor figures of a process, from /proc/PID/status and /proc/PID/fd.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    /// Resident set size, KiB (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (VmHWM).
    pub hwm_kib: u64,
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Reads the figures of `pid`.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("read /proc/{pid}/status: {e}"))?;
    let mut s = parse_status(&status);
    s.fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| anyhow::anyhow!("read /proc/{pid}/fd: {e}"))?
        .count() as u64;
    Ok(s)
}

/// CPU time `pid` has used so far, all its threads (live and exited), user plus system, in
/// seconds (utime + stime of /proc/PID/stat, in clock ticks of usually 10 ms).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("read /proc/{pid}/stat: {e}"))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| anyhow::anyhow!("no utime/stime in /proc/{pid}/stat"))?;
    let per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Ok(ticks as f64 / per_s as f64)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name in
/// parentheses may contain spaces, so fields are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is f[0], so field n is f[n - 3].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU used by the generator (the clients) and by the proxy process between two points.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    clients: f64,
    proxy: Option<f64>,
    proxy_pid: Option<u32>,
}

/// CPU seconds spent since a [`CpuMark`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUsed {
    /// This process: senders, receivers and checkers (and an in-process proxy).
    pub clients: f64,
    /// A separate proxy process; `None` when there is none or it is this process.
    pub proxy: Option<f64>,
}

impl CpuMark {
    /// Starts counting; `proxy_pid` equal to this process is counted as clients only.
    pub fn now(proxy_pid: Option<u32>) -> Self {
        let me = std::process::id();
        let proxy_pid = proxy_pid.filter(|p| *p != me);
        CpuMark {
            clients: cpu_seconds(me).unwrap_or(0.0),
            proxy: proxy_pid.and_then(|p| cpu_seconds(p).ok()),
            proxy_pid,
        }
    }

    pub fn used(&self) -> CpuUsed {
        let now = CpuMark::now(self.proxy_pid);
        CpuUsed {
            clients: (now.clients - self.clients).max(0.0),
            proxy: self.proxy.zip(now.proxy).map(|(a, b)| (b - a).max(0.0)),
        }
    }
}

fn parse_status(text: &str) -> ProcSample {
    let mut s = ProcSample::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "VmRSS:" => s.rss_kib = v,
            "VmHWM:" => s.hwm_kib = v,
            "Threads:" => s.threads = v,
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_memory_and_fds() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib / 2);
        assert!(s.fds >= 3 && s.threads >= 1);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s2 = sample(std::process::id()).unwrap();
        drop(l);
        // Other test threads open files too; at least ours is counted.
        assert!(s2.fds >= 1);
    }

    #[test]
    fn cpu_time_of_own_process_grows_with_work() {
        let m = CpuMark::now(Some(std::process::id()));
        let t = std::time::Instant::now();
        let mut x = 0u64;
        // Bounded busy loop: about 50 ms of CPU (at least 5 clock ticks).
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let u = m.used();
        assert!(u.clients > 0.0, "{u:?}");
        assert_eq!(u.proxy, None, "the proxy is this process");
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1";
        assert_eq!(parse_cpu_ticks(line), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status_lines() {
        let s = parse_status("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t5\n");
        assert_eq!((s.rss_kib, s.hwm_kib, s.threads), (1024, 2048, 5));
    }
}
