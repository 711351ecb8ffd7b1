//! Memory of activated idle pairs when they were activated the way users activate them:
//! a burst of 8,000 activations through a real Prosody and the component, not by calls
//! into the data plane. The proxy is the real binary (its allocator included); the 16,000
//! client sockets and the component client that sends the burst live in a child (this
//! test binary re-run in a client role).

mod common;
mod support;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use streamhost::StreamKey;
use support::client::Client;
use support::prosody::{Prosody, PROXY_JID, SECRET};

const PAIRS: u64 = 8_000;
const ROLE: &str = "STREAMHOST_COMPONENT_MEMORY_CLIENT";
const REQUESTER: &str = "requester.localhost";
const REQUESTER_SECRET: &str = "requester-secret-77a1";
const TARGET: &str = "target@localhost/t";
const BS: &str = "http://jabber.org/protocol/bytestreams";

fn pair_key(n: u64) -> StreamKey {
    StreamKey::from_parts(&format!("s{n}"), REQUESTER, TARGET)
}

/// The client role: both halves of every pair, then every activation in one burst through
/// the server; then waits for stdin to close and checks that a few pairs relay.
#[test]
fn memory_client_role() {
    let Ok(spec) = std::env::var(ROLE) else {
        return; // only meaningful when spawned by the test below
    };
    let (addr, port) = spec.split_once(',').unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(2 * PAIRS as usize);
    for n in 0..PAIRS {
        let k = pair_key(n);
        held.push(half(addr, &k));
        held.push(half(addr, &k));
    }
    println!("placed");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut c = Client::component(port.parse().unwrap(), REQUESTER, REQUESTER_SECRET).unwrap();
    let mut burst = String::new();
    for n in 0..PAIRS {
        burst.push_str(&format!(
            "<iq type='set' id='a{n}' from='{REQUESTER}' to='{PROXY_JID}'><query xmlns='{BS}' \
             sid='s{n}'><activate>{TARGET}</activate></query></iq>"
        ));
    }
    c.send(&burst).unwrap();
    let mut activated = 0;
    while activated < PAIRS {
        let el = c.read_element().unwrap();
        if el.name == "iq" && el.attr("id").is_some_and(|i| i.starts_with('a')) {
            assert_eq!(el.attr("type"), Some("result"), "{el:?}");
            activated += 1;
        }
    }
    println!("activated {activated}");
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    for (i, pair) in held.chunks(2).take(10).enumerate() {
        (&pair[0]).write_all(&[i as u8; 100]).unwrap();
        let mut got = [0u8; 100];
        (&pair[1]).read_exact(&mut got).unwrap();
        assert_eq!(got, [i as u8; 100]);
    }
    println!("relayed");
}

fn rss_kib_of(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn eight_thousand_pairs_activated_through_the_component() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let prosody = Prosody::with_components(&[(PROXY_JID, SECRET), (REQUESTER, REQUESTER_SECRET)]);
    // The real binary, with its allocator (mimalloc), as operators run it.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("streamhost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
workers = 2
listen = ["127.0.0.1:{port}"]
max_pending = 20000
max_connections_per_ip = 0

[component]
server = "{server}"
jid = "{PROXY_JID}"
secret = "{SECRET}"
max_streams_per_jid = 0

[component.access]
allow = ["{REQUESTER}"]
"#,
            server = prosody.component_addr()
        ),
    )
    .unwrap();
    let proxy = Proxy(
        Command::new(env!("CARGO_BIN_EXE_streamhost"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = proxy.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Warm up allocator pools, rings and the link with one pair activated the same way.
    let mut c = Client::component(prosody.component_port, REQUESTER, REQUESTER_SECRET).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    // Until its component has logged in the proxy refuses halves (`not_ready`) and the
    // server answers activations for it: retry the whole warm-up pair until it works.
    for n in 0.. {
        let sid = format!("warm{n}");
        let k = StreamKey::from_parts(&sid, REQUESTER, TARGET);
        let pair = try_half(addr, &k).and_then(|a| Ok((a, try_half(addr, &k)?)));
        if let Ok(((a, 0), (b, 0))) = pair {
            let activate =
                format!("<query xmlns='{BS}' sid='{sid}'><activate>{TARGET}</activate></query>");
            let answer = c.iq("set", Some(PROXY_JID), &activate).unwrap();
            drop((a, b));
            if answer.attr("type") == Some("result") {
                break;
            }
        }
        assert!(Instant::now() < end, "no activation: {}", prosody.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib_of(pid);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory_client_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, format!("{addr},{}", prosody.component_port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let start = Instant::now();
    let mut placed = 0;
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "client exited early");
        if line.contains("placed") {
            placed = rss_kib_of(pid).saturating_sub(before);
        }
        if line.contains("activated") {
            break;
        }
    }
    let burst_done = start.elapsed();
    let at_once = rss_kib_of(pid).saturating_sub(before);
    std::thread::sleep(Duration::from_secs(2));
    let settled = rss_kib_of(pid).saturating_sub(before);
    println!(
        "{PAIRS} pairs placed: RSS +{placed} KiB ({} B a pair)",
        placed * 1024 / PAIRS
    );
    println!(
        "{PAIRS} pairs activated through the component (setup and burst {burst_done:?}): \
         RSS +{at_once} KiB right after ({} B a pair), +{settled} KiB 2 s later ({} B a pair)",
        at_once * 1024 / PAIRS,
        settled * 1024 / PAIRS
    );
    assert!(
        at_once * 1024 / PAIRS <= 2048,
        "{} B a pair right after the burst",
        at_once * 1024 / PAIRS
    );

    drop(child.stdin.take());
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 || line.contains("relayed") {
            break;
        }
    }
    assert!(line.contains("relayed"), "idle pairs still relay");
    assert!(child.wait().unwrap().success());
}
