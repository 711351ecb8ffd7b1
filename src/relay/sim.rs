//! A simulated kernel for the relay's unit tests: a source socket bytes arrive in (some
//! before the relay starts), a destination whose send buffer a receiver drains at its own
//! pace, a shared spill budget, a shaper with few tokens, and a seeded generator that
//! picks which of the possible events happens next.

use super::Count;
use crate::shaping::Grant;
use std::time::{Duration, Instant};

/// `Env` for a test's context type `$ctx`, whose fields `d` (a direction with `dst: Dest`,
/// `shaper: Shaper` and `counts: Counts`), `budget: Budget` and `now` are the world every
/// engine sees alike; each test adds its engine's own pool or ring.
macro_rules! sim_env {
    ($ctx:ident) => {
        impl $crate::relay::Env for $ctx<'_> {
            fn send_space(&mut self) -> usize {
                self.d.dst.send_space()
            }
            fn grant(&mut self, want: usize) -> $crate::shaping::Grant {
                self.d.shaper.grant(self.now, want)
            }
            fn paid(&mut self, n: usize) {
                self.d.shaper.paid(n)
            }
            fn send(&mut self, bytes: &[u8]) -> Result<usize, i32> {
                self.d.dst.write(bytes)
            }
            fn reserve_spill(&mut self, n: usize) -> bool {
                self.budget.reserve(n)
            }
            fn release_spill(&mut self, n: usize) {
                self.budget.release(n)
            }
            fn count(&mut self, what: $crate::relay::Count) {
                self.d.counts.add(what)
            }
        }
    };
}

/// SplitMix64: small, seeded, good enough to pick event orders.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// 1..=n.
    pub fn upto(&mut self, n: usize) -> usize {
        1 + self.below(n)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

/// The bytes of one direction: what the sender writes, and how much of it has arrived in
/// the source socket and been read from it.
pub(super) struct Source {
    pub data: Vec<u8>,
    pub arrived: usize,
    pub read: usize,
    /// The sender has shut down its write side (after all of `data`).
    pub eof: bool,
    /// The next read fails with this errno (a reset).
    pub error: Option<i32>,
}

impl Source {
    pub fn new(rng: &mut Rng, max_len: usize) -> Source {
        let len = rng.below(max_len + 1);
        let data = (0..len).map(|_| rng.next() as u8).collect();
        Source {
            data,
            arrived: 0,
            read: 0,
            eof: false,
            error: None,
        }
    }

    /// More of the sender's bytes arrive (or, all there, its FIN).
    pub fn arrive(&mut self, rng: &mut Rng) {
        if self.arrived < self.data.len() {
            self.arrived += rng.upto(self.data.len() - self.arrived);
        } else {
            self.eof = true;
        }
    }

    pub fn readable(&self) -> bool {
        self.arrived > self.read || self.eof || self.error.is_some()
    }

    /// A non-blocking read of up to `len` bytes: moved bytes, 0 at EOF, or errno.
    pub fn read(&mut self, len: usize) -> Result<&[u8], i32> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let n = len.min(self.arrived - self.read);
        if n == 0 && !self.eof {
            return Err(libc::EAGAIN);
        }
        let from = self.read;
        self.read += n;
        Ok(&self.data[from..from + n])
    }
}

/// The destination socket: its send buffer and what its receiver has read.
pub(super) struct Dest {
    /// Everything the relay wrote, in order (queued or read by the receiver).
    pub got: Vec<u8>,
    /// Bytes in the send buffer, not yet read by the receiver.
    pub queued: usize,
    pub capacity: usize,
    /// How far `send_space` overestimates (it is "a little high").
    pub slop: usize,
    /// The next write fails with this errno (the receiver reset).
    pub error: Option<i32>,
    pub shut: bool,
}

impl Dest {
    pub fn new(rng: &mut Rng) -> Dest {
        Dest {
            got: Vec::new(),
            queued: 0,
            capacity: rng.upto(200),
            slop: rng.below(3) * rng.below(16),
            error: None,
            shut: false,
        }
    }

