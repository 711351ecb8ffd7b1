//! The Grafana dashboard and the alerting rules against a real Prometheus (Debian's
//! `prometheus`, on loopback with its own config and data dir): it scrapes a streamhost
//! joined to a real Prosody every second while a known load runs, then every PromQL
//! expression of `deploy/grafana/streamhost-dashboard.json` is evaluated through the HTTP
//! API and must give a sane value: throughput near the bytes moved, setups and refusals
//! by reason as provoked, activation p50/p99 within the latencies measured. The alerting
//! rules are loaded too: all healthy, every series they read exists, none firing.

mod common;
mod support;

use common::scrape;
use serde_json::Value;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::config::Config;
use streamhost::control::config::Secret;
use streamhost::control::{self, ControlConfig};
use streamhost::shaping::units::ByteSize;
use streamhost::Server;
use support::client::{escape, Client};
use support::prosody::{Prosody, DOMAIN, PROXY_JID, SECRET};
use support::socks5;

const BS: &str = "http://jabber.org/protocol/bytestreams";
const DASHBOARD: &str = include_str!("../deploy/grafana/streamhost-dashboard.json");
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/streamhost-alerts.yml"
);
/// What `$__rate_interval` becomes: a window holding the whole run, so that a rate times
/// this is the run's count (within Prometheus's extrapolation at the window's ends).
const WINDOW_S: f64 = 60.0;

/// A Prometheus of our own; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {ALERTS}\n\
             scrape_configs:\n  - job_name: streamhost\n    static_configs:\n\
             \x20     - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/prometheus runs (apt-get install prometheus)");
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}: {}", p.logs());
            }
            if TcpStream::connect(addr).is_ok() && http(addr, "/-/ready").0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "not ready: {}", p.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http(self.addr, &format!("/api/v1/{path}"));
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {status} {body}"));
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// An instant query now: (labels, value) per series of the vector.
    fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("query?query={}", urlencode(expr)));
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let v = r["value"][1].as_str().unwrap();
                let v = match v {
                    "NaN" => f64::NAN,
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    _ => v.parse().unwrap(),
                };
                (labels, v)
            })
            .collect()
    }

    /// The single value of `expr` (one series), or `None` while it is empty.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr);
        assert!(r.len() <= 1, "{expr}: {r:?}");
        r.first().map(|(_, v)| *v)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 GET (the server closes after the body, no chunking): (status, body).
fn http(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = scrape::raw(addr, &format!("GET {path} HTTP/1.0\r\n\r\n"));
    (status, body)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn key(sid: &str, requester: &str, target: &str) -> String {
    hex::encode(Sha1::digest(format!("{sid}{requester}{target}").as_bytes()))
}

fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `n` bytes from `a` and `m` from `b` at once; each side reads the other's.
fn exchange(a: &TcpStream, b: &TcpStream, n: usize, m: usize) {
    let send = |s: &TcpStream, len: usize| {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || w.write_all(&vec![7u8; len]).unwrap())
    };
    let recv = |s: &TcpStream, len: usize| {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; len];
            r.read_exact(&mut buf).unwrap();
        })
    };
    let ts = [send(a, n), send(b, m), recv(b, n), recv(a, m)];
    for t in ts {
        t.join().unwrap();
    }
}

/// The dashboard's expressions: (panel title, legend, expr).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let d: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or_default().to_string(),
                    t["legendFormat"].as_str().unwrap_or_default().to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    out
}

/// An expression as Grafana would send it for this run: every instance, the run's window.
fn grafana(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$__rate_interval", &format!("{}s", WINDOW_S as u64))
}

