//! Bandwidth shaping and daily and monthly quotas over real loopback relays: each rate
//! measured within 10% of its setting (per stream, per account, per domain override,
//! global, after a reload), and a quota that cuts a stream, refuses the next activation
//! and survives a restart.

mod common;

use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use streamhost::config::{Config, Engine};
use streamhost::shaping::units::{ByteRate, ByteSize};
use streamhost::{ActivationOutcome, Handle, Refusal, StreamKey};

const MIB: u64 = 1 << 20;

/// Activates `key` on behalf of `requester` and waits for the outcome.
fn activate_for(h: &Handle, key: &StreamKey, requester: &str) -> ActivationOutcome {
    let (tx, rx) = mpsc::channel();
    h.activate_for(
        key,
        requester,
        Box::new(()),
        Box::new(move |o| {
            let _ = tx.send(o);
        }),
    );
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// A pair for `key`, activated for `requester`: (sender, receiver).
fn pair(h: &Handle, addr: SocketAddr, n: u64, requester: &str) -> (TcpStream, TcpStream) {
    let k = key(n);
    let tx = half(addr, &k);
    let rx = half(addr, &k);
    assert_eq!(activate_for(h, &k, requester), ActivationOutcome::Activated);
    (tx, rx)
}

/// Sends as fast as the relay takes it until the receiver is gone.
fn flood(s: TcpStream) {
    thread::spawn(move || {
        let _ = send_pattern(&s, 1, 1 << 40);
    });
}

/// Reads until `until`, recording (time, bytes so far) after every read.
fn record(mut s: TcpStream, until: Instant) -> thread::JoinHandle<Vec<(Instant, u64)>> {
    thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        let mut log = vec![(Instant::now(), 0)];
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got += n as u64;
                    log.push((Instant::now(), got));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        log
    })
}

/// Bytes a receiver had at `t` (its last read at or before it).
fn at(log: &[(Instant, u64)], t: Instant) -> u64 {
    log.iter()
        .take_while(|(w, _)| *w <= t)
        .last()
        .map_or(0, |x| x.1)
}

/// Combined rate of the logs between `from` and `to`, in bytes per second.
fn rate(logs: &[&Vec<(Instant, u64)>], from: Instant, to: Instant) -> f64 {
    let bytes: u64 = logs.iter().map(|l| at(l, to) - at(l, from)).sum();
    bytes as f64 / (to - from).as_secs_f64()
}

fn assert_within_10pct(measured: f64, set: u64, what: &str) {
    let r = measured / set as f64;
    assert!(
        (0.9..=1.1).contains(&r),
        "{what}: {:.2} MiB/s against {:.2} MiB/s set ({r:.3}x)",
        measured / MIB as f64,
        set as f64 / MIB as f64
    );
    println!("{what}: {r:.3}x of the set rate");
}

fn shaped(engine: Engine, f: impl FnOnce(&mut Config)) -> (Handle, SocketAddr) {
    let mut c = config(engine);
    f(&mut c);
    start(c)
}

#[test]
fn stream_rate_holds_within_10_percent_with_either_engine() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        let set = 8 * MIB;
        let (h, addr) = shaped(engine, |c| c.shaping.stream_rate = ByteRate(set));
        let (tx, rx) = pair(&h, addr, 1, "romeo@example.org");
        let t0 = Instant::now();
        let log = record(rx, t0 + Duration::from_millis(2600));
        flood(tx);
        let log = log.join().unwrap();
        // From 0.5 s on the burst is spent and only the rate counts.
        let r = rate(
            &[&log],
            t0 + Duration::from_millis(500),
            t0 + Duration::from_millis(2500),
        );
        assert_within_10pct(r, set, &format!("{engine:?} stream rate"));
        assert!(h.stats().shaping_waits > 0);
    }
}

#[test]
fn an_account_shares_its_rate_and_others_keep_theirs() {
    let set = 6 * MIB;
    let (h, addr) = shaped(Engine::Splice, |c| c.shaping.jid_rate = ByteRate(set));
    let (a_tx, a_rx) = pair(&h, addr, 1, "romeo@example.org");
    let (b_tx, b_rx) = pair(&h, addr, 2, "romeo@example.org");
    let (c_tx, c_rx) = pair(&h, addr, 3, "juliet@example.org");
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(2600);
    let (a, b, c) = (record(a_rx, end), record(b_rx, end), record(c_rx, end));
    for s in [a_tx, b_tx, c_tx] {
        flood(s);
    }
    let (a, b, c) = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());
    let (from, to) = (
        t0 + Duration::from_millis(500),
        t0 + Duration::from_millis(2500),
    );
    assert_within_10pct(rate(&[&a, &b], from, to), set, "two streams of one account");
    assert_within_10pct(rate(&[&c], from, to), set, "another account");
}

