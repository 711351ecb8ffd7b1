//! Upgrades by handover against a real Prosody: a new process started with `--takeover`
//! takes the listeners and every connection not yet relaying from the old one, and the
//! component moves (Prosody's `kick_old`, stanzas the old link still gets are forwarded),
//! under a continuous load of verified setups: no setup fails and no byte is lost.

mod support;

use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::client::Client;
use support::ejabberd::Ejabberd;
use support::prosody::{Prosody, DOMAIN, PROXY_JID, SECRET};
use support::proxy_bin::Proxy;
use support::socks5;

const BS: &str = "http://jabber.org/protocol/bytestreams";
/// The target's JID only names the stream (the key); it need not be online.
const TARGET: &str = "juliet@localhost/transfer";
/// Requesters, each on its own thread and c2s session.
const THREADS: usize = 24;
/// Setups per second the load aims at, all threads together.
const RATE: f64 = 120.0;
/// Bytes each way per setup.
const BYTES: usize = 16 << 10;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The XMPP server the proxy is a component of, and what the tests need of it.
struct Host {
    c2s_port: u16,
    component: String,
    secret: &'static str,
    /// Kept running until the test ends.
    _server: Box<dyn std::any::Any>,
}

#[derive(Clone, Copy)]
enum Server {
    Prosody,
    Ejabberd,
}

fn host(server: Server, users: &[(&str, &str, &str)]) -> Host {
    match server {
        Server::Prosody => {
            let p = Prosody::start(users);
            Host {
                c2s_port: p.c2s_port,
                component: p.component_addr(),
                secret: SECRET,
                _server: Box::new(p),
            }
        }
        Server::Ejabberd => {
            let e = Ejabberd::start(users);
            Host {
                c2s_port: e.c2s_port,
                component: e.component_addr(),
                secret: support::ejabberd::SECRET,
                _server: Box::new(e),
            }
        }
    }
}

/// A Prosody with the `probe` user, and a proxy config for a free port (not started).
struct Single {
    prosody: Prosody,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    addr: SocketAddr,
}

fn single() -> Single {
    let prosody = Prosody::start(&[("probe", DOMAIN, "pw-probe")]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &prosody, port);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    Single {
        prosody,
        dir,
        cfg,
        addr,
    }
}

fn write_config(dir: &Path, prosody: &Prosody, port: u16) -> PathBuf {
    write_config_for(dir, &prosody.component_addr(), SECRET, port)
}

fn write_config_for(dir: &Path, component: &str, secret: &str, port: u16) -> PathBuf {
    let text = format!(
        r#"
workers = 2
listen = ["127.0.0.1:{port}"]
drain_timeout = 60
handover_socket = "{sock}"
# The handshake stopped at its greeting over an upgrade is finished after the other
# pending setups; under load on 2 busy cores that can take longer than the default 10 s.
handshake_timeout = 60

[component]
server = "{server}"
jid = "{PROXY_JID}"
secret = "{secret}"
"#,
        sock = dir.join("handover.sock").display(),
        server = component,
    );
    let p = dir.join("streamhost.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn key(sid: &str, requester: &str) -> String {
    hex::encode(Sha1::digest(format!("{sid}{requester}{TARGET}")))
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// Both ways at once, byte-checked, then both ends close cleanly.
fn exchange(mut a: TcpStream, mut b: TcpStream, seed: u64, n: usize) -> Result<(), String> {
    let (ab, ba) = (pattern(seed, n), pattern(!seed, n));
    let mut a2 = a.try_clone().map_err(|e| e.to_string())?;
    let send = {
        let ab = ab.clone();
        thread::spawn(move || {
            a2.write_all(&ab)
                .and_then(|_| a2.shutdown(std::net::Shutdown::Write))
        })
    };
    let mut got = Vec::with_capacity(n);
    b.write_all(&ba).map_err(|e| format!("b write: {e}"))?;
    b.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("b shutdown: {e}"))?;
    b.read_to_end(&mut got)
        .map_err(|e| format!("b read: {e}"))?;
    if got != ab {
        return Err(format!("a->b: {} bytes, not the {n} sent", got.len()));
    }
    let mut back = Vec::with_capacity(n);
    a.read_to_end(&mut back)
        .map_err(|e| format!("a read: {e}"))?;
    if back != ba {
        return Err(format!("b->a: {} bytes, not the {n} sent", back.len()));
    }
    send.join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("a write: {e}"))
}

