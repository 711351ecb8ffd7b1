//! Sans-IO rendezvous table of one worker core: key -> the halves that presented it.
//!
//! Generic over the connection handle `C` (the worker uses its slab index + generation),
//! driven by explicit `now` instants so tests need no clock and no sockets.

use crate::key::StreamKey;
use crate::stats::Refusal;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What the control plane learns from an activation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationOutcome {
    /// Both halves were present; the relay starts now.
    Activated,
    /// No connection presented this key (or it expired): XMPP item-not-found.
    UnknownKey,
    /// Only one half is connected: XMPP not-allowed.
    OnlyOneHalf,
    /// The key is already relaying: XMPP not-allowed.
    AlreadyActive,
    /// The data plane is shutting down: XMPP service-unavailable / resource-constraint.
    ShuttingDown,
    /// The requester's account or domain used its daily byte quota: XMPP
    /// resource-constraint.
    QuotaUsed,
}

/// What `activate` hands the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation<C> {
    Start { first: C, second: C },
    Refused(ActivationOutcome),
}

/// What happened to a connection that finished its handshake with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert<C> {
    /// First half: waits for its peer.
    Waiting,
    /// Second half: the pair is complete and waits for activation.
    Paired { first: C },
    /// Refused: third connection or already active.
    Refused(Refusal),
}

#[derive(Debug)]
enum Slot<C> {
    Waiting { first: C },
    Paired { first: C, second: C },
    Active,
}

#[derive(Debug)]
struct Entry<C> {
    slot: Slot<C>,
    /// Bumped whenever the deadline moves, so stale queue items are skipped.
    epoch: u64,
}

/// Stale deadline entries tolerated before the queue is compacted (see `arm`).
const COMPACT_SLACK: usize = 1024;

pub struct Rendezvous<C> {
    entries: HashMap<StreamKey, Entry<C>>,
    /// Deadlines in arrival order; every deadline is now + the same timeout, so the queue
    /// is sorted and expiry is O(expired).
    deadlines: VecDeque<(Instant, StreamKey, u64)>,
    timeout: Duration,
    next_epoch: u64,
}

impl<C: Copy + Eq + std::fmt::Debug> Rendezvous<C> {
    pub fn new(timeout: Duration) -> Self {
        Rendezvous {
            entries: HashMap::new(),
            deadlines: VecDeque::new(),
            timeout,
            next_epoch: 0,
        }
    }

    /// Keys present in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Deadline entries queued, live or stale (a gauge: bounded by `compact`).
    pub fn queued(&self) -> usize {
        self.deadlines.len()
    }

    fn arm(&mut self, key: StreamKey, now: Instant) -> u64 {
        self.next_epoch += 1;
        // Keys that left before their deadline leave a stale entry until it is reached:
        // at a high connection rate those would outnumber the live ones by far. Dropping
        // them when they do keeps the queue within twice the table (plus slack), and the
        // work amortised: each compaction at least halves the queue.
        if self.deadlines.len() > 2 * self.entries.len() + COMPACT_SLACK {
            let entries = &self.entries;
            self.deadlines
                .retain(|(_, k, epoch)| entries.get(k).is_some_and(|e| e.epoch == *epoch));
        }
        self.deadlines
            .push_back((now + self.timeout, key, self.next_epoch));
        self.next_epoch
    }

    /// A connection finished its handshake presenting `key`.
    pub fn insert(&mut self, key: StreamKey, conn: C, now: Instant) -> Insert<C> {
        match self.entries.get(&key).map(|e| &e.slot) {
            None => {
                let epoch = self.arm(key, now);
                self.entries.insert(
                    key,
                    Entry {
                        slot: Slot::Waiting { first: conn },
                        epoch,
                    },
                );
                Insert::Waiting
            }
            Some(Slot::Waiting { first }) => {
                let first = *first;
                // The pair gets a full timeout from the moment it is complete.
                let epoch = self.arm(key, now);
                let e = self.entries.get_mut(&key).expect("present");
                e.slot = Slot::Paired {
                    first,
                    second: conn,
                };
                e.epoch = epoch;
                Insert::Paired { first }
            }
            Some(Slot::Paired { .. }) => Insert::Refused(Refusal::ThirdConnection),
            Some(Slot::Active) => Insert::Refused(Refusal::AlreadyActive),
        }
    }

