//! Interop with a real Prosody: the proxy joins as an XEP-0114 component, real c2s clients
//! discover it, connect with SOCKS5 through the real data plane, activate through the
//! server and move bytes. Each test starts its own Prosody on its own ports.

mod support;

use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::config::Config;
use streamhost::control::config::Secret;
use streamhost::control::{self, ControlConfig, ControlHandle};
use streamhost::{Handle, Server};
use support::client::{escape, Client, El};
use support::prosody::{Prosody, DOMAIN, OTHER_DOMAIN, PROXY_JID, SECRET};
use support::socks5;

const BS: &str = "http://jabber.org/protocol/bytestreams";

struct Env {
    // Dropped in this order: component, data plane, Prosody.
    control: ControlHandle,
    data: Arc<Handle>,
    prosody: Prosody,
    proxy: SocketAddr,
}

fn env(tune: impl FnOnce(&mut ControlConfig)) -> Env {
    env_with(|_| {}, tune)
}

/// `env` with the data plane's config tuned too.
fn env_with(tune_data: impl FnOnce(&mut Config), tune: impl FnOnce(&mut ControlConfig)) -> Env {
    let prosody = Prosody::start(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
        ("eve", OTHER_DOMAIN, "pw-eve"),
    ]);
    let mut cfg = Config {
        workers: 2,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    };
    tune_data(&mut cfg);
    let data = Arc::new(Server::start(cfg).expect("data plane starts"));
    let proxy = data.local_addrs()[0];
    let mut cc = ControlConfig {
        server: prosody.component_addr(),
        jid: PROXY_JID.into(),
        secret: Some(Secret::new(SECRET)),
        ..ControlConfig::default()
    };
    tune(&mut cc);
    let settings = cc
        .resolve(data.local_addrs())
        .expect("valid component config");
    let control = control::spawn(settings, data.clone()).expect("component thread");
    assert!(
        control.wait_connected(Duration::from_secs(15)),
        "component did not connect: {}",
        prosody.logs()
    );
    Env {
        control,
        data,
        prosody,
        proxy,
    }
}

impl Env {
    fn login(&self, user: &str, domain: &str) -> Client {
        Client::login(self.prosody.c2s_port, user, domain, &format!("pw-{user}"))
            .unwrap_or_else(|e| panic!("{user} login: {e}\n{}", self.prosody.logs()))
    }
}

fn key(sid: &str, requester: &str, target: &str) -> String {
    hex::encode(Sha1::digest(format!("{sid}{requester}{target}").as_bytes()))
}

fn activate(c: &mut Client, sid: &str, target: &str) -> El {
    c.iq(
        "set",
        Some(PROXY_JID),
        &format!(
            "<query xmlns='{BS}' sid='{}'><activate>{}</activate></query>",
            escape(sid),
            escape(target)
        ),
    )
    .expect("activation answer")
}

fn assert_result(el: &El) {
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
    assert_eq!(el.attr("from"), Some(PROXY_JID), "{el:?}");
}

fn assert_error(el: &El, condition: &str) {
    assert_eq!(el.attr("type"), Some("error"), "{el:?}");
    assert_eq!(el.error_condition().as_deref(), Some(condition), "{el:?}");
}

/// Target connects first (as in XEP-0065), then the requester.
fn pair(
    proxy: SocketAddr,
    sid: &str,
    requester: &Client,
    target: &Client,
) -> (TcpStream, TcpStream) {
    let k = key(sid, &requester.jid, &target.jid);
    let t = socks5::connect(proxy, &k).expect("target SOCKS5");
    let r = socks5::connect(proxy, &k).expect("requester SOCKS5");
    (r, t)
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[seed as usize % 4] ^ seed)
        .collect()
}

