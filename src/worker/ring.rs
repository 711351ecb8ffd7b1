//! A thin io_uring wrapper: completion tokens and a push that never loses an entry.

use io_uring::{cqueue, squeue, IoUring};
use std::io;

/// What a completion belongs to. Encoded in the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// Multishot accept; the index is the listener's.
    Accept = 1,
    /// Mailbox eventfd read.
    Wake,
    /// Periodic timer.
    Tick,
    /// Handshake recv into the connection's small buffer.
    HsRecv,
    /// Handshake intermediate reply (method selection, auth status).
    HsSend,
    /// Final SOCKS5 reply (success or refusal), sent by the key's owner.
    Reply,
    /// POLLRDHUP watch on a half waiting for its peer / activation.
    WaitPoll,
    /// Relay: data read from this connection (copy engine recv).
    Recv,
    /// Relay: data written to this connection's peer (copy engine send).
    Send,
    /// Relay: this connection readable (splice engine).
    PollIn,
    /// Relay: this connection's peer writable (splice engine).
    PollOut,
    /// A cancel request; its completion carries nothing we need.
    Cancel,
    /// Relay: this connection's zero-copy send to its peer (copy engine with send_zc):
    /// a result, then a notification once the buffer is free.
    SendZc,
    /// Relay: this connection readable (uring-splice engine).
    UsPollIn,
    /// Relay: this connection's peer writable (uring-splice engine).
    UsPollOut,
    /// Relay: IORING_OP_SPLICE from this connection into its pipe (uring-splice engine).
    UsIn,
    /// Relay: IORING_OP_SPLICE from the pipe to this connection's peer (uring-splice).
    UsOut,
    /// Relay: this connection's peer writable again after a stall (copy engine).
    CopyPollOut,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        [
            Accept,
            Wake,
            Tick,
            HsRecv,
            HsSend,
            Reply,
            WaitPoll,
            Recv,
            Send,
            PollIn,
            PollOut,
            Cancel,
            SendZc,
            UsPollIn,
            UsPollOut,
            UsIn,
            UsOut,
            CopyPollOut,
        ]
        .into_iter()
        .find(|o| *o as u8 == v)
    }
}

/// `user_data` layout: op (8 bits) | generation (24 bits) | slot index (32 bits).
pub(crate) fn token(op: Op, idx: u32, gen: u32) -> u64 {
    ((op as u64) << 56) | (((gen & 0xFF_FFFF) as u64) << 32) | idx as u64
}

pub(crate) fn untoken(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_u8((user_data >> 56) as u8)?;
    Some((op, user_data as u32, ((user_data >> 32) & 0xFF_FFFF) as u32))
}

pub(crate) struct Ring {
    pub ring: IoUring,
    /// Completions copied out so handlers may push new entries while we iterate.
    reaped: Vec<cqueue::Entry>,
    /// Completions taken off the completion queue by `push` (to let a refused submit go
    /// through), handed out first by the next reap. Bounded by the operations in flight.
    backlog: Vec<cqueue::Entry>,
}

impl Ring {
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 8)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)?;
        Ok(Ring {
            ring,
            reaped: Vec::with_capacity(entries as usize * 8),
            backlog: Vec::new(),
        })
    }

    /// Queues an entry, flushing the submission queue to the kernel when it is full. When
    /// the kernel refuses the flush (EBUSY: its completions must be reaped first), the
    /// completions are moved aside for the loop to dispatch, instead of spinning.
    pub fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to is owned by the worker (connection
            // state, buffer ring, timespec) and outlives the operation: the worker only frees
            // a connection's memory once its in-flight count is zero, and drops the ring
            // before the buffer ring and timers.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    self.backlog.extend(self.ring.completion());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The worker cannot go on; `run_worker` turns this into a process exit.
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    /// The completions to dispatch: those `push` moved aside, then the queue's.
    fn take_completions(&mut self) -> Vec<cqueue::Entry> {
        let mut out = std::mem::take(&mut self.reaped);
        out.clear();
        out.append(&mut self.backlog);
        out.extend(self.ring.completion());
        out
    }

    /// Submits what is queued, waits for at least one completion (or until `wait` has
    /// passed, when given), and returns them all.
    pub fn submit_and_reap(
        &mut self,
        wait: Option<std::time::Duration>,
    ) -> io::Result<Vec<cqueue::Entry>> {
        match wait {
            Some(w) => self.reap_for(w),
            None => {
                // Completions set aside by `push` are due now: do not block.
                let want = usize::from(self.backlog.is_empty());
                match self.ring.submit_and_wait(want) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(e),
                }
                Ok(self.take_completions())
            }
        }
    }

    /// Submits and waits up to `wait` for completions.
    pub fn reap_for(&mut self, wait: std::time::Duration) -> io::Result<Vec<cqueue::Entry>> {
        let wait = if self.backlog.is_empty() {
            wait
        } else {
            std::time::Duration::ZERO
        };
        let ts = io_uring::types::Timespec::from(wait);
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        Ok(self.take_completions())
    }

    /// Gives the completion vector back for reuse.
    pub fn recycle(&mut self, v: Vec<cqueue::Entry>) {
        self.reaped = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = token(Op::Send, 123_456, 0x12_3456);
        assert_eq!(untoken(t), Some((Op::Send, 123_456, 0x12_3456)));
        let t = token(Op::Cancel, u32::MAX, 0xFFFF_FFFF);
        assert_eq!(untoken(t), Some((Op::Cancel, u32::MAX, 0xFF_FFFF)));
        assert_eq!(untoken(0), None);
    }
}
