//! Pairing, activation outcomes and byte-exact relaying over real loopback sockets and a
//! real io_uring, for every relay engine.

mod common;

use common::*;
use std::io::{Read, Write};
use std::thread;
use streamhost::config::Engine;
use streamhost::{ActivationOutcome, Refusal};

fn both_ways(engine: Engine, bytes: u64) {
    both_ways_with(config(engine), bytes);
}

fn both_ways_with(c: streamhost::config::Config, bytes: u64) {
    let (h, addr) = start(c);
    let (a, b) = active_pair(&h, addr, 1);
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t1 = thread::spawn(move || send_pattern(&a2, 11, bytes).unwrap());
    let t2 = thread::spawn(move || send_pattern(&b2, 22, bytes).unwrap());
    let r1 = thread::spawn(move || recv_pattern(&b, 11).unwrap());
    let r2 = recv_pattern(&a, 22).unwrap();
    t1.join().unwrap();
    t2.join().unwrap();
    assert_eq!(r1.join().unwrap(), bytes);
    assert_eq!(r2, bytes);
    assert!(eventually(5, || h.stats().relays_finished == 1));
    let s = h.stats();
    assert_eq!(s.bytes_first_to_second, bytes);
    assert_eq!(s.bytes_second_to_first, bytes);
    assert_eq!(s.relays_active, 0);
    assert!(eventually(5, || h.stats().open == 0));
}

#[test]
fn copy_engine_relays_both_ways_byte_exact() {
    both_ways(Engine::Copy, 64 << 20);
}

#[test]
fn splice_engine_relays_both_ways_byte_exact() {
    both_ways(Engine::Splice, 64 << 20);
}

#[test]
fn uring_splice_engine_relays_both_ways_byte_exact() {
    both_ways(Engine::UringSplice, 64 << 20);
}

#[test]
fn copy_engine_with_send_zc_relays_both_ways_byte_exact() {
    let mut c = config(Engine::Copy);
    c.relay.send_zc = true;
    both_ways_with(c, 64 << 20);
}

#[test]
fn one_gib_each_way_at_once_copy() {
    both_ways(Engine::Copy, 1 << 30);
}

#[test]
fn one_gib_each_way_at_once_splice() {
    both_ways(Engine::Splice, 1 << 30);
}

#[test]
fn one_gib_each_way_at_once_uring_splice() {
    both_ways(Engine::UringSplice, 1 << 30);
}

#[test]
fn one_gib_each_way_at_once_copy_send_zc() {
    let mut c = config(Engine::Copy);
    c.relay.send_zc = true;
    both_ways_with(c, 1 << 30);
}

#[test]
fn activation_outcomes() {
    let (h, addr) = start(config(Engine::Copy));
    let k = key(7);
    assert_eq!(h.activate(&k), ActivationOutcome::UnknownKey);
    let _a = half(addr, &k);
    assert_eq!(h.activate(&k), ActivationOutcome::OnlyOneHalf);
    let _b = half(addr, &k);
    assert_eq!(h.activate(&k), ActivationOutcome::Activated);
    assert_eq!(h.activate(&k), ActivationOutcome::AlreadyActive);
    // A key that is relaying cannot be joined.
    let (_c, rep) = try_half(addr, &k).unwrap();
    assert_eq!(rep, 2, "not allowed by ruleset");
    assert_eq!(h.stats().refused(Refusal::AlreadyActive), 1);
}

#[test]
fn third_connection_is_refused() {
    let (h, addr) = start(config(Engine::Copy));
    let k = key(8);
    let _a = half(addr, &k);
    let _b = half(addr, &k);
    let (mut c, rep) = try_half(addr, &k).unwrap();
    assert_eq!(rep, 2);
    assert!(closed_by_peer(&mut c));
    assert_eq!(h.stats().refused(Refusal::ThirdConnection), 1);
    // The pair itself still works.
    assert_eq!(h.activate(&k), ActivationOutcome::Activated);
}

#[test]
fn either_connect_order_and_roles() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let (h, addr) = start(config(engine));
        for n in 0..2u64 {
            let k = key(100 + n);
            let first = half(addr, &k);
            let second = half(addr, &k);
            assert_eq!(h.activate(&k), ActivationOutcome::Activated);
            // n = 0: the first to connect sends; n = 1: the second sends.
            let (tx, rx) = if n == 0 {
                (first, second)
            } else {
                (second, first)
            };
            send_pattern(&tx, n, 100_000).unwrap();
            assert_eq!(recv_pattern(&rx, n).unwrap(), 100_000);
        }
    }
}

#[test]
fn early_bytes_wait_in_the_kernel_and_arrive_in_order() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let (h, addr) = start(config(engine));
        let k = key(9);
        let mut a = half(addr, &k);
        let mut b = half(addr, &k);
        let mut early = vec![0u8; 300_000];
        fill(&mut early, 5, 0);
        // Sent before activation: the proxy must not read (or drop) them.
        a.write_all(&early[..1000]).unwrap();
        b.write_all(b"hello").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(h.stats().bytes_first_to_second, 0);
        assert_eq!(h.activate(&k), ActivationOutcome::Activated);
        a.write_all(&early[1000..]).unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(recv_pattern(&b, 5).unwrap(), 300_000);
        let mut got = [0u8; 5];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let (h, addr) = start(config(engine));
        let (a, b) = active_pair(&h, addr, 10);
        // a finishes sending; b must see EOF yet still be able to answer.
        send_pattern(&a, 1, 50_000).unwrap();
        assert_eq!(recv_pattern(&b, 1).unwrap(), 50_000);
        send_pattern(&b, 2, 70_000).unwrap();
        assert_eq!(recv_pattern(&a, 2).unwrap(), 70_000);
        assert!(eventually(5, || h.stats().relays_finished == 1));
    }
}

#[test]
fn reset_tears_the_pair_down() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let (h, addr) = start(config(engine));
        let (a, mut b) = active_pair(&h, addr, 11);
        // SO_LINGER 0 makes close send RST.
        socket2::SockRef::from(&a)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(a);
        let mut buf = [0u8; 16];
        let r = b.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the survivor must see a reset, not a clean end: {r:?}"
        );
        assert!(eventually(5, || h.stats().relays_finished == 1 && h.stats().open == 0));
    }
}
