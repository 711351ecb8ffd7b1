//! Slowloris: connections that send their SOCKS5 greeting and request one byte a second
//! and never send the last one. The proxy should cut each after its handshake timeout;
//! a cut one is replaced, so the count stays up for the whole phase.

use super::{closed_by_peer, connect_from, random_key, source, Shared, Tally};
use crate::report::model::median;
use crate::socks5_client::request_bytes;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Source addresses 127.2.x.y.
const CLASS: u8 = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Slow {
    s: TcpStream,
    msg: Vec<u8>,
    sent: usize,
    opened: Instant,
}

pub fn run(sh: &Shared, proxy: SocketAddr, count: usize, spread: u32) -> anyhow::Result<Tally> {
    let mut next_src = 0u64;
    let mut connect_failed = 0u64;
    let open = |next_src: &mut u64| -> Option<Slow> {
        let src = source(CLASS, *next_src, spread);
        *next_src += 1;
        let s = connect_from(src, proxy, CONNECT_TIMEOUT).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(Slow {
            s,
            msg: request_bytes(&random_key()),
            sent: 0,
            opened: Instant::now(),
        })
    };
    let mut conns = Vec::with_capacity(count);
    while conns.len() < count && !sh.stopped() {
        match open(&mut next_src) {
            Some(c) => conns.push(c),
            None => {
                connect_failed += 1;
                if connect_failed as usize > count.max(10) {
                    break;
                }
            }
        }
    }
    sh.mark_ready();
    let mut lifetimes = Vec::new();
    while !sh.stopped() {
        let mut i = 0;
        while i < conns.len() {
            let c = &mut conns[i];
            let mut cut = closed_by_peer(&mut c.s);
            // Everything but the last byte, one a tick.
            if !cut && c.sent + 1 < c.msg.len() {
                match c.s.write(&c.msg[c.sent..c.sent + 1]) {
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => cut = true,
                }
            }
            if cut {
                lifetimes.push(c.opened.elapsed().as_secs_f64());
                match open(&mut next_src) {
                    Some(n) => conns[i] = n,
                    None => {
                        connect_failed += 1;
                        conns.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        sh.nap(Duration::from_secs(1));
    }
    let mut t = Tally::default();
    t.add(
        "slowloris conns opened",
        "conns",
        next_src.saturating_sub(connect_failed) as f64,
    );
    t.add("slowloris connects failed", "conns", connect_failed as f64);
    t.add("slowloris cut by proxy", "conns", lifetimes.len() as f64);
    if !lifetimes.is_empty() {
        t.add("slowloris: age when cut", "s", median(&lifetimes));
    }
    Ok(t)
}
