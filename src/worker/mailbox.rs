//! Cross-thread messages to a worker: a locked queue plus an eventfd the worker's ring
//! keeps a read on, so a message wakes the ring. Used for hand-offs between cores,
//! activation requests from the control plane, and shutdown; never per byte.

use crate::key::StreamKey;
use crate::rendezvous::ActivationOutcome;
use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

pub(crate) enum Msg {
    /// A connection that finished its handshake on another core and whose key this core
    /// owns. `prefix` holds intermediate replies not yet sent (pipelined handshakes).
    HandOff {
        fd: RawFd,
        src: crate::limits::Source,
        key: StreamKey,
        prefix: ([u8; 4], u8),
    },
    Activate {
        key: StreamKey,
        /// The bare JID that asked, when the activation came over XMPP (for per-account
        /// shaping and quotas).
        requester: Option<Box<str>>,
        /// Kept while the relay runs (see `Handle::activate_for`).
        guard: Option<Box<dyn Send>>,
        done: Box<dyn FnOnce(ActivationOutcome) + Send>,
    },
    /// Stop accepting and close every connection that is not relaying; running relays
    /// go on (graceful drain, e.g. while a new process takes over the ports).
    Drain,
    /// Stop the worker: close listeners and every connection.
    Shutdown,
    /// Upgrade handover: hand the listeners and every connection not relaying to the
    /// sink (`carry.rs`), then relay on until told to drain.
    Export(std::sync::Arc<super::carry::ExportSink>),
    /// Report once more: every message sent before this one has been handled.
    ExportSeal(std::sync::Arc<super::carry::ExportSink>),
    /// A handover that failed after the export: serve these listeners again and take
    /// connections as before.
    Restore(Vec<std::os::fd::OwnedFd>),
    /// A connection handed over by an old process, or taken back (`restored`).
    Adopt {
        fd: std::os::fd::OwnedFd,
        carried: crate::handover::wire::Carried,
        restored: bool,
    },
}

pub(crate) struct Mailbox {
    queue: Mutex<Vec<Msg>>,
    pub efd: RawFd,
}

impl Mailbox {
    pub fn new() -> io::Result<Mailbox> {
        // SAFETY: plain eventfd creation, checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mailbox {
            queue: Mutex::new(Vec::new()),
            efd,
        })
    }

    pub fn send(&self, msg: Msg) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push(msg);
            q.len() == 1
        };
        // Only the first message of a batch needs to wake the ring.
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe { libc::write(self.efd, (&one as *const u64).cast(), 8) };
        }
    }

    /// Takes everything queued.
    pub fn drain(&self, into: &mut Vec<Msg>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        into.append(&mut q);
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // Hand-offs never delivered still own their descriptors.
        for m in self
            .queue
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            match m {
                // SAFETY: an undelivered hand-off owns its descriptor.
                Msg::HandOff { fd, .. } => unsafe {
                    libc::close(fd);
                },
                Msg::Activate { done, .. } => done(ActivationOutcome::ShuttingDown),
                Msg::Drain | Msg::Shutdown | Msg::Adopt { .. } | Msg::Restore(_) => {}
                // Unblocks a handover waiting on this worker.
                Msg::Export(s) | Msg::ExportSeal(s) => s.fail(),
            }
        }
        // SAFETY: the mailbox owns its eventfd.
        unsafe { libc::close(self.efd) };
    }
}
