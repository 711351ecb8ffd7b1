//! Connection slots addressed by index + generation, so a completion that arrives after
//! its connection is gone (and the slot reused) is recognised as stale.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    pub idx: u32,
    pub gen: u32,
}

struct Slot<T> {
    gen: u32,
    val: Option<T>,
}

pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, val: T) -> ConnId {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let s = &mut self.slots[idx as usize];
            // Generations are 24 bits in a token.
            s.gen = (s.gen + 1) & 0xFF_FFFF;
            s.val = Some(val);
            ConnId { idx, gen: s.gen }
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                gen: 0,
                val: Some(val),
            });
            ConnId { idx, gen: 0 }
        }
    }

    pub fn get(&self, id: ConnId) -> Option<&T> {
        let s = self.slots.get(id.idx as usize)?;
        (s.gen == id.gen).then_some(())?;
        s.val.as_ref()
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        let s = self.slots.get_mut(id.idx as usize)?;
        (s.gen == id.gen).then_some(())?;
        s.val.as_mut()
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let s = self.slots.get_mut(id.idx as usize)?;
        if s.gen != id.gen {
            return None;
        }
        let v = s.val.take()?;
        self.free.push(id.idx);
        self.len -= 1;
        Some(v)
    }

    /// Ids of every live slot (for sweeps and shutdown).
    pub fn ids(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.val.is_some())
            .map(|(i, s)| ConnId {
                idx: i as u32,
                gen: s.gen,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_miss_after_reuse() {
        let mut s = Slab::new();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_eq!(a.idx, b.idx);
        assert_ne!(a.gen, b.gen);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&2));
        assert_eq!(s.len(), 1);
        assert_eq!(s.ids(), vec![b]);
    }
}