fn activate(c: &mut Client, sid: &str) -> Result<(), String> {
    let r = c
        .iq(
            "set",
            Some(PROXY_JID),
            &format!("<query xmlns='{BS}' sid='{sid}'><activate>{TARGET}</activate></query>"),
        )
        .map_err(|e| format!("activation IQ: {e}"))?;
    if r.attr("type") == Some("result") {
        Ok(())
    } else {
        Err(format!("activation answered {r:?}"))
    }
}

/// Starts the proxy and logs `probe` in, once the proxy answers activations.
fn start_logged_in(cfg: &Path, prosody: &Prosody) -> (Proxy, Client) {
    let proxy = Proxy::spawn(cfg);
    let mut probe = Client::login(prosody.c2s_port, "probe", DOMAIN, "pw-probe").unwrap();
    wait_logged_in(&mut probe);
    (proxy, probe)
}

/// Waits until the proxy answers activations (an unknown key gets `item-not-found`).
fn wait_logged_in(probe: &mut Client) {
    let end = Instant::now() + Duration::from_secs(30);
    while activate(probe, "warmup").is_err_and(|e| !e.contains("item-not-found")) {
        assert!(Instant::now() < end, "the component never logged in");
        thread::sleep(Duration::from_millis(100));
    }
}

/// One verified setup: both halves, activation through Prosody, data both ways.
fn setup(addr: SocketAddr, c: &mut Client, sid: &str, seed: u64) -> Result<(), String> {
    let k = key(sid, &c.jid);
    let t = socks5::connect(addr, &k).map_err(|e| format!("target SOCKS5: {e}"))?;
    let r = socks5::connect(addr, &k).map_err(|e| format!("requester SOCKS5: {e}"))?;
    activate(c, sid)?;
    exchange(r, t, seed, BYTES)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

/// `THREADS` requesters doing verified setups at `RATE` in all until `stop`.
fn load(
    c2s_port: u16,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<thread::JoinHandle<()>> {
    (0..THREADS)
        .map(|i| {
            let user = format!("req{i}");
            let mut c = Client::login(c2s_port, &user, DOMAIN, &format!("pw-{user}"))
                .expect("requester login");
            let (stop, tally) = (stop.clone(), tally.clone());
            let period = Duration::from_secs_f64(THREADS as f64 / RATE);
            thread::spawn(move || {
                let mut next = Instant::now();
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sid = format!("s{i}-{n}");
                    match setup(addr, &mut c, &sid, n * 31 + i as u64) {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tally.failed.lock().unwrap().push(format!("{sid}: {e}")),
                    }
                    next += period;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(d);
                    }
                }
            })
        })
        .collect()
}

/// Connections caught in every state that is not relaying when the upgrade happens,
/// finished after it.
struct InFlight {
    /// One half, its peer not there yet.
    lone: (String, TcpStream),
    /// Both halves, not activated yet.
    pair: (String, TcpStream, TcpStream),
    /// A handshake that has sent its greeting only.
    greeting: TcpStream,
}

fn in_flight(addr: SocketAddr, requester: &str, round: usize) -> InFlight {
    let sid = format!("lone-{round}");
    let lone = socks5::connect(addr, &key(&sid, requester)).expect("lone half");
    let psid = format!("pair-{round}");
    let pk = key(&psid, requester);
    let (p1, p2) = (
        socks5::connect(addr, &pk).unwrap(),
        socks5::connect(addr, &pk).unwrap(),
    );
    let mut g = TcpStream::connect(addr).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.write_all(&[5, 1, 0]).unwrap();
    let mut hello = [0u8; 2];
    g.read_exact(&mut hello).unwrap();
    assert_eq!(hello, [5, 0]);
    InFlight {
        lone: (sid, lone),
        pair: (psid, p1, p2),
        greeting: g,
    }
}

