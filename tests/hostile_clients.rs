//! SOCKS5 clients that try to hold the proxy's resources by going slowly.

mod common;

use common::{config, key, start};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use streamhost::config::Engine;
use streamhost::Refusal;

/// A slowloris client dribbles a valid handshake one byte at a time, each byte well within
/// any per-read timeout: the deadline counts from the connect, not from the last byte.
#[test]
fn a_dribbled_handshake_is_closed_at_handshake_timeout() {
    let mut c = config(Engine::Splice);
    c.handshake_timeout = 2;
    let (h, addr) = start(c);
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key(7).as_bytes());
    req.extend_from_slice(&[0, 0]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let connected = Instant::now();
    let mut closed_at = None;
    for b in req {
        if s.write_all(&[b]).is_err() {
            closed_at = Some(connected.elapsed());
            break;
        }
        // A closed connection shows up as EOF or a reset within this read timeout.
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(connected.elapsed());
                break;
            }
            Ok(_) => {} // the method selection reply
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_at = Some(connected.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("the proxy closed the dribbling client");
    // 52 bytes at 250 ms each would take 13 s; the deadline is 2 s (checked every 250 ms).
    assert!(
        closed_at >= Duration::from_millis(1500) && closed_at < Duration::from_secs(6),
        "closed after {closed_at:?}"
    );
    assert_eq!(h.stats().refused(Refusal::HandshakeTimeout), 1);
}