/// Sends `n` bytes each way at once and checks both arrive byte-exact.
fn exchange(a: &TcpStream, b: &TcpStream, n: usize, seed: u8) {
    let send = |mut w: TcpStream, data: Vec<u8>| {
        std::thread::spawn(move || w.write_all(&data).expect("relay write"))
    };
    let ab = pattern(seed, n);
    let ba = pattern(seed.wrapping_add(1), n);
    let t1 = send(a.try_clone().unwrap(), ab.clone());
    let t2 = send(b.try_clone().unwrap(), ba.clone());
    let mut got = vec![0u8; n];
    (&*b).read_exact(&mut got).expect("relay read at b");
    assert!(got == ab, "a->b bytes differ");
    (&*a).read_exact(&mut got).expect("relay read at a");
    assert!(got == ba, "b->a bytes differ");
    t1.join().unwrap();
    t2.join().unwrap();
}

#[test]
fn discovery_socks5_activation_and_relay_through_prosody() {
    let e = env(|_| {});
    let mut romeo = e.login("romeo", DOMAIN);
    let mut juliet = e.login("juliet", DOMAIN);

    let items = romeo
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .unwrap();
    let q = items.child("query").expect("items query");
    assert!(
        q.children.iter().any(|i| i.attr("jid") == Some(PROXY_JID)),
        "proxy not listed: {items:?}"
    );
    let info = romeo
        .iq(
            "get",
            Some(PROXY_JID),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .unwrap();
    assert_result(&info);
    let q = info.child("query").unwrap();
    let id = q.child("identity").unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("proxy"), Some("bytestreams"))
    );
    assert!(q.children.iter().any(|f| f.attr("var") == Some(BS)));

    let hosts = romeo
        .iq("get", Some(PROXY_JID), &format!("<query xmlns='{BS}'/>"))
        .unwrap();
    assert_result(&hosts);
    let sh = hosts
        .child("query")
        .unwrap()
        .child("streamhost")
        .expect("a streamhost");
    assert_eq!(sh.attr("jid"), Some(PROXY_JID));
    let addr: SocketAddr = format!("{}:{}", sh.attr("host").unwrap(), sh.attr("port").unwrap())
        .parse()
        .unwrap();
    assert_eq!(addr, e.proxy);

    let (r, t) = pair(addr, "sid-relay-1", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "sid-relay-1", &juliet.jid));
    exchange(&r, &t, 1 << 20, 7);
    // Target case differs from the bound JID: normalised to the same key.
    let upper = juliet.jid.replacen("juliet", "JULIET", 1);
    let (r2, t2) = pair(addr, "sid-relay-2", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "sid-relay-2", &upper));
    exchange(&t2, &r2, 64 << 10, 9);
    // Either party may activate under XEP-0260.
    let (r3, t3) = pair(addr, "sid-relay-3", &juliet, &romeo);
    assert_result(&activate(&mut juliet, "sid-relay-3", &romeo.jid));
    exchange(&r3, &t3, 64 << 10, 11);
    assert!(e.data.stats().activations >= 3);
}

