//! At the process's descriptor limit, running relays go on (every pipe is made when the
//! worker starts, so none needs a new descriptor) and failed accepts are counted and
//! retried until descriptors come free. One test in this binary: it fills this process's
//! descriptor table, which the proxy (running in this process) shares.

mod common;

use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use streamhost::config::Engine;

/// Takes every free descriptor of this process (bounded by the soft limit); they are
/// closed when the returned guard drops.
struct Flood(Vec<i32>);

impl Flood {
    fn fill() -> Flood {
        let mut fds = Vec::new();
        // Bounded: RLIMIT_NOFILE is 20,000 here (and at most 1M anywhere sane).
        for _ in 0..1_100_000 {
            // SAFETY: dup of stdin's descriptor number; a negative result is checked.
            let fd = unsafe { libc::dup(2) };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
            fds.push(fd);
        }
        Flood(fds)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: each descriptor was returned by dup above and is closed once.
            unsafe { libc::close(fd) };
        }
    }
}

fn echo(tx: &TcpStream, rx: &TcpStream, what: &[u8]) {
    std::thread::scope(|sc| {
        sc.spawn(|| (&*tx).write_all(what).unwrap());
        let mut got = vec![0u8; what.len()];
        (&*rx).read_exact(&mut got).unwrap();
        assert_eq!(got, what);
    });
}

#[test]
fn a_running_relay_survives_a_descriptor_flood() {
    let mut c = config(Engine::Splice);
    c.workers = 1;
    c.relay.pipes_per_worker = 4;
    c.relay.pipe_size = 64 << 10;
    let (h, addr) = start(c);

    // A relay that has run.
    let (a, b) = active_pair(&h, addr, 1);
    echo(&a, &b, b"before the flood");
    // Another whose receiver reads nothing: a stalled direction.
    let (sa, sb) = active_pair(&h, addr, 2);
    let stalled = stall(&sa, 9);
    // A client socket made now, connected once no descriptor is left.
    let late = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();

    let flood = Flood::fill();
    println!("{} descriptors taken", flood.0.len());
    // The running relay still moves bytes, both ways, at the limit.
    echo(&a, &b, &vec![7u8; 1 << 20]);
    echo(&b, &a, b"the other way");
    // A new connection cannot be accepted now: counted, retried every tick.
    late.connect(&addr.into()).unwrap();
    assert!(
        eventually(10, || h.stats().accept_errors >= 2),
        "accept errors: {}",
        h.stats().accept_errors
    );
    assert_eq!(h.stats().relays_active, 2);
    echo(&a, &b, b"still relaying");
    drop(flood);

    // Descriptors free again: the waiting connection is accepted and served.
    let mut late: TcpStream = late.into();
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    late.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    late.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    // The stalled stream delivers everything once read.
    sb.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    recv_exact_pattern(&sb, 9, stalled).unwrap();
    assert_eq!(h.stats().relay_errors, 0);
}