/// Completes what `in_flight` left open, through whichever process holds it now.
fn finish(f: InFlight, addr: SocketAddr, c: &mut Client, round: usize) {
    let (sid, lone) = f.lone;
    let peer = socks5::connect(addr, &key(&sid, &c.jid)).expect("the lone half's peer");
    activate(c, &sid).expect("the lone half's pair activates");
    exchange(peer, lone, 1, 64 << 10).expect("the lone half's pair relays");
    let (psid, p1, p2) = f.pair;
    activate(c, &psid).expect("the waiting pair activates");
    exchange(p1, p2, 2, 64 << 10).expect("the waiting pair relays");
    // The greeting's handshake goes on where it stopped.
    let gsid = format!("greeting-{round}");
    let gk = key(&gsid, &c.jid);
    let mut g = f.greeting;
    let mut req = vec![5, 1, 0, 3, 40];
    req.extend_from_slice(gk.as_bytes());
    req.extend_from_slice(&[0, 0]);
    g.write_all(&req).unwrap();
    let mut reply = [0u8; 47];
    g.read_exact(&mut reply).expect("the handshake's reply");
    assert_eq!(&reply[..2], &[5, 0]);
    let other = socks5::connect(addr, &gk).unwrap();
    activate(c, &gsid).expect("the handshake's pair activates");
    exchange(g, other, 3, 64 << 10).expect("the handshake's pair relays");
}

