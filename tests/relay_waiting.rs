//! 10,000+ relay directions waiting for a pipe on one worker (`workers = 1`, one pipe):
//! when the pipe comes back, the waiters are woken one after another by the ring loop, not
//! from inside each other's calls (which overflowed the worker's stack and aborted the
//! process), and every one of them relays its bytes.
//! The proxy runs in this process; the 10,200 client sockets live in a child process (this
//! test binary re-run in a client role), since one process may hold only 20,000 files.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use streamhost::config::Engine;
use streamhost::ActivationOutcome;

const PAIRS: u64 = 5_100;
const ROLE: &str = "STREAMHOST_WAITING_CLIENT_ADDR";
const MSG: usize = 100;

/// The client role: opens both halves of every pair, says so, waits for "send", writes
/// `MSG` bytes from every half, then reads the peer's `MSG` bytes on every half.
#[test]
fn waiting_client_role() {
    let Ok(addr) = std::env::var(ROLE) else {
        return; // only meaningful when spawned by the test below
    };
    raise_nofile();
    let addr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(2 * PAIRS as usize);
    for n in 0..PAIRS {
        let k = key(n);
        held.push(half(addr, &k));
        held.push(half(addr, &k));
    }
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for (i, s) in held.iter().enumerate() {
        (&*s).write_all(&[(i % 251) as u8; MSG]).unwrap();
    }
    println!("sent");
    std::io::stdout().flush().unwrap();
    for (i, s) in held.iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut got = [0u8; MSG];
        (&*s).read_exact(&mut got).unwrap();
        assert_eq!(got, [((i ^ 1) % 251) as u8; MSG], "half {i}");
    }
    println!("relayed");
}

fn wait_for(out: &mut impl BufRead, what: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "client exited early");
        // libtest prints the test name before the line, so match inside it.
        if line.contains(what) {
            return;
        }
    }
}

#[test]
fn ten_thousand_directions_waiting_for_one_pipe() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    raise_nofile();
    let mut c = config(Engine::Splice);
    c.workers = 1;
    c.max_pending = 20_000;
    c.relay.pipes_per_worker = 1;
    c.relay.pipe_size = 64 << 10;
    // Stalled directions keep their pipe, so every other direction has to wait for it.
    c.relay.stall_bytes_per_worker = 0;
    // Kernel buffers as autotuned: the stalled direction must fill its pipe and keep it
    // (with `relay.socket_buffer` it can stall holding nothing, and nobody would wait).
    c.relay.socket_buffer = 0;
    let (h, addr) = start(c);

    // One stalled direction holds the only pipe.
    let (sender, receiver) = active_pair(&h, addr, u64::MAX);
    let stalled = stall(&sender, 7);
    assert!(stalled > 0);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "waiting_client_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for(&mut out, "ready");
    for n in 0..PAIRS {
        assert_eq!(h.activate(&key(n)), ActivationOutcome::Activated);
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"send\n").unwrap();
    stdin.flush().unwrap();
    wait_for(&mut out, "sent");
    let want = 2 * PAIRS;
    assert!(
        eventually(60, || h.stats().relay_directions_waiting >= want),
        "directions waiting: {}",
        h.stats().relay_directions_waiting
    );
    println!(
        "{} directions waiting for a pipe",
        h.stats().relay_directions_waiting
    );

    // The pipe comes back: every waiter is woken in turn, from the ring loop.
    receiver
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    recv_exact_pattern(&receiver, 7, stalled).unwrap();
    wait_for(&mut out, "relayed");
    assert!(child.wait().unwrap().success());
    // The child's exit closes every half: those EOFs wait for the pipe too, briefly.
    assert!(
        eventually(60, || h.stats().relay_directions_waiting == 0),
        "directions waiting: {}",
        h.stats().relay_directions_waiting
    );
    let s = h.stats();
    assert!(s.relay_waits >= want, "waits counted: {}", s.relay_waits);
    // At most 256 are woken per ring-loop round: the budget bit and was counted.
    assert!(s.relay_wakeups_deferred > 0);
    assert!(eventually(30, || h.stats().relays_active == 1));
    // The stalled pair still relays.
    (&sender).write_all(b"after").unwrap();
    let mut got = [0u8; 5];
    (&receiver).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
}
