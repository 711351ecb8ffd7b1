//! Timeouts, malformed handshakes on real sockets, cross-core pairing, back-pressure and
//! many concurrent pairs.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};
use streamhost::config::Engine;
use streamhost::{ActivationOutcome, Refusal};

#[test]
fn handshake_timeout_closes_silent_clients() {
    let mut c = config(Engine::Copy);
    c.handshake_timeout = 1;
    let (h, addr) = start(c);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5]).unwrap(); // half a greeting, then silence
    let t = Instant::now();
    assert!(closed_by_peer(&mut s));
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert_eq!(h.stats().refused(Refusal::HandshakeTimeout), 1);
    assert!(eventually(5, || h.stats().open == 0));
}

#[test]
fn unmatched_and_unactivated_halves_expire() {
    let mut c = config(Engine::Copy);
    c.activation_timeout = 1;
    let (h, addr) = start(c);
    let mut lonely = half(addr, &key(1));
    let k = key(2);
    let mut a = half(addr, &k);
    let mut b = half(addr, &k);
    for s in [&mut lonely, &mut a, &mut b] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(closed_by_peer(s));
    }
    assert_eq!(h.stats().refused(Refusal::ActivationTimeout), 3);
    assert_eq!(h.activate(&k), ActivationOutcome::UnknownKey);
    assert!(eventually(5, || h.stats().open == 0));
}

#[test]
fn a_waiting_half_that_leaves_frees_its_key() {
    let (h, addr) = start(config(Engine::Copy));
    let k = key(3);
    let a = half(addr, &k);
    drop(a);
    assert!(eventually(5, || h.stats().open == 0));
    assert_eq!(h.activate(&k), ActivationOutcome::UnknownKey);
    // The key can be used afresh.
    let _a = half(addr, &k);
    let _b = half(addr, &k);
    assert_eq!(h.activate(&k), ActivationOutcome::Activated);
}

/// Each malformed handshake gets the right reply (or none) and a close.
#[test]
fn malformed_handshakes_get_the_right_reply_and_a_close() {
    let (h, addr) = start(config(Engine::Copy));
    let k = key(4);
    let req = |cmd: u8, atyp: u8, len: u8, addr: &[u8], port: [u8; 2]| {
        let mut v = vec![5, 1, 0, 5, cmd, 0, atyp];
        if atyp == 3 {
            v.push(len);
        }
        v.extend_from_slice(addr);
        v.extend_from_slice(&port);
        v
    };
    let good = k.as_bytes().to_vec();
    let mut nonhex = good.clone();
    nonhex[3] = b'z';
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("no acceptable method", vec![5, 1, 2], vec![5, 0xff]),
        ("bind", req(2, 3, 40, &good, [0, 0]), vec![5, 0, 5, 7]),
        ("udp", req(3, 3, 40, &good, [0, 0]), vec![5, 0, 5, 7]),
        (
            "ipv4",
            req(1, 1, 0, &[127, 0, 0, 1], [0, 80]),
            vec![5, 0, 5, 8],
        ),
        ("ipv6", req(1, 4, 0, &[0; 16], [0, 80]), vec![5, 0, 5, 8]),
        ("non-hex key", req(1, 3, 40, &nonhex, [0, 0]), vec![5, 0, 5]),
        (
            "port not zero",
            req(1, 3, 40, &good, [0, 80]),
            vec![5, 0, 5, 2],
        ),
        (
            "trailing garbage",
            [req(1, 3, 40, &good, [0, 0]), vec![1]].concat(),
            vec![5, 0, 5, 1],
        ),
    ];
    for (what, bytes, want) in cases {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.starts_with(&want),
            "{what}: got {got:?}, want prefix {want:?}"
        );
        assert_ne!(got.get(3), Some(&0), "{what}: must not succeed");
    }
    let s = h.stats();
    assert_eq!(s.handshakes_ok, 0);
    assert_eq!(s.handshakes_failed, 8);
    assert_eq!(s.refused(Refusal::NoAcceptableMethod), 1);
    assert_eq!(s.refused(Refusal::BadCommand), 2);
    assert_eq!(s.refused(Refusal::BadAddressType), 2);
    assert_eq!(s.refused(Refusal::BadPort), 1);
    assert!(eventually(5, || h.stats().open == 0));
}