/// A long transfer started before the first upgrade; it stays in the process that
/// activated it, which exits only when it is done.
/// `mib` MiB at 1 MiB/s, byte-checked, on stream `sid`.
fn long_transfer(
    addr: SocketAddr,
    c: &mut Client,
    sid: &'static str,
    mib: usize,
) -> thread::JoinHandle<Result<(), String>> {
    let k = key(sid, &c.jid);
    let t = socks5::connect(addr, &k).unwrap();
    let r = socks5::connect(addr, &k).unwrap();
    activate(c, sid).unwrap();
    thread::spawn(move || {
        let total = mib << 20;
        let mut w = r;
        let writer = thread::spawn(move || -> std::io::Result<()> {
            for chunk in 0..(total >> 20) {
                w.write_all(&pattern(chunk as u64, 1 << 20))?;
                thread::sleep(Duration::from_millis(1000));
            }
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut t = t;
        t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let mut expect = Vec::new();
        loop {
            let n = t.read(&mut buf).map_err(|e| format!("long read: {e}"))?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if expect.is_empty() {
                    expect = pattern((got >> 20) as u64, 1 << 20);
                    expect.reverse();
                }
                if Some(b) != expect.pop() {
                    return Err(format!("long transfer: wrong byte at {got}"));
                }
                got += 1;
            }
        }
        writer.join().unwrap().map_err(|e| e.to_string())?;
        if got == total {
            Ok(())
        } else {
            Err(format!("long transfer: {got} of {total} bytes"))
        }
    })
}

/// How the new process replaces the old one.
#[derive(Clone, Copy, PartialEq)]
enum Procedure {
    /// `--takeover`: the old process hands everything over.
    Handover,
    /// The older procedure: both bind the port (`SO_REUSEPORT`), then SIGTERM the old one.
    Overlap,
}

#[test]
fn five_upgrades_under_load_lose_no_setup_and_no_byte() {
    let (ok, failed) = upgrades_under_load(Procedure::Handover, Server::Prosody, 5);
    assert!(failed.is_empty(), "failed setups: {failed:#?}");
    // At least 100 setups a second over the 60 s (the rate is paced at 120).
    assert!(ok >= 6_000, "only {ok} setups in 60 s");
}

/// The same run with the overlap procedure, for comparison (README "Upgrades"): it loses
/// setups, how many depends on timing, so it is run by hand:
/// `cargo test --test upgrade_handover -- --ignored --nocapture`.
#[test]
#[ignore]
fn five_overlap_upgrades_under_load_for_comparison() {
    let (ok, failed) = upgrades_under_load(Procedure::Overlap, Server::Prosody, 5);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for f in &failed {
        let kind = f.split_once(": ").map_or(f.as_str(), |(_, k)| k);
        *kinds.entry(kind.chars().take(60).collect()).or_default() += 1;
    }
    eprintln!(
        "overlap: {ok} verified, {} failed: {kinds:#?}",
        failed.len()
    );
    assert!(ok >= 1_000, "the load ran: {ok}");
}

/// On ejabberd, which takes both logins at once (the old link leaves when the new one is
/// logged in, forwarding what it still gets meanwhile): two upgrades. The one loss it may
/// have is an activation that ejabberd routed to the old link in the instant that link
/// closed (see `on_ejabberd_only_the_old_links_closing_instant_loses_iqs`): at this rate
/// rarely one, never anything else (no refused or broken setup, no byte lost).
#[test]
fn upgrades_on_ejabberd_lose_no_byte_and_at_most_an_iq_in_the_closing_instant() {
    let (ok, failed) = upgrades_under_load(Procedure::Handover, Server::Ejabberd, 2);
    eprintln!("ejabberd: {ok} setups verified, failed: {failed:?}");
    assert!(failed.len() <= 2, "failed setups: {failed:#?}");
    for f in &failed {
        assert!(f.ends_with("activation IQ: no IQ answer"), "{f}");
    }
    assert!(ok >= 2_400, "only {ok} setups in 30 s");
}

/// `rounds` upgrades, each with 10 s of load before it, and 10 s after the last.
fn upgrades_under_load(procedure: Procedure, server: Server, rounds: usize) -> (u64, Vec<String>) {
    let mut users: Vec<(String, String)> = (0..THREADS)
        .map(|i| (format!("req{i}"), format!("pw-req{i}")))
        .collect();
    users.push(("probe".into(), "pw-probe".into()));
    let u: Vec<(&str, &str, &str)> = users
        .iter()
        .map(|(n, p)| (n.as_str(), DOMAIN, p.as_str()))
        .collect();
    let xmpp = host(server, &u);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config_for(dir.path(), &xmpp.component, xmpp.secret, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut current = Proxy::spawn(&cfg);
    let mut probe = Client::login(xmpp.c2s_port, "probe", DOMAIN, "pw-probe").unwrap();
    wait_logged_in(&mut probe);
    // About 40 s: it spans several upgrades.
    let long = long_transfer(addr, &mut probe, "long", 40);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = load(xmpp.c2s_port, addr, stop.clone(), tally.clone());
    let mut old = Vec::new();
    for round in 0..rounds {
        // 10 s of load before each upgrade (and after the last): every upgrade sits in
        // the middle of 20 s of load.
        thread::sleep(Duration::from_secs(10));
        let pending = in_flight(addr, &probe.jid, round);
        let before = tally.ok.load(Ordering::Relaxed);
        if procedure == Procedure::Handover {
            let next = Proxy::spawn_with(&cfg, &["--takeover"], "warn");
            old.push(std::mem::replace(&mut current, next));
            finish(pending, addr, &mut probe, round);
        } else {
            let next = Proxy::spawn(&cfg);
            thread::sleep(Duration::from_millis(300));
            current.signal("-TERM");
            old.push(std::mem::replace(&mut current, next));
            drop(pending);
        }
        eprintln!(
            "upgrade {round}: {} setups before it, {} failed so far",
            before,
            tally.failed.lock().unwrap().len()
        );
    }
    thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let long = long.join().unwrap();
    if procedure == Procedure::Handover {
        long.expect("the long transfer arrives whole");
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.lock().unwrap().clone();
    eprintln!("{ok} setups verified, {} failed", failed.len());
    for (i, mut p) in old.into_iter().enumerate() {
        assert_eq!(p.wait_exit(60), Some(true), "old process {i} exits cleanly");
    }
    (ok, failed)
}

/// The systemd way (deploy/systemd): SIGUSR2 makes the running process start its binary
/// again with `--takeover`; the successor takes over and names itself the main process
/// over `$NOTIFY_SOCKET`, and the old one exits.
#[test]
fn sigusr2_starts_a_successor_that_takes_over_and_tells_the_service_manager() {
    let Single {
        prosody,
        dir,
        cfg,
        addr,
    } = single();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_streamhost"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut old = Proxy { child };
    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .expect("the first process says it is ready");
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        first.contains(&format!("MAINPID={}", old.child.id())),
        "{first}"
    );

    let mut probe = Client::login(prosody.c2s_port, "probe", DOMAIN, "pw-probe").unwrap();
    wait_logged_in(&mut probe);
    let pending = in_flight(addr, &probe.jid, 0);
    old.signal("-USR2");
    let n = notify
        .recv(&mut buf)
        .expect("the successor says it is ready");
    let second = String::from_utf8_lossy(&buf[..n]).to_string();
    let pid: u32 = second
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {second:?}"));
    assert_ne!(pid, old.child.id());
    // The successor is not our child: make sure it goes when the test does.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _successor = KillOnDrop(pid);
    finish(pending, addr, &mut probe, 0);
    assert_eq!(
        old.wait_exit(30),
        Some(true),
        "the old process exits cleanly"
    );
    // Still served, by the successor alone.
    setup(addr, &mut probe, "after", 7).expect("a setup after the old process left");
}

/// Whatever connects to the handover socket without speaking the protocol (a wrong
/// version, nothing at all) changes nothing, and a new process that dies while taking
/// over leaves everything with the old one: the running process goes on serving.
#[test]
fn a_stranger_on_the_handover_socket_changes_nothing() {
    use streamhost::handover::{socket::Channel, wire::Frame, wire::VERSION};
    let Single {
        prosody,
        dir,
        cfg,
        addr,
    } = single();
    let (mut proxy, mut probe) = start_logged_in(&cfg, &prosody);
    let pending = in_flight(addr, &probe.jid, 0);
    let sock = dir.path().join("handover.sock");
    let wrong = Channel::connect(&sock).unwrap();
    wrong.send(&Frame::Hello { version: 999 }, None).unwrap();
    assert!(
        wrong.recv().unwrap().is_none(),
        "a wrong version is hung up on"
    );
    drop(Channel::connect(&sock).unwrap());
    let state = Channel::connect(&sock).unwrap();
    state.send(&Frame::StateEnd, None).unwrap();
    assert!(state.recv().unwrap().is_none());
    // A new process that says hello and dies at once: the old one has handed over by then
    // and finds nobody to send to, so it takes everything back.
    let gone = Channel::connect(&sock).unwrap();
    gone.send(&Frame::Hello { version: VERSION }, None).unwrap();
    drop(gone);
    thread::sleep(Duration::from_millis(500));
    // Everything that was pending still completes here, and new setups work.
    finish(pending, addr, &mut probe, 0);
    setup(addr, &mut probe, "after", 9).expect("a setup after the strangers");
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
}

/// A new process that takes the state and then dies before its component logs in (a bad
/// config, a crash on start): the old one serves its listeners again and answers the
/// stanzas itself, instead of leaving nobody on the port.
#[test]
fn a_new_process_that_dies_after_taking_the_state_leaves_the_old_one_serving() {
    let Single {
        prosody,
        dir,
        cfg,
        addr,
    } = single();
    let (mut proxy, mut probe) = start_logged_in(&cfg, &prosody);
    let taken = streamhost::handover::take::take(&dir.path().join("handover.sock"))
        .expect("the old process hands its state over");
    assert!(!taken.listeners.is_empty(), "the listeners came over");
    drop(taken);
    thread::sleep(Duration::from_millis(500));
    setup(addr, &mut probe, "after", 11).expect("a setup after the new process died");
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
}

/// A new process that sends a malformed frame after taking the state is alive and holds
/// the listeners: the old process must not take them back (both would serve). Only when
/// the new process is gone does the old one serve again.
#[test]
fn a_malformed_frame_from_a_live_new_process_does_not_make_two_servers() {
    use streamhost::handover::{socket::Channel, wire::Frame, wire::VERSION};
    let Single {
        prosody,
        dir,
        cfg,
        addr,
    } = single();
    let (mut proxy, mut probe) = start_logged_in(&cfg, &prosody);
    let ch = Channel::connect(&dir.path().join("handover.sock")).unwrap();
    ch.send(&Frame::Hello { version: VERSION }, None).unwrap();
    let mut listeners = Vec::new();
    loop {
        match ch.recv().unwrap().expect("the state") {
            (Frame::Listener { .. }, Some(fd)) => listeners.push(socket2::Socket::from(fd)),
            (Frame::StateEnd, _) => break,
            _ => {}
        }
    }
    // One listener per worker shard on the SOCKS5 address.
    let ours: Vec<_> = listeners
        .iter()
        .filter(|l| l.local_addr().unwrap().as_socket() == Some(addr))
        .collect();
    assert!(!ours.is_empty(), "the SOCKS5 listeners came over");
    for l in &ours {
        l.set_nonblocking(true).unwrap();
    }
    // An unknown frame type: what a buggy or newer process might send.
    ch.send_bytes(&[0xEE, 1, 2, 3], None).unwrap();
    thread::sleep(Duration::from_millis(500));
    // A client now: the old process must leave it to the listener's holder (this test).
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(&[5, 1, 0]).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut reply = [0u8; 2];
    assert!(
        client.read_exact(&mut reply).is_err(),
        "the old process served the port again after a malformed frame: {reply:?}"
    );
    let queued = ours.iter().filter(|l| l.accept().is_ok()).count();
    assert_eq!(queued, 1, "the connection queued with the new process");
    // The new process goes: now the old one takes everything back.
    drop(listeners);
    drop(ch);
    thread::sleep(Duration::from_millis(500));
    setup(addr, &mut probe, "after", 13).expect("a setup after the new process left");
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
}

/// A process that took over admits from the start (the old link forwards to it): the
/// connections queued on the inherited listeners during the handover are served as soon
/// as its workers run, not refused as "not ready" before its component is up.
#[test]
fn a_process_that_took_over_serves_what_queued_on_the_listeners_at_once() {
    use socket2::{Domain, Socket, Type};
    let port = free_port();
    let config = streamhost::config::Config::from_toml_str(
        &format!(
            r#"
workers = 2
listen = ["127.0.0.1:{port}"]

[component]
server = "127.0.0.1:1"
jid = "{PROXY_JID}"
secret = "unused"
"#
        ),
        "test",
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The old process's listener, with connections queued on it meanwhile.
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.set_reuse_address(true).unwrap();
    l.set_reuse_port(true).unwrap();
    l.bind(&addr.into()).unwrap();
    l.listen(64).unwrap();
    let queued: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let handle =
        streamhost::Server::start_with(config, vec![std::os::fd::OwnedFd::from(l)]).unwrap();
    for (i, mut c) in queued.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&[5, 1, 0]).unwrap();
        let mut reply = [0u8; 2];
        c.read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("queued connection {i} was refused: {e}"));
        assert_eq!(reply, [5, 0], "connection {i}");
    }
    assert_eq!(
        handle.stats().refused(streamhost::stats::Refusal::NotReady),
        0
    );
}

