//! A minimal thread-per-connection XEP-0065 proxy for the tests: SOCKS5 on loopback,
//! XEP-0114 component for activation, a relay that can corrupt or drop one byte on purpose.

#![allow(dead_code)]

/// The Prosody harness of streamhost's own interop tests (one copy for both crates).
#[path = "../../../tests/support/prosody.rs"]
pub mod prosody;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhost::StreamKey;
use streamhost_loadtest::xmpp::component;
use streamhost_loadtest::xmpp::link::{error_reply, reply_head, Link};

/// What the relay does to the requester->target direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Flip the bits of the byte at this offset.
    Flip(u64),
    /// Leave out the byte at this offset.
    Drop(u64),
}

type Halves = Arc<Mutex<HashMap<StreamKey, Vec<TcpStream>>>>;

pub struct MiniProxy {
    pub addr: SocketAddr,
    pub link: Arc<Link>,
}

fn socks5_accept(mut s: TcpStream, halves: Halves) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut g = [0u8; 3];
    s.read_exact(&mut g)?;
    s.write_all(&[5, 0])?;
    let mut req = [0u8; 5 + 40 + 2];
    s.read_exact(&mut req)?;
    let key = StreamKey::parse_hex(&req[5..45]).expect("hex key");
    let mut reply = req;
    reply[1] = 0;
    s.set_read_timeout(None)?;
    // Registered before the reply, so the order of the halves is the order of the clients.
    let mut w = s.try_clone()?;
    halves.lock().unwrap().entry(key).or_default().push(s);
    w.write_all(&reply)
}

fn relay(mut from: TcpStream, mut to: TcpStream, fault: Fault) {
    let mut buf = vec![0u8; 65536];
    let mut off = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        let range = off..off + n as u64;
        match fault {
            Fault::Flip(at) if range.contains(&at) => chunk[(at - off) as usize] ^= 0xff,
            Fault::Drop(at) if range.contains(&at) => {
                chunk.remove((at - off) as usize);
            }
            _ => {}
        }
        off += n as u64;
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl MiniProxy {
    /// Starts the SOCKS5 listener and connects as component `jid` to `xmpp`.
    pub fn start(xmpp: SocketAddr, jid: &str, secret: &str, fault: Fault) -> MiniProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(listener, xmpp, jid, secret, fault, 1)
    }

    /// Like `start` on a bound listener, trying the component connection up to `tries`
    /// times 25 ms apart (for an XMPP server that is not up yet).
    pub fn start_on(
        listener: TcpListener,
        xmpp: SocketAddr,
        jid: &str,
        secret: &str,
        fault: Fault,
        tries: usize,
    ) -> MiniProxy {
        let addr = listener.local_addr().unwrap();
        let halves: Halves = Default::default();
        let h2 = halves.clone();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let h = h2.clone();
                std::thread::spawn(move || socks5_accept(c, h));
            }
        });
        let handler = Box::new(move |iq: &streamhost_loadtest::xmpp::xml::Element| {
            let q = iq.child("query")?;
            let sid = q.attr("sid")?;
            let target = q.child("activate")?.text.clone();
            let from = iq.attr("from")?;
            let key = StreamKey::from_parts(sid, from, &target);
            // The halves may still be finishing their handshake threads.
            for _ in 0..200 {
                if halves.lock().unwrap().get(&key).map(Vec::len) == Some(2) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut g = halves.lock().unwrap();
            let Some(v) = g.remove(&key) else {
                return Some(error_reply(iq, "cancel", "item-not-found"));
            };
            if v.len() != 2 {
                g.insert(key, v);
                return Some(error_reply(iq, "cancel", "not-allowed"));
            }
            // First connected is the target (XEP-0065 order), second the requester.
            let (t, r) = (&v[0], &v[1]);
            let (r2, t2) = (r.try_clone().unwrap(), t.try_clone().unwrap());
            let (r1, t1) = (r.try_clone().unwrap(), t.try_clone().unwrap());
            std::thread::spawn(move || relay(r1, t1, fault));
            std::thread::spawn(move || relay(t2, r2, Fault::None));
            Some(format!("{}/>", reply_head(iq, "result")))
        });
        let handler = Arc::new(handler);
        let mut last = None;
        for _ in 0..tries {
            let h = handler.clone();
            let boxed = Box::new(move |iq: &streamhost_loadtest::xmpp::xml::Element| h(iq));
            match component::connect(xmpp, jid, secret, Some(boxed), Duration::from_secs(5)) {
                Ok(link) => return MiniProxy { addr, link },
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("mini proxy component did not connect: {last:?}");
    }
}
