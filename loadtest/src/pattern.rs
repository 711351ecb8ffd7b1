//! The deterministic byte pattern every sender writes and every receiver checks.
//!
//! Byte `i` of a stream with seed `s` is byte `i % 8` (little endian) of the 64-bit word
//! `mix(s, i / 8)`. Every word depends on its position, so a dropped, duplicated, reordered
//! or altered byte shows up at its exact offset. Filling and checking are one multiply and
//! one xor per 8 bytes, which the compiler vectorises: several GB/s per core, so the
//! checker is not the bottleneck of a ~20 Gbit/s relay.

/// The pattern word at word index `w` for `seed`.
#[inline(always)]
pub fn word(seed: u64, w: u64) -> u64 {
    // An odd multiplier makes the map injective in `w`; the rotation spreads high bits
    // into the low bytes so that neighbouring words differ in every byte.
    let x = (w ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// The pattern byte at stream offset `off`.
#[inline]
pub fn byte(seed: u64, off: u64) -> u8 {
    word(seed, off / 8).to_le_bytes()[(off % 8) as usize]
}

/// Fills `buf` with the pattern bytes that start at stream offset `off`.
pub fn fill(seed: u64, off: u64, buf: &mut [u8]) {
    let head = ((8 - off % 8) % 8).min(buf.len() as u64) as usize;
    for (i, b) in buf[..head].iter_mut().enumerate() {
        *b = byte(seed, off + i as u64);
    }
    let aligned = off + head as u64;
    let total = buf.len();
    let body = &mut buf[head..];
    let mut chunks = body.chunks_exact_mut(8);
    let w0 = aligned / 8;
    for (i, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&word(seed, w0 + i as u64).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let tail_off = off + (total - tail.len()) as u64;
    for (i, b) in tail.iter_mut().enumerate() {
        *b = byte(seed, tail_off + i as u64);
    }
}

/// Checks that `buf` holds the pattern bytes from stream offset `off`. On a mismatch
/// returns the stream offset of the first wrong byte, the expected and the received byte.
pub fn check(seed: u64, off: u64, buf: &[u8]) -> Result<(), Mismatch> {
    let head = ((8 - off % 8) % 8).min(buf.len() as u64) as usize;
    let aligned = off + head as u64;
    let body = &buf[head..];
    let chunks = body.chunks_exact(8);
    let tail_len = chunks.remainder().len();
    let w0 = aligned / 8;
    // Fast path: or together the differences (vectorisable); find the spot only when
    // something differs.
    let mut diff = 0u64;
    for (i, c) in chunks.enumerate() {
        let got = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        diff |= got ^ word(seed, w0 + i as u64);
    }
    let mut bad = diff != 0;
    if !bad {
        let tail_off = off + (buf.len() - tail_len) as u64;
        bad = buf[..head]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != byte(seed, off + i as u64))
            || buf[buf.len() - tail_len..]
                .iter()
                .enumerate()
                .any(|(i, &b)| b != byte(seed, tail_off + i as u64));
    }
    if !bad {
        return Ok(());
    }
    for (i, &got) in buf.iter().enumerate() {
        let expected = byte(seed, off + i as u64);
        if got != expected {
            return Err(Mismatch {
                offset: off + i as u64,
                expected,
                got,
            });
        }
    }
    unreachable!("a difference was seen in the fast path")
}

/// The first byte that differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
}

/// Seed of one direction of one pair: distinct per pair and direction so that crossed
/// streams are caught too.
pub fn seed_for(run_seed: u64, pair: u64, reverse: bool) -> u64 {
    word(run_seed, pair.wrapping_mul(2) + reverse as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_at_any_alignment() {
        for off in 0..20u64 {
            for len in [0usize, 1, 7, 8, 9, 63, 100] {
                let mut b = vec![0u8; len];
                fill(42, off, &mut b);
                check(42, off, &b).unwrap();
                for (i, &x) in b.iter().enumerate() {
                    assert_eq!(x, byte(42, off + i as u64));
                }
            }
        }
    }

    #[test]
    fn split_reads_agree_with_one_read() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        for cut in [1usize, 3, 8, 13, 999] {
            check(7, 0, &whole[..cut]).unwrap();
            check(7, cut as u64, &whole[cut..]).unwrap();
        }
    }

    #[test]
    fn corruption_is_found_at_its_offset() {
        let mut b = vec![0u8; 4096];
        fill(1, 100, &mut b);
        for pos in [0usize, 3, 8, 2048, 4095] {
            let mut c = b.clone();
            c[pos] ^= 0x10;
            let m = check(1, 100, &c).unwrap_err();
            assert_eq!(m.offset, 100 + pos as u64);
            assert_eq!(m.got, m.expected ^ 0x10);
        }
    }

    #[test]
    fn dropped_byte_and_swapped_words_are_found() {
        let mut b = vec![0u8; 256];
        fill(9, 0, &mut b);
        let mut dropped = b.clone();
        dropped.remove(50);
        assert_eq!(check(9, 0, &dropped).unwrap_err().offset, 50);
        let mut swapped = b.clone();
        swapped.copy_within(64..72, 0);
        swapped[64..72].copy_from_slice(&b[0..8]);
        assert_eq!(check(9, 0, &swapped).unwrap_err().offset, 0);
    }

    #[test]
    fn seeds_differ_per_pair_and_direction() {
        let a = seed_for(1, 0, false);
        assert_ne!(a, seed_for(1, 0, true));
        assert_ne!(a, seed_for(1, 1, false));
        let mut x = [0u8; 64];
        fill(a, 0, &mut x);
        assert!(check(seed_for(1, 1, false), 0, &x).is_err());
    }
}