/// A new process that the old one hangs up on (busy with another new process, or of
/// another handover version) must not start beside it on the same port, where both would
/// serve and take the component from each other: it exits with an error.
#[test]
fn a_takeover_the_old_process_hangs_up_on_exits_instead_of_starting_beside_it() {
    use streamhost::handover::{socket::Listener, wire::Frame};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config_for(dir.path(), "127.0.0.1:1", SECRET, port);
    // Stands for the running process.
    let old = Listener::bind(&dir.path().join("handover.sock")).unwrap();
    let mut new = Proxy::spawn_with(&cfg, &["--takeover"], "warn");
    let ch = old.accept().unwrap();
    assert!(matches!(
        ch.recv().unwrap(),
        Some((Frame::Hello { .. }, None))
    ));
    drop(ch);
    assert_eq!(
        new.wait_exit(15),
        Some(false),
        "the new process exits with an error"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nobody listens on the port"
    );
}

/// A data plane in this process (no component) on a free loopback port.
fn in_process_server() -> (u16, streamhost::server::Handle) {
    let port = free_port();
    let config = streamhost::config::Config::from_toml_str(
        &format!("workers = 2\nlisten = [\"127.0.0.1:{port}\"]\n"),
        "test",
    )
    .unwrap();
    (port, streamhost::Server::start(config).unwrap())
}

