//! `worker_cpus`: pinned workers, checked through /proc. Alone in its test binary so that
//! no other test's workers (same thread names) are in the process.

mod common;

use common::*;
use std::thread;
use streamhost::config::Engine;

/// `worker_cpus`: each worker thread runs only on its CPU, and relays as before.
#[test]
fn workers_pinned_to_cpus_run_there_and_relay() {
    let allowed = streamhost::affinity::allowed_cpus().unwrap();
    let cpus: Vec<usize> = allowed.iter().rev().take(2).copied().collect();
    let mut c = config(Engine::Splice);
    c.workers = 2;
    c.worker_cpus = cpus.clone();
    let (h, addr) = start(c);
    let mut pinned = vec![];
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        if let Some(id) = name.trim().strip_prefix("streamhost-w") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            let id: usize = id.parse().unwrap();
            pinned.push((id, list));
        }
    }
    pinned.sort();
    let want: Vec<(usize, String)> = (0..2)
        .map(|i| (i, cpus[i % cpus.len()].to_string()))
        .collect();
    assert_eq!(pinned, want);
    let (a, b) = active_pair(&h, addr, 1);
    let b2 = b.try_clone().unwrap();
    let t = thread::spawn(move || send_pattern(&b2, 5, 8 << 20).unwrap());
    assert_eq!(recv_pattern(&a, 5).unwrap(), 8 << 20);
    t.join().unwrap();
}
