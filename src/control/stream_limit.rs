//! Relays running per requester account (bare JID), as ejabberd's `max_connections`: a slot
//! is taken at activation and given back when its guard drops, which the data plane does
//! when the relay ends (or at once when activation is refused).

use jid::BareJid;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct StreamsPerJid {
    /// 0 = no limit. SIGHUP may change it; running relays keep their slots.
    max: AtomicU32,
    running: Mutex<HashMap<BareJid, u32>>,
}

/// One running relay of `jid`; dropping it frees the slot.
pub struct StreamSlot {
    owner: Arc<StreamsPerJid>,
    jid: BareJid,
}

impl StreamsPerJid {
    pub fn new(max: u32) -> Arc<StreamsPerJid> {
        Arc::new(StreamsPerJid {
            max: AtomicU32::new(max),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more relay of `jid`, or `None` when it has its maximum running.
    pub fn try_acquire(self: &Arc<Self>, jid: &BareJid) -> Option<StreamSlot> {
        let mut m = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(jid.clone()).or_insert(0);
        let max = self.max.load(Relaxed);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            owner: self.clone(),
            jid: jid.clone(),
        })
    }

    /// A new maximum (reload): applies to the next activation; running relays go on even
    /// if an account now has more than the new maximum.
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Relaxed);
    }

    /// Relays of `jid` counted as running.
    pub fn running(&self, jid: &BareJid) -> u32 {
        let m = self.running.lock().unwrap_or_else(|e| e.into_inner());
        m.get(jid).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.owner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.jid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.jid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_account_and_freed_on_drop() {
        let l = StreamsPerJid::new(2);
        let romeo: BareJid = "romeo@example.org".parse().unwrap();
        let juliet: BareJid = "juliet@example.org".parse().unwrap();
        let a = l.try_acquire(&romeo).unwrap();
        let _b = l.try_acquire(&romeo).unwrap();
        assert!(l.try_acquire(&romeo).is_none());
        assert!(
            l.try_acquire(&juliet).is_some(),
            "another account is not affected"
        );
        drop(a);
        assert_eq!(l.running(&romeo), 1);
        assert!(l.try_acquire(&romeo).is_some());
    }

    #[test]
    fn a_new_maximum_applies_to_the_next_activation() {
        let l = StreamsPerJid::new(1);
        let romeo: BareJid = "romeo@example.org".parse().unwrap();
        let _a = l.try_acquire(&romeo).unwrap();
        assert!(l.try_acquire(&romeo).is_none());
        l.set_max(3);
        let _b = l.try_acquire(&romeo).unwrap();
        l.set_max(1);
        assert!(l.try_acquire(&romeo).is_none());
        assert_eq!(l.running(&romeo), 2, "running relays keep their slots");
    }

    #[test]
    fn zero_means_unlimited() {
        let l = StreamsPerJid::new(0);
        let romeo: BareJid = "romeo@example.org".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| l.try_acquire(&romeo).unwrap()).collect();
        assert_eq!(l.running(&romeo), 100);
        drop(slots);
        assert_eq!(l.running(&romeo), 0);
    }
}
