//! A flood of handshaken halves with random keys, from many source addresses: each one a
//! valid SOCKS5 CONNECT that the proxy must accept and park until its peer comes, which
//! never happens. They are held until the phase ends; one the proxy closes is replaced
//! (at most `count` replacements), so the count stays up.

use super::{closed_by_peer, connect_from, random_key, source, Shared, Tally};
use crate::socks5_client::handshake;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Source addresses 127.1.x.y.
const CLASS: u8 = 1;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a new half was placed; `Err` when the connect itself failed.
fn place(proxy: SocketAddr, i: u64, spread: u32) -> std::io::Result<Option<TcpStream>> {
    let mut s = connect_from(source(CLASS, i, spread), proxy, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    if handshake(&mut s, &random_key()).is_err() {
        return Ok(None);
    }
    s.set_nonblocking(true)?;
    Ok(Some(s))
}

pub fn run(sh: &Shared, proxy: SocketAddr, count: usize, spread: u32) -> anyhow::Result<Tally> {
    let (mut next, mut placed, mut refused, mut connect_failed, mut cut) = (0u64, 0, 0, 0, 0);
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    let budget = 2 * count as u64;
    let mut ready = false;
    while !sh.stopped() {
        // Top up to `count`, within the connection budget.
        while held.len() < count && next < budget && !sh.stopped() {
            next += 1;
            match place(proxy, next, spread) {
                Ok(Some(s)) => {
                    placed += 1;
                    held.push(s);
                }
                Ok(None) => refused += 1,
                Err(_) => connect_failed += 1,
            }
        }
        if !ready {
            sh.mark_ready();
            ready = true;
        }
        let before = held.len();
        held.retain_mut(|s| !closed_by_peer(s));
        cut += before - held.len();
        sh.nap(Duration::from_secs(1));
    }
    let mut t = Tally::default();
    t.add("flood halves placed", "halves", placed as f64);
    t.add("flood handshakes refused", "halves", refused as f64);
    t.add("flood connects failed", "conns", connect_failed as f64);
    t.add("flood halves cut by proxy", "halves", cut as f64);
    Ok(t)
}
