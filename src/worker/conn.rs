//! Per-connection state on a worker: where the connection is in its life, and what it owns.

use super::pipes::Pipe;
use super::slab::ConnId;
use crate::key::StreamKey;
use crate::limits::Source;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseKind {
    /// FIN: the stream ended normally or was refused.
    Graceful,
    /// RST (SO_LINGER 0): the relay failed, so the peer must not mistake it for a clean end.
    Abort,
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
pub(crate) struct Side {
    pub key: StreamKey,
    pub peer: ConnId,
    pub peer_fd: RawFd,
    /// This half connected first (names the direction in counters).
    pub first: bool,
    /// The relay of this pair has been ended (counted once).
    pub ended: bool,
    /// Read side saw EOF.
    pub eof: bool,
    /// EOF forwarded: the peer's write side is shut down.
    pub done: bool,
    pub reading: bool,
    pub writing: bool,
    /// Waiting for a buffer or a pipe to come free.
    pub starving: bool,
    /// Waiting for shaping tokens (in the worker's `throttled` queue).
    pub throttled: bool,
    /// Rates and quotas of this stream, shared by both directions; `None` when off.
    pub shaper: Option<Arc<StreamShaper>>,
    /// copy engine: received buffers not yet fully sent (buffer id, length, sent).
    pub queue: [(u16, u32, u32); 2],
    pub queued: u8,
    /// splice engine: the borrowed pipe and how many bytes sit in it.
    pub pipe: Option<Pipe>,
    pub in_pipe: usize,
    /// uring-splice engine: the last splice in filled the pipe, so skip the next poll.
    pub again: bool,
    /// What the destination could not take when it stalled, moved out of the pool's pipe
    /// or buffer (`spill[spill_sent..]` is still to send, before anything else).
    pub spill: Vec<u8>,
    pub spill_sent: usize,
    /// A POLLOUT on the peer is armed for this direction (waiting for its destination
    /// without holding a pipe or buffer).
    pub out_wait: bool,
    pub bytes: u64,
    pub started: Instant,
    pub last_active: Instant,
}

impl Side {
    pub fn new(
        key: StreamKey,
        peer: ConnId,
        peer_fd: RawFd,
        first: bool,
        now: Instant,
        shaper: Option<Arc<StreamShaper>>,
    ) -> Side {
        Side {
            key,
            peer,
            peer_fd,
            first,
            ended: false,
            eof: false,
            done: false,
            reading: false,
            writing: false,
            starving: false,
            throttled: false,
            shaper,
            queue: [(0, 0, 0); 2],
            queued: 0,
            pipe: None,
            in_pipe: 0,
            again: false,
            spill: Vec::new(),
            spill_sent: 0,
            out_wait: false,
            bytes: 0,
            started: now,
            last_active: now,
        }
    }
}