    /// A half left before activation (closed or failed). Returns whether it was known.
    /// The other half of a pair keeps waiting under the pair's deadline.
    pub fn remove(&mut self, key: &StreamKey, conn: C) -> bool {
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        match e.slot {
            Slot::Waiting { first } if first == conn => {
                self.entries.remove(key);
                true
            }
            Slot::Paired { first, second } if first == conn || second == conn => {
                let other = if first == conn { second } else { first };
                e.slot = Slot::Waiting { first: other };
                true
            }
            _ => false,
        }
    }

    /// The control plane asks to start relaying `key`.
    pub fn activate(&mut self, key: &StreamKey) -> Activation<C> {
        let Some(e) = self.entries.get_mut(key) else {
            return Activation::Refused(ActivationOutcome::UnknownKey);
        };
        match e.slot {
            Slot::Waiting { .. } => Activation::Refused(ActivationOutcome::OnlyOneHalf),
            Slot::Active => Activation::Refused(ActivationOutcome::AlreadyActive),
            Slot::Paired { first, second } => {
                e.slot = Slot::Active;
                // No deadline for an active key: the relay has its own idle timeout.
                e.epoch = 0;
                Activation::Start { first, second }
            }
        }
    }

    /// The relay of an active key ended; the key may not be reused while it runs, and is
    /// forgotten after.
    pub fn finish(&mut self, key: &StreamKey) {
        if matches!(self.entries.get(key).map(|e| &e.slot), Some(Slot::Active)) {
            self.entries.remove(key);
        }
    }

    /// The earliest pending deadline, for the driver's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|d| d.0)
    }

    /// Takes the oldest half still waiting for its peer out of the table, to make room
    /// when the proxy is full: the half most likely to be abandoned (a complete pair waits
    /// only for its activation and is kept). Looks at most `scan` live entries past the
    /// oldest, so the cost is bounded whatever the table holds.
    pub fn shed_oldest_waiting(&mut self, scan: usize) -> Option<C> {
        // Stale queue items at the front are garbage anyway: drop them on the way.
        while let Some(&(_, key, epoch)) = self.deadlines.front() {
            if self.entries.get(&key).is_some_and(|e| e.epoch == epoch) {
                break;
            }
            self.deadlines.pop_front();
        }
        let key = self
            .deadlines
            .iter()
            .take(scan)
            .find(|(_, key, epoch)| {
                self.entries
                    .get(key)
                    .is_some_and(|e| e.epoch == *epoch && matches!(e.slot, Slot::Waiting { .. }))
            })
            .map(|&(_, key, _)| key)?;
        // Its queue item goes stale with the entry and is skipped when it comes up.
        match self.entries.remove(&key)?.slot {
            Slot::Waiting { first } => Some(first),
            _ => None,
        }
    }

    /// Removes every entry whose deadline passed and pushes its connections to `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<C>) {
        while let Some(&(at, key, epoch)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let live = self.entries.get(&key).is_some_and(|e| e.epoch == epoch);
            if !live {
                continue;
            }
            match self.entries.remove(&key).map(|e| e.slot) {
                Some(Slot::Waiting { first }) => out.push(first),
                Some(Slot::Paired { first, second }) => {
                    out.push(first);
                    out.push(second);
                }
                Some(Slot::Active) | None => {}
            }
        }
    }
}

#[cfg(test)]
mod shed_tests {
    use super::*;

    fn k(n: u8) -> StreamKey {
        StreamKey::from_parts(&n.to_string(), "a@x/r", "b@x/t")
    }

    #[test]
    fn the_oldest_waiting_half_is_shed_pairs_are_kept() {
        let t = Instant::now();
        let mut r: Rendezvous<u32> = Rendezvous::new(Duration::from_secs(60));
        r.insert(k(1), 10, t);
        r.insert(k(1), 11, t); // a pair: kept
        r.insert(k(2), 20, t);
        r.insert(k(3), 30, t);
        assert_eq!(r.shed_oldest_waiting(8), Some(20));
        assert_eq!(r.shed_oldest_waiting(8), Some(30));
        assert_eq!(r.shed_oldest_waiting(8), None);
        assert!(matches!(r.activate(&k(1)), Activation::Start { .. }));
        // A shed key is forgotten: a new half waits under it again.
        assert!(matches!(r.insert(k(2), 21, t), Insert::Waiting));
        // Its old deadline is stale: only the new one expires it.
        let mut out = Vec::new();
        r.expire(t + Duration::from_secs(61), &mut out);
        assert_eq!(out, vec![21]);
    }

