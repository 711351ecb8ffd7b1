//! Interop with a real ejabberd (23.01, Debian's): the proxy binary joins as an
//! `ejabberd_service` component configured by deploy/ejabberd/streamhost.yml, real c2s
//! users discover it through the server, query the streamhost, connect with SOCKS5,
//! activate and move bytes. Each test starts its own ejabberd (about 1 s) on its own ports.

mod common;
mod support;

use common::scrape;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::bytestreams::{
    activate, assert_error, assert_result, exchange, key, pair, query_streamhost, BS,
};
use support::client::Client;
use support::ejabberd::{Ejabberd, DOMAIN, OTHER_DOMAIN, PROXY_JID, SECRET};
use support::socks5;
use support::streamhost_process::StreamhostProcess;

const DISCO_INFO: &str = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
const WAIT: Duration = Duration::from_secs(10);

struct Env {
    // Dropped in this order: the proxy, then ejabberd.
    proxy: StreamhostProcess,
    ejabberd: Ejabberd,
}

fn env(component_extra: &str) -> Env {
    let ejabberd = Ejabberd::start(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
        ("eve", OTHER_DOMAIN, "pw-eve"),
    ]);
    let proxy = StreamhostProcess::spawn(
        [127, 0, 0, 1].into(),
        ejabberd.component(),
        PROXY_JID,
        SECRET,
        component_extra,
    );
    assert!(
        proxy.wait_ready(Duration::from_secs(15)),
        "component did not log in: {}\n{}",
        proxy.log(),
        ejabberd.logs()
    );
    Env { proxy, ejabberd }
}

impl Env {
    fn login(&self, user: &str, domain: &str) -> Client {
        Client::login(self.ejabberd.c2s_port, user, domain, &format!("pw-{user}"))
            .unwrap_or_else(|e| panic!("{user} login: {e}\n{}", self.ejabberd.logs()))
    }

    fn logins(&self) -> f64 {
        let (status, _, body) = scrape::get(self.proxy.metrics, "/metrics");
        assert_eq!(status, 200);
        scrape::samples(&body)["streamhost_component_logins_total"]
    }
}

fn activate_ok(c: &mut Client, sid: &str, target: &str) {
    assert_result(&activate(c, PROXY_JID, sid, target), PROXY_JID);
}

#[test]
fn discovery_streamhost_activation_and_relay_through_ejabberd() {
    let e = env("");
    let mut romeo = e.login("romeo", DOMAIN);
    let mut juliet = e.login("juliet", DOMAIN);

    // The server lists the component (mod_disco extra_domains, as the snippet says).
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
    let info = romeo.iq("get", Some(PROXY_JID), DISCO_INFO).unwrap();
    assert_result(&info, PROXY_JID);
    let q = info.child("query").unwrap();
    let id = q.child("identity").unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("proxy"), Some("bytestreams"))
    );
    assert!(q.children.iter().any(|f| f.attr("var") == Some(BS)));

    let addr = query_streamhost(&mut romeo, PROXY_JID, WAIT).unwrap();
    assert_eq!(addr, e.proxy.socks, "the proxy advertises its listener");

    let (r, t) = pair(addr, "sid-relay-1", &romeo.jid, &juliet.jid).unwrap();
    activate_ok(&mut romeo, "sid-relay-1", &juliet.jid);
    exchange(&r, &t, 1 << 20, 7).unwrap();
    // Target case differs from the bound JID: normalised to the same key.
    let upper = juliet.jid.replacen("juliet", "JULIET", 1);
    let (r2, t2) = pair(addr, "sid-relay-2", &romeo.jid, &juliet.jid).unwrap();
    activate_ok(&mut romeo, "sid-relay-2", &upper);
    exchange(&t2, &r2, 64 << 10, 9).unwrap();
    // Either party may activate under XEP-0260.
    let (r3, t3) = pair(addr, "sid-relay-3", &juliet.jid, &romeo.jid).unwrap();
    activate_ok(&mut juliet, "sid-relay-3", &romeo.jid);
    exchange(&r3, &t3, 64 << 10, 11).unwrap();
}

