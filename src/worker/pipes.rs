//! The splice engines' per-core pipe pool. A direction borrows a pipe only while bytes sit
//! in it and returns it once drained (as HAProxy does), so idle relays own no pipe and a
//! worker never holds more than `max` pipes (two descriptors each).
//!
//! Every pipe is made when the worker starts, so a running relay never needs a new
//! descriptor (at the process's descriptor limit a relay that already ran keeps running).
//! A pipe is made at the kernel's default size and grown with F_SETPIPE_SZ on its first
//! loan, which costs the user's pipe-page budget only for pipes in use.

use std::io;
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pipe {
    pub rd: RawFd,
    pub wr: RawFd,
    /// F_SETPIPE_SZ has been tried on it.
    sized: bool,
}

pub(crate) struct PipePool {
    free: Vec<Pipe>,
    /// Pipes in existence (free or lent).
    created: usize,
    size: usize,
}

impl PipePool {
    /// Makes all `max` pipes now (none for `max == 0`).
    pub fn new(max: usize, size: usize) -> io::Result<PipePool> {
        let mut pool = PipePool {
            free: Vec::with_capacity(max),
            created: 0,
            size,
        };
        for _ in 0..max {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: pipe2 writes two descriptors into the array we pass.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
            pool.free.push(Pipe {
                rd: fds[0],
                wr: fds[1],
                sized: false,
            });
            pool.created += 1;
        }
        Ok(pool)
    }

    /// Capacity of each pipe as set with F_SETPIPE_SZ (the kernel may round it up).
    pub fn pipe_size(&self) -> usize {
        self.size
    }

    /// Pipes lent out now.
    pub fn lent(&self) -> usize {
        self.created - self.free.len()
    }

    /// A free pipe; `None` means wait for a return.
    pub fn borrow(&mut self) -> Option<Pipe> {
        let mut p = self.free.pop()?;
        if !p.sized {
            p.sized = true;
            // SAFETY: fcntl on a descriptor the pool owns. Failure (e.g. pipe-max-size or
            // the per-user pipe budget) leaves the default size, which still works, slower.
            let got = unsafe { libc::fcntl(p.wr, libc::F_SETPIPE_SZ, self.size as libc::c_int) };
            if got > 0 {
                self.size = self.size.min(got as usize).max(4096);
            }
        }
        Some(p)
    }

    /// Returns an empty pipe to the pool.
    pub fn give_back(&mut self, p: Pipe) {
        self.free.push(p);
    }

    /// Takes back a pipe that may still hold bytes (its relay was torn down, nothing is in
    /// flight on it): the bytes are read out and dropped, so the pipe can be lent again
    /// (no descriptor is closed and remade). Bounded by the pipe's capacity.
    pub fn discard(&mut self, p: Pipe) {
        let mut scratch = [0u8; 16 << 10];
        // Bounded: a pipe holds at most 64 MiB (pipe_size's limit), and nothing writes to it.
        for _ in 0..(64 << 20) / scratch.len() + 1 {
            // SAFETY: read into a stack buffer of the given length from a non-blocking pipe
            // the pool owns.
            let n = unsafe { libc::read(p.rd, scratch.as_mut_ptr().cast(), scratch.len()) };
            if n <= 0 {
                break;
            }
        }
        self.free.push(p);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pipe_exists_up_front_and_a_discarded_one_comes_back_empty() {
        let mut pool = PipePool::new(2, 64 << 10).unwrap();
        assert_eq!(pool.lent(), 0);
        let a = pool.borrow().unwrap();
        let b = pool.borrow().unwrap();
        assert!(pool.borrow().is_none(), "bounded");
        assert_eq!(pool.lent(), 2);
        // SAFETY: a write of a small stack buffer into a pipe the test holds.
        let n = unsafe { libc::write(a.wr, [7u8; 1000].as_ptr().cast(), 1000) };
        assert_eq!(n, 1000);
        pool.discard(a);
        pool.give_back(b);
        assert_eq!(pool.lent(), 0);
        let again = pool.borrow().unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: a read into a stack buffer from a non-blocking pipe the test holds.
        let n = unsafe { libc::read(again.rd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n < 0, "emptied: read {n}");
        pool.give_back(again);
    }
}
