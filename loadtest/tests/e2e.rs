//! End-to-end: the scenarios against a small test proxy (tests/support) that activates
//! over the embedded XMPP server, a relay that corrupts or drops a byte, and the binary's
//! command line. Loopback only; every loop is bounded.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost_loadtest::control::{Control, PairIds};
use streamhost_loadtest::pairs::{run_tag, Target};
use streamhost_loadtest::scenarios::{bulk, idle, mixed, setup, Ctx};
use streamhost_loadtest::xmpp::embedded::EmbeddedServer;
use streamhost_loadtest::xmpp::{component, link::IqReply};
use support::{Fault, MiniProxy};

const JID: &str = "proxy.localhost";
const SECRET: &str = "sekrit";

struct Rig {
    _server: EmbeddedServer,
    _proxy: MiniProxy,
    ctx: Ctx,
}

fn rig(fault: Fault) -> Rig {
    let server = EmbeddedServer::start("127.0.0.1:0".parse().unwrap(), JID, SECRET).unwrap();
    let proxy = MiniProxy::start(server.addr(), JID, SECRET, fault);
    let link = server.wait_link(Duration::from_secs(5)).unwrap();
    let control = Arc::new(Control::new(link, JID, "localhost"));
    let ctx = Ctx {
        proxy: Some(Target::Proxy {
            addr: proxy.addr,
            control,
        }),
        baseline: true,
        seed: 3,
        io_timeout: Duration::from_secs(10),
        deadline: Instant::now() + Duration::from_secs(60),
        proxy_pid: Some(std::process::id()),
        metrics: None,
        tag: run_tag(),
        rounds: 2,
    };
    Rig {
        _server: server,
        _proxy: proxy,
        ctx,
    }
}