    pub fn space(&self) -> usize {
        self.capacity - self.queued
    }

    pub fn send_space(&self) -> usize {
        self.space() + self.slop
    }

    /// A non-blocking write; `Ok(0)` never happens (EAGAIN instead).
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, i32> {
        assert!(!self.shut, "a write after the half-close");
        if let Some(e) = self.error {
            return Err(e);
        }
        let n = bytes.len().min(self.space());
        if n == 0 && !bytes.is_empty() {
            return Err(libc::EAGAIN);
        }
        self.got.extend_from_slice(&bytes[..n]);
        self.queued += n;
        Ok(n)
    }

    /// The receiver reads some of what is queued.
    pub fn drain(&mut self, rng: &mut Rng) {
        if self.queued > 0 {
            self.queued -= rng.upto(self.queued);
        }
    }
}

/// The worker's spill budget.
pub(super) struct Budget {
    pub limit: usize,
    pub used: usize,
}

impl Budget {
    pub fn new(rng: &mut Rng) -> Budget {
        let limit = [0, 1, 64, 300, usize::MAX / 2][rng.below(5)];
        Budget { limit, used: 0 }
    }

    pub fn reserve(&mut self, n: usize) -> bool {
        if self.used + n > self.limit {
            return false;
        }
        self.used += n;
        true
    }

    pub fn release(&mut self, n: usize) {
        assert!(n <= self.used, "budget released twice");
        self.used -= n;
    }
}

/// The stream's shaper: a few tokens at a time, more every millisecond; maybe a quota.
pub(super) struct Shaper {
    pub on: bool,
    pub tokens: usize,
    pub refill: usize,
    pub next_refill: Instant,
    /// Bytes the stream may move in all (when `Some`).
    pub quota: Option<usize>,
    pub used: usize,
    /// The last grant, which `paid` must not exceed.
    pub granted: usize,
}

impl Shaper {
    pub fn new(rng: &mut Rng, now: Instant) -> Shaper {
        Shaper {
            on: rng.percent(40),
            tokens: rng.below(50),
            refill: rng.upto(80),
            next_refill: now,
            quota: rng.percent(20).then(|| rng.below(1500)),
            used: 0,
            granted: 0,
        }
    }

    pub fn grant(&mut self, now: Instant, want: usize) -> Grant {
        assert!(want > 0, "asked for nothing");
        if !self.on {
            self.granted = want;
            return Grant::Go(want);
        }
        if self.quota.is_some_and(|q| self.used >= q) {
            self.granted = 0;
            return Grant::QuotaUsed;
        }
        while now >= self.next_refill {
            self.tokens += self.refill;
            self.next_refill += Duration::from_millis(1);
        }
        if self.tokens == 0 {
            self.granted = 0;
            return Grant::Wait(self.next_refill);
        }
        self.granted = want.min(self.tokens);
        Grant::Go(self.granted)
    }

    pub fn paid(&mut self, n: usize) {
        assert!(
            n <= self.granted,
            "read {n} bytes under a grant of {}",
            self.granted
        );
        self.granted -= n;
        self.used += n;
        if self.on {
            self.tokens -= n;
        }
    }

    /// Was any read allowed when the quota ran out? (What the quota passed is delivered.)
    pub fn cut(&self) -> bool {
        self.quota.is_some_and(|q| self.used >= q)
    }
}

/// What a direction counted.
#[derive(Default, Debug)]
pub(super) struct Counts {
    pub delivered: usize,
    pub stalls: usize,
    pub fallbacks: usize,
    pub fallback_full: usize,
}

impl Counts {
    pub fn add(&mut self, c: Count) {
        match c {
            Count::Delivered(n) => self.delivered += n,
            Count::Stall => self.stalls += 1,
            Count::Fallback => self.fallbacks += 1,
            Count::FallbackFull => self.fallback_full += 1,
        }
    }
}
