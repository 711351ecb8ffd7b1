//! The binary's lifecycle against a real Prosody: SIGTERM drains (a running transfer
//! finishes byte-exact, new connections go elsewhere), a second process takes over the
//! port with no failed transfer, and SIGHUP changes the access lists while a relay runs.

mod support;

use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};
use support::client::{Client, El};
use support::prosody::{Prosody, DOMAIN, PROXY_JID, SECRET};
use support::proxy_bin::Proxy;
use support::socks5;

const BS: &str = "http://jabber.org/protocol/bytestreams";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, prosody: &Prosody, port: u16, deny: &[&str]) -> PathBuf {
    write_config_with(dir, prosody, port, deny, "")
}

/// `write_config` with `component_extra` lines added to the `[component]` section.
fn write_config_with(
    dir: &Path,
    prosody: &Prosody,
    port: u16,
    deny: &[&str],
    component_extra: &str,
) -> PathBuf {
    let deny: Vec<String> = deny.iter().map(|d| format!("{d:?}")).collect();
    let text = format!(
        r#"
workers = 2
listen = ["127.0.0.1:{port}"]
drain_timeout = 30

[component]
server = "{server}"
jid = "{PROXY_JID}"
secret = "{SECRET}"
{component_extra}

[component.access]
deny = [{deny}]
"#,
        server = prosody.component_addr(),
        deny = deny.join(", ")
    );
    let p = dir.join("streamhost.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn login(p: &Prosody, user: &str) -> Client {
    Client::login(p.c2s_port, user, DOMAIN, &format!("pw-{user}")).expect("login")
}

fn try_disco(c: &mut Client) -> std::io::Result<El> {
    c.iq(
        "get",
        Some(PROXY_JID),
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
}

fn disco(c: &mut Client) -> El {
    try_disco(c).unwrap()
}

/// Polls disco#info until the proxy answers (its component is logged in). Each try uses a
/// fresh session of the `probe` user: while no component is logged in, Prosody may leave
/// the IQ unanswered, and a session whose read timed out is not reused.
fn wait_component(p: &Prosody, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let answer = Client::login(p.c2s_port, "probe", DOMAIN, "pw-probe")
            .and_then(|mut c| try_disco(&mut c));
        if answer
            .as_ref()
            .is_ok_and(|r| r.attr("type") == Some("result"))
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "the component never answered: {answer:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn activate(c: &mut Client, sid: &str, target: &str) -> El {
    c.iq(
        "set",
        Some(PROXY_JID),
        &format!("<query xmlns='{BS}' sid='{sid}'><activate>{target}</activate></query>"),
    )
    .unwrap()
}

/// An activated pair through the proxy at `addr`: (requester's socket, target's socket).
fn active_pair(addr: SocketAddr, sid: &str, r: &mut Client, t: &Client) -> (TcpStream, TcpStream) {
    let key = hex::encode(Sha1::digest(format!("{sid}{}{}", r.jid, t.jid)));
    let ts = socks5::connect(addr, &key).expect("target SOCKS5");
    let rs = socks5::connect(addr, &key).expect("requester SOCKS5");
    let res = activate(r, sid, &t.jid);
    assert_eq!(res.attr("type"), Some("result"), "{res:?}");
    (rs, ts)
}

fn byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 7) as u8
}

/// Sends `total` bytes in paced chunks (so the transfer spans the test's signals).
fn paced_sender(mut s: TcpStream, total: u64, pause: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        while off < total {
            let n = (total - off).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = byte(off + i as u64);
            }
            s.write_all(&buf[..n]).unwrap();
            off += n as u64;
            thread::sleep(pause);
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
    })
}

fn check_receiver(mut s: TcpStream, total: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = s.read(&mut buf).expect("relay read");
            if n == 0 {
                break;
            }
            for (i, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, byte(off + i as u64), "wrong byte at {}", off + i as u64);
            }
            off += n as u64;
        }
        assert_eq!(off, total, "the whole transfer arrived");
    })
}

/// A Prosody with the test users and a proxy config for a free port (not started yet).
struct Setup {
    prosody: Prosody,
    dir: tempfile::TempDir,
    port: u16,
    cfg: PathBuf,
    addr: SocketAddr,
}

