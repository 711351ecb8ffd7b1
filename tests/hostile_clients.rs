//! SOCKS5 clients that try to hold the proxy's resources by going slowly.

mod common;

use common::{config, half, key, start};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use streamhost::config::Engine;
use streamhost::Refusal;

/// A slowloris client dribbles a valid handshake one byte at a time, each byte well within
/// any per-read timeout: the deadline counts from the connect, not from the last byte.
#[test]
fn a_dribbled_handshake_is_closed_at_handshake_timeout() {
    let mut c = config(Engine::Splice);
    c.handshake_timeout = 2;
    let (h, addr) = start(c);
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key(7).as_bytes());
    req.extend_from_slice(&[0, 0]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let connected = Instant::now();
    let mut closed_at = None;
    for b in req {
        if s.write_all(&[b]).is_err() {
            closed_at = Some(connected.elapsed());
            break;
        }
        // A closed connection shows up as EOF or a reset within this read timeout.
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(connected.elapsed());
                break;
            }
            Ok(_) => {} // the method selection reply
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_at = Some(connected.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("the proxy closed the dribbling client");
    // 52 bytes at 250 ms each would take 13 s; the deadline is 2 s (checked every 250 ms).
    assert!(
        closed_at >= Duration::from_millis(1500) && closed_at < Duration::from_secs(6),
        "closed after {closed_at:?}"
    );
    assert_eq!(h.stats().refused(Refusal::HandshakeTimeout), 1);
}

/// At its open-files limit the proxy keeps what runs and what operators need: connections
/// beyond its descriptor budget shed the oldest unpaired halves (or are refused), `/metrics`
/// and `/ready` still answer from the reserve, and a legitimate pair still sets up.
#[test]
fn at_the_descriptor_limit_metrics_answer_and_a_pair_still_sets_up() {
    use common::scrape;
    use std::net::{SocketAddr, TcpListener};
    // Both held while chosen, so that they differ.
    let (a, b) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (socks, metrics) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streamhost.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 2\nlisten = [\"127.0.0.1:{socks}\"]\nmax_connections_per_ip = 0\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    )
    .unwrap();
    // 512 files: about 270 client connections after the workers' pipes and the reserve.
    let mut proxy = std::process::Command::new("prlimit")
        .arg("--nofile=512:512")
        .arg(env!("CARGO_BIN_EXE_streamhost"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .spawn()
        .expect("prlimit runs the proxy");
    let addr: SocketAddr = ([127, 0, 0, 1], socks).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics).into();
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < end, "no metrics endpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut flood = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    for n in 0..600u64 {
        // A proxy out of descriptors leaves connections unanswered: bounded in time too.
        if Instant::now() > end {
            break;
        }
        if let Ok(s) = common::try_half(addr, &key(1_000_000 + n)) {
            flood.push(s.0);
        }
    }
    let (status, _, body) = scrape::get(metrics, "/metrics");
    assert_eq!(status, 200);
    let samples = scrape::samples(&body);
    let shed = samples
        .get("streamhost_refusals_total{reason=\"shed\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(shed >= 200.0, "shed {shed}");
    assert_eq!(scrape::get(metrics, "/ready").0, 200);
    assert_eq!(samples.get("streamhost_accept_errors_total"), Some(&0.0));
    // A fresh pair is still placed (both halves answered 05 00 and waiting for their
    // activation; `tests/limits.rs` activates one through such a flood in process).
    let k = key(7);
    let (_a, _b) = (half(addr, &k), half(addr, &k));
    assert!(proxy.try_wait().unwrap().is_none(), "the proxy is running");
    drop(flood);
    let _ = proxy.kill();
    let _ = proxy.wait();
}

/// Connection churn: every connection leaves a deadline behind (its handshake's, then its
/// half's) that outlives it by up to the timeout. At a high rate those must not pile up
/// beyond the connections themselves: here 6,000 halves come and go in a few seconds
/// with timeouts of minutes, and the queues stay near their slack.
#[test]
fn connection_churn_does_not_grow_the_deadline_queues() {
    let mut c = config(Engine::Splice);
    c.workers = 1;
    c.handshake_timeout = 300;
    c.activation_timeout = 300;
    c.max_connections_per_ip = 0;
    let (h, addr) = start(c);
    for n in 0..6_000u64 {
        drop(half(addr, &key(1_000_000 + n)));
    }
    assert!(
        common::eventually(20, || h.stats().open == 0),
        "the halves are gone"
    );
    let queued = h.stats().deadline_entries;
    // Two queues, each within 2 x connections + 1,024 (and one entry pushed after).
    assert!(queued <= 2 * 1_025, "{queued} deadline entries queued");
}
