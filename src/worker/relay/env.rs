//! The world as a relay direction's state machine sees it (`crate::relay::Env`), answered
//! by this worker at once: `SIOCOUTQ`, the stream's shaper, non-blocking sends and
//! splices on the pair's sockets, the pools, the spill budget and the counters.

use super::super::bufring::BufRing;
use super::super::pipes::{Pipe, PipePool};
use crate::relay::copy::BufEnv;
use crate::relay::splice::PipeEnv;
use crate::relay::uring_splice::UringEnv;
use crate::relay::{Count, Env};
use crate::shaping::{Grant, StreamShaper};
use crate::stats::WorkerStats;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

pub(in crate::worker) struct WorkerEnv<'a> {
    /// The direction's source socket and its destination (the peer's socket), both
    /// open while the pair lives.
    pub fd: RawFd,
    pub peer_fd: RawFd,
    pub first: bool,
    pub now: Instant,
    pub shaper: Option<&'a StreamShaper>,
    pub pipes: &'a mut PipePool,
    pub bufs: Option<&'a BufRing>,
    pub spill_bytes: &'a mut usize,
    pub spill_limit: usize,
    pub stats: &'a WorkerStats,
    /// Buffers pinned by zero-copy sends in flight, and how many may be (0: `send_zc`
    /// off).
    pub zc_pinned: &'a mut usize,
    pub zc_limit: usize,
    /// Directions waiting for the pool, and the wakeups owed them (`wake_starving`).
    pub waiting: usize,
    /// The worker's `starving` queue is not empty.
    pub others_wait: bool,
    pub wakes_owed: &'a mut usize,
}

impl WorkerEnv<'_> {
    /// A pipe or buffer came back: a waiter is owed a wakeup (the ring loop wakes it).
    pub fn wake_starving(&mut self) {
        if self.waiting > 0 {
            *self.wakes_owed += 1;
        }
    }
}

impl Env for WorkerEnv<'_> {
    fn send_space(&mut self) -> usize {
        super::send_space(self.peer_fd)
    }

    fn grant(&mut self, want: usize) -> Grant {
        match self.shaper {
            Some(sh) => sh.grant(self.now, want),
            None => Grant::Go(want),
        }
    }

    fn paid(&mut self, n: usize) {
        if let Some(sh) = self.shaper {
            sh.paid(n);
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<usize, i32> {
        // SAFETY: send from a live slice of the given length to the peer's socket, which
        // stays open while the pair lives.
        let n = unsafe {
            libc::send(
                self.peer_fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(errno())
        } else {
            Ok(n as usize)
        }
    }

    fn reserve_spill(&mut self, n: usize) -> bool {
        if *self.spill_bytes + n > self.spill_limit {
            return false;
        }
        *self.spill_bytes += n;
        true
    }

    fn release_spill(&mut self, n: usize) {
        *self.spill_bytes -= n;
    }

    fn count(&mut self, what: Count) {
        let st = self.stats;
        match what {
            Count::Delivered(n) if self.first => {
                st.bytes_first_to_second.fetch_add(n as u64, Relaxed);
            }
            Count::Delivered(n) => {
                st.bytes_second_to_first.fetch_add(n as u64, Relaxed);
            }
            Count::Stall => {
                st.relay_stalls.fetch_add(1, Relaxed);
            }
            Count::Fallback => {
                st.relay_fallbacks.fetch_add(1, Relaxed);
            }
            Count::FallbackFull => {
                st.relay_fallback_full.fetch_add(1, Relaxed);
            }
        }
    }
}

impl PipeEnv<Pipe> for WorkerEnv<'_> {
    fn pipe_size(&self) -> usize {
        self.pipes.pipe_size()
    }

    fn borrow(&mut self) -> Option<Pipe> {
        self.pipes.borrow()
    }

    fn give_back(&mut self, pipe: Pipe) {
        self.pipes.give_back(pipe);
        self.wake_starving();
    }

    fn splice_in(&mut self, pipe: Pipe, len: usize) -> Result<usize, i32> {
        splice(self.fd, pipe.wr, len)
    }

    fn splice_out(&mut self, pipe: Pipe, len: usize) -> Result<usize, i32> {
        splice(pipe.rd, self.peer_fd, len)
    }

    fn drain_pipe(&mut self, pipe: Pipe, len: usize, into: &mut Vec<u8>) -> Result<usize, i32> {
        into.reserve(len);
        let at = into.len();
        // SAFETY: a read of at most `len` bytes into spare capacity just reserved, from a
        // non-blocking pipe this direction holds (nothing is in flight on it); the length
        // grows by what was read.
        let got = unsafe {
            let r = libc::read(pipe.rd, into.as_mut_ptr().add(at).cast(), len);
            if r > 0 {
                into.set_len(at + r as usize);
            }
            r
        };
        if got < 0 {
            Err(errno())
        } else {
            Ok(got as usize)
        }
    }
}

impl BufEnv for WorkerEnv<'_> {
    fn buffer(&self, bid: u16, off: usize, len: usize) -> &[u8] {
        self.bufs
            .expect("copy engine has a buffer ring")
            .slice(bid, off, len)
    }

    fn zero_copy(&mut self) -> bool {
        // Counted down at the send's last completion (`Worker::dispatch`).
        if *self.zc_pinned >= self.zc_limit {
            return false;
        }
        *self.zc_pinned += 1;
        true
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Non-blocking splice of up to `len` bytes; `Err(errno)` on failure.
pub(super) fn splice(from: RawFd, to: RawFd, len: usize) -> Result<usize, i32> {
    // SAFETY: splice between descriptors this worker owns, with null offsets (sockets and
    // pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

impl UringEnv<Pipe> for WorkerEnv<'_> {
    fn others_wait(&self) -> bool {
        self.others_wait
    }
}
