//! The copy engine's per-core provided-buffer ring: a pool of large buffers that the kernel
//! picks from when data arrives, so idle connections hold no buffer at all.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

pub(crate) const BGID: u16 = 1;

/// Anonymous private mapping; pages cost memory only once touched.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(crate) struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    buf_size: usize,
    tail: u16,
    /// Buffers currently handed to us by the kernel (not in the ring).
    pub lent: usize,
}

impl BufRing {
    /// Registers `count` (a power of two) buffers of `buf_size` bytes with the ring.
    pub fn new(ring: &IoUring, count: usize, buf_size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && count <= 32768);
        let entries = Mapping::new(count * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(count * buf_size)?;
        // SAFETY: the entries mapping is page aligned, sized for `count` entries and lives
        // as long as this BufRing, which the worker drops only after the ring.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.ptr as u64,
                count as u16,
                BGID,
                0,
            )?;
        }
        let mut br = BufRing {
            entries,
            buffers,
            count: count as u16,
            buf_size,
            tail: 0,
            lent: count,
        };
        for bid in 0..count as u16 {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Address of buffer `bid` at byte `off`.
    pub fn addr(&self, bid: u16, off: usize) -> *const u8 {
        debug_assert!(bid < self.count && off <= self.buf_size);
        // SAFETY: bid < count and off <= buf_size keep the pointer inside the mapping.
        unsafe { self.buffers.ptr.add(bid as usize * self.buf_size + off) }
    }

    /// Bytes `off..off + len` of buffer `bid`, which the kernel filled and we hold.
    pub fn slice(&self, bid: u16, off: usize, len: usize) -> &[u8] {
        assert!(bid < self.count && off + len <= self.buf_size);
        // SAFETY: in bounds of the mapping (checked above); the buffer is lent to us (the
        // kernel wrote it before its recv completed and does not touch it until it is
        // given back).
        unsafe { std::slice::from_raw_parts(self.addr(bid, off), len) }
    }

    fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        let base = self.entries.ptr as *mut BufRingEntry;
        // SAFETY: the index is masked into the ring; the kernel only reads entries between
        // its head and our published tail, and this slot is past the tail.
        let e = unsafe { &mut *base.add((self.tail & mask) as usize) };
        e.set_addr(self.addr(bid, 0) as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.lent -= 1;
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, as the kernel
        // ABI defines; the release store orders our entry writes before it.
        unsafe {
            let tail =
                BufRingEntry::tail(self.entries.ptr as *const BufRingEntry) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The kernel picked `bid` for a recv.
    pub fn taken(&mut self) {
        self.lent += 1;
    }

    /// Gives a drained buffer back to the kernel.
    pub fn give_back(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }
}
