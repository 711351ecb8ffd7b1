//! Every series of `/metrics` against the work that was done: through a real Prosody, a
//! known mix of activations (each reply the component can be made to give), refusals of
//! every reason a client can provoke, bytes both ways and a relay cut by its quota; then
//! one scrape over HTTP, parsed as OpenMetrics, where each counter must equal what
//! happened and the activation latency histogram must be consistent (and agree with the
//! round trips the clients measured).

mod common;
mod support;

use common::connect_from;
use common::exposition::Exposition;
use common::scrape::get;
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::config::Config;
use streamhost::control::config::Secret;
use streamhost::control::{self, ControlConfig, ControlHandle};
use streamhost::shaping::units::ByteSize;
use streamhost::{Handle, Refusal, Server};
use support::client::{escape, Client, El};
use support::prosody::{Prosody, DOMAIN, OTHER_DOMAIN, PROXY_JID, SECRET};
use support::socks5;

const BS: &str = "http://jabber.org/protocol/bytestreams";
/// romeo's and juliet's daily quota (each; both directions of their streams count).
const QUOTA: u64 = 1 << 20;

fn key(sid: &str, requester: &str, target: &str) -> String {
    hex::encode(Sha1::digest(format!("{sid}{requester}{target}").as_bytes()))
}

/// Activation IQs sent and their client-side round trips.
#[derive(Default)]
struct Activations {
    rtts: Vec<Duration>,
}

impl Activations {
    fn send(&mut self, c: &mut Client, sid: &str, target: &str) -> El {
        let payload = format!(
            "<query xmlns='{BS}' sid='{}'><activate>{}</activate></query>",
            escape(sid),
            escape(target)
        );
        self.raw(c, &payload)
    }

    fn raw(&mut self, c: &mut Client, payload: &str) -> El {
        let t = Instant::now();
        let el = c
            .iq("set", Some(PROXY_JID), payload)
            .expect("activation answer");
        self.rtts.push(t.elapsed());
        el
    }
}

fn assert_reply(el: &El, condition: Option<&str>) {
    match condition {
        None => assert_eq!(el.attr("type"), Some("result"), "{el:?}"),
        Some(c) => assert_eq!(el.error_condition().as_deref(), Some(c), "{el:?}"),
    }
}

/// Target connects first (as in XEP-0065), then the requester: (requester, target).
fn pair(proxy: SocketAddr, sid: &str, requester: &Client, target: &Client) -> [TcpStream; 2] {
    let k = key(sid, &requester.jid, &target.jid);
    let t = socks5::connect(proxy, &k).expect("target SOCKS5");
    let r = socks5::connect(proxy, &k).expect("requester SOCKS5");
    [r, t]
}

/// Sends `bytes` in one write and reads everything until the proxy closes.
fn exchange_raw(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A SOCKS5 CONNECT for `key` whose reply code is returned (0 = placed).
fn socks_rep(proxy: SocketAddr, key: &str) -> (TcpStream, u8) {
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(&[0, 0]);
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&req).unwrap();
    let mut head = [0u8; 3];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head, [5, 0, 5]);
    let mut rep = [0u8; 1];
    s.read_exact(&mut rep).unwrap();
    (s, rep[0])
}

/// Connects from `src` and sends a greeting: true if the proxy answered it (admitted and
/// now in its handshake), false if it closed the connection at accept.
fn admitted_from(src: &str, to: SocketAddr) -> (TcpStream, bool) {
    let mut s = connect_from(src, to);
    let _ = s.write_all(&[5, 1, 0]);
    let mut b = [0u8; 2];
    let ok = s.read_exact(&mut b).is_ok() && b == [5, 0];
    (s, ok)
}

fn sends(from: &TcpStream, data: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = from.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(&data);
        let _ = w.shutdown(std::net::Shutdown::Write);
    })
}

fn read_all(mut s: &TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[seed as usize % 4] ^ seed)
        .collect()
}

fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