#[test]
fn embedded_server_checks_the_component_handshake() {
    let server = EmbeddedServer::start("127.0.0.1:0".parse().unwrap(), JID, SECRET).unwrap();
    let bad = component::connect(server.addr(), JID, "wrong", None, Duration::from_secs(5));
    let e = bad.err().expect("wrong secret is refused").to_string();
    assert!(e.contains("not-authorized"), "{e}");
    let wrong_jid = component::connect(
        server.addr(),
        "other.localhost",
        SECRET,
        None,
        Duration::from_secs(5),
    );
    assert!(wrong_jid.is_err());
    assert!(server.wait_link(Duration::from_millis(200)).is_err());

    // A component that answers activations: result for sid "ok", item-not-found otherwise.
    let handler = Box::new(|iq: &streamhost_loadtest::xmpp::xml::Element| {
        let q = iq.child("query")?;
        assert_eq!(
            q.attr("xmlns"),
            Some("http://jabber.org/protocol/bytestreams")
        );
        assert_eq!(q.child("activate")?.text, "tgt1@localhost/lt");
        let head = streamhost_loadtest::xmpp::link::reply_head(iq, "result");
        Some(if q.attr("sid") == Some("tagok") {
            format!("{head}/>")
        } else {
            streamhost_loadtest::xmpp::link::error_reply(iq, "cancel", "item-not-found")
        })
    });
    let _comp = component::connect(
        server.addr(),
        JID,
        SECRET,
        Some(handler),
        Duration::from_secs(5),
    )
    .unwrap();
    let link = server.wait_link(Duration::from_secs(5)).unwrap();
    let control = Control::new(link.clone(), JID, "localhost");
    let mut ids = PairIds::new("tag", 1, "localhost");
    ids.sid = "tagok".into();
    control.activate(&ids).unwrap();
    ids.sid = "tagbad".into();
    let e = control.activate(&ids).unwrap_err().to_string();
    assert!(e.contains("item-not-found") && e.contains("tagbad"), "{e}");
    // An IQ the component does not handle gets service-unavailable back.
    let r = link
        .iq(
            "get",
            "a@localhost/r",
            JID,
            "<ping xmlns='urn:xmpp:ping'/>",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(r, IqReply::Error("service-unavailable".into()));
}

#[test]
fn bulk_both_ways_through_the_proxy_with_baseline() {
    let r = rig(Fault::None);
    let p = bulk::BulkParams {
        pairs: vec![1, 3],
        bytes: 8 << 20,
        both_ways: true,
    };
    let rep = bulk::run(&r.ctx, &p, "bulk").unwrap();
    let agg = rep
        .figures
        .iter()
        .find(|f| f.name == "aggregate, 3 pairs")
        .unwrap();
    assert!(agg.value > 0.0 && agg.direct.unwrap() > 0.0 && agg.ratio.is_some());
    // Two alternating rounds: the ratio is the median of theirs, within their range.
    assert_eq!(agg.rounds, Some(2));
    let [lo, hi] = agg.ratio_range.unwrap();
    assert!(lo <= agg.ratio.unwrap() && agg.ratio.unwrap() <= hi);
    // Direct and proxy against pairs, and their ratio.
    let pairs: Vec<_> = rep.series.iter().filter(|s| s.x_label == "pairs").collect();
    assert_eq!(pairs.len(), 3);
    assert!(pairs
        .iter()
        .all(|s| s.points.len() == 2 && s.ranges.len() == 2));
}

#[test]
fn setup_mixed_and_idle_through_the_proxy() {
    let r = rig(Fault::None);
    let s = setup::run(
        &r.ctx,
        &setup::SetupParams {
            count: 40,
            concurrency: 4,
            payload: 1000,
        },
    )
    .unwrap();
    assert!(s.figures[0].value > 0.0 && s.figures[0].ratio.is_some());
    let done = s
        .latencies
        .iter()
        .find(|l| l.name == "done" && l.target == "proxy")
        .unwrap();
    // 40 setups in each of the two rounds.
    assert_eq!(done.count, 80);
    assert_eq!(s.figures[0].rounds, Some(2));
    assert!(done.p50_us <= done.p99_us && done.p99_us <= done.max_us);

    let m = mixed::run(
        &r.ctx,
        &mixed::MixedParams {
            rate: 100.0,
            duration: Duration::from_millis(500),
            median: 4096,
            sigma: 2.0,
            min: 100,
            max: 4 << 20,
            max_inflight: 16,
        },
    )
    .unwrap();
    assert!(m
        .figures
        .iter()
        .any(|f| f.name == "goodput" && f.value > 0.0));

    let i = idle::run(
        &r.ctx,
        &idle::IdleParams {
            pairs: 30,
            hold: Duration::from_millis(300),
            concurrency: 3,
        },
    )
    .unwrap();
    let held = i.figures.iter().find(|f| f.name == "pairs held").unwrap();
    assert_eq!(held.value, 30.0);
    assert!(i.figures.iter().any(|f| f.name == "proxy fds during"));
}

fn bulk_error(fault: Fault) -> String {
    let r = rig(fault);
    let p = bulk::BulkParams {
        pairs: vec![1],
        bytes: 4 << 20,
        both_ways: false,
    };
    bulk::run(&r.ctx, &p, "bulk")
        .expect_err("a faulty relay fails the run")
        .to_string()
}

#[test]
fn corrupted_byte_is_reported_with_pair_and_offset() {
    let e = bulk_error(Fault::Flip(1_234_567));
    assert!(
        e.contains("pair ") && e.contains("requester->target"),
        "{e}"
    );
    assert!(e.contains("wrong byte at offset 1234567"), "{e}");
}

#[test]
fn dropped_byte_is_reported_at_its_offset() {
    let e = bulk_error(Fault::Drop(777_777));
    assert!(e.contains("wrong byte at offset 777777"), "{e}");
}

#[test]
fn unknown_activation_is_an_error() {
    let r = rig(Fault::None);
    let Some(Target::Proxy { control, .. }) = &r.ctx.proxy else {
        panic!()
    };
    let e = control
        .activate(&PairIds::new("nope", 9, "localhost"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("item-not-found"), "{e}");
}