#[test]
fn every_error_case_round_trips_through_ejabberd() {
    let e = env("");
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let target = juliet.jid.clone();
    let proxy = e.proxy.socks;

    let never = activate(&mut romeo, PROXY_JID, "never-connected", &target);
    assert_error(&never, "item-not-found");

    let _half = socks5::connect(proxy, &key("half", &romeo.jid, &target)).unwrap();
    assert_error(
        &activate(&mut romeo, PROXY_JID, "half", &target),
        "not-allowed",
    );

    let (_r, _t) = pair(proxy, "twice", &romeo.jid, &target).unwrap();
    activate_ok(&mut romeo, "twice", &target);
    assert_error(
        &activate(&mut romeo, PROXY_JID, "twice", &target),
        "not-allowed",
    );

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
    assert_error(
        &activate(&mut romeo, PROXY_JID, "x", "@@not a jid"),
        "jid-malformed",
    );

    let el = romeo
        .iq("get", Some(PROXY_JID), "<query xmlns='jabber:iq:roster'/>")
        .unwrap();
    assert_error(&el, "service-unavailable");
    let el = romeo.iq("set", Some(PROXY_JID), DISCO_INFO).unwrap();
    assert_error(&el, "feature-not-implemented");
    let ping = romeo
        .iq("get", Some(PROXY_JID), "<ping xmlns='urn:xmpp:ping'/>")
        .unwrap();
    assert_result(&ping, PROXY_JID);
    let v = romeo
        .iq("get", Some(PROXY_JID), "<query xmlns='jabber:iq:version'/>")
        .unwrap();
    assert_result(&v, PROXY_JID);
    assert_eq!(
        v.child("query").unwrap().child("name").unwrap().text,
        "streamhost"
    );
    // None of it cost the component its link.
    assert_eq!(e.logins(), 1.0);
    assert!(e.proxy.ready());
}

#[test]
fn outsiders_are_forbidden_discovery_and_activation() {
    // Default policy serves users of `localhost` only; juliet is denied explicitly.
    let e = env("[component.access]\ndeny = [\"juliet@localhost\"]\n");
    let mut romeo = e.login("romeo", DOMAIN);
    let mut juliet = e.login("juliet", DOMAIN);
    let mut eve = e.login("eve", OTHER_DOMAIN);
    for c in [&mut eve, &mut juliet] {
        assert_error(
            &c.iq("get", Some(PROXY_JID), DISCO_INFO).unwrap(),
            "forbidden",
        );
        let hosts = c
            .iq("get", Some(PROXY_JID), &format!("<query xmlns='{BS}'/>"))
            .unwrap();
        assert_error(&hosts, "forbidden");
    }
    // Real pairs exist, but eve and juliet may not activate them.
    let proxy = e.proxy.socks;
    let (_r, _t) = pair(proxy, "eve-sid", &eve.jid, &romeo.jid).unwrap();
    let el = activate(&mut eve, PROXY_JID, "eve-sid", &romeo.jid);
    assert_error(&el, "forbidden");
    let (_r, _t) = pair(proxy, "jul-sid", &juliet.jid, &romeo.jid).unwrap();
    let el = activate(&mut juliet, PROXY_JID, "jul-sid", &romeo.jid);
    assert_error(&el, "forbidden");
    let (r, t) = pair(proxy, "romeo-sid", &romeo.jid, &juliet.jid).unwrap();
    activate_ok(&mut romeo, "romeo-sid", &juliet.jid);
    exchange(&r, &t, 4096, 3).unwrap();
}

#[test]
fn component_reconnects_after_ejabberd_restart_and_relays_keep_going() {
    let mut e = env("");
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let addr: SocketAddr = query_streamhost(&mut romeo, PROXY_JID, WAIT).unwrap();
    let (r, t) = pair(addr, "survivor", &romeo.jid, &juliet.jid).unwrap();
    activate_ok(&mut romeo, "survivor", &juliet.jid);
    exchange(&r, &t, 256 << 10, 1).unwrap();

    e.ejabberd.stop();
    exchange(&r, &t, 256 << 10, 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.proxy.ready() {
        assert!(
            Instant::now() < deadline,
            "the component did not notice the server left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    e.ejabberd.restart();
    assert!(
        e.proxy.wait_ready(Duration::from_secs(20)),
        "no reconnect: {}\n{}",
        e.proxy.log(),
        e.ejabberd.logs()
    );
    assert_eq!(e.logins(), 2.0);
    exchange(&r, &t, 256 << 10, 3).unwrap();

    // Activation works again through the new link (the accounts survived the restart).
    let mut romeo = e.login("romeo", DOMAIN);
    let juliet = e.login("juliet", DOMAIN);
    let (r2, t2) = pair(addr, "after-restart", &romeo.jid, &juliet.jid).unwrap();
    activate_ok(&mut romeo, "after-restart", &juliet.jid);
    exchange(&r2, &t2, 64 << 10, 4).unwrap();
    exchange(&r, &t, 64 << 10, 5).unwrap();
}
