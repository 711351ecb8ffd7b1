//! Slow receivers must not freeze everyone: 120 activated pairs whose senders write until
//! blocked and whose receivers never read, then fresh pairs must still get at least half
//! the throughput they get without the stall (each engine's pools at their defaults:
//! 32 pipes or 64 buffers per worker, fewer than the stalled directions). Afterwards every
//! stalled stream still delivers every byte, in order.

mod common;

use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use streamhost::config::Engine;
use streamhost::{ActivationOutcome, Handle};

const STALLED: u64 = 120;
const FRESH: u64 = 4;
const FRESH_BYTES: u64 = 64 << 20;

/// A half whose socket buffer is small (set before connecting), so a stalled stream
/// parks little memory in the kernel.
fn small_half(addr: SocketAddr, key: &streamhost::StreamKey) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(16 << 10).unwrap();
    s.set_send_buffer_size(16 << 10).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(&[0, 0]);
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 2 + 47];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &[5, 0, 5, 0], "placed");
    s
}

/// Bytes each stalled sender writes at most (a bound: they block at about 4 MiB, once
/// the proxy's socket buffers towards the receiver and from the sender are full; 120
/// streams then park about 500 MiB in the kernel, below its TCP memory pressure
/// threshold on the test machines).
const STALL_BYTES: u64 = 16 << 20;

/// Writes from every sender (non-blocking) until none takes more for 300 ms (or each has
/// written `STALL_BYTES`).
fn stall_all(senders: &[TcpStream], seeds: &[u64]) -> Vec<u64> {
    let mut written = vec![0u64; senders.len()];
    let mut buf = vec![0u8; 64 << 10];
    for s in senders {
        s.set_nonblocking(true).unwrap();
    }
    let mut quiet_since = Instant::now();
    // Bounded: each stalled stream buffers at most a few hundred KiB.
    for _ in 0..100_000 {
        let mut progress = false;
        for (i, mut s) in senders.iter().enumerate() {
            let n = (STALL_BYTES - written[i]).min(buf.len() as u64) as usize;
            if n == 0 {
                continue;
            }
            fill(&mut buf[..n], seeds[i], written[i]);
            match s.write(&buf[..n]) {
                Ok(n) => {
                    written[i] += n as u64;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("stalling write: {e}"),
            }
        }
        if written.iter().all(|&w| w == STALL_BYTES) {
            break;
        }
        if progress {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(300) {
            break;
        } else {
            thread::sleep(Duration::from_millis(5));
        }
    }
    for s in senders {
        s.set_nonblocking(false).unwrap();
    }
    written
}

/// `FRESH` pairs each move `FRESH_BYTES` one way at once; their total in bytes per
/// second (0 when a transfer stalls past the read timeout).
fn fresh_round(h: &Handle, addr: SocketAddr, first_key: u64) -> f64 {
    let pairs: Vec<_> = (0..FRESH)
        .map(|i| active_pair(h, addr, first_key + i))
        .collect();
    let t = Instant::now();
    let threads: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let seed = first_key + i as u64;
            let a2 = a.try_clone().unwrap();
            let tx = thread::spawn(move || send_pattern(&a, seed, FRESH_BYTES));
            let rx = thread::spawn(move || recv_pattern(&b, seed));
            (tx, rx, a2)
        })
        .collect();
    let mut ok = true;
    for (tx, rx, a) in threads {
        match rx.join().unwrap() {
            Ok(n) if n == FRESH_BYTES => {}
            other => {
                eprintln!("fresh pair: {other:?}");
                ok = false;
                // Unblock its sender.
                let _ = a.shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = tx.join().unwrap();
    }
    if !ok {
        return 0.0;
    }
    (FRESH * FRESH_BYTES) as f64 / t.elapsed().as_secs_f64()
}

/// The tests measure throughput: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// CPU time (user + system) of this process's worker threads, in ms.
fn worker_cpu_ms() -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("streamhost-w") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the comm.
        total += (f[11] + f[12]) * 10;
    }
    total
}

fn stalled_streams_do_not_freeze_fresh_ones(engine: Engine) {
    stalled_streams_do_not_freeze_fresh_ones_with(engine, false)
}