struct Env {
    // Dropped in this order: metrics, component, data plane, Prosody.
    metrics: streamhost::MetricsServer,
    control: ControlHandle,
    data: Arc<Handle>,
    prosody: Prosody,
    config: Config,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let prosody = Prosody::start(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
        ("eve", OTHER_DOMAIN, "pw-eve"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        workers: 2,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        max_connections_per_ip: 0,
        handshake_timeout: 2,
        // Long enough for a pair to be activated through Prosody on a busy machine.
        activation_timeout: 6,
        ..Config::default()
    };
    config.quota.jid_bytes_per_day = ByteSize(QUOTA);
    config.quota.store = Some(dir.path().join("quota.redb"));
    let data = Arc::new(Server::start(config.clone()).expect("data plane starts"));
    let cc = ControlConfig {
        server: prosody.component_addr(),
        jid: PROXY_JID.into(),
        secret: Some(Secret::new(SECRET)),
        ..ControlConfig::default()
    };
    let settings = cc.resolve(data.local_addrs()).expect("component config");
    let control = control::spawn(settings, data.clone()).expect("component thread");
    assert!(
        control.wait_connected(Duration::from_secs(15)),
        "component did not connect: {}",
        prosody.logs()
    );
    let metrics = streamhost::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        data.clone(),
        Some(control.status()),
    )
    .expect("metrics binds");
    Env {
        metrics,
        control,
        data,
        prosody,
        config,
        _dir: dir,
    }
}