    #[test]
    fn the_scan_is_bounded() {
        let t = Instant::now();
        let mut r: Rendezvous<u32> = Rendezvous::new(Duration::from_secs(60));
        for n in 0..10u8 {
            r.insert(k(n), n as u32, t);
            r.insert(k(n), 100 + n as u32, t);
        }
        r.insert(k(200), 7, t);
        assert_eq!(r.shed_oldest_waiting(5), None, "ten pairs in front of it");
        assert_eq!(r.shed_oldest_waiting(64), Some(7));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> StreamKey {
        StreamKey::from_parts(&n.to_string(), "a@x/r", "b@y/r")
    }

    #[test]
    fn halves_that_leave_early_do_not_grow_the_deadline_queue() {
        let mut t = Rendezvous::new(Duration::from_secs(60));
        let now = Instant::now();
        // 50,000 halves that each leave right after arriving, 10 that stay.
        for n in 0..50_000u32 {
            let k = StreamKey::from_parts(&n.to_string(), "a@x/r", "b@y/r");
            t.insert(k, n, now);
            if n % 5_000 != 0 {
                assert!(t.remove(&k, n));
            }
        }
        assert_eq!(t.len(), 10);
        assert!(t.queued() <= 2 * 10 + COMPACT_SLACK + 1, "{}", t.queued());
        // The ones that stayed still expire on time.
        let mut out = Vec::new();
        t.expire(now + Duration::from_secs(61), &mut out);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn either_order_pairs_then_activates() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(Duration::from_secs(60));
        assert_eq!(
            r.activate(&key(1)),
            Activation::Refused(ActivationOutcome::UnknownKey)
        );
        assert_eq!(r.insert(key(1), 10, t0), Insert::Waiting);
        assert_eq!(
            r.activate(&key(1)),
            Activation::Refused(ActivationOutcome::OnlyOneHalf)
        );
        assert_eq!(r.insert(key(1), 11, t0), Insert::Paired { first: 10 });
        assert_eq!(
            r.activate(&key(1)),
            Activation::Start {
                first: 10,
                second: 11
            }
        );
        assert_eq!(
            r.activate(&key(1)),
            Activation::Refused(ActivationOutcome::AlreadyActive)
        );
        assert_eq!(
            r.insert(key(1), 12, t0),
            Insert::Refused(Refusal::AlreadyActive)
        );
        r.finish(&key(1));
        assert!(r.is_empty());
    }

    #[test]
    fn third_connection_refused() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(Duration::from_secs(60));
        r.insert(key(2), 1, t0);
        r.insert(key(2), 2, t0);
        assert_eq!(
            r.insert(key(2), 3, t0),
            Insert::Refused(Refusal::ThirdConnection)
        );
    }

    #[test]
    fn expiry_of_waiting_and_paired_but_not_active() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut r = Rendezvous::new(Duration::from_secs(60));
        r.insert(key(1), 1, t0);
        r.insert(key(2), 2, t0 + 10 * s);
        r.insert(key(2), 3, t0 + 20 * s);
        r.insert(key(3), 4, t0 + 20 * s);
        r.insert(key(3), 5, t0 + 20 * s);
        assert!(matches!(r.activate(&key(3)), Activation::Start { .. }));
        let mut out = vec![];
        r.expire(t0 + 59 * s, &mut out);
        assert!(out.is_empty());
        r.expire(t0 + 60 * s, &mut out);
        assert_eq!(out, vec![1]);
        out.clear();
        // key 2's deadline moved to 20 s + 60 s when its second half came.
        r.expire(t0 + 75 * s, &mut out);
        assert!(out.is_empty());
        r.expire(t0 + 80 * s, &mut out);
        assert_eq!(out, vec![2, 3]);
        assert_eq!(r.len(), 1, "the active key stays until finish");
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn leaving_half_frees_its_place() {
        let t0 = Instant::now();
        let mut r = Rendezvous::new(Duration::from_secs(60));
        r.insert(key(1), 1, t0);
        r.insert(key(1), 2, t0);
        assert!(r.remove(&key(1), 1));
        assert_eq!(
            r.activate(&key(1)),
            Activation::Refused(ActivationOutcome::OnlyOneHalf)
        );
        assert_eq!(r.insert(key(1), 3, t0), Insert::Paired { first: 2 });
        assert!(!r.remove(&key(1), 99));
        assert!(r.remove(&key(1), 2));
        assert!(r.remove(&key(1), 3));
        assert!(r.is_empty());
    }
}
