//! Sans-IO, incremental SOCKS5 handshake parser for the proxy side (RFC 1928, RFC 1929,
//! XEP-0065).
//!
//! The only request accepted is `05 01 00 03 28 <40 hex chars> 00 00`: the "domain name" is a
//! rendezvous key, never a destination, so the proxy cannot be used as an open SOCKS proxy.
//!
//! Every check is made on the byte that decides it, so the outcome depends only on the byte
//! sequence, not on how it was split into reads. The one exception is by design: bytes after a
//! complete request in the same `feed` are trailing garbage (a client must wait for the reply),
//! whereas bytes in a later `feed` never reach the parser once it is done. A driver that reads
//! at most `max_read()` bytes never sees trailing bytes of a handshake that can succeed.

use crate::config::Socks5Auth;
use crate::key::StreamKey;
use crate::stats::Refusal;
use std::sync::Arc;

const VER: u8 = 0x05;
const AUTH_VER: u8 = 0x01;
const METHOD_NONE: u8 = 0x00;
const METHOD_USERPASS: u8 = 0x02;
const CMD_CONNECT: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
/// `05 CMD RSV ATYP LEN <40> PORT(2)`.
const REQUEST_LEN: usize = 5 + StreamKey::LEN + 2;

/// RFC 1928 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Rep {
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

impl Refusal {
    /// The REP code to send for this refusal in a request reply.
    pub fn rep(self) -> Rep {
        // No wildcard: a new refusal must choose its code.
        match self {
            Refusal::BadVersion | Refusal::Malformed => Rep::GeneralFailure,
            Refusal::BadCommand => Rep::CommandNotSupported,
            Refusal::BadAddressType => Rep::AddressTypeNotSupported,
            // The domain name is syntactically fine SOCKS but names no stream, like a name
            // that does not resolve for an ordinary SOCKS server, which answers 04.
            Refusal::BadKey => Rep::HostUnreachable,
            // Connecting anywhere but the rendezvous is against the proxy's ruleset.
            Refusal::BadPort
            | Refusal::ThirdConnection
            | Refusal::AlreadyActive
            | Refusal::AuthFailed => Rep::NotAllowed,
            Refusal::HandshakeTimeout | Refusal::ActivationTimeout => Rep::TtlExpired,
            // Handled before any request reply (05 FF, or a close at accept), but a code is
            // still needed if a driver asks.
            Refusal::NoAcceptableMethod
            | Refusal::MaxConnections
            | Refusal::MaxPending
            | Refusal::PerIpConnections
            | Refusal::PerIpRate
            | Refusal::PerPrefixConnections
            | Refusal::Shed
            | Refusal::NotReady
            // Refused over XMPP (activation) or by cutting a running stream.
            | Refusal::Quota => Rep::GeneralFailure,
        }
    }
}

/// What the handshake needs next, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    NeedMore,
    Done(StreamKey),
    Failed(Refusal),
}

/// `05 00 00 03 28 <key> 00 00`: BND.ADDR/BND.PORT echo DST.ADDR/DST.PORT (XEP-0065).
pub fn success_reply(key: &StreamKey) -> [u8; 47] {
    let mut r = [0u8; REQUEST_LEN];
    r[..5].copy_from_slice(&[VER, 0x00, 0x00, ATYP_DOMAIN, StreamKey::LEN as u8]);
    r[5..5 + StreamKey::LEN].copy_from_slice(key.as_bytes());
    r
}

