//! Per-connection state on a worker: where the connection is in its life, and what it owns.

use super::pipes::Pipe;
use super::slab::ConnId;
use crate::key::StreamKey;
use crate::limits::Source;
use crate::relay::copy::CopyDir;
use crate::relay::splice::SpliceDir;
use crate::relay::uring_splice::UringDir;
use crate::relay::{Flow, Hold};
use crate::shaping::StreamShaper;
use crate::socks5::Handshake;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

/// Largest handshake read: greeting (257) + RFC 1929 auth (513) + request (47) fit.
pub(crate) const HS_BUF: usize = 1024;

pub(crate) struct Conn {
    pub fd: RawFd,
    /// Where it came from, for the per-address limits.
    pub src: Source,
    /// Operations submitted for this connection whose final completion has not arrived.
    /// Memory they point into (buffers below) is freed only when this is zero.
    pub inflight: u32,
    pub phase: Phase,
    /// Set once the connection is being closed; completions then only count down.
    pub closing: Option<CloseKind>,
    /// Still counted in the process-wide pending (unactivated) total.
    pub pending: bool,
    /// A cancel for its operations has been submitted.
    pub cancel_sent: bool,
    /// Being handed to a new process (upgrade): completions only update what is carried,
    /// and it leaves this worker when none is in flight (`carry.rs`).
    pub exporting: bool,
}

/// FIN (the stream ended normally or was refused), or RST (SO_LINGER 0: the relay
/// failed, so the peer must not mistake it for a clean end).
pub(crate) use crate::relay::pair::Close as CloseKind;

impl Conn {
    /// A connection whose handshake is done (handed over from another core or another
    /// process), about to be placed: still pending.
    pub fn finished_handshake(fd: RawFd, src: Source) -> Conn {
        Conn {
            fd,
            src,
            inflight: 0,
            phase: Phase::Dead,
            closing: None,
            pending: true,
            cancel_sent: false,
            exporting: false,
        }
    }
}

pub(crate) enum Phase {
    Handshake(Box<Hs>),
    Reply(Box<Reply>),
    /// Placed in the rendezvous table; a POLLRDHUP watch is armed.
    Waiting {
        key: StreamKey,
    },
    Relay(Box<Side>),
    /// Nothing left to do but close.
    Dead,
}

pub(crate) struct Hs {
    pub parser: Handshake,
    /// Every byte read so far (`buf[..len]`), kept so that an upgrade can hand the
    /// handshake over by replaying them.
    pub buf: [u8; HS_BUF],
    pub len: usize,
    /// Intermediate reply bytes sent so far, all replies together.
    pub replied: usize,
    /// Intermediate reply being sent, and how much of it went out.
    pub out: Vec<u8>,
    pub sent: usize,
}

/// What follows the final SOCKS5 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterReply {
    /// Placed in the table under this key: wait for the peer / activation.
    Wait(StreamKey),
    /// Refused: close once the reply is out.
    Close,
}

pub(crate) struct Reply {
    pub bytes: [u8; 64],
    pub len: usize,
    pub sent: usize,
    pub then: AfterReply,
    /// Activated while this reply was still being sent: start the relay once it is out.
    pub activated: Option<(ConnId, ConnId, Option<Arc<StreamShaper>>)>,
}

/// The relay state of one direction: bytes read from this connection, written to `peer`.
/// What moves the bytes is the engine's own state machine (`dir`, `src/relay/`); this
/// holds what the worker needs around it.
pub(crate) struct Side {
    pub key: StreamKey,
    pub peer: ConnId,
    pub peer_fd: RawFd,
    /// This half connected first (names the direction in counters).
    pub first: bool,
    /// The relay of this pair has been ended (counted once).
    pub ended: bool,
    /// EOF forwarded: the peer's write side is shut down.
    pub done: bool,
    /// Rates and quotas of this stream, shared by both directions; `None` when off.
    pub shaper: Option<Arc<StreamShaper>>,
    pub started: Instant,
    pub dir: Dir,
}

/// One direction's engine state; each engine has its own type.
pub(crate) enum Dir {
    Splice(SpliceDir<Pipe>),
    Copy(CopyDir),
    UringSplice(UringDir<Pipe>),
}

impl Dir {
    pub fn hold(&self) -> Hold {
        match self {
            Dir::Splice(d) => d.hold(),
            Dir::Copy(d) => d.hold(),
            Dir::UringSplice(d) => d.hold(),
        }
    }

    pub fn flow(&self) -> &Flow {
        match self {
            Dir::Splice(d) => &d.flow,
            Dir::Copy(d) => &d.flow,
            Dir::UringSplice(d) => &d.flow,
        }
    }
}

impl Side {
    pub fn new(
        key: StreamKey,
        peer: ConnId,
        peer_fd: RawFd,
        first: bool,
        now: Instant,
        shaper: Option<Arc<StreamShaper>>,
        dir: Dir,
    ) -> Side {
        Side {
            key,
            peer,
            peer_fd,
            first,
            ended: false,
            done: false,
            shaper,
            started: now,
            dir,
        }
    }
}
