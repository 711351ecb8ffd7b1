//! The metrics endpoint over real TCP on loopback: counters after real relays and
//! refusals, readiness with and without a component, routing, and bounds.

mod common;

use common::scrape::{self, get};
use common::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::config::Engine;
use streamhost::control::config::Secret;
use streamhost::control::{self, ControlConfig, ControlHandle};
use streamhost::metrics;
use streamhost::Handle;

fn endpoint(h: &Arc<Handle>, control: Option<&ControlHandle>) -> streamhost::MetricsServer {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    metrics::serve(local, h.clone(), control.map(|c| c.status())).expect("metrics binds")
}

/// A component pointed at a loopback port where nothing listens: never connected.
fn unreachable_component(h: &Arc<Handle>) -> ControlHandle {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = ControlConfig {
        server: format!("127.0.0.1:{port}"),
        jid: "proxy.example.org".into(),
        secret: Some(Secret::new("x")),
        ..ControlConfig::default()
    };
    control::spawn(c.resolve(h.local_addrs()).unwrap(), h.clone()).unwrap()
}

#[test]
fn counters_match_relayed_bytes_activations_and_refusals() {
    let (h, addr) = start(config(Engine::Copy));
    let h = Arc::new(h);
    let m = endpoint(&h, None);

    let (a, b) = active_pair(&h, addr, 1);
    let (up, down) = (300_000u64, 70_000u64);
    std::thread::scope(|s| {
        s.spawn(|| send_pattern(&a, 1, up).unwrap());
        s.spawn(|| send_pattern(&b, 2, down).unwrap());
        let got_b = s.spawn(|| recv_pattern(&b, 1).unwrap());
        assert_eq!(recv_pattern(&a, 2).unwrap(), down);
        assert_eq!(got_b.join().unwrap(), up);
    });
    drop((a, b));
    assert!(eventually(10, || h.stats().relays_finished == 1));

    // A third connection for a placed pair is refused.
    let k = key(2);
    let _x = half(addr, &k);
    let _y = half(addr, &k);
    let (_z, rep) = try_half(addr, &k).unwrap();
    assert_ne!(rep, 0);
    assert!(eventually(10, || h.stats().accepted == 5 && h.stats().open == 2));

    let (status, head, body) = get(m.local_addr(), "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let s = scrape::samples(&body);
    let v = |series: &str| *s.get(series).unwrap_or_else(|| panic!("{series}:\n{body}"));
    assert_eq!(
        v(r#"streamhost_relay_bytes_total{direction="first_to_second"}"#),
        up as f64
    );
    assert_eq!(
        v(r#"streamhost_relay_bytes_total{direction="second_to_first"}"#),
        down as f64
    );
    assert_eq!(v("streamhost_activations_total"), 1.0);
    assert_eq!(v("streamhost_pairs_matched_total"), 2.0);
    assert_eq!(v("streamhost_relays_finished_total"), 1.0);
    assert_eq!(v("streamhost_relays_active"), 0.0);
    assert_eq!(v("streamhost_connections_accepted_total"), 5.0);
    assert_eq!(v("streamhost_connections_open"), 2.0);
    assert_eq!(v("streamhost_workers"), 2.0);
    // The third connection's handshake is fine; the rendezvous refuses it.
    assert_eq!(v(r#"streamhost_handshakes_total{outcome="ok"}"#), 5.0);
    assert_eq!(v(r#"streamhost_handshakes_total{outcome="failed"}"#), 0.0);
    assert_eq!(
        v(r#"streamhost_refusals_total{reason="third_connection"}"#),
        1.0
    );
    assert_eq!(v(r#"streamhost_refusals_total{reason="bad_key"}"#), 0.0);
    for r in streamhost::Refusal::ALL {
        let series = format!(r#"streamhost_refusals_total{{reason="{}"}}"#, r.name());
        assert!(s.contains_key(&series), "{series} missing");
    }
    // No component configured: no component metrics, and ready.
    assert!(!body.contains("streamhost_component_"), "{body}");
    assert_eq!(get(m.local_addr(), "/ready").0, 200);
    m.stop();
}

#[test]
fn ready_follows_the_component_and_its_metrics_are_exported() {
    let (h, _) = start(config(Engine::Copy));
    let h = Arc::new(h);
    let c = unreachable_component(&h);
    let m = endpoint(&h, Some(&c));
    let (status, _, body) = get(m.local_addr(), "/ready");
    assert_eq!(status, 503, "{body}");
    let (_, _, body) = get(m.local_addr(), "/metrics");
    let s = scrape::samples(&body);
    assert!(s["streamhost_component_state"] < 2.0, "{body}");
    assert_eq!(s["streamhost_component_logins_total"], 0.0);
    assert_eq!(
        s[r#"streamhost_component_activation_duration_seconds_bucket{le="+Inf"}"#],
        0.0
    );
    assert_eq!(
        s["streamhost_component_activation_duration_seconds_count"],
        0.0
    );
    assert_eq!(
        s[r#"streamhost_component_activations_total{outcome="activated"}"#],
        0.0
    );
    m.stop();
    c.stop();
}

#[test]
fn routing_and_bounds() {
    let (h, _) = start(config(Engine::Copy));
    let m = endpoint(&Arc::new(h), None);
    let at = m.local_addr();
    assert_eq!(get(at, "/").0, 404);
    assert_eq!(get(at, "/metrics/x").0, 404);
    assert_eq!(get(at, "/metrics?name=x").0, 200);
    let (status, _, body) = scrape::raw(at, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(scrape::raw(at, "POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(scrape::raw(at, "nonsense\r\n\r\n").0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(scrape::raw(at, &huge).0, 431);

    // A client that never sends its request does not hold up the others.
    let _silent = TcpStream::connect(at).unwrap();
    let t = Instant::now();
    assert_eq!(get(at, "/ready").0, 200);
    assert!(t.elapsed() < Duration::from_secs(2));

    // Stopped: the port is closed.
    let t = Instant::now();
    m.stop();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(at).is_err());
}
