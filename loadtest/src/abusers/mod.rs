//! Abusive clients for the `abuse` scenario. Each one runs on its own thread until told to
//! stop, keeps its count of connections or pairs (and so its descriptors) bounded, and
//! returns what it saw as named figures. The ones that do not need a working pair connect
//! from many loopback addresses (127.C.x.y; all of 127.0.0.0/8 routes to `lo`), as abuse
//! from many hosts would arrive.

pub mod churn;
pub mod flood;
pub mod slow_readers;
pub mod slowloris;

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What every abuser is told.
pub struct Shared {
    /// Set when the abuse phase ends.
    pub stop: AtomicBool,
    /// Abusers that have opened their first full set (the legitimate load waits for them).
    pub ready: AtomicUsize,
    /// No abuser runs past this.
    pub deadline: Instant,
}

impl Shared {
    pub fn new(deadline: Instant) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            deadline,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    pub fn mark_ready(&self) {
        self.ready.fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps up to `d`, waking early when the phase ends.
    pub fn nap(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// What one abuser reports: (figure name, unit, value).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub figures: Vec<(String, &'static str, f64)>,
}

impl Tally {
    pub fn add(&mut self, name: &str, unit: &'static str, v: f64) {
        self.figures.push((name.to_string(), unit, v));
    }
}

/// Source address `i` of abuser class `class`, spread over `spread` addresses:
/// 127.class.(j / 254).(j % 254 + 1), so no address ends in 0 or 255.
pub fn source(class: u8, i: u64, spread: u32) -> Ipv4Addr {
    let j = (i % u64::from(spread.clamp(1, 254 * 256))) as u32;
    Ipv4Addr::new(127, class, (j / 254) as u8, (j % 254 + 1) as u8)
}

/// A TCP connection to `to` from `src` (port chosen by the kernel).
pub fn connect_from(
    src: Ipv4Addr,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&to.into(), timeout)?;
    Ok(s.into())
}

/// Whether the proxy closed (or reset) a non-blocking stream; whatever it sent is read
/// and dropped.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// A random 40-hex-digit key: one that no peer will ever connect with.
pub fn random_key() -> streamhost::StreamKey {
    let sid: u128 = rand::random();
    streamhost::StreamKey::from_parts(&format!("{sid:x}"), "flood@abuse/x", "nobody@abuse/x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_loopback_and_spread() {
        let a = source(1, 0, 1000);
        assert_eq!(a, Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(source(1, 1000, 1000), a);
        assert_eq!(source(2, 253, 1000), Ipv4Addr::new(127, 2, 0, 254));
        assert_eq!(source(2, 254, 1000), Ipv4Addr::new(127, 2, 1, 1));
        let all: std::collections::HashSet<_> = (0..1000).map(|i| source(3, i, 1000)).collect();
        assert_eq!(all.len(), 1000);
        assert!(all.iter().all(|a| a.is_loopback()));
    }

    #[test]
    fn connects_from_another_loopback_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let src = source(9, 5, 10);
        let _c = connect_from(src, l.local_addr().unwrap(), Duration::from_secs(5)).unwrap();
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(src));
    }
}
