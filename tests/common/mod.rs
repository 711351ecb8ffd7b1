//! Shared helpers for the data-plane tests: a proxy on loopback, a blocking SOCKS5 client
//! half, and a cheap deterministic byte pattern to check every byte relayed.
#![allow(dead_code)] // each test binary uses a different subset

pub mod exposition;
pub mod scrape;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use streamhost::config::{Config, Engine};
use streamhost::{Handle, Server, StreamKey};

pub fn config(engine: Engine) -> Config {
    let mut c = Config {
        workers: 2,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        // Every test client comes from 127.0.0.1; tests of the per-address limit set it.
        max_connections_per_ip: 0,
        ..Config::default()
    };
    c.relay.engine = engine;
    c
}

pub fn start(c: Config) -> (Handle, SocketAddr) {
    let h = Server::start(c).expect("proxy starts");
    let a = h.local_addrs()[0];
    (h, a)
}

pub fn key(n: u64) -> StreamKey {
    StreamKey::from_parts(
        &format!("sid{n}"),
        "requester@localhost/r",
        "target@localhost/t",
    )
}

/// Connects and completes the SOCKS5 handshake for `key`; returns the stream and the
/// reply's REP code (0 = placed; the stream is closed by the proxy otherwise).
pub fn try_half(addr: SocketAddr, key: &StreamKey) -> io::Result<(TcpStream, u8)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(&[0, 0]);
    s.write_all(&req)?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)?;
    assert_eq!(m, [5, 0], "method selection");
    let mut head = [0u8; 2];
    s.read_exact(&mut head)?;
    assert_eq!(head[0], 5);
    if head[1] == 0 {
        let mut rest = [0u8; 45];
        s.read_exact(&mut rest)?;
        assert_eq!(&rest[..3], &[0, 3, 40]);
        assert_eq!(&rest[3..43], key.as_bytes());
        assert_eq!(&rest[43..], &[0, 0]);
    } else {
        let mut rest = [0u8; 8];
        s.read_exact(&mut rest)?;
    }
    Ok((s, head[1]))
}

/// Connects from a chosen loopback source address (for the per-source limits).
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub fn half(addr: SocketAddr, key: &StreamKey) -> TcpStream {
    let (s, rep) = try_half(addr, key).expect("handshake");
    assert_eq!(rep, 0, "placed");
    s
}

/// Fills `buf` with the pattern of stream `seed` starting at byte `offset`.
pub fn fill(buf: &mut [u8], seed: u64, offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + i as u64);
    }
}

#[inline]
pub fn pattern_byte(seed: u64, off: u64) -> u8 {
    let x = (off >> 3) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> (8 * (off & 7))) as u8
}

/// Writes `total` pattern bytes, then shuts down writing.
pub fn send_pattern(mut s: &TcpStream, seed: u64, total: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < total {
        let n = ((total - off) as usize).min(buf.len());
        fill(&mut buf[..n], seed, off);
        s.write_all(&buf[..n])?;
        off += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
}

/// Reads to EOF, checking every byte; returns the count.
pub fn recv_pattern(mut s: &TcpStream, seed: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(off);
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = off + i as u64;
            if b != pattern_byte(seed, at) {
                return Err(io::Error::other(format!(
                    "stream {seed}: wrong byte at offset {at}"
                )));
            }
        }
        off += n as u64;
    }
}

/// A pair that the proxy has placed and activated.
pub fn active_pair(h: &Handle, addr: SocketAddr, n: u64) -> (TcpStream, TcpStream) {
    let k = key(n);
    let a = half(addr, &k);
    let b = half(addr, &k);
    assert_eq!(h.activate(&k), streamhost::ActivationOutcome::Activated);
    (a, b)
}

/// Polls `cond` every 10 ms for up to `secs` seconds.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Reads until EOF or reset; true if the peer closed (within the read timeout).
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// This process's resident set size in KiB (from /proc/self/status).
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// Raises this process's soft descriptor limit to its hard limit; returns the new limit.
pub fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    l.rlim_cur
}

/// Stalls a relay direction: writes from `sender` (made non-blocking) until nothing more
/// goes in for 300 ms, while the receiving side reads nothing. Returns the bytes written
/// (pattern `seed`); `sender` is left blocking again.
pub fn stall(sender: &TcpStream, seed: u64) -> u64 {
    let mut s = sender;
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0u64;
    let mut quiet_since = std::time::Instant::now();
    // Bounded: the proxy and both sockets buffer a few MiB at most.
    for _ in 0..1_000_000 {
        fill(&mut buf, seed, off);
        match s.write(&buf) {
            Ok(n) => {
                off += n as u64;
                quiet_since = std::time::Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if quiet_since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("stalling write: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    off
}

/// Reads exactly `total` bytes of pattern `seed`, checking each.
pub fn recv_exact_pattern(mut s: &TcpStream, seed: u64, total: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < total {
        let want = ((total - off) as usize).min(buf.len());
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other(format!("EOF after {off} of {total}")));
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            if b != pattern_byte(seed, off + i as u64) {
                return Err(io::Error::other(format!(
                    "wrong byte at {}",
                    off + i as u64
                )));
            }
        }
        off += n as u64;
    }
    Ok(())
}
