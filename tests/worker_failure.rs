//! A worker whose ring fails is never silent: the process logs it and exits (status 70) so
//! that its service manager restarts it, instead of running on without that worker (its
//! connections and keys unanswered, activations waiting forever, `/ready` green).
//! The ring is made to fail for real: the child process closes its descriptor.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use streamhost::config::Engine;

const ROLE: &str = "STREAMHOST_WORKER_FAILURE_CHILD";

/// The child: a proxy with one worker, whose ring descriptor is then closed under it.
#[test]
fn worker_failure_child_role() {
    if std::env::var(ROLE).is_err() {
        return; // only meaningful when spawned by the test below
    }
    let mut c = config(Engine::Splice);
    c.workers = 1;
    let (h, addr) = start(c);
    let _pair = active_pair(&h, addr, 1);
    let mut closed = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target.to_string_lossy().contains("io_uring") {
            let fd: i32 = e.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: closes the worker's ring descriptor on purpose (the failure under
            // test); nothing else in this process uses it.
            unsafe { libc::close(fd) };
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "one ring");
    // The ring notices at its next tick (250 ms) at the latest.
    std::thread::sleep(Duration::from_secs(20));
    println!("still running without its worker");
}

#[test]
fn a_failed_worker_exits_the_process() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_failure_child_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "child neither exited nor finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(
        status.code(),
        Some(streamhost::WORKER_FAILED_EXIT),
        "stdout: {out}\nstderr: {err}"
    );
    assert!(err.contains("worker 0 failed"), "stderr: {err}");
    assert!(!out.contains("still running"), "{out}");
}