#[test]
fn socks5_username_password_is_enforced() {
    let mut c = config(Engine::Copy);
    c.socks5_auth = Some(streamhost::config::Socks5Auth {
        username: "proxy".into(),
        password: "s3cret".into(),
    });
    let (h, addr) = start(c);
    let k = key(5);
    let attempt = |pass: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut m = vec![5, 1, 2, 1, 5];
        m.extend_from_slice(b"proxy");
        m.push(pass.len() as u8);
        m.extend_from_slice(pass);
        m.extend_from_slice(&[5, 1, 0, 3, 40]);
        m.extend_from_slice(k.as_bytes());
        m.extend_from_slice(&[0, 0]);
        s.write_all(&m).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };
    assert_eq!(attempt(b"wrong!"), vec![5, 2, 1, 1]);
    let ok = attempt(b"s3cret");
    assert_eq!(&ok[..4], &[5, 2, 1, 0]);
    assert_eq!(&ok[4..6], &[5, 0], "request accepted");
    assert_eq!(h.stats().refused(Refusal::AuthFailed), 1);
    // Without auth offered, method 00 is not acceptable when auth is configured.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(got, vec![5, 0xff]);
}

#[test]
fn halves_accepted_on_different_cores_meet_on_the_owner() {
    let (h, addr) = start(config(Engine::Copy));
    // With two workers, SO_REUSEPORT spreads connections by 4-tuple hash: over 40 pairs
    // some halves must land away from their key's owner and be handed over.
    for n in 0..40u64 {
        let (a, b) = active_pair(&h, addr, 1000 + n);
        send_pattern(&a, n, 10_000).unwrap();
        assert_eq!(recv_pattern(&b, n).unwrap(), 10_000);
    }
    let s = h.stats();
    assert!(s.handoffs > 0, "no hand-off in 80 connections: {s:?}");
    assert_eq!(s.activations, 40);
}

#[test]
fn slow_receiver_slows_its_sender_with_bounded_memory() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let (h, addr) = start(config(engine));
        let (a, b) = active_pair(&h, addr, 12);
        let before = rss_kib();
        let total: u64 = 256 << 20;
        let sender = thread::spawn(move || {
            a.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            send_pattern(&a, 3, total).unwrap();
        });
        // The receiver reads nothing for a while: the sender must stall.
        thread::sleep(Duration::from_millis(1500));
        let relayed = h.stats().bytes_first_to_second;
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        assert!(
            relayed < 64 << 20,
            "{engine:?}: {relayed} bytes went into a stalled receiver"
        );
        assert!(
            grown_mib < 64,
            "{engine:?}: RSS grew {grown_mib} MiB with a stalled receiver"
        );
        assert!(
            !sender.is_finished(),
            "{engine:?}: the sender was not slowed"
        );
        // Then a slow reader gets everything, in order.
        b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(recv_pattern(&b, 3).unwrap(), total);
        sender.join().unwrap();
    }
}

#[test]
fn a_thousand_concurrent_pairs() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let (h, addr) = start(config(engine));
        let pairs: Vec<_> = (0..1000u64)
            .map(|n| {
                let k = key(5000 + n);
                (half(addr, &k), half(addr, &k), k)
            })
            .collect();
        assert_eq!(h.stats().pairs_matched, 1000);
        for (_, _, k) in &pairs {
            assert_eq!(h.activate(k), ActivationOutcome::Activated);
        }
        assert_eq!(h.stats().relays_active, 1000);
        // Every pair moves data at once, from a few threads.
        let chunks: Vec<Vec<_>> = {
            let mut v: Vec<Vec<_>> = (0..4).map(|_| Vec::new()).collect();
            for (i, p) in pairs.into_iter().enumerate() {
                v[i % 4].push((i as u64, p.0, p.1));
            }
            v
        };
        let threads: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                thread::spawn(move || {
                    for (n, a, _) in &chunk {
                        let mut buf = vec![0u8; 20_000];
                        fill(&mut buf, *n, 0);
                        (&*a).write_all(&buf).unwrap();
                        a.shutdown(std::net::Shutdown::Write).unwrap();
                    }
                    for (n, _, b) in &chunk {
                        assert_eq!(recv_pattern(b, *n).unwrap(), 20_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.stats();
        assert_eq!(s.bytes_first_to_second, 1000 * 20_000);
    }
}

/// A relay whose receiver stops reading for good is torn down by `idle_timeout`, and both
/// halves are freed: the stalled half's pending write waits on its peer's socket, which the
/// peer's own close must not leave behind.
#[test]
fn idle_timeout_frees_a_relay_stuck_on_its_receiver() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let mut c = config(engine);
        c.idle_timeout = 1;
        let (h, addr) = start(c);
        let (a, b) = active_pair(&h, addr, 13);
        // b -> a ends at once; a -> b stalls because b never reads.
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let sender = thread::spawn(move || {
            a.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let _ = send_pattern(&a, 4, 1 << 30);
        });
        assert!(
            eventually(15, || h.stats().relays_finished == 1),
            "{engine:?}: not torn down"
        );
        assert!(
            eventually(5, || h.stats().open == 0),
            "{engine:?}: a half was left open: {:?}",
            h.stats()
        );
        sender.join().unwrap();
        drop(b);
    }
}