/// `05 REP 00 01 0.0.0.0:0`: a failure reply with an empty IPv4 bind address.
pub fn failure_reply(rep: Rep) -> [u8; 10] {
    [VER, rep as u8, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    GreetVer,
    GreetNMethods,
    GreetMethods {
        left: u8,
    },
    AuthVer,
    AuthULen,
    AuthUser {
        left: u8,
    },
    AuthPLen,
    AuthPass {
        left: u8,
    },
    /// `pos` bytes of the request read so far (0..REQUEST_LEN).
    Request {
        pos: u8,
    },
    Done(StreamKey),
    Failed(Refusal),
}

/// The proxy side of one client's SOCKS5 handshake. No allocation; about 100 bytes.
#[derive(Clone)]
pub struct Handshake {
    state: State,
    auth: Option<Arc<Socks5Auth>>,
    /// The greeting offered the method we need.
    method_ok: bool,
    /// Index into the username or password being compared.
    idx: u8,
    /// Non-zero once any credential byte or length differed; checked only at the end so the
    /// comparison time does not depend on where the first difference is.
    diff: u8,
    addr: [u8; StreamKey::LEN],
}

// By hand so that the configured password never reaches a log.
impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("state", &self.state)
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

/// What one byte did.
enum Progress {
    More,
    Fail(Refusal),
    Key(StreamKey),
}

impl Handshake {
    pub fn new(auth: Option<Arc<Socks5Auth>>) -> Self {
        Handshake {
            state: State::GreetVer,
            auth,
            method_ok: false,
            idx: 0,
            diff: 0,
            addr: [0; StreamKey::LEN],
        }
    }

    /// Feeds the next bytes read from the client, in any chunking. Intermediate replies
    /// (method selection `05 00`/`05 02`, RFC 1929 status `01 00`) are appended to `out`;
    /// on failure `out` gets the failure reply (if any) that must be sent before closing.
    /// Once done or failed, returns the same step again and appends nothing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Step {
        for (i, &b) in input.iter().enumerate() {
            if self.is_terminal() {
                break;
            }
            match self.byte(b, out) {
                Progress::More => {}
                Progress::Fail(why) => self.state = State::Failed(why),
                Progress::Key(key) if i + 1 == input.len() => self.state = State::Done(key),
                // The client sent more before our reply: it is not waiting, so it is not a
                // well-behaved XEP-0065 client, and those bytes would be lost to the relay.
                Progress::Key(_) => {
                    out.extend_from_slice(&failure_reply(Refusal::Malformed.rep()));
                    self.state = State::Failed(Refusal::Malformed);
                }
            }
        }
        self.step()
    }

    /// The current step, without feeding anything.
    pub fn step(&self) -> Step {
        match self.state {
            State::Done(key) => Step::Done(key),
            State::Failed(why) => Step::Failed(why),
            _ => Step::NeedMore,
        }
    }

    /// Upper bound on bytes the driver may read next without reading past the handshake:
    /// the fewest bytes any successful handshake can still need given what was read, so a
    /// pipelined handshake is read in one go and early relay data stays in the kernel.
    /// (A handshake that can no longer succeed may be over-read; it fails regardless.)
    /// At least 1 while `NeedMore`; 0 once done or failed.
    pub fn max_read(&self) -> usize {
        let (user, pass) = self
            .auth
            .as_deref()
            .map_or((0, 0), |a| (a.username.len(), a.password.len()));
        // Bytes of the RFC 1929 message still to come, from the given state on.
        let auth_rest = |from: State| -> usize {
            match from {
                State::AuthVer => 3 + user + pass,
                State::AuthULen => 2 + user + pass,
                State::AuthUser { left } => left as usize + 1 + pass,
                State::AuthPLen => 1 + pass,
                State::AuthPass { left } => left as usize,
                _ => 0,
            }
        };
        let after_greeting = if self.auth.is_some() {
            auth_rest(State::AuthVer) + REQUEST_LEN
        } else {
            REQUEST_LEN
        };
        match self.state {
            // At least one method follows.
            State::GreetVer => 3 + after_greeting,
            State::GreetNMethods => 2 + after_greeting,
            State::GreetMethods { left } => left as usize + after_greeting,
            s @ (State::AuthVer
            | State::AuthULen
            | State::AuthUser { .. }
            | State::AuthPLen
            | State::AuthPass { .. }) => auth_rest(s) + REQUEST_LEN,
            State::Request { pos } => REQUEST_LEN - pos as usize,
            State::Done(_) | State::Failed(_) => 0,
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(self.state, State::Done(_) | State::Failed(_))
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> Progress {
        match self.state {
            State::GreetVer => {
                // Not SOCKS5 (SOCKS4, HTTP, TLS, a scanner): a `05 FF` would mean nothing to
                // such a client and would only hand bytes back to a probe, so close silently.
                if b != VER {
                    return Progress::Fail(Refusal::BadVersion);
                }
                self.state = State::GreetNMethods;
            }
            State::GreetNMethods => {
                // An empty method list offers nothing acceptable: same answer as a list
                // without our method.
                if b == 0 {
                    return no_method(out);
                }
                self.state = State::GreetMethods { left: b };
            }
            State::GreetMethods { left } => {
                // With auth configured, 00 is not acceptable: only 02 is.
                let wanted = if self.auth.is_some() {
                    METHOD_USERPASS
                } else {
                    METHOD_NONE
                };
                self.method_ok |= b == wanted;
                if left > 1 {
                    self.state = State::GreetMethods { left: left - 1 };
                } else if !self.method_ok {
                    return no_method(out);
                } else {
                    out.extend_from_slice(&[VER, wanted]);
                    self.state = if self.auth.is_some() {
                        State::AuthVer
                    } else {
                        State::Request { pos: 0 }
                    };
                }
            }
            State::AuthVer => {
                if b != AUTH_VER {
                    return auth_failed(out);
                }
                self.state = State::AuthULen;
            }
            State::AuthULen => {
                // RFC 1929: ULEN and PLEN are 1..255.
                if b == 0 {
                    return auth_failed(out);
                }
                self.start_compare(b, |a| a.username.len());
                self.state = State::AuthUser { left: b };
            }
            State::AuthUser { left } => {
                self.compare(b, |a| a.username.as_bytes());
                self.state = if left > 1 {
                    State::AuthUser { left: left - 1 }
                } else {
                    State::AuthPLen
                };
            }
            State::AuthPLen => {
                if b == 0 {
                    return auth_failed(out);
                }
                self.start_compare(b, |a| a.password.len());
                self.state = State::AuthPass { left: b };
            }
            State::AuthPass { left } => {
                self.compare(b, |a| a.password.as_bytes());
                if left > 1 {
                    self.state = State::AuthPass { left: left - 1 };
                } else if self.diff != 0 {
                    return auth_failed(out);
                } else {
                    out.extend_from_slice(&[AUTH_VER, 0x00]);
                    self.state = State::Request { pos: 0 };
                }
            }
            State::Request { pos } => return self.request_byte(pos as usize, b, out),
            // `feed` stops at a terminal state.
            State::Done(_) | State::Failed(_) => {}
        }
        Progress::More
    }

    fn request_byte(&mut self, pos: usize, b: u8, out: &mut Vec<u8>) -> Progress {
        let refuse = |why: Refusal, out: &mut Vec<u8>| {
            out.extend_from_slice(&failure_reply(why.rep()));
            Progress::Fail(why)
        };
        const ADDR: usize = 5;
        const PORT: usize = ADDR + StreamKey::LEN;
        match pos {
            0 if b != VER => return refuse(Refusal::BadVersion, out),
            1 if b != CMD_CONNECT => return refuse(Refusal::BadCommand, out),
            2 if b != 0x00 => return refuse(Refusal::Malformed, out),
            // IPv4/IPv6 addresses are refused on this byte, without reading them.
            3 if b != ATYP_DOMAIN => return refuse(Refusal::BadAddressType, out),
            4 if b as usize != StreamKey::LEN => return refuse(Refusal::BadKey, out),
            ADDR..PORT => {
                self.addr[pos - ADDR] = b;
                if pos + 1 == PORT && StreamKey::parse_hex(&self.addr).is_none() {
                    return refuse(Refusal::BadKey, out);
                }
            }
            // The proxy never connects anywhere; a non-zero port asks it to.
            _ if pos >= PORT && b != 0 => return refuse(Refusal::BadPort, out),
            _ => {}
        }
        if pos + 1 == REQUEST_LEN {
            let key = StreamKey::parse_hex(&self.addr).expect("checked at the last addr byte");
            return Progress::Key(key);
        }
        self.state = State::Request { pos: pos as u8 + 1 };
        Progress::More
    }

    /// Starts comparing a credential field of length `len` against the configured one.
    fn start_compare(&mut self, len: u8, expected_len: impl Fn(&Socks5Auth) -> usize) {
        let expected = self.auth.as_deref().map_or(usize::MAX, expected_len);
        self.diff |= u8::from(len as usize != expected);
        self.idx = 0;
    }

    /// Accumulates differences without branching on their content.
    fn compare(&mut self, b: u8, expected: impl Fn(&Socks5Auth) -> &[u8]) {
        let idx = self.idx as usize;
        let want = self
            .auth
            .as_deref()
            .and_then(|a| expected(a).get(idx).copied());
        // A missing byte only happens when the lengths already differ (diff is set).
        self.diff |= b ^ want.unwrap_or(0);
        self.idx = self.idx.wrapping_add(1);
    }
}

fn no_method(out: &mut Vec<u8>) -> Progress {
    out.extend_from_slice(&[VER, 0xFF]);
    Progress::Fail(Refusal::NoAcceptableMethod)
}

fn auth_failed(out: &mut Vec<u8>) -> Progress {
    out.extend_from_slice(&[AUTH_VER, 0x01]);
    Progress::Fail(Refusal::AuthFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_small_and_send() {
        fn send<T: Send>() {}
        send::<Handshake>();
        assert!(std::mem::size_of::<Handshake>() <= 128);
    }

    #[test]
    fn debug_hides_credentials() {
        let auth = Socks5Auth {
            username: "romeo".into(),
            password: "s3cret".into(),
        };
        let h = Handshake::new(Some(Arc::new(auth)));
        let dbg = format!("{h:?}");
        assert!(dbg.contains("GreetVer"), "{dbg}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("romeo"), "{dbg}");
    }

    #[test]
    fn replies_are_byte_exact() {
        let key = StreamKey::parse_hex(&[b'a'; 40]).unwrap();
        let r = success_reply(&key);
        assert_eq!(&r[..5], &[5, 0, 0, 3, 40]);
        assert_eq!(&r[5..45], &[b'a'; 40]);
        assert_eq!(&r[45..], &[0, 0]);
        assert_eq!(
            failure_reply(Rep::NotAllowed),
            [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            failure_reply(Rep::AddressTypeNotSupported),
            [5, 8, 0, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn refusal_rep_codes() {
        assert_eq!(Refusal::BadCommand.rep() as u8, 7);
        assert_eq!(Refusal::BadAddressType.rep() as u8, 8);
        assert_eq!(Refusal::BadPort.rep() as u8, 2);
        assert_eq!(Refusal::ThirdConnection.rep() as u8, 2);
        assert_eq!(Refusal::AlreadyActive.rep() as u8, 2);
        assert_eq!(Refusal::BadKey.rep() as u8, 4);
        assert_eq!(Refusal::Malformed.rep() as u8, 1);
        assert_eq!(Refusal::BadVersion.rep() as u8, 1);
        for r in Refusal::ALL {
            assert!((1..=8).contains(&(r.rep() as u8)), "{r:?}");
        }
    }
}
