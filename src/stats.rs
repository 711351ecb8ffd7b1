//! Counters shared between the workers (writers) and the control plane / metrics (readers).
//! One cache-padded block per worker so that cores never write the same line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection or an activation was refused. Indexes `Stats::refusals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Refusal {
    /// Not SOCKS version 5, in the greeting or the request.
    BadVersion,
    /// No offered method acceptable (00 without auth, 02 with it).
    NoAcceptableMethod,
    /// RFC 1929 username/password wrong or malformed.
    AuthFailed,
    /// BIND, UDP ASSOCIATE or an unknown command.
    BadCommand,
    /// IPv4, IPv6 or an unknown address type.
    BadAddressType,
    /// Domain not 40 hex characters.
    BadKey,
    /// DST.PORT not 0.
    BadPort,
    /// Bytes after the request before the reply, or a malformed field.
    Malformed,
    /// A third connection for a key that has two.
    ThirdConnection,
    /// A connection for a key that is already relaying.
    AlreadyActive,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The peer never came, or the pair was never activated, in time.
    ActivationTimeout,
    /// The process-wide connection limit.
    MaxConnections,
    /// The process-wide limit of pending (handshaking or unactivated) connections.
    MaxPending,
    /// Too many connections open from one address (IPv4) or /64 (IPv6).
    PerIpConnections,
    /// Too many new connections per second from one address or /64.
    PerIpRate,
    /// Too many connections open from one IPv4 /24, IPv6 /56 or IPv6 /48.
    PerPrefixConnections,
    /// The proxy was full: the oldest half still waiting for its peer was closed to make
    /// room for a new connection.
    Shed,
    /// The requester's account or domain used its daily byte quota: activation refused,
    /// or a running stream cut.
    Quota,
    /// Not ready: the component is not logged in, so nothing could activate the stream
    /// (closed at accept; clients try their next streamhost).
    NotReady,
}

impl Refusal {
    pub const ALL: [Refusal; 20] = [
        Refusal::BadVersion,
        Refusal::NoAcceptableMethod,
        Refusal::AuthFailed,
        Refusal::BadCommand,
        Refusal::BadAddressType,
        Refusal::BadKey,
        Refusal::BadPort,
        Refusal::Malformed,
        Refusal::ThirdConnection,
        Refusal::AlreadyActive,
        Refusal::HandshakeTimeout,
        Refusal::ActivationTimeout,
        Refusal::MaxConnections,
        Refusal::MaxPending,
        Refusal::PerIpConnections,
        Refusal::PerIpRate,
        Refusal::PerPrefixConnections,
        Refusal::Shed,
        Refusal::Quota,
        Refusal::NotReady,
    ];

    /// A stable snake_case name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadVersion => "bad_version",
            Refusal::NoAcceptableMethod => "no_acceptable_method",
            Refusal::AuthFailed => "auth_failed",
            Refusal::BadCommand => "bad_command",
            Refusal::BadAddressType => "bad_address_type",
            Refusal::BadKey => "bad_key",
            Refusal::BadPort => "bad_port",
            Refusal::Malformed => "malformed",
            Refusal::ThirdConnection => "third_connection",
            Refusal::AlreadyActive => "already_active",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::ActivationTimeout => "activation_timeout",
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPending => "max_pending",
            Refusal::PerIpConnections => "per_ip_connections",
            Refusal::PerIpRate => "per_ip_rate",
            Refusal::PerPrefixConnections => "per_prefix_connections",
            Refusal::Shed => "shed",
            Refusal::Quota => "quota",
            Refusal::NotReady => "not_ready",
        }
    }
}

const REFUSALS: usize = Refusal::ALL.len();

/// One worker's counters. Monotonic counters unless marked as a gauge.
#[derive(Default)]
#[repr(align(128))]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    /// gauge: client connections open on this worker (a hand-off moves one between
    /// workers, so one worker's value may wrap; the sum is exact)
    pub open: AtomicU64,
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    /// both halves of a key present
    pub pairs_matched: AtomicU64,
    pub activations: AtomicU64,
    /// gauge: relays running
    pub relays_active: AtomicU64,
    pub relays_finished: AtomicU64,
    /// bytes read from the half that connected first and written to the second
    pub bytes_first_to_second: AtomicU64,
    pub bytes_second_to_first: AtomicU64,
    /// hand-offs of a finished handshake to the key's owner core
    pub handoffs: AtomicU64,
    /// connections handed to a new process by an upgrade handover / taken from an old one
    pub handed_over: AtomicU64,
    pub adopted: AtomicU64,
    /// relay errors other than resets (a failed syscall, no buffer)
    pub relay_errors: AtomicU64,
    /// times a relay direction waited for shaping tokens
    pub shaping_waits: AtomicU64,
    /// times a relay direction waited for a pipe or buffer to come free
    pub relay_waits: AtomicU64,
    /// gauge: relay directions waiting for a pipe or buffer now
    pub relay_directions_waiting: AtomicU64,
    /// gauge: pipes lent to relay directions now (splice engines)
    pub relay_pipes_lent: AtomicU64,
    /// gauge: provided buffers lent to relay directions now (copy engine)
    pub relay_buffers_lent: AtomicU64,
    /// times a relay direction found its destination full and waited for it without holding a pipe or buffer
    pub relay_stalls: AtomicU64,
    /// times a stalled direction's leftover bytes were moved out of a pipe or buffer into its own small buffer
    pub relay_fallbacks: AtomicU64,
    /// gauge: bytes held in stalled directions' own buffers now
    pub relay_fallback_bytes: AtomicU64,
    /// gauge: deadline entries queued (handshakes and unactivated halves, live or stale)
    pub deadline_entries: AtomicU64,
    /// times a stalled direction kept its pipe or buffer because `stall_bytes_per_worker` was used up
    pub relay_fallback_full: AtomicU64,
    /// ring-loop rounds that ended with waiting directions still to wake (the per-round budget bit)
    pub relay_wakeups_deferred: AtomicU64,
    /// finished streams' log lines dropped because the log thread's queue was full
    pub stream_log_dropped: AtomicU64,
    /// accept failures (EMFILE, ENFILE, ENOBUFS...); the listener is re-armed on the next tick
    pub accept_errors: AtomicU64,
    pub refusals: [AtomicU64; REFUSALS],
    /// the worker loop's 250 ms timer ticks: a heartbeat (stops when the loop is stuck)
    pub ticks: AtomicU64,
}

