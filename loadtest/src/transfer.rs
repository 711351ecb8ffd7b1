//! Sender and receiver of one direction of a pair: the same code for the proxy and for
//! the direct baseline, so that their ratio is fair. Large (1 MiB) read and write calls.

use crate::pattern;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Bytes per read or write call.
pub const IO_SIZE: usize = 1 << 20;

/// What one direction of one pair is called in messages: "pair 12 (requester->target)".
#[derive(Debug, Clone)]
pub struct Leg {
    pub pair: u64,
    pub reverse: bool,
    pub seed: u64,
    pub bytes: u64,
}

impl Leg {
    pub fn new(run_seed: u64, pair: u64, reverse: bool, bytes: u64) -> Self {
        Leg {
            pair,
            reverse,
            seed: pattern::seed_for(run_seed, pair, reverse),
            bytes,
        }
    }

    pub fn name(&self) -> String {
        let dir = if self.reverse {
            "target->requester"
        } else {
            "requester->target"
        };
        format!("pair {} ({dir})", self.pair)
    }
}

/// A data failure: corruption, early end or an I/O error, naming the pair and offset.
#[derive(Debug)]
pub enum DataError {
    Corrupt {
        leg: String,
        offset: u64,
        expected: u8,
        got: u8,
    },
    Short {
        leg: String,
        offset: u64,
        total: u64,
    },
    Extra {
        leg: String,
        total: u64,
    },
    Io {
        leg: String,
        offset: u64,
        what: &'static str,
        err: std::io::Error,
    },
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataError::Corrupt {
                leg,
                offset,
                expected,
                got,
            } => write!(
                f,
                "{leg}: wrong byte at offset {offset}: expected {expected:#04x}, got {got:#04x}"
            ),
            DataError::Short { leg, offset, total } => write!(
                f,
                "{leg}: stream ended at offset {offset} of {total} bytes (bytes dropped)"
            ),
            DataError::Extra { leg, total } => {
                write!(f, "{leg}: more than the {total} bytes sent arrived")
            }
            DataError::Io {
                leg,
                offset,
                what,
                err,
            } => write!(f, "{leg}: {what} failed at offset {offset}: {err}"),
        }
    }
}

impl std::error::Error for DataError {}

/// Writes `leg.bytes` pattern bytes, then shuts the write side down.
pub fn send(stream: &mut TcpStream, leg: &Leg, buf: &mut Vec<u8>) -> Result<(), DataError> {
    send_while(stream, leg, buf, || true).map(|_| ())
}

/// Writes pattern bytes until `leg.bytes` are sent or `until` has passed (checked between
/// writes), then shuts the write side down; returns how many were sent.
pub fn send_until(
    stream: &mut TcpStream,
    leg: &Leg,
    buf: &mut Vec<u8>,
    until: Instant,
) -> Result<u64, DataError> {
    send_while(stream, leg, buf, || Instant::now() < until)
}

/// Writes pattern bytes while `go_on()` (asked before each write) and fewer than
/// `leg.bytes` are sent, then shuts the write side down; returns how many were sent.
fn send_while(
    stream: &mut TcpStream,
    leg: &Leg,
    buf: &mut Vec<u8>,
    go_on: impl Fn() -> bool,
) -> Result<u64, DataError> {
    buf.resize(IO_SIZE, 0);
    let mut off = 0u64;
    while off < leg.bytes && go_on() {
        let n = ((leg.bytes - off) as usize).min(IO_SIZE);
        pattern::fill(leg.seed, off, &mut buf[..n]);
        if let Err(err) = stream.write_all(&buf[..n]) {
            return Err(DataError::Io {
                leg: leg.name(),
                offset: off,
                what: "write",
                err,
            });
        }
        off += n as u64;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(off)
}

/// Reads and checks pattern bytes until the peer closes (at most `leg.bytes`); returns
/// how many arrived and when the last did. The caller compares the count with what was
/// sent.
pub fn receive_to_eof(
    stream: &mut TcpStream,
    leg: &Leg,
    buf: &mut Vec<u8>,
) -> Result<(u64, Instant), DataError> {
    buf.resize(IO_SIZE, 0);
    let mut off = 0u64;
    let mut last = Instant::now();
    loop {
        let n = match stream.read(&mut buf[..]) {
            Ok(0) => return Ok((off, last)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(DataError::Io {
                    leg: leg.name(),
                    offset: off,
                    what: "read",
                    err,
                })
            }
        };
        last = Instant::now();
        if off + n as u64 > leg.bytes {
            return Err(DataError::Extra {
                leg: leg.name(),
                total: leg.bytes,
            });
        }
        if let Err(m) = pattern::check(leg.seed, off, &buf[..n]) {
            return Err(DataError::Corrupt {
                leg: leg.name(),
                offset: m.offset,
                expected: m.expected,
                got: m.got,
            });
        }
        off += n as u64;
    }
}

/// Timings of one received direction.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub first_byte: Option<Instant>,
    pub done: Instant,
}

