//! The `streamhost` binary as a child process, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct Proxy {
    pub child: Child,
}

impl Proxy {
    /// Starts the binary with `--config config` and `extra` flags, logging at `RUST_LOG`
    /// level `log` to its stderr (the test's).
    pub fn spawn_with(config: &Path, extra: &[&str], log: &str) -> Proxy {
        let child = Command::new(env!("CARGO_BIN_EXE_streamhost"))
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .spawn()
            .expect("streamhost starts");
        Proxy { child }
    }

    /// Logs at the default level (info) into the file `log`.
    pub fn spawn_logging(config: &Path, log: &Path) -> Proxy {
        Proxy::spawn_logging_with(config, &[], log)
    }

    /// `spawn_logging` with `extra` flags.
    pub fn spawn_logging_with(config: &Path, extra: &[&str], log: &Path) -> Proxy {
        let child = Command::new(env!("CARGO_BIN_EXE_streamhost"))
            .arg("--config")
            .arg(config)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("streamhost starts");
        Proxy { child }
    }

    pub fn spawn(config: &Path) -> Proxy {
        Proxy::spawn_with(config, &[], "warn")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits (bounded) for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, secs: u64) -> Option<bool> {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st.success());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