impl WorkerStats {
    pub fn refuse(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Relaxed);
    }
}

/// A point-in-time sum over all workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub open: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub pairs_matched: u64,
    pub activations: u64,
    pub relays_active: u64,
    pub relays_finished: u64,
    pub bytes_first_to_second: u64,
    pub bytes_second_to_first: u64,
    pub handoffs: u64,
    pub handed_over: u64,
    pub adopted: u64,
    pub relay_errors: u64,
    pub shaping_waits: u64,
    pub relay_waits: u64,
    pub relay_directions_waiting: u64,
    pub relay_pipes_lent: u64,
    pub relay_buffers_lent: u64,
    pub relay_stalls: u64,
    pub relay_fallbacks: u64,
    pub relay_fallback_bytes: u64,
    pub deadline_entries: u64,
    pub relay_fallback_full: u64,
    pub relay_wakeups_deferred: u64,
    pub stream_log_dropped: u64,
    pub accept_errors: u64,
    pub refusals: Vec<(Refusal, u64)>,
}

impl Stats {
    pub fn sum(workers: &[WorkerStats]) -> Stats {
        let mut s = Stats {
            refusals: Refusal::ALL.iter().map(|&r| (r, 0)).collect(),
            ..Stats::default()
        };
        for w in workers {
            s.accepted = s.accepted.wrapping_add(w.accepted.load(Relaxed));
            s.open = s.open.wrapping_add(w.open.load(Relaxed));
            s.handshakes_ok = s.handshakes_ok.wrapping_add(w.handshakes_ok.load(Relaxed));
            s.handshakes_failed = s
                .handshakes_failed
                .wrapping_add(w.handshakes_failed.load(Relaxed));
            s.pairs_matched = s.pairs_matched.wrapping_add(w.pairs_matched.load(Relaxed));
            s.activations = s.activations.wrapping_add(w.activations.load(Relaxed));
            s.relays_active = s.relays_active.wrapping_add(w.relays_active.load(Relaxed));
            s.relays_finished = s
                .relays_finished
                .wrapping_add(w.relays_finished.load(Relaxed));
            s.bytes_first_to_second = s
                .bytes_first_to_second
                .wrapping_add(w.bytes_first_to_second.load(Relaxed));
            s.bytes_second_to_first = s
                .bytes_second_to_first
                .wrapping_add(w.bytes_second_to_first.load(Relaxed));
            s.handoffs = s.handoffs.wrapping_add(w.handoffs.load(Relaxed));
            s.handed_over = s.handed_over.wrapping_add(w.handed_over.load(Relaxed));
            s.adopted = s.adopted.wrapping_add(w.adopted.load(Relaxed));
            s.relay_errors = s.relay_errors.wrapping_add(w.relay_errors.load(Relaxed));
            s.shaping_waits = s.shaping_waits.wrapping_add(w.shaping_waits.load(Relaxed));
            s.relay_waits = s.relay_waits.wrapping_add(w.relay_waits.load(Relaxed));
            s.relay_directions_waiting = s
                .relay_directions_waiting
                .wrapping_add(w.relay_directions_waiting.load(Relaxed));
            s.relay_pipes_lent = s
                .relay_pipes_lent
                .wrapping_add(w.relay_pipes_lent.load(Relaxed));
            s.relay_buffers_lent = s
                .relay_buffers_lent
                .wrapping_add(w.relay_buffers_lent.load(Relaxed));
            s.relay_stalls = s.relay_stalls.wrapping_add(w.relay_stalls.load(Relaxed));
            s.relay_fallbacks = s
                .relay_fallbacks
                .wrapping_add(w.relay_fallbacks.load(Relaxed));
            s.relay_fallback_bytes = s
                .relay_fallback_bytes
                .wrapping_add(w.relay_fallback_bytes.load(Relaxed));
            s.deadline_entries = s
                .deadline_entries
                .wrapping_add(w.deadline_entries.load(Relaxed));
            s.relay_fallback_full = s
                .relay_fallback_full
                .wrapping_add(w.relay_fallback_full.load(Relaxed));
            s.relay_wakeups_deferred = s
                .relay_wakeups_deferred
                .wrapping_add(w.relay_wakeups_deferred.load(Relaxed));
            s.stream_log_dropped = s
                .stream_log_dropped
                .wrapping_add(w.stream_log_dropped.load(Relaxed));
            s.accept_errors = s.accept_errors.wrapping_add(w.accept_errors.load(Relaxed));
            for (i, r) in s.refusals.iter_mut().enumerate() {
                r.1 += w.refusals[i].load(Relaxed);
            }
        }
        s
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.refusals
            .iter()
            .find(|(r, _)| *r == why)
            .map_or(0, |(_, n)| *n)
    }
}