#[test]
fn every_error_case_round_trips_through_prosody() {
    let e = env(|_| {});
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let target = juliet.jid.clone();

    assert_error(
        &activate(&mut romeo, "never-connected", &target),
        "item-not-found",
    );

    let _half = socks5::connect(e.proxy, &key("half", &romeo.jid, &target)).unwrap();
    assert_error(&activate(&mut romeo, "half", &target), "not-allowed");

    let (_r, _t) = pair(e.proxy, "twice", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "twice", &target));
    assert_error(&activate(&mut romeo, "twice", &target), "not-allowed");

    let long = "s".repeat(129);
    for payload in [
        format!("<query xmlns='{BS}'><activate>{target}</activate></query>"),
        format!("<query xmlns='{BS}' sid=''><activate>{target}</activate></query>"),
        format!("<query xmlns='{BS}' sid='{long}'><activate>{target}</activate></query>"),
        format!("<query xmlns='{BS}' sid='x'/>"),
    ] {
        let el = romeo.iq("set", Some(PROXY_JID), &payload).unwrap();
        assert_error(&el, "bad-request");
        assert_eq!(el.child("error").unwrap().attr("type"), Some("modify"));
    }
    assert_error(&activate(&mut romeo, "x", "@@not a jid"), "jid-malformed");

    // Every answer was counted for the metrics endpoint, with its latency.
    let a = e.control.status().activations();
    let n = |name: &str| a.replies.iter().find(|(r, _)| r.name() == name).unwrap().1;
    let counted = [
        ("activated", 1),
        ("item-not-found", 1),
        ("not-allowed", 2),
        ("bad-request", 4),
        ("jid-malformed", 1),
        ("forbidden", 0),
    ];
    for (name, want) in counted {
        assert_eq!(n(name), want, "{name}: {a:?}");
    }
    assert_eq!(a.count, 9);
    assert_eq!(a.buckets.last().unwrap().1, 9);

    let el = romeo
        .iq("get", Some(PROXY_JID), "<query xmlns='jabber:iq:roster'/>")
        .unwrap();
    assert_error(&el, "service-unavailable");
    let el = romeo
        .iq(
            "set",
            Some(PROXY_JID),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .unwrap();
    assert_error(&el, "feature-not-implemented");
    assert_result(
        &romeo
            .iq("get", Some(PROXY_JID), "<ping xmlns='urn:xmpp:ping'/>")
            .unwrap(),
    );
    let v = romeo
        .iq("get", Some(PROXY_JID), "<query xmlns='jabber:iq:version'/>")
        .unwrap();
    assert_result(&v);
    assert_eq!(
        v.child("query").unwrap().child("name").unwrap().text,
        "streamhost"
    );
    let items = romeo
        .iq(
            "get",
            Some(PROXY_JID),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .unwrap();
    assert_result(&items);
    assert!(items.child("query").unwrap().children.is_empty());
    // A malformed IQ (two payloads) is answered, and the component link survives it.
    let el = romeo
        .iq(
            "get",
            Some(PROXY_JID),
            "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>",
        )
        .unwrap();
    assert_error(&el, "bad-request");
    assert_eq!(e.control.logins(), 1);
    assert_result(
        &romeo
            .iq("get", Some(PROXY_JID), "<ping xmlns='urn:xmpp:ping'/>")
            .unwrap(),
    );
}

#[test]
fn outsiders_are_forbidden_discovery_and_activation() {
    // Default policy serves users of `localhost` only; juliet is denied explicitly.
    let e = env(|c| c.access.deny = vec!["juliet@localhost".into()]);
    let mut romeo = e.login("romeo", DOMAIN);
    let mut juliet = e.login("juliet", DOMAIN);
    let mut eve = e.login("eve", OTHER_DOMAIN);
    for c in [&mut eve, &mut juliet] {
        let info = c
            .iq(
                "get",
                Some(PROXY_JID),
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .unwrap();
        assert_error(&info, "forbidden");
        let hosts = c
            .iq("get", Some(PROXY_JID), &format!("<query xmlns='{BS}'/>"))
            .unwrap();
        assert_error(&hosts, "forbidden");
    }
    // A real pair exists, but eve may not activate it.
    let (_r, _t) = pair(e.proxy, "eve-sid", &eve, &romeo);
    assert_error(&activate(&mut eve, "eve-sid", &romeo.jid), "forbidden");
    let (_r, _t) = pair(e.proxy, "jul-sid", &juliet, &romeo);
    assert_error(&activate(&mut juliet, "jul-sid", &romeo.jid), "forbidden");
    // Romeo is served.
    let (r, t) = pair(e.proxy, "romeo-sid", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "romeo-sid", &juliet.jid));
    exchange(&r, &t, 4096, 3);
}

#[test]
fn component_reconnects_after_prosody_restart_and_relays_keep_going() {
    let mut e = env(|_| {});
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let (r, t) = pair(e.proxy, "survivor", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "survivor", &juliet.jid));
    exchange(&r, &t, 256 << 10, 1);

    e.prosody.stop();
    exchange(&r, &t, 256 << 10, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.control.state() == control::ConnState::Connected {
        assert!(
            Instant::now() < deadline,
            "the component did not notice the server left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    e.prosody.restart();
    assert!(
        e.control.wait_connected(Duration::from_secs(20)),
        "no reconnect: {}",
        e.prosody.logs()
    );
    assert_eq!(e.control.logins(), 2);
    exchange(&r, &t, 256 << 10, 3);

    // Activation works again through the new link.
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let (r2, t2) = pair(e.proxy, "after-restart", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "after-restart", &juliet.jid));
    exchange(&r2, &t2, 64 << 10, 4);
    exchange(&r, &t, 64 << 10, 5);
}

/// Stands for a bug in the control plane: the data plane, except that its `nth` activation
/// panics on the control thread.
struct PanicsOnce {
    data: Arc<Handle>,
    calls: std::sync::atomic::AtomicU32,
    nth: u32,
}

impl control::Activator for PanicsOnce {
    fn activate_then(
        &self,
        key: &streamhost::StreamKey,
        done: Box<dyn FnOnce(streamhost::ActivationOutcome) + Send>,
    ) {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        assert_ne!(n, self.nth, "a bug in the control plane");
        self.data.activate_then(key, done)
    }
}

#[test]
fn a_panic_in_the_control_plane_restarts_it_and_relays_keep_going() {
    let prosody = Prosody::start(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
    ]);
    let data = Arc::new(
        Server::start(Config {
            workers: 2,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        })
        .unwrap(),
    );
    let proxy = data.local_addrs()[0];
    let settings = ControlConfig {
        server: prosody.component_addr(),
        jid: PROXY_JID.into(),
        secret: Some(Secret::new(SECRET)),
        ..ControlConfig::default()
    }
    .resolve(data.local_addrs())
    .unwrap();
    let activator = Arc::new(PanicsOnce {
        data: data.clone(),
        calls: Default::default(),
        nth: 2,
    });
    let control = control::spawn(settings, activator).unwrap();
    assert!(control.wait_connected(Duration::from_secs(15)));
    let login = |u: &str| Client::login(prosody.c2s_port, u, DOMAIN, &format!("pw-{u}")).unwrap();
    let (mut romeo, juliet) = (login("romeo"), login("juliet"));
    let (r, t) = pair(proxy, "before", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "before", &juliet.jid));
    exchange(&r, &t, 256 << 10, 1);

    // The second activation panics on the control thread; nobody answers it.
    let (_r2, _t2) = pair(proxy, "boom", &romeo, &juliet);
    romeo
        .send(&format!(
            "<iq type='set' id='boom' to='{PROXY_JID}'><query xmlns='{BS}' sid='boom'>\
             <activate>{}</activate></query></iq>",
            escape(&juliet.jid)
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while control.logins() < 2 || control.state() != control::ConnState::Connected {
        assert!(Instant::now() < deadline, "no restart: {}", prosody.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(control.status().restarts(), 1);
    // The relay never noticed; activation works through the new login.
    exchange(&r, &t, 256 << 10, 2);
    let (mut romeo, juliet) = (login("romeo"), login("juliet"));
    let (r3, t3) = pair(proxy, "after", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "after", &juliet.jid));
    exchange(&r3, &t3, 64 << 10, 3);
    exchange(&r, &t, 64 << 10, 4);
    control.stop();
}

#[test]
fn wrong_secret_is_refused_and_retried_without_connecting() {
    let prosody = Prosody::start(&[]);
    let cc = ControlConfig {
        server: prosody.component_addr(),
        jid: PROXY_JID.into(),
        secret: Some(Secret::new("not-the-secret")),
        advertise: vec!["127.0.0.1:7777".into()],
        ..ControlConfig::default()
    };
    let settings = cc.resolve(&[]).unwrap();
    struct Unused;
    impl control::Activator for Unused {
        fn activate_then(
            &self,
            _: &streamhost::StreamKey,
            _: Box<dyn FnOnce(streamhost::ActivationOutcome) + Send>,
        ) {
            panic!("no activation expected")
        }
    }
    let control = control::spawn(settings, Arc::new(Unused)).unwrap();
    assert!(!control.wait_connected(Duration::from_secs(2)));
    assert_eq!(control.logins(), 0);
    let start = Instant::now();
    control.stop();
    assert!(start.elapsed() < Duration::from_secs(3));
}

/// Activation round trip (client -> Prosody -> component -> data plane -> back), over
/// 1,000 activations. Run with `cargo test --release -- --ignored --nocapture activation_rtt`.
#[test]
#[ignore]
fn activation_rtt_through_prosody() {
    let e = env(|_| {});
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let mut rtts = Vec::with_capacity(1000);
    for i in 0..1000 {
        let sid = format!("rtt-{i}");
        let (_r, _t) = pair(e.proxy, &sid, &romeo, &juliet);
        let t0 = Instant::now();
        let el = activate(&mut romeo, &sid, &juliet.jid);
        rtts.push(t0.elapsed());
        assert_result(&el);
    }
    rtts.sort();
    let p = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    println!(
        "activation RTT through Prosody over {} activations: p50 {:?}, p99 {:?}, max {:?}",
        rtts.len(),
        p(0.50),
        p(0.99),
        rtts[rtts.len() - 1]
    );
}

#[test]
fn streams_per_account_are_limited_until_a_relay_ends() {
    let e = env(|c| c.max_streams_per_jid = 1);
    let mut romeo = e.login("romeo", DOMAIN);
    let mut juliet = e.login("juliet", DOMAIN);
    let (r1, t1) = pair(e.proxy, "limit-1", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "limit-1", &juliet.jid));
    // A second running stream for romeo is over the limit; juliet is not affected.
    let (_r2, _t2) = pair(e.proxy, "limit-2", &romeo, &juliet);
    assert_error(
        &activate(&mut romeo, "limit-2", &juliet.jid),
        "resource-constraint",
    );
    let (r3, t3) = pair(e.proxy, "limit-3", &juliet, &romeo);
    assert_result(&activate(&mut juliet, "limit-3", &romeo.jid));
    exchange(&r3, &t3, 4096, 3);
    // When romeo's relay ends, his slot comes back.
    exchange(&r1, &t1, 4096, 5);
    drop((r1, t1));
    let end = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let sid = format!("limit-again-{n}");
        let (r, t) = pair(e.proxy, &sid, &romeo, &juliet);
        let res = activate(&mut romeo, &sid, &juliet.jid);
        if res.attr("type") == Some("result") {
            exchange(&r, &t, 4096, 7);
            break;
        }
        assert_error(&res, "resource-constraint");
        assert!(Instant::now() < end, "the slot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_daily_quota_is_counted_for_the_requester_and_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 1 << 20;
    let store = dir.path().join("quota.redb");
    let e = env_with(
        |c| {
            c.quota.jid_bytes_per_day = streamhost::shaping::units::ByteSize(quota);
            c.quota.store = Some(store);
        },
        |_| {},
    );
    let mut romeo = e.login("romeo", DOMAIN);
    let mut juliet = e.login("juliet", DOMAIN);
    let (r, t) = pair(e.proxy, "quota-1", &romeo, &juliet);
    assert_result(&activate(&mut romeo, "quota-1", &juliet.jid));
    // romeo sends twice his quota: the target gets exactly the quota, then a reset.
    let data = pattern(9, 2 * quota as usize);
    let mut w = r.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut t = t;
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        match t.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got.len() as u64, quota, "exactly the quota was relayed");
    assert!(got == pattern(9, 2 * quota as usize)[..quota as usize]);
    drop(r);
    sender.join().unwrap();
    // Counted against romeo's bare JID, the requester that activated over XMPP.
    let used = e.data.quota_used(&format!("jid:romeo@{DOMAIN}"));
    assert_eq!(used, quota);
    let (_r2, _t2) = pair(e.proxy, "quota-2", &romeo, &juliet);
    assert_error(
        &activate(&mut romeo, "quota-2", &juliet.jid),
        "resource-constraint",
    );
    // juliet has her own quota.
    let (r3, t3) = pair(e.proxy, "quota-3", &juliet, &romeo);
    assert_result(&activate(&mut juliet, "quota-3", &romeo.jid));
    exchange(&r3, &t3, 4096, 3);
}