/// Reads and checks `leg.bytes` pattern bytes. With `expect_eof`, also requires the peer
/// to close right after them (so trailing garbage is caught).
pub fn receive(
    stream: &mut TcpStream,
    leg: &Leg,
    buf: &mut Vec<u8>,
    expect_eof: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Received, DataError> {
    buf.resize(IO_SIZE, 0);
    let mut off = 0u64;
    let mut first_byte = None;
    while off < leg.bytes {
        let want = ((leg.bytes - off) as usize).min(IO_SIZE);
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(DataError::Short {
                    leg: leg.name(),
                    offset: off,
                    total: leg.bytes,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(DataError::Io {
                    leg: leg.name(),
                    offset: off,
                    what: "read",
                    err,
                })
            }
        };
        if first_byte.is_none() {
            first_byte = Some(Instant::now());
        }
        if let Err(m) = pattern::check(leg.seed, off, &buf[..n]) {
            return Err(DataError::Corrupt {
                leg: leg.name(),
                offset: m.offset,
                expected: m.expected,
                got: m.got,
            });
        }
        off += n as u64;
        progress.inc(n as u64);
    }
    let done = Instant::now();
    if expect_eof {
        loop {
            match stream.read(&mut buf[..1]) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(DataError::Extra {
                        leg: leg.name(),
                        total: leg.bytes,
                    })
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A reset after all bytes arrived is the peer closing; the data is complete.
                Err(_) => break,
            }
        }
    }
    Ok(Received { first_byte, done })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn roundtrip_over_loopback() {
        let (mut a, mut b) = pair();
        let leg = Leg::new(5, 3, false, 3 * IO_SIZE as u64 + 17);
        let l2 = leg.clone();
        let t = std::thread::spawn(move || send(&mut a, &l2, &mut Vec::new()));
        let r = receive(
            &mut b,
            &leg,
            &mut Vec::new(),
            true,
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap();
        t.join().unwrap().unwrap();
        assert!(r.first_byte.unwrap() <= r.done);
    }

    #[test]
    fn a_transfer_cut_short_in_time_arrives_whole() {
        let (mut a, mut b) = pair();
        let leg = Leg::new(5, 4, false, 1 << 40);
        let l2 = leg.clone();
        let until = Instant::now() + std::time::Duration::from_millis(100);
        let t = std::thread::spawn(move || send_until(&mut a, &l2, &mut Vec::new(), until));
        let (got, _) = receive_to_eof(&mut b, &leg, &mut Vec::new()).unwrap();
        let sent = t.join().unwrap().unwrap();
        assert!(sent > 0 && sent < leg.bytes, "{sent}");
        assert_eq!(got, sent);
    }

    #[test]
    fn early_close_names_pair_and_offset() {
        let (mut a, mut b) = pair();
        let leg = Leg::new(5, 8, true, 1000);
        let short = Leg {
            bytes: 600,
            ..leg.clone()
        };
        send(&mut a, &short, &mut Vec::new()).unwrap();
        drop(a);
        let e = receive(
            &mut b,
            &leg,
            &mut Vec::new(),
            true,
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("pair 8") && msg.contains("offset 600"),
            "{msg}"
        );
    }
}