/// A connection that has sent its SOCKS5 greeting and got the answer (a handshake with a
/// read in flight on the proxy's side).
fn greeted(port: u16) -> std::io::Result<TcpStream> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(&[5, 1, 0])?;
    let mut reply = [0u8; 2];
    c.read_exact(&mut reply)?;
    assert_eq!(reply, [5, 0]);
    Ok(c)
}

/// An export that times out (a worker slow to hand over) gives up the handover: every
/// worker serves its listeners again, including those that had already handed theirs
/// over and those that report after the timeout.
#[test]
fn an_export_that_times_out_leaves_every_listener_served() {
    let (port, handle) = in_process_server();
    // No time at all: the workers cannot have reported yet.
    let mut timed_out = 0;
    for _ in 0..5 {
        match handle.export(Duration::ZERO) {
            Ok(e) => handle.restore(e),
            Err(_) => timed_out += 1,
        }
    }
    assert!(timed_out > 0, "an export with no time timed out");
    thread::sleep(Duration::from_millis(500));
    for i in 0..16 {
        greeted(port).unwrap_or_else(|e| panic!("connection {i} after the failed export: {e}"));
    }
}

/// Connections a worker was still handing over when the export timed out are kept and
/// go on here, like those already in the sink: nothing a client started is closed by a
/// handover that gave up.
#[test]
fn an_export_that_times_out_keeps_the_connections_it_was_moving() {
    let (port, handle) = in_process_server();
    let mut timed_out = 0;
    let mut conns = Vec::new();
    for round in 0..5 {
        // Mid-handshake: greeted, a read in flight on each.
        for _ in 0..20 {
            conns.push((round, greeted(port).unwrap()));
        }
        match handle.export(Duration::ZERO) {
            Ok(e) => handle.restore(e),
            Err(_) => timed_out += 1,
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(timed_out > 0, "an export with no time timed out");
    for (i, (round, mut c)) in conns.into_iter().enumerate() {
        let k = key(&format!("kept-{i}"), "a@localhost/r");
        let mut req = vec![5, 1, 0, 3, 40];
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(&[0, 0]);
        c.write_all(&req).unwrap();
        let mut reply = [0u8; 47];
        c.read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("connection {i} (round {round}) after the export: {e}"));
        assert_eq!(&reply[..2], &[5, 0], "connection {i}");
    }
}

/// A handover that fails after the export (the new process gone) takes everything back:
/// a connection mid-handshake goes on where it was, and the upgrade counters say that
/// nothing moved between processes.
#[test]
fn a_restored_export_goes_on_and_counts_nothing_as_moved() {
    let (port, handle) = in_process_server();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&[5, 1, 0]).unwrap();
    let mut reply = [0u8; 2];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, 0]);
    let exported = handle.export(Duration::from_secs(10)).unwrap();
    assert_eq!(exported.conns.len(), 1, "the handshake half done");
    assert!(!exported.listeners.is_empty());
    handle.restore(exported);
    let k = key("restored", "romeo@localhost/r");
    let mut req = vec![5, 1, 0, 3, 40];
    req.extend_from_slice(k.as_bytes());
    req.extend_from_slice(&[0, 0]);
    c.write_all(&req).unwrap();
    let mut done = [0u8; 47];
    c.read_exact(&mut done).unwrap();
    assert_eq!(done[..5], [5, 0, 0, 3, 40]);
    assert_eq!(&done[5..45], k.as_bytes());
    let s = handle.stats();
    assert_eq!((s.handed_over, s.adopted), (0, 0), "nothing moved");
}

