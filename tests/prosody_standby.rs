//! Several instances on Prosody, which takes one connection per component JID: a hot
//! standby. Two streamhost processes (127.0.0.2 and .3, standing for two machines) are
//! configured as the same JID; Prosody refuses the second (`component_conflict_resolve =
//! "kick_new"`, its default; the project's snippet says `kick_old` for upgrades by
//! handover, so a standby's JID needs it changed back), which keeps retrying with its reconnect backoff and takes over
//! when the first one dies. Measured: how long clients go without a proxy.

mod support;

use std::time::{Duration, Instant};
use support::bytestreams::{activate_within, exchange, pair, query_streamhost};
use support::client::Client;
use support::prosody::{Prosody, DOMAIN, PROXY_JID, SECRET};
use support::streamhost_process::StreamhostProcess;

const LIMIT: Duration = Duration::from_secs(5);

/// Query, both halves, activation, 16 KiB each way; the instance's address.
fn setup(c: &mut Client, target: &str, sid: &str) -> std::net::SocketAddr {
    let addr = query_streamhost(c, PROXY_JID, LIMIT).expect("streamhost query");
    let (r, t) = pair(addr, sid, &c.jid, target).expect("both halves");
    let el = activate_within(c, PROXY_JID, sid, target, LIMIT).expect("activation answer");
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
    exchange(&r, &t, 16 << 10, sid.len() as u32).expect("relay");
    addr
}

#[test]
fn a_hot_standby_takes_over_the_jid_when_the_primary_dies() {
    let prosody = Prosody::start_refusing_second_login(&[
        ("romeo", DOMAIN, "pw-romeo"),
        ("juliet", DOMAIN, "pw-juliet"),
    ]);
    let spawn = |ip: [u8; 4]| {
        StreamhostProcess::spawn(ip.into(), prosody.component(), PROXY_JID, SECRET, "")
    };
    let mut primary = spawn([127, 0, 0, 2]);
    assert!(
        primary.wait_ready(Duration::from_secs(15)),
        "{}",
        prosody.logs()
    );
    let standby = spawn([127, 0, 0, 3]);
    let standby_since = Instant::now();
    // Refused while the primary is connected, however often it tries.
    assert!(!standby.wait_ready(Duration::from_secs(2)));
    assert!(prosody
        .logs()
        .contains("Second component attempted to connect"));

    let login = |u: &str| Client::login(prosody.c2s_port, u, DOMAIN, &format!("pw-{u}")).unwrap();
    let (mut romeo, juliet) = (login("romeo"), login("juliet"));
    for n in 0..20 {
        let at = setup(&mut romeo, &juliet.jid, &format!("before-{n}"));
        assert_eq!(at, primary.socks);
    }
    let addr = query_streamhost(&mut romeo, PROXY_JID, LIMIT).unwrap();
    let (r, t) = pair(addr, "long", &romeo.jid, &juliet.jid).unwrap();
    let el = activate_within(&mut romeo, PROXY_JID, "long", &juliet.jid, LIMIT).unwrap();
    assert_eq!(el.attr("type"), Some("result"));

    // The primary's machine dies: Prosody answers for the JID until the standby is in.
    let killed = Instant::now();
    let retrying = standby_since.elapsed();
    primary.kill();
    let mut unanswered = 0;
    let took = loop {
        match query_streamhost(&mut romeo, PROXY_JID, Duration::from_secs(1)) {
            Ok(at) => {
                assert_eq!(at, standby.socks);
                break killed.elapsed();
            }
            Err(_) => unanswered += 1,
        }
        // The standby's reconnect delay doubles to 30 s (+-25%), after a login.
        assert!(killed.elapsed() < Duration::from_secs(45), "no takeover");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "standby took over {took:?} after the primary died ({unanswered} queries failed), \
         having been refused for {retrying:?}"
    );
    assert!(standby.ready());
    for n in 0..20 {
        let at = setup(&mut romeo, &juliet.jid, &format!("after-{n}"));
        assert_eq!(at, standby.socks);
    }
    // The dead primary's relays are gone with it.
    assert!(exchange(&r, &t, 4096, 1).is_err());
}
