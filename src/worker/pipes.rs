//! The splice engine's per-core pipe pool. A direction borrows a pipe only while bytes sit
//! in it and returns it once drained (as HAProxy does), so idle relays own no pipe and a
//! worker never holds more than `max` pipes (two descriptors each).

use std::io;
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pipe {
    pub rd: RawFd,
    pub wr: RawFd,
}

pub(crate) struct PipePool {
    free: Vec<Pipe>,
    /// Pipes in existence (free or lent).
    created: usize,
    max: usize,
    size: usize,
}

impl PipePool {
    pub fn new(max: usize, size: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            created: 0,
            max,
            size,
        }
    }

    /// Capacity of each pipe as set with F_SETPIPE_SZ (the kernel may round it up).
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    /// A free pipe, creating one if under the limit; `None` means wait for a return.
    pub fn borrow(&mut self) -> io::Result<Option<Pipe>> {
        if let Some(p) = self.free.pop() {
            return Ok(Some(p));
        }
        if self.created >= self.max {
            return Ok(None);
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let p = Pipe {
            rd: fds[0],
            wr: fds[1],
        };
        // SAFETY: fcntl on a descriptor we just created. Failure (e.g. pipe-max-size or the
        // per-user pipe budget) leaves the default size, which still works, just slower.
        let got = unsafe { libc::fcntl(p.wr, libc::F_SETPIPE_SZ, self.size as libc::c_int) };
        if got > 0 {
            self.size = self.size.min(got as usize).max(4096);
        }
        self.created += 1;
        Ok(Some(p))
    }

    /// Returns an empty pipe to the pool.
    pub fn give_back(&mut self, p: Pipe) {
        self.free.push(p);
    }

    /// Destroys a pipe that may still hold bytes (its relay was torn down).
    pub fn discard(&mut self, p: Pipe) {
        close(p.rd);
        close(p.wr);
        self.created -= 1;
    }
}

impl Drop for PipePool {
    fn drop(&mut self) {
        for p in self.free.drain(..) {
            close(p.rd);
            close(p.wr);
        }
    }
}

fn close(fd: RawFd) {
    // SAFETY: the pool owns the descriptor and closes it exactly once.
    unsafe { libc::close(fd) };
}