/// A new process that logs in as the component (so the server drops the old link) and
/// dies before it says so: the old one takes the work back and logs in again, rather
/// than serve on with no component and nothing able to activate a stream.
#[test]
fn a_new_process_that_dies_after_its_login_leaves_the_old_one_a_component() {
    let Single {
        prosody,
        dir,
        cfg,
        addr,
    } = single();
    let (mut proxy, mut probe) = start_logged_in(&cfg, &prosody);
    let taken = streamhost::handover::take::take(&dir.path().join("handover.sock"))
        .expect("the old process hands its state over");
    // The new process's login: Prosody (kick_old) drops the old link.
    let login = Client::component(prosody.component_port, PROXY_JID, SECRET)
        .expect("the new component logs in");
    thread::sleep(Duration::from_millis(500));
    drop(login);
    drop(taken);
    let end = Instant::now() + Duration::from_secs(30);
    while let Err(e) = setup(addr, &mut probe, "after", 13) {
        assert!(
            Instant::now() < end,
            "no setup after the new process died: {e}"
        );
        thread::sleep(Duration::from_millis(250));
    }
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
}

/// After a handover the old process is draining already: the service manager's SIGTERM
/// (systemd sends it to every process of the unit on stop) does not cut its relays; only
/// a second one does.
#[test]
fn a_sigterm_after_the_handover_lets_the_old_relays_finish() {
    // `_dir` keeps the config and the handover socket until the end.
    let Single {
        prosody,
        dir: _dir,
        cfg,
        addr,
    } = single();
    let (mut old, mut probe) = start_logged_in(&cfg, &prosody);
    let transfer = long_transfer(addr, &mut probe, "draining", 6);
    let _new = Proxy::spawn_with(&cfg, &["--takeover"], "warn");
    // The new process took over once a setup works through it alone.
    let end = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        if setup(addr, &mut probe, &format!("after-{n}"), 3).is_ok() {
            break;
        }
        assert!(Instant::now() < end, "no setup after the takeover");
        thread::sleep(Duration::from_millis(100));
    }
    old.signal("-TERM");
    transfer
        .join()
        .unwrap()
        .expect("the old process's relay finishes whole");
    assert_eq!(old.wait_exit(30), Some(true), "then it exits cleanly");
}