#[test]
fn a_domain_override_gives_its_accounts_their_own_rate() {
    let (common, vip) = (4 * MIB, 10 * MIB);
    let (h, addr) = shaped(Engine::Splice, |c| {
        c.shaping.jid_rate = ByteRate(common);
        c.shaping.domains.insert(
            "vip.example.org".into(),
            streamhost::shaping::config::DomainShaping {
                jid_rate: Some(ByteRate(vip)),
                ..Default::default()
            },
        );
    });
    let (a_tx, a_rx) = pair(&h, addr, 1, "romeo@example.org");
    let (b_tx, b_rx) = pair(&h, addr, 2, "juliet@vip.example.org");
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(2600);
    let (a, b) = (record(a_rx, end), record(b_rx, end));
    flood(a_tx);
    flood(b_tx);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let (from, to) = (
        t0 + Duration::from_millis(500),
        t0 + Duration::from_millis(2500),
    );
    assert_within_10pct(
        rate(&[&a], from, to),
        common,
        "an account of another domain",
    );
    assert_within_10pct(
        rate(&[&b], from, to),
        vip,
        "an account of the overridden domain",
    );
}

#[test]
fn the_global_rate_caps_all_streams_together() {
    let set = 12 * MIB;
    let (h, addr) = shaped(Engine::Copy, |c| c.shaping.global_rate = ByteRate(set));
    let pairs: Vec<_> = (0..4)
        .map(|i| pair(&h, addr, i, &format!("user{i}@example.org")))
        .collect();
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(2600);
    let mut logs = Vec::new();
    for (tx, rx) in pairs {
        logs.push(record(rx, end));
        flood(tx);
    }
    let logs: Vec<_> = logs.into_iter().map(|l| l.join().unwrap()).collect();
    let refs: Vec<_> = logs.iter().collect();
    let r = rate(
        &refs,
        t0 + Duration::from_millis(500),
        t0 + Duration::from_millis(2500),
    );
    assert_within_10pct(r, set, "global rate over 4 streams");
}

#[test]
fn a_reload_changes_the_rate_of_a_running_stream() {
    let (slow, fast) = (4 * MIB, 12 * MIB);
    let mut c = config(Engine::Splice);
    c.shaping.stream_rate = ByteRate(slow);
    let (h, addr) = start(c.clone());
    let (tx, rx) = pair(&h, addr, 1, "romeo@example.org");
    let t0 = Instant::now();
    let log = record(rx, t0 + Duration::from_millis(3600));
    flood(tx);
    thread::sleep(Duration::from_millis(1500));
    c.shaping.stream_rate = ByteRate(fast);
    assert!(h.reload(&c).is_empty(), "shaping needs no restart");
    let log = log.join().unwrap();
    let ms = |n| t0 + Duration::from_millis(n);
    assert_within_10pct(rate(&[&log], ms(500), ms(1450)), slow, "before the reload");
    assert_within_10pct(rate(&[&log], ms(2000), ms(3500)), fast, "after the reload");
}

#[test]
fn a_daily_quota_cuts_the_stream_refuses_the_next_and_survives_a_restart() {
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        quota_cut(engine, "jid");
    }
}

#[test]
fn a_monthly_quota_cuts_the_same_way() {
    quota_cut(Engine::Splice, "month-jid");
}

/// A quota of 3 MiB for romeo (`kind` "jid": per day; "month-jid": per month).
fn quota_cut(engine: Engine, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let quota = 3 * MIB;
    let counted = format!("{kind}:romeo@example.org");
    let store = dir.path().join("quota.redb");
    let mut c = config(engine);
    if kind == "jid" {
        c.quota.jid_bytes_per_day = ByteSize(quota);
    } else {
        c.quota.jid_bytes_per_month = ByteSize(quota);
    }
    c.quota.store = Some(store.clone());
    let (h, addr) = start(c.clone());
    let (tx, rx) = pair(&h, addr, 1, "romeo@example.org");
    let sender = thread::spawn(move || send_pattern(&tx, 7, 32 * MIB));
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut rx = rx;
    // The proxy resets the stream once the quota is used: every byte up to it arrives.
    loop {
        match rx.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert_eq!(got, quota, "{engine:?}: relayed exactly the quota");
    assert!(sender.join().unwrap().is_err(), "the sender sees the reset");
    assert_eq!(h.stats().refused(Refusal::Quota), 1);
    assert_eq!(h.quota_used(&counted), quota);
    // The next activation of that account is refused; another account is not.
    let k = key(2);
    let (_a, _b) = (half(addr, &k), half(addr, &k));
    assert_eq!(
        activate_for(&h, &k, "romeo@example.org"),
        ActivationOutcome::QuotaUsed
    );
    assert_eq!(
        activate_for(&h, &k, "juliet@example.org"),
        ActivationOutcome::Activated
    );
    drop(h);
    // After a restart the count is still there.
    let (h, addr) = start(c);
    assert_eq!(h.quota_used(&counted), quota);
    let k = key(3);
    let (_a, _b) = (half(addr, &k), half(addr, &k));
    assert_eq!(
        activate_for(&h, &k, "romeo@example.org"),
        ActivationOutcome::QuotaUsed
    );
}

#[test]
fn shaping_off_hands_out_no_waits() {
    let (h, addr) = start(config(Engine::Splice));
    let (tx, rx) = pair(&h, addr, 1, "romeo@example.org");
    let s = thread::spawn(move || send_pattern(&tx, 3, 64 * MIB));
    assert_eq!(recv_pattern(&rx, 3).unwrap(), 64 * MIB);
    s.join().unwrap().unwrap();
    assert_eq!(h.stats().shaping_waits, 0);
    assert_eq!(h.quota_used("jid:romeo@example.org"), 0);
}
