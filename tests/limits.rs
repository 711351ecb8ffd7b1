//! Connection limits over real loopback sockets: process-wide, pending, per source address
//! (concurrent and rate), each counted when it bites.

mod common;

use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use streamhost::config::Engine;
use streamhost::Refusal;

/// True if the proxy closed the connection without a byte (refused at accept).
fn refused_at_accept(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// True if the proxy answers a greeting (it was admitted).
fn admitted(s: &mut TcpStream) -> bool {
    use std::io::Write;
    if s.write_all(&[5, 1, 0]).is_err() {
        return false;
    }
    let mut b = [0u8; 2];
    s.read_exact(&mut b).is_ok() && b == [5, 0]
}

#[test]
fn per_ip_connection_limit_bites_per_source_only() {
    let mut c = config(Engine::Copy);
    c.max_connections_per_ip = 3;
    let (h, addr) = start(c);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", addr)).collect();
    for s in &mut held {
        assert!(admitted(s));
    }
    let mut fourth = connect_from("127.0.0.1", addr);
    assert!(refused_at_accept(&mut fourth));
    assert_eq!(h.stats().refused(Refusal::PerIpConnections), 1);
    // Another source is not affected.
    let mut other = connect_from("127.0.0.2", addr);
    assert!(admitted(&mut other));
    // Closing one frees a place.
    drop(held.pop());
    assert!(eventually(5, || h.stats().open == 3));
    let mut again = connect_from("127.0.0.1", addr);
    assert!(admitted(&mut again));
}

#[test]
fn per_ip_rate_is_enforced_within_ten_percent() {
    let mut c = config(Engine::Copy);
    c.connection_rate_per_ip = 50.0;
    c.connection_burst_per_ip = 10;
    let (h, addr) = start(c);
    // Try far faster than the rate for 2 s; admitted = burst + rate x elapsed.
    let start_at = Instant::now();
    let mut tried = 0u64;
    while start_at.elapsed() < Duration::from_secs(2) {
        let s = connect_from("127.0.0.3", addr);
        drop(s);
        tried += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = start_at.elapsed().as_secs_f64();
    assert!(eventually(5, || h.stats().open == 0));
    let s = h.stats();
    let refused = s.refused(Refusal::PerIpRate);
    let admitted = s.accepted;
    assert_eq!(admitted + refused, tried, "every attempt counted once");
    let expected = 10.0 + 50.0 * elapsed;
    let err = (admitted as f64 - expected).abs() / expected;
    assert!(
        err < 0.10,
        "admitted {admitted} of {tried} in {elapsed:.2} s, expected {expected:.0}"
    );
}

#[test]
fn process_wide_and_pending_limits() {
    let mut c = config(Engine::Copy);
    c.max_connections = 4;
    c.max_pending = 2;
    let (h, addr) = start(c);
    let k = key(1);
    let a = half(addr, &k);
    let b = half(addr, &k);
    // Two pending halves: a third pending connection is refused.
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(refused_at_accept(&mut third));
    assert_eq!(h.stats().refused(Refusal::MaxPending), 1);
    // Activation takes them out of pending; the process-wide limit then bites at 4.
    assert_eq!(h.activate(&k), streamhost::ActivationOutcome::Activated);
    // A pair waiting for activation is never shed to make room (a lone half would be).
    let _c = half(addr, &key(2));
    let _d = half(addr, &key(2));
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(refused_at_accept(&mut fifth));
    assert_eq!(h.stats().refused(Refusal::MaxConnections), 1);
    drop((a, b));
}

/// Many addresses of one network count together: a /24 (here 127.0.0.0/24) holds at most
/// `max_connections_per_v4_24`, whatever the number of its addresses.
#[test]
fn per_prefix_limit_sums_the_addresses_of_a_network() {
    let mut c = config(Engine::Splice);
    c.max_connections_per_v4_24 = Some(3);
    let (h, addr) = start(c);
    let mut held: Vec<TcpStream> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|a| connect_from(a, addr))
        .collect();
    for s in &mut held {
        assert!(admitted(s));
    }
    let mut fourth = connect_from("127.0.0.4", addr);
    assert!(refused_at_accept(&mut fourth));
    assert_eq!(h.stats().refused(Refusal::PerPrefixConnections), 1);
    // Another /24 is not affected; closing one frees a place in the first.
    let mut other = connect_from("127.0.1.1", addr);
    assert!(admitted(&mut other));
    drop(held.pop());
    assert!(eventually(5, || h.stats().open == 3));
    let mut again = connect_from("127.0.0.9", addr);
    assert!(admitted(&mut again));
}

/// Completes a SOCKS5 handshake for `key` from a chosen source address; true if placed.
fn placed_from(src: &str, to: SocketAddr, key: &streamhost::StreamKey) -> (TcpStream, bool) {
    use std::io::Write;
    let mut s = connect_from(src, to);
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(&[0, 0]);
    if s.write_all(&req).is_err() {
        return (s, false);
    }
    let mut reply = [0u8; 49];
    let ok = s.read_exact(&mut reply).is_ok() && reply[..4] == [5, 0, 5, 0];
    (s, ok)
}

/// A flood of halves that never pair, from many addresses, fills `max_pending`; a
/// legitimate pair from a fresh address still sets up: the oldest unpaired halves are
/// closed to make room, counted as `shed`.
#[test]
fn a_legitimate_pair_sets_up_during_a_flood_of_unpaired_halves() {
    let mut c = config(Engine::Splice);
    c.max_pending = 100;
    let (h, addr) = start(c);
    let mut flood = Vec::new();
    for n in 0..300u64 {
        let src = format!("127.{}.{}.{}", 1 + n / 250, n % 250, 1 + n % 7);
        let (s, _) = placed_from(&src, addr, &key(1_000_000 + n));
        flood.push(s);
    }
    assert!(
        h.stats().refused(Refusal::Shed) >= 150,
        "the flood was shed"
    );
    let k = key(7);
    let (mut a, a_ok) = placed_from("127.200.0.1", addr, &k);
    let (mut b, b_ok) = placed_from("127.200.0.2", addr, &k);
    assert!(a_ok && b_ok, "the legitimate halves were placed");
    assert_eq!(h.activate(&k), streamhost::ActivationOutcome::Activated);
    use std::io::Write;
    a.write_all(b"hello through the flood").unwrap();
    let mut got = [0u8; 23];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello through the flood");
    assert_eq!(h.stats().refused(Refusal::MaxPending), 0);
}