/// ejabberd takes both logins during an upgrade and spreads stanzas over both links. The
/// old link forwards what it receives until the server has closed it, but ejabberd itself
/// drops what it routes to a component connection whose process is terminating (its
/// route is removed only then): that instant is the one loss an upgrade on ejabberd can
/// have. Measured here with activations for unknown keys flooding the component across a
/// takeover, each flooder with one IQ in flight: at most that one IQ per flooder is lost,
/// only before the old link is gone, and every flooder is answered after it.
#[test]
fn on_ejabberd_only_the_old_links_closing_instant_loses_iqs() {
    const FLOODERS: usize = 8;
    let mut users: Vec<(String, String)> = (0..FLOODERS)
        .map(|i| (format!("flood{i}"), format!("pw-flood{i}")))
        .collect();
    users.push(("probe".into(), "pw-probe".into()));
    let u: Vec<(&str, &str, &str)> = users
        .iter()
        .map(|(n, p)| (n.as_str(), DOMAIN, p.as_str()))
        .collect();
    let xmpp = host(Server::Ejabberd, &u);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_for(dir.path(), &xmpp.component, xmpp.secret, free_port());
    let mut old = Proxy::spawn(&cfg);
    let mut probe = Client::login(xmpp.c2s_port, "probe", DOMAIN, "pw-probe").unwrap();
    wait_logged_in(&mut probe);
    let stop = Arc::new(AtomicBool::new(false));
    // Per flooder: answered before the takeover ended, answered after, lost (send time).
    type Counts = (u64, u64, Vec<Instant>);
    let takeover_done: Arc<Mutex<Option<Instant>>> = Arc::default();
    let flooders: Vec<thread::JoinHandle<Counts>> = (0..FLOODERS)
        .map(|i| {
            let (stop, done) = (stop.clone(), takeover_done.clone());
            let (user, pw) = (format!("flood{i}"), format!("pw-flood{i}"));
            let mut c = Client::login(xmpp.c2s_port, &user, DOMAIN, &pw).unwrap();
            thread::spawn(move || {
                let mut counts: Counts = (0, 0, Vec::new());
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = Instant::now();
                    let query = format!(
                        "<query xmlns='{BS}' sid='unknown-{i}-{n}'><activate>{TARGET}</activate></query>"
                    );
                    match c.iq_within("set", Some(PROXY_JID), &query, Duration::from_secs(2)) {
                        Ok(r) if r.error_condition().as_deref() == Some("item-not-found") => {
                            if done.lock().unwrap().is_some_and(|t| sent > t) {
                                counts.1 += 1;
                            } else {
                                counts.0 += 1;
                            }
                        }
                        Ok(r) => panic!("flooder {i}: unexpected answer {r:?}"),
                        Err(_) => counts.2.push(sent),
                    }
                }
                counts
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let new = Proxy::spawn_with(&cfg, &["--takeover"], "warn");
    // The old process exits once its link has left (it has no relays).
    assert_eq!(old.wait_exit(60), Some(true), "the old process exits");
    let exited = Instant::now();
    *takeover_done.lock().unwrap() = Some(exited);
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<Counts> = flooders.into_iter().map(|f| f.join().unwrap()).collect();
    let lost: usize = counts.iter().map(|c| c.2.len()).sum();
    let before: u64 = counts.iter().map(|c| c.0).sum();
    let after: u64 = counts.iter().map(|c| c.1).sum();
    eprintln!(
        "ejabberd takeover: {before} IQs answered in 1 s before, {after} in 3 s after, {lost} lost"
    );
    for (i, (_, after, lost)) in counts.iter().enumerate() {
        assert!(
            *after > 0,
            "flooder {i} was not answered after the takeover"
        );
        assert!(lost.len() <= 1, "flooder {i} lost {} IQs", lost.len());
        assert!(
            lost.iter().all(|&t| t < exited),
            "flooder {i} lost an IQ sent after the old process had gone"
        );
    }
    drop(new);
}

/// Prosody (`kick_old`) replaces the old link at the new login, so the old one does not
/// leave by itself and the new process must not log in again (that would leave Prosody
/// without the component for a moment).
#[test]
fn on_prosody_the_new_link_logs_in_once() {
    let Single {
        prosody,
        dir,
        cfg,
        addr,
    } = single();
    let (mut old, mut probe) = start_logged_in(&cfg, &prosody);
    let log = dir.path().join("new.log");
    let _new = Proxy::spawn_logging_with(&cfg, &["--takeover"], &log);
    assert_eq!(old.wait_exit(30), Some(true), "the old process exits");
    setup(addr, &mut probe, "after", 17).expect("a setup after the upgrade");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("component connected").count(), 1, "{text}");
    assert!(!text.contains("old link left the server"), "{text}");
}