fn setup() -> Setup {
    let prosody = Prosody::start(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
        ("probe", DOMAIN, "pw-probe"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &prosody, port, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    Setup {
        prosody,
        dir,
        port,
        cfg,
        addr,
    }
}

#[test]
fn sigterm_drains_and_a_new_process_takes_over_the_port() {
    // `_dir` keeps the config directory alive until the end of the test.
    let Setup {
        prosody,
        dir: _dir,
        cfg,
        addr,
        ..
    } = setup();
    let mut romeo = login(&prosody, "romeo");
    let juliet = login(&prosody, "juliet");

    let mut old = Proxy::spawn(&cfg);
    wait_component(&prosody, 30);
    let (rs, ts) = active_pair(addr, "before-upgrade", &mut romeo, &juliet);
    let total = 48u64 << 20;
    let sender = paced_sender(rs, total, Duration::from_millis(20));
    let receiver = check_receiver(ts, total);

    // The new process binds the same port (SO_REUSEPORT) while the old one still runs.
    let _new = Proxy::spawn(&cfg);
    thread::sleep(Duration::from_millis(300));
    old.signal("-TERM");
    // The old process leaves XMPP and the SO_REUSEPORT group at once (give it a moment, so
    // the probe below cannot be answered by the old component); the new one logs in.
    thread::sleep(Duration::from_secs(1));
    wait_component(&prosody, 60);
    let (rs2, ts2) = active_pair(addr, "after-upgrade", &mut romeo, &juliet);
    let s2 = paced_sender(rs2, 1 << 20, Duration::ZERO);
    check_receiver(ts2, 1 << 20).join().unwrap();
    s2.join().unwrap();

    // The transfer that was running in the old process completes byte-exact, then it exits.
    sender.join().unwrap();
    receiver.join().unwrap();
    assert_eq!(
        old.wait_exit(20),
        Some(true),
        "the old process exits cleanly"
    );
}

#[test]
fn sighup_reloads_access_lists_without_dropping_a_relay() {
    let Setup {
        prosody,
        dir,
        port,
        cfg,
        addr,
    } = setup();
    let mut romeo = login(&prosody, "romeo");
    let mut juliet = login(&prosody, "juliet");
    let proxy = Proxy::spawn(&cfg);
    wait_component(&prosody, 30);

    let (rs, ts) = active_pair(addr, "during-reload", &mut romeo, &juliet);
    let total = 24u64 << 20;
    let sender = paced_sender(rs, total, Duration::from_millis(20));
    let receiver = check_receiver(ts, total);

    write_config_with(
        dir.path(),
        &prosody,
        port,
        &["romeo@localhost"],
        "max_streams_per_jid = 1",
    );
    proxy.signal("-HUP");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = disco(&mut romeo);
        if r.error_condition().as_deref() == Some("forbidden") {
            break;
        }
        assert!(
            Instant::now() < end,
            "the new deny list never applied: {r:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Activation is refused too; others are still served.
    let refused = activate(&mut romeo, "after-reload", &juliet.jid);
    assert_eq!(refused.error_condition().as_deref(), Some("forbidden"));
    assert_eq!(disco(&mut juliet).attr("type"), Some("result"));
    // The new per-account stream limit applies too: juliet may run one stream, not two.
    let (_j1, _t1) = active_pair(addr, "juliet-1", &mut juliet, &romeo);
    let k2 = hex::encode(Sha1::digest(format!("juliet-2{}{}", juliet.jid, romeo.jid)));
    let (_j2r, _j2t) = (
        socks5::connect(addr, &k2).unwrap(),
        socks5::connect(addr, &k2).unwrap(),
    );
    let over = activate(&mut juliet, "juliet-2", &romeo.jid);
    assert_eq!(
        over.error_condition().as_deref(),
        Some("resource-constraint")
    );
    // The running relay was not disturbed.
    sender.join().unwrap();
    receiver.join().unwrap();
}

/// The operator's record of a transfer: an activation line (requester, target, sid, key)
/// and a "stream finished" line with the same key and the bytes each way.
#[test]
fn each_transfer_is_logged_with_who_and_how_much() {
    let Setup {
        prosody,
        dir,
        cfg,
        addr,
        ..
    } = setup();
    let mut romeo = login(&prosody, "romeo");
    let juliet = login(&prosody, "juliet");
    let log = dir.path().join("proxy.log");
    let _proxy = Proxy::spawn_logging(&cfg, &log);
    wait_component(&prosody, 30);
    let (mut rs, ts) = active_pair(addr, "logged-sid", &mut romeo, &juliet);
    let key = hex::encode(Sha1::digest(format!(
        "logged-sid{}{}",
        romeo.jid, juliet.jid
    )));
    let receiver = check_receiver(ts, 1 << 20);
    let mut buf = vec![0u8; 1 << 20];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte(i as u64);
    }
    rs.write_all(&buf).unwrap();
    rs.shutdown(std::net::Shutdown::Write).unwrap();
    receiver.join().unwrap();
    drop(rs);
    let end = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("stream finished") || Instant::now() > end {
            break text;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what) && l.contains(&key))
            .unwrap_or_else(|| panic!("no {what:?} line for {key}:\n{text}"))
            .to_string()
    };
    let activation = line("activation");
    for part in [
        "requester=romeo@localhost",
        &format!("target_jid={}", juliet.jid),
        "sid=logged-sid",
        "Activated",
    ] {
        assert!(activation.contains(part), "{part} missing: {activation}");
    }
    let finished = line("stream finished");
    assert!(finished.contains("=1048576"), "{finished}");
    assert!(
        finished.contains("outcome=\"done\"") || finished.contains("outcome=done"),
        "{finished}"
    );
}

/// Not ready, not accepting: while the component is not logged in nothing could activate
/// a stream, so new SOCKS5 connections are refused at once (clients try their next
/// streamhost) instead of waiting out `activation_timeout`.
#[test]
fn socks5_is_refused_until_the_component_is_logged_in() {
    let Setup {
        mut prosody,
        dir: _dir,
        cfg,
        addr,
        ..
    } = setup();
    prosody.stop();
    let _proxy = Proxy::spawn(&cfg);
    let key = "0123456789abcdef0123456789abcdef01234567";
    let end = Instant::now() + Duration::from_secs(20);
    // Refused (closed before the greeting is answered) once it listens.
    loop {
        match socks5::connect(addr, key) {
            Err(e) if e.kind() != std::io::ErrorKind::ConnectionRefused => break,
            Err(_) => {}
            Ok(_) => panic!("a half was accepted with no component logged in"),
        }
        assert!(Instant::now() < end, "the proxy never listened");
        thread::sleep(Duration::from_millis(50));
    }
    prosody.restart();
    wait_component(&prosody, 60);
    socks5::connect(addr, key).expect("accepted once the component is logged in");
}
