//! The handover protocol's messages, as bytes (sans-IO). One frame is one `SOCK_SEQPACKET`
//! message, so frames need no length prefix; a descriptor travels with the frame that
//! describes it (`SCM_RIGHTS`, see `socket.rs`).
//!
//! Frames, in the order they flow:
//! - new -> old: `Hello` (the protocol version).
//! - old -> new: one `Listener` per listening socket (with its descriptor), one `Conn` per
//!   connection that is not relaying (with its descriptor), then `StateEnd`; after that,
//!   every stanza the old process's component link still receives, as `Stanza`.
//! - new -> old: `LoggedIn` once the new process's component is logged in.
//! - old -> new: `LeftServer` once the old link has left a server that had taken both
//!   logins (ejabberd); then the old process closes the channel.

use crate::key::StreamKey;
use std::net::SocketAddr;

/// Bumped on any change of the frames below; a process refuses another version.
pub const VERSION: u16 = 1;

/// Largest frame either side sends or accepts (a forwarded stanza is the only large one).
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
    },
    /// A listening socket bound to `addr` (its descriptor rides along).
    Listener {
        addr: SocketAddr,
    },
    /// A client connection that is not relaying yet (its descriptor rides along).
    Conn(Carried),
    /// Every listener and connection has been sent.
    StateEnd,
    /// A stanza the old component link received, for the new one to handle (XML text).
    Stanza(String),
    /// The new process's component is logged in: the old one may leave the server.
    LoggedIn,
    /// The old link has left a server that had accepted both links at once (ejabberd).
    /// A new link that got no route of its own there (every `domain_balancing` slot was
    /// taken) logs in again to take the one the old link left.
    LeftServer,
}

/// Where a carried connection is in its life, with what the new process needs to go on
/// exactly where the old one stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// In its SOCKS5 handshake: every byte read from it so far (the parser is replayed
    /// over them) and how many bytes of intermediate replies were already sent.
    Handshake { received: Vec<u8>, replied: u32 },
    /// Handshake done for `key`: to be placed in the rendezvous table; `unsent` is what
    /// is left of its replies (empty once the success reply went out).
    Placed { key: StreamKey, unsent: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame type {0} is truncated or malformed")]
    Malformed(u8),
}

const HELLO: u8 = 1;
const LISTENER: u8 = 2;
const CONN_HANDSHAKE: u8 = 3;
const CONN_PLACED: u8 = 4;
const STATE_END: u8 = 5;
const STANZA: u8 = 6;
const LOGGED_IN: u8 = 7;
const LEFT_SERVER: u8 = 8;

pub fn encode(f: &Frame) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    match f {
        Frame::Hello { version } => {
            b.push(HELLO);
            b.extend_from_slice(&version.to_be_bytes());
        }
        Frame::Listener { addr } => {
            b.push(LISTENER);
            b.extend_from_slice(addr.to_string().as_bytes());
        }
        Frame::Conn(Carried::Handshake { received, replied }) => {
            b.push(CONN_HANDSHAKE);
            b.extend_from_slice(&replied.to_be_bytes());
            b.extend_from_slice(received);
        }
        Frame::Conn(Carried::Placed { key, unsent }) => {
            b.push(CONN_PLACED);
            b.extend_from_slice(key.as_bytes());
            b.extend_from_slice(unsent);
        }
        Frame::StateEnd => b.push(STATE_END),
        Frame::Stanza(xml) => {
            b.push(STANZA);
            b.extend_from_slice(xml.as_bytes());
        }
        Frame::LoggedIn => b.push(LOGGED_IN),
        Frame::LeftServer => b.push(LEFT_SERVER),
    }
    b
}

pub fn decode(b: &[u8]) -> Result<Frame, WireError> {
    let (&t, rest) = b.split_first().ok_or(WireError::Empty)?;
    let bad = WireError::Malformed(t);
    Ok(match t {
        HELLO => Frame::Hello {
            version: u16::from_be_bytes(rest.try_into().map_err(|_| bad)?),
        },
        LISTENER => Frame::Listener {
            addr: std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(bad)?,
        },
        CONN_HANDSHAKE => {
            if rest.len() < 4 {
                return Err(bad);
            }
            let (n, received) = rest.split_at(4);
            Frame::Conn(Carried::Handshake {
                replied: u32::from_be_bytes(n.try_into().map_err(|_| bad.clone())?),
                received: received.to_vec(),
            })
        }
        CONN_PLACED => {
            if rest.len() < StreamKey::LEN {
                return Err(bad);
            }
            let (k, unsent) = rest.split_at(StreamKey::LEN);
            Frame::Conn(Carried::Placed {
                key: StreamKey::parse_hex(k).ok_or(bad)?,
                unsent: unsent.to_vec(),
            })
        }
        STATE_END if rest.is_empty() => Frame::StateEnd,
        STANZA => Frame::Stanza(String::from_utf8(rest.to_vec()).map_err(|_| bad)?),
        LOGGED_IN if rest.is_empty() => Frame::LoggedIn,
        LEFT_SERVER if rest.is_empty() => Frame::LeftServer,
        STATE_END | LOGGED_IN | LEFT_SERVER => return Err(bad),
        other => return Err(WireError::UnknownType(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        StreamKey::from_parts("sid", "a@x/r", "b@x/r")
    }

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello { version: VERSION },
            Frame::Listener {
                addr: "127.0.0.1:7777".parse().unwrap(),
            },
            Frame::Listener {
                addr: "[::1]:7777".parse().unwrap(),
            },
            Frame::Conn(Carried::Handshake {
                received: vec![5, 1, 0, 5],
                replied: 2,
            }),
            Frame::Conn(Carried::Handshake {
                received: vec![],
                replied: 0,
            }),
            Frame::Conn(Carried::Placed {
                key: key(),
                unsent: vec![5, 0, 0, 3],
            }),
            Frame::Conn(Carried::Placed {
                key: key(),
                unsent: vec![],
            }),
            Frame::StateEnd,
            Frame::Stanza("<iq type='set' id='1'/>".into()),
            Frame::LoggedIn,
            Frame::LeftServer,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all() {
            assert_eq!(decode(&encode(&f)), Ok(f.clone()), "{f:?}");
        }
    }

    #[test]
    fn every_truncation_is_an_error_or_another_valid_frame_never_a_panic() {
        for f in all() {
            let b = encode(&f);
            for n in 0..b.len() {
                // A shorter Conn/Stanza body is still well-formed; the rest must fail.
                let _ = decode(&b[..n]);
            }
        }
        assert_eq!(decode(&[]), Err(WireError::Empty));
        assert_eq!(decode(&[HELLO, 0]), Err(WireError::Malformed(HELLO)));
        assert_eq!(
            decode(&[CONN_PLACED, b'a']),
            Err(WireError::Malformed(CONN_PLACED))
        );
        assert_eq!(
            decode(&[STATE_END, 1]),
            Err(WireError::Malformed(STATE_END))
        );
        assert_eq!(decode(&[99]), Err(WireError::UnknownType(99)));
    }

    #[test]
    fn a_key_that_is_not_hex_is_refused() {
        let mut b = vec![CONN_PLACED];
        b.extend_from_slice(&[b'z'; StreamKey::LEN]);
        assert_eq!(decode(&b), Err(WireError::Malformed(CONN_PLACED)));
    }
}