#[test]
fn every_dashboard_query_and_alert_rule_on_a_real_prometheus() {
    // streamhost joined to Prosody, its metrics on loopback.
    let prosody = Prosody::start(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        workers: 2,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        max_connections_per_ip: 0,
        ..Config::default()
    };
    // A store, so that its flush series exist (an alert reads them); no quota bites.
    cfg.quota.jid_bytes_per_day = ByteSize(1 << 40);
    cfg.quota.store = Some(dir.path().join("quota.redb"));
    let data = Arc::new(Server::start(cfg).unwrap());
    let proxy = data.local_addrs()[0];
    let settings = ControlConfig {
        server: prosody.component_addr(),
        jid: PROXY_JID.into(),
        secret: Some(Secret::new(SECRET)),
        ..ControlConfig::default()
    }
    .resolve(data.local_addrs())
    .unwrap();
    let control = control::spawn(settings, data.clone()).unwrap();
    assert!(
        control.wait_connected(Duration::from_secs(15)),
        "{}",
        prosody.logs()
    );
    let metrics = streamhost::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        data.clone(),
        Some(control.status()),
    )
    .unwrap();

    let prom = Prometheus::start(metrics.local_addr());
    // A few scrapes of the idle proxy before the load.
    wait_for(30, "the first scrapes", || {
        prom.scalar("count_over_time(streamhost_workers[1m])")
            .is_some_and(|n| n >= 3.0)
    });

    // The load: relays through Prosody, one unknown stream, provoked refusals.
    let login = |u: &str| Client::login(prosody.c2s_port, u, DOMAIN, &format!("pw-{u}")).unwrap();
    let (mut romeo, juliet) = (login("romeo"), login("juliet"));
    let romeo_jid = romeo.jid.clone();
    let mut rtts = Vec::new();
    let mut activate = |sid: &str| {
        let t = Instant::now();
        let el = romeo
            .iq(
                "set",
                Some(PROXY_JID),
                &format!(
                    "<query xmlns='{BS}' sid='{sid}'><activate>{}</activate></query>",
                    escape(&juliet.jid)
                ),
            )
            .unwrap();
        rtts.push(t.elapsed().as_secs_f64());
        el
    };
    let pair = |sid: &str| {
        let k = key(sid, &romeo_jid, &juliet.jid);
        let t = socks5::connect(proxy, &k).unwrap();
        let r = socks5::connect(proxy, &k).unwrap();
        (t, r)
    };
    let (per_relay_f2s, per_relay_s2f) = (3 << 20, 1 << 20);
    let relays = 6;
    for i in 0..relays {
        let sid = format!("load-{i}");
        let (t, r) = pair(&sid);
        assert_eq!(activate(&sid).attr("type"), Some("result"));
        exchange(&t, &r, per_relay_f2s, per_relay_s2f);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        activate("never-connected").error_condition().as_deref(),
        Some("item-not-found")
    );
    let provoke = |bytes: &[u8]| {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    };
    let mut bad_key = vec![5, 1, 0, 5, 1, 0, 3, 40];
    bad_key.extend_from_slice(&[b'z'; 40]);
    bad_key.extend_from_slice(&[0, 0]);
    for _ in 0..3 {
        provoke(&bad_key);
    }
    for _ in 0..2 {
        provoke(&[4, 1, 0]);
    }
    // One relay left running, idle.
    let running = pair("running");
    assert_eq!(activate("running").attr("type"), Some("result"));
    wait_for(10, "relays to finish", || {
        data.stats().relays_finished == relays
    });
    let s = data.stats();
    assert_eq!(s.open, 2);

    // Prometheus has the final counts, then a few more scrapes.
    let total_f2s = s.bytes_first_to_second as f64;
    wait_for(30, "the final counts scraped", || {
        prom.scalar(r#"streamhost_relay_bytes_total{direction="first_to_second"}"#)
            == Some(total_f2s)
            && prom.scalar("streamhost_relays_active") == Some(1.0)
    });
    std::thread::sleep(Duration::from_secs(3));

    // Every query of the dashboard gives a sane value.
    let near = |got: f64, want: f64, what: &str| {
        assert!(
            got >= 0.9 * want - 0.5 && got <= 1.25 * want + 0.5,
            "{what}: {got} over the window, {want} done"
        );
    };
    let max_rtt = rtts.iter().cloned().fold(0.0, f64::max);
    let bound_above = |x: f64| {
        streamhost::control::telemetry::LATENCY_BOUNDS
            .iter()
            .copied()
            .find(|&b| b >= x)
            .unwrap_or(f64::INFINITY)
    };
    let activated = (relays + 1) as f64;
    let queries = dashboard_queries();
    assert!(queries.len() >= 19, "{queries:?}");
    let mut checked = 0;
    for (title, legend, expr) in &queries {
        let q = grafana(expr);
        let result = prom.query(&q);
        let what = format!("{title} / {legend}: {q}");
        assert!(!result.is_empty(), "{what}: no data");
        for (_, v) in &result {
            assert!(v.is_finite() && *v >= 0.0, "{what}: {result:?}");
        }
        let one = || {
            assert_eq!(result.len(), 1, "{what}: {result:?}");
            result[0].1
        };
        let by = |label: &str| -> BTreeMap<String, f64> {
            result
                .iter()
                .map(|(l, v)| (l.get(label).cloned().unwrap_or_default(), *v))
                .collect()
        };
        let count = |v: f64| v * WINDOW_S;
        match (title.as_str(), legend.as_str()) {
            ("Relay throughput", _) => {
                let b = by("direction");
                near(count(b["first_to_second"]), total_f2s, &what);
                near(
                    count(b["second_to_first"]),
                    s.bytes_second_to_first as f64,
                    &what,
                );
                assert_eq!(total_f2s, (relays as usize * per_relay_f2s) as f64);
            }
            (_, "relays active") => assert_eq!(one(), 1.0, "{what}"),
            (_, "connections open") => assert_eq!(one(), 2.0, "{what}"),
            (_, l) if l.starts_with("not relaying") => assert_eq!(one(), 0.0, "{what}"),
            (_, "accepted") => near(count(one()), s.accepted as f64, &what),
            (_, "handshake {{outcome}}") => {
                let b = by("outcome");
                near(count(b["ok"]), s.handshakes_ok as f64, &what);
                near(count(b["failed"]), 5.0, &what);
            }
            (_, "pairs matched") => near(count(one()), activated, &what),
            (_, "activations") => near(count(one()), activated, &what),
            (_, "relays finished") => near(count(one()), relays as f64, &what),
            ("Refusals by reason", _) => {
                let b = by("reason");
                assert_eq!(
                    b.keys().collect::<Vec<_>>(),
                    ["bad_key", "bad_version"],
                    "{what}"
                );
                near(count(b["bad_key"]), 3.0, &what);
                near(count(b["bad_version"]), 2.0, &what);
            }
            ("Activation latency", l) => {
                // Each observation is at most its client's round trip, so the quantile
                // lies at or below the bucket bound above the slowest round trip.
                let q = one();
                assert!(
                    q > 0.0 && q <= bound_above(max_rtt),
                    "{what}: {q}, {rtts:?}"
                );
                if l == "p99" {
                    let p50 = prom
                        .scalar(&grafana(
                            &expr.replace("histogram_quantile(0.99", "histogram_quantile(0.5"),
                        ))
                        .unwrap();
                    assert!(p50 <= q, "{what}: p50 {p50} > p99 {q}");
                }
            }
            ("Activation replies", _) => {
                let b = by("outcome");
                assert_eq!(
                    b.keys().collect::<Vec<_>>(),
                    ["activated", "item-not-found"],
                    "{what}"
                );
                near(count(b["activated"]), activated, &what);
                near(count(b["item-not-found"]), 1.0, &what);
            }
            ("Component link", _) => assert_eq!(one(), 2.0, "{what}"),
            (_, "relay errors") => assert_eq!(one(), 0.0, "{what}"),
            // Logged in before the first scrape: no login within the window.
            (_, "component logins") => assert_eq!(one(), 0.0, "{what}"),
            (_, "hand-offs") => near(count(one()), s.handoffs as f64, &what),
            (_, "shaping waits/s") => assert_eq!(one(), 0.0, "{what}"),
            (_, "quota refusals/s") => assert_eq!(one(), 0.0, "{what}"),
            _ => panic!("{what}: a dashboard query this test does not check"),
        }
        checked += 1;
    }
    assert_eq!(checked, queries.len());

    // The alerting rules: loaded, evaluated without error, every series they read
    // exported, nothing firing for a healthy proxy.
    wait_for(20, "the rules evaluated", || {
        let rules = prom.api("rules");
        let all: Vec<Value> = rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert_eq!(all.len(), 9, "{rules}");
        all.iter().all(|r| r["health"] == "ok")
    });
    let rules_text = std::fs::read_to_string(Path::new(ALERTS)).unwrap();
    let mut names: Vec<&str> = rules_text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("streamhost_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let n = prom.scalar(&format!("count({name})"));
        assert!(n.is_some_and(|n| n >= 1.0), "{name} is not exported");
    }
    let alerts = prom.api("alerts");
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 0, "{alerts}");

    drop(running);
    drop(prom);
    metrics.stop();
    control.stop();
}