fn stalled_streams_do_not_freeze_fresh_ones_with(engine: Engine, send_zc: bool) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = |engine| {
        let mut c = config(engine);
        c.relay.send_zc = send_zc;
        c
    };
    // Zero-copy sends to receivers that then stall pin their buffers until the receiver
    // reads (the bytes wait in the send queue): at most half the ring of each worker.
    let pinned = if send_zc {
        let c = config(engine);
        (c.relay.buffers_per_worker / 2 * c.workers) as f64
    } else {
        0.0
    };
    let (h, addr) = start(config(engine));
    let h = std::sync::Arc::new(h);
    // The same proxy without the stall, measured in turns with the stalled one, so that
    // the load of whatever else runs on these cores falls on both alike.
    let (clean, clean_addr) = start(config(engine));

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for n in 0..STALLED {
        let k = key(n);
        senders.push(small_half(addr, &k));
        receivers.push(small_half(addr, &k));
        assert_eq!(h.activate(&k), ActivationOutcome::Activated);
    }
    let seeds: Vec<u64> = (0..STALLED).collect();
    let written = stall_all(&senders, &seeds);
    // Every sender is blocked: the proxy takes no more from it.
    assert!(written.iter().all(|&w| w > 0 && w < STALL_BYTES));
    let s = h.stats();
    println!(
        "{engine:?}: {STALLED} stalled ({} KiB written); pipes lent {}, buffers lent {}, \
         waiting {}, stalls {}, fallbacks {}, fallback bytes {}",
        written.iter().sum::<u64>() >> 10,
        s.relay_pipes_lent,
        s.relay_buffers_lent,
        s.relay_directions_waiting,
        s.relay_stalls,
        s.relay_fallbacks,
        s.relay_fallback_bytes
    );

    // An operator sees it in /metrics.
    let text = streamhost::metrics::collect::encode(&streamhost::metrics::collect::registry(
        streamhost::metrics::collect::Sources {
            data: h.clone(),
            control: None,
        },
    ));
    let v = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(v("streamhost_relay_stalls_total") + v("streamhost_relay_fallbacks_total") > 0.0);
    let _ = v("streamhost_relay_fallback_bytes");
    for g in [
        "streamhost_relay_directions_waiting",
        "streamhost_relay_pipes_lent",
        "streamhost_relay_buffers_lent",
    ] {
        assert!(v(g) <= 8.0 + pinned, "{g}: {}", v(g));
    }
    let _ = v("streamhost_relay_waits_total");
    let _ = v("streamhost_accept_errors_total");
    let cpu = worker_cpu_ms();
    thread::sleep(Duration::from_secs(1));
    println!(
        "{engine:?}: workers used {} ms of CPU in 1 s with only the stalled streams",
        worker_cpu_ms() - cpu
    );
    // Best of three rounds each, in turns.
    let (mut base, mut stalled) = (0.0f64, 0.0f64);
    for r in 1..=3 {
        base = base.max(fresh_round(&clean, clean_addr, r * 1_000));
        stalled = stalled.max(fresh_round(&h, addr, r * 1_000));
    }
    drop(clean);
    let ratio = stalled / base;
    println!(
        "{engine:?}: fresh pairs {:.2} Gbit/s without the stall, {:.2} with {STALLED} \
         stalled streams ({ratio:.2}x)",
        base * 8e-9,
        stalled * 8e-9
    );
    assert!(
        ratio >= 0.5,
        "{engine:?}: {ratio:.2}x of the throughput without the stall"
    );
    let s = h.stats();
    assert!(s.relay_stalls + s.relay_fallbacks > 0, "stalls counted");
    assert_eq!(s.relay_directions_waiting, 0);

    // Every stalled stream still delivers every byte, in order, then ends cleanly.
    for (i, (tx, rx)) in senders.iter().zip(&receivers).enumerate() {
        tx.shutdown(std::net::Shutdown::Write).unwrap();
        recv_exact_pattern(rx, seeds[i], written[i]).unwrap();
        let mut rest = [0u8; 1];
        assert_eq!((&*rx).read(&mut rest).unwrap(), 0, "EOF after the bytes");
    }
    drop((senders, receivers));
    assert!(eventually(10, || h.stats().relays_active == 0));
    assert!(eventually(10, || h.stats().relay_fallback_bytes == 0));
}

#[test]
fn stalled_streams_do_not_freeze_fresh_ones_splice() {
    stalled_streams_do_not_freeze_fresh_ones(Engine::Splice);
}

#[test]
fn stalled_streams_do_not_freeze_fresh_ones_copy() {
    stalled_streams_do_not_freeze_fresh_ones(Engine::Copy);
}

/// Zero-copy sends spill and wait on POLLOUT like plain ones, and pin at most half the
/// ring (they once held every buffer: 120 stalled streams left none for fresh ones).
#[test]
fn stalled_streams_do_not_freeze_fresh_ones_copy_send_zc() {
    stalled_streams_do_not_freeze_fresh_ones_with(Engine::Copy, true);
}

#[test]
fn stalled_streams_do_not_freeze_fresh_ones_uring_splice() {
    stalled_streams_do_not_freeze_fresh_ones(Engine::UringSplice);
}
