//! A stalled direction's own buffer: what its destination refused, moved out of a pooled
//! pipe or buffer so that the pool's goes back at once. Its bytes count against the
//! worker's spill budget (`Env::reserve_spill`) until they are sent.

use super::{Count, Env, Flow};
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Spill {
    buf: Vec<u8>,
    /// `buf[sent..]` is still to send, before anything else of the direction.
    sent: usize,
}

impl Spill {
    /// Bytes still to send.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Room for `n` more bytes behind what is still to send (what was sent is dropped).
    /// The caller has reserved them in the budget.
    pub fn make_room(&mut self, n: usize) -> &mut Vec<u8> {
        self.buf.drain(..self.sent);
        self.sent = 0;
        self.buf.reserve_exact(n);
        &mut self.buf
    }

    /// Sends what is pending without blocking. `Ok(true)` once all of it is out (its
    /// memory and budget are freed), `Ok(false)` when the destination is full again.
    /// What it sends counts as delivered in `flow`.
    pub fn flush(
        &mut self,
        flow: &mut Flow,
        now: Instant,
        env: &mut impl Env,
    ) -> Result<bool, i32> {
        let mut sent_now = 0;
        let mut res = Ok(true);
        while self.sent < self.buf.len() {
            match env.send(&self.buf[self.sent..]) {
                Ok(0) | Err(libc::EAGAIN) => {
                    res = Ok(false);
                    break;
                }
                Ok(n) => {
                    self.sent += n;
                    sent_now += n;
                }
                Err(libc::EINTR) => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if sent_now > 0 {
            env.release_spill(sent_now);
            env.count(Count::Delivered(sent_now));
            flow.bytes += sent_now as u64;
            flow.last_active = now;
        }
        if self.sent == self.buf.len() && !self.buf.is_empty() {
            *self = Spill::default();
        }
        res
    }

    /// Drops what is left (the relay ended); returns how many bytes of budget it held.
    pub fn discard(&mut self) -> usize {
        let n = self.pending();
        *self = Spill::default();
        n
    }
}
