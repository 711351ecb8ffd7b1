//! 8,000 activated idle pairs must cost the proxy at most 32 MiB of RSS (4 KiB a pair).
//! The proxy runs in this process; the 16,000 client sockets live in a child process (this
//! test binary re-run in a client role), since one process may hold only 20,000 files.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;
use streamhost::config::Engine;
use streamhost::ActivationOutcome;

const PAIRS: u64 = 8_000;
const ROLE: &str = "STREAMHOST_IDLE_CLIENT_ADDR";

/// The client role: opens both halves of every pair, says so, then waits for stdin to close.
#[test]
fn idle_client_role() {
    let Ok(addr) = std::env::var(ROLE) else {
        return; // only meaningful when spawned by the test below
    };
    let addr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(2 * PAIRS as usize);
    for n in 0..PAIRS {
        let k = key(n);
        held.push(half(addr, &k));
        held.push(half(addr, &k));
    }
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    // A few activated pairs still relay after sitting idle.
    for (i, pair) in held.chunks(2).take(10).enumerate() {
        (&pair[0]).write_all(&[i as u8; 100]).unwrap();
        let mut got = [0u8; 100];
        (&pair[1]).read_exact(&mut got).unwrap();
        assert_eq!(got, [i as u8; 100]);
    }
    println!("relayed");
}

fn idle_pairs_cost(engine: Engine) {
    let mut c = config(engine);
    c.max_pending = 20_000;
    let (h, addr) = start(c);
    // Warm up allocator pools and rings with one pair, so the baseline is the steady state.
    let (a, b) = active_pair(&h, addr, u64::MAX);
    drop((a, b));
    assert!(eventually(5, || h.stats().open == 0));
    let before = rss_kib();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "idle_client_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "client exited early");
        // libtest prints the test name before the line, so match inside it.
        if line.contains("ready") {
            break;
        }
    }
    for n in 0..PAIRS {
        assert_eq!(h.activate(&key(n)), ActivationOutcome::Activated);
    }
    assert_eq!(h.stats().relays_active, PAIRS);
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib().saturating_sub(before);
    let per_pair = grown * 1024 / PAIRS;
    println!(
        "{engine:?}: {PAIRS} idle pairs grew RSS by {} KiB ({per_pair} B a pair)",
        grown
    );
    assert!(
        grown <= 32 * 1024,
        "{engine:?}: {grown} KiB for {PAIRS} pairs"
    );

    drop(child.stdin.take()); // let the client check relaying and exit
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 || line.contains("relayed") {
            break;
        }
    }
    assert!(line.contains("relayed"), "idle pairs still relay");
    assert!(child.wait().unwrap().success());
    assert!(eventually(10, || h.stats().open == 0));
    let _ = TcpStream::connect(addr); // the listener is still up
}

/// One test for every engine: two proxies at once would hold 32,000 sockets in this
/// process, over its 20,000-file limit.
#[test]
fn eight_thousand_idle_pairs_each_engine() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    idle_pairs_cost(Engine::Copy);
    idle_pairs_cost(Engine::Splice);
    idle_pairs_cost(Engine::UringSplice);
}