#[test]
fn every_series_equals_the_work_done() {
    let e = env();
    let proxy = e.data.local_addrs()[0];
    let login = |user: &str, domain: &str| {
        Client::login(e.prosody.c2s_port, user, domain, &format!("pw-{user}"))
            .unwrap_or_else(|err| panic!("{user}: {err}\n{}", e.prosody.logs()))
    };
    let mut romeo = login("romeo", DOMAIN);
    let mut juliet = login("juliet", DOMAIN);
    let mut eve = login("eve", OTHER_DOMAIN);
    let mut act = Activations::default();
    // Connections the proxy must expire (kept open until it does).
    let mut waiting: Vec<TcpStream> = Vec::new();

    // 1. A relay moving known bytes each way: the target connected first.
    let [r, t] = pair(proxy, "bytes", &romeo, &juliet);
    assert_reply(&act.send(&mut romeo, "bytes", &juliet.jid), None);
    let (first_to_second, second_to_first) = (300_000usize, 70_000usize);
    let (up, down) = (pattern(1, first_to_second), pattern(2, second_to_first));
    let w1 = sends(&t, up.clone());
    let w2 = sends(&r, down.clone());
    let got_r = std::thread::spawn({
        let r = r.try_clone().unwrap();
        move || read_all(&r)
    });
    assert!(read_all(&t) == down, "second -> first bytes differ");
    assert!(got_r.join().unwrap() == up, "first -> second bytes differ");
    w1.join().unwrap();
    w2.join().unwrap();
    drop((r, t));
    assert!(eventually(10, || e.data.stats().relays_finished == 1));

    // 2. Activation replies: unknown stream, only one half, activated twice.
    assert_reply(
        &act.send(&mut romeo, "never-connected", &juliet.jid),
        Some("item-not-found"),
    );
    let k = key("one-half", &romeo.jid, &juliet.jid);
    waiting.push(socks5::connect(proxy, &k).unwrap());
    assert_reply(
        &act.send(&mut romeo, "one-half", &juliet.jid),
        Some("not-allowed"),
    );
    // An idle relay kept running to the end (and for the per-source limit below).
    let running = pair(proxy, "running", &romeo, &juliet);
    assert_reply(&act.send(&mut romeo, "running", &juliet.jid), None);
    assert_reply(
        &act.send(&mut romeo, "running", &juliet.jid),
        Some("not-allowed"),
    );
    assert_reply(
        &act.raw(
            &mut romeo,
            &format!(
                "<query xmlns='{BS}'><activate>{}</activate></query>",
                juliet.jid
            ),
        ),
        Some("bad-request"),
    );
    assert_reply(
        &act.send(&mut romeo, "x", "@@not a jid"),
        Some("jid-malformed"),
    );
    // eve is outside the served domains.
    waiting.extend(pair(proxy, "eve", &eve, &romeo));
    assert_reply(&act.send(&mut eve, "eve", &romeo.jid), Some("forbidden"));

    // 3. Rendezvous refusals: a connection for an active key, a third for a pair.
    let k = key("running", &romeo.jid, &juliet.jid);
    assert_eq!(socks_rep(proxy, &k).1, 2, "already active");
    waiting.extend(pair(proxy, "three", &romeo, &juliet));
    let k = key("three", &romeo.jid, &juliet.jid);
    assert_eq!(socks_rep(proxy, &k).1, 2, "third connection");

    // 4. Quota: juliet sends twice her quota; the relay is cut after exactly the quota,
    //    and her next activation is refused.
    let [r, t] = pair(proxy, "quota", &juliet, &romeo);
    assert_reply(&act.send(&mut juliet, "quota", &romeo.jid), None);
    let w = sends(&r, pattern(3, 2 * QUOTA as usize));
    let got = read_all(&t);
    assert_eq!(got.len() as u64, QUOTA, "exactly the quota was relayed");
    drop((r, t));
    w.join().unwrap();
    assert!(eventually(10, || e.data.stats().relays_finished == 2));
    waiting.extend(pair(proxy, "quota-again", &juliet, &romeo));
    assert_reply(
        &act.send(&mut juliet, "quota-again", &romeo.jid),
        Some("resource-constraint"),
    );

    // 5. Handshake refusals, each in one segment, with the reply RFC 1928 prescribes.
    let hex_key = key("hs", "a@b", "c@d").into_bytes();
    let request = |ver: u8, cmd: u8, rsv: u8, addr: &[u8], port: [u8; 2]| {
        let mut v = vec![5, 1, 0, ver, cmd, rsv];
        v.extend_from_slice(addr);
        v.extend_from_slice(&port);
        v
    };
    let domain = |k: &[u8]| [&[3u8, k.len() as u8][..], k].concat();
    let bad_hex = b"z".repeat(40);
    let cases: [(Refusal, Vec<u8>, &[u8]); 7] = [
        (Refusal::BadVersion, vec![4, 1, 0], &[]),
        (Refusal::NoAcceptableMethod, vec![5, 1, 2], &[5, 0xFF]),
        (
            Refusal::BadCommand,
            request(5, 2, 0, &domain(&hex_key), [0, 0]),
            &[5, 0, 5, 7],
        ),
        (
            Refusal::BadAddressType,
            request(5, 1, 0, &[1, 127, 0, 0, 1], [0, 0]),
            &[5, 0, 5, 8],
        ),
        (
            Refusal::BadKey,
            request(5, 1, 0, &domain(&bad_hex), [0, 0]),
            &[5, 0, 5, 4],
        ),
        (
            Refusal::BadPort,
            request(5, 1, 0, &domain(&hex_key), [0, 80]),
            &[5, 0, 5, 2],
        ),
        (
            Refusal::Malformed,
            request(5, 1, 1, &domain(&hex_key), [0, 0]),
            &[5, 0, 5, 1],
        ),
    ];
    for (why, bytes, reply) in &cases {
        let got = exchange_raw(proxy, bytes);
        assert!(got.starts_with(reply), "{why:?}: {got:?}");
    }
    // A client that never finishes its handshake.
    let (idle, ok) = admitted_from("127.0.0.4", proxy);
    assert!(ok);
    waiting.push(idle);

    // Everything left waiting expires: 7 halves for activation, 1 handshake.
    let activation_expired = waiting.len() as u64 - 1;
    assert_eq!(activation_expired, 7);
    assert!(
        eventually(20, || {
            let s = e.data.stats();
            s.refused(Refusal::ActivationTimeout) == activation_expired
                && s.refused(Refusal::HandshakeTimeout) == 1
                && s.open == 2
        }),
        "{:?}",
        e.data.stats()
    );
    drop(waiting);

    // 6. Connection limits, set live (as SIGHUP does) while only the running relay's two
    //    connections (from 127.0.0.1) are open.
    let mut c = e.config.clone();
    c.max_connections_per_ip = 2;
    e.data.reload(&c);
    assert!(!admitted_from("127.0.0.1", proxy).1, "per-source limit");
    let mut c = e.config.clone();
    c.max_connections = 2;
    c.max_pending = 2;
    e.data.reload(&c);
    assert!(!admitted_from("127.0.0.2", proxy).1, "max_connections");
    // Two connections in their handshake fill max_pending = 2. (Should they expire
    // before the third arrives on a stalled machine, the third is admitted: counted, and
    // tried again.)
    let mut c = e.config.clone();
    c.max_pending = 2;
    e.data.reload(&c);
    let mut in_handshake = Vec::new();
    for attempt in 0.. {
        assert!(attempt < 5, "max_pending never refused");
        for _ in 0..2 {
            let (s, ok) = admitted_from("127.0.0.3", proxy);
            assert!(ok);
            in_handshake.push(s);
        }
        let (s, ok) = admitted_from("127.0.0.3", proxy);
        if !ok {
            break;
        }
        in_handshake.push(s);
    }
    // A fresh source may open one connection (its burst), then waits 1000 s for the next.
    let mut c = e.config.clone();
    c.connection_rate_per_ip = 0.001;
    c.connection_burst_per_ip = 1;
    e.data.reload(&c);
    let (s, ok) = admitted_from("127.0.0.9", proxy);
    assert!(ok, "the burst");
    in_handshake.push(s);
    assert!(!admitted_from("127.0.0.9", proxy).1, "per-source rate");
    e.data.reload(&e.config);
    // Those admitted (3 or more) time out in their handshake.
    let hs_timeouts = 1 + in_handshake.len() as u64;
    assert!(
        eventually(20, || e.data.stats().refused(Refusal::HandshakeTimeout)
            == hs_timeouts),
        "{:?}",
        e.data.stats()
    );
    drop(in_handshake);

    // The running relay ends.
    drop(running);
    assert!(eventually(10, || {
        let s = e.data.stats();
        s.relays_finished == 3 && s.open == 0
    }));

    // One scrape, parsed as OpenMetrics.
    let (status, head, body) = get(e.metrics.local_addr(), "/metrics");
    assert_eq!(status, 200, "{head}");
    let m = Exposition::parse(&body);
    let v = |family: &str, labels: &[(&str, &str)]| m.value(family, labels);

    // Data plane. Placed halves: bytes 2, one-half 1, running 2, eve 2, already-active 1,
    // three 3, quota 2, quota-again 2 = 15 handshakes; 7 refused ones; 1 + the
    // limit-phase connections that timed out.
    let handshakes_ok = 15.0;
    let handshakes_failed = 7.0 + hs_timeouts as f64;
    assert_eq!(v("streamhost_workers", &[]), 2.0);
    assert_eq!(
        v("streamhost_connections_accepted", &[]),
        handshakes_ok + handshakes_failed
    );
    assert_eq!(
        v("streamhost_handshakes", &[("outcome", "ok")]),
        handshakes_ok
    );
    assert_eq!(
        v("streamhost_handshakes", &[("outcome", "failed")]),
        handshakes_failed
    );
    assert_eq!(v("streamhost_connections_open", &[]), 0.0);
    // bytes, one-half (no), running, eve, three, quota, quota-again.
    assert_eq!(v("streamhost_pairs_matched", &[]), 6.0);
    assert_eq!(v("streamhost_activations", &[]), 3.0);
    assert_eq!(v("streamhost_relays_active", &[]), 0.0);
    assert_eq!(v("streamhost_relays_finished", &[]), 3.0);
    assert_eq!(
        v(
            "streamhost_relay_bytes",
            &[("direction", "first_to_second")]
        ),
        first_to_second as f64
    );
    assert_eq!(
        v(
            "streamhost_relay_bytes",
            &[("direction", "second_to_first")]
        ),
        (second_to_first as u64 + QUOTA) as f64
    );
    assert!(v("streamhost_handoffs", &[]) <= handshakes_ok);
    assert_eq!(v("streamhost_relay_errors", &[]), 0.0);
    assert_eq!(v("streamhost_shaping_waits", &[]), 0.0);
    let mut refusals = std::collections::HashMap::new();
    for (why, _, _) in &cases {
        refusals.insert(*why, 1);
    }
    refusals.insert(Refusal::ThirdConnection, 1);
    refusals.insert(Refusal::AlreadyActive, 1);
    refusals.insert(Refusal::ActivationTimeout, activation_expired);
    refusals.insert(Refusal::HandshakeTimeout, hs_timeouts);
    refusals.insert(Refusal::PerIpConnections, 1);
    refusals.insert(Refusal::MaxConnections, 1);
    refusals.insert(Refusal::MaxPending, 1);
    refusals.insert(Refusal::PerIpRate, 1);
    // The cut relay and the refused activation.
    refusals.insert(Refusal::Quota, 2);
    for why in Refusal::ALL {
        // auth_failed needs socks5_auth, which every other client here would need too.
        let want = refusals.get(&why).copied().unwrap_or(0);
        assert_eq!(
            v("streamhost_refusals", &[("reason", why.name())]),
            want as f64,
            "refusals {}",
            why.name()
        );
    }

    // Health and limits: both workers running and ticking, nothing pending, the limits
    // in force (the config's again after the reloads), the quota store written.
    assert_eq!(v("streamhost_workers_alive", &[]), 2.0);
    for w in ["0", "1"] {
        assert!(v("streamhost_worker_ticks", &[("worker", w)]) > 0.0);
    }
    assert_eq!(v("streamhost_connections_pending", &[]), 0.0);
    assert_eq!(
        v("streamhost_max_connections", &[]),
        e.config.max_connections as f64
    );
    assert_eq!(
        v("streamhost_max_pending", &[]),
        e.config.max_pending as f64
    );
    assert_eq!(
        v("streamhost_quota_store_flushes", &[("outcome", "failed")]),
        0.0
    );
    assert!(m.has("streamhost_quota_store_flushes", &[("outcome", "ok")]));

    // Control plane.
    assert_eq!(v("streamhost_component_state", &[]), 2.0);
    assert_eq!(v("streamhost_component_logins", &[]), 1.0);
    let replies = [
        ("activated", 3.0),
        ("item-not-found", 1.0),
        ("not-allowed", 2.0),
        ("forbidden", 1.0),
        ("bad-request", 1.0),
        ("jid-malformed", 1.0),
        ("service-unavailable", 0.0),
        ("resource-constraint", 1.0),
        ("internal-server-error", 0.0),
        ("other", 0.0),
    ];
    for (outcome, want) in replies {
        assert_eq!(
            v("streamhost_component_activations", &[("outcome", outcome)]),
            want,
            "replies {outcome}"
        );
    }
    let n = act.rtts.len() as f64;
    assert_eq!(n, replies.iter().map(|r| r.1).sum::<f64>());

    // The latency histogram: consistent (checked by `histogram`), one observation per
    // activation answered, and each no longer than the round trip its client measured.
    let h = m.histogram("streamhost_component_activation_duration_seconds");
    assert_eq!(h.count, n, "{h:?}");
    let rtt_sum: f64 = act.rtts.iter().map(|d| d.as_secs_f64()).sum();
    assert!(h.sum > 0.0 && h.sum <= rtt_sum, "{} > {rtt_sum}", h.sum);
    for &(bound, cum) in &h.buckets {
        let within = act.rtts.iter().filter(|d| d.as_secs_f64() <= bound).count() as f64;
        assert!(
            cum >= within,
            "le={bound}: {cum} < {within} round trips: {h:?}"
        );
    }

    // Every family is typed as documented.
    assert_eq!(m.kind("streamhost_activations").as_deref(), Some("counter"));
    assert_eq!(m.kind("streamhost_relays_active").as_deref(), Some("gauge"));
    e.metrics.stop();
    e.control.stop();
}
