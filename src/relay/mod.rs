//! The relay's decisions, sans-IO: one direction of an activated pair (bytes read from one
//! socket, written to the other) as a state machine per engine, and what the end of a
//! direction means for its pair. No socket, ring or pool is touched here.
//!
//! A direction is driven by events (readable, writable, a completion's result, a pool
//! hand-back, the shaper's tokens due, time) and answers with actions: operations to
//! submit (copy engine), resources to give back, and what it waits for next
//! ([`Next`]). What it must know at once to decide (room in the destination's send
//! buffer, the shaper's grant, a pipe from the pool, the result of a non-blocking splice)
//! it asks of its [`Env`], which the worker answers with syscalls and the tests with a
//! simulated kernel (`sim.rs`). The worker's ring loop (`worker/relay/`) is the driver.
//!
//! Each engine's state is its own type: `splice::SpliceDir` (the default: inline
//! non-blocking splice through a pooled pipe), `copy::CopyDir` (provided buffers and
//! ring sends) and `uring_splice::UringDir` (pooled pipes, `IORING_OP_SPLICE` requests).
//! Each owns its in-flight bookkeeping: a pipe or buffer leaves a direction only from a
//! handler that has seen the last completion of the operation using it.

pub(crate) mod copy;
pub(crate) mod pair;
pub(crate) mod spill;
pub(crate) mod splice;
pub(crate) mod uring_splice;

#[cfg(test)]
#[macro_use]
mod sim;
#[cfg(test)]
mod tests_copy;
#[cfg(test)]
mod tests_splice;
#[cfg(test)]
mod tests_uring;

use crate::shaping::Grant;
use std::time::Instant;

/// What a direction waits for once it cannot move on now. The driver arms it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Operations of its own are in flight; their completions move it on.
    InFlight,
    /// Its source socket to be readable (or hung up).
    Readable,
    /// Its destination socket to take bytes again (POLLOUT on the peer).
    Writable,
    /// A pipe or buffer to come back to the pool (it holds none meanwhile).
    Pool,
    /// The shaper's tokens, due at this time.
    Park(Instant),
    /// EOF read and every byte delivered: shut down the destination's write side.
    Finished,
    /// The stream's quota ran out.
    QuotaCut,
    /// An error (errno): tear the pair down with RST.
    Fail(i32),
}

/// Why a direction holds no operation and is not polled: it sits in one of the
/// worker's queues until `resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Hold {
    #[default]
    None,
    /// In the worker's `starving` queue.
    Pool,
    /// In the worker's `throttled` heap.
    Tokens,
}

/// Things a direction counts (the worker's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Bytes written to the destination.
    Delivered(usize),
    /// The destination was full before a read: waited for it holding nothing.
    Stall,
    /// What a stalled destination refused was moved into the direction's spill.
    Fallback,
    /// The spill budget was used up: the pipe or buffer was kept.
    FallbackFull,
}

/// What every engine asks of the world, answered at once.
pub(crate) trait Env {
    /// About how many bytes the destination's send buffer takes now (`SO_SNDBUF` less
    /// `SIOCOUTQ`; a little high at times). `usize::MAX` when unknown.
    fn send_space(&mut self) -> usize;
    /// May the stream read up to `want` bytes now? (`Go(want)` when it is not shaped.)
    fn grant(&mut self, want: usize) -> Grant;
    /// `n` bytes were read under the last grant.
    fn paid(&mut self, n: usize);
    /// A non-blocking send of `bytes` to the destination: bytes taken, or errno
    /// (`EAGAIN` when it takes nothing).
    fn send(&mut self, bytes: &[u8]) -> Result<usize, i32>;
    /// Takes `n` bytes of the worker's spill budget (`relay.stall_bytes_per_worker`);
    /// false when it has not that much left.
    fn reserve_spill(&mut self, n: usize) -> bool;
    /// Gives `n` bytes of spill budget back.
    fn release_spill(&mut self, n: usize);
    fn count(&mut self, what: Count);
}

/// Progress of a direction: bytes delivered, and when it last moved any byte (for the
/// idle timeout).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    pub bytes: u64,
    pub last_active: Instant,
}

impl Flow {
    pub fn new(now: Instant) -> Flow {
        Flow {
            bytes: 0,
            last_active: now,
        }
    }
}
