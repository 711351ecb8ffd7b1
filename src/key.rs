//! The rendezvous key: DST.ADDR of the SOCKS5 request, hex(SHA1(sid + requester + target)).

use sha1::{Digest, Sha1};
use std::fmt;
use std::hash::{BuildHasher, Hash};

/// A 40-character hex stream key, normalised to lowercase so that clients that send
/// uppercase hex still meet their peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey([u8; 40]);

impl StreamKey {
    /// Length of the key on the wire (SOCKS5 ATYP 3 length byte).
    pub const LEN: usize = 40;

    /// Parses 40 ASCII hex digits in either case; anything else is `None`.
    pub fn parse_hex(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let mut out = [0u8; 40];
        for (o, &b) in out.iter_mut().zip(bytes) {
            *o = match b {
                b'0'..=b'9' | b'a'..=b'f' => b,
                b'A'..=b'F' => b.to_ascii_lowercase(),
                _ => return None,
            };
        }
        Some(StreamKey(out))
    }

    /// The XEP-0065 key for a session: hex(SHA1(sid + requester + target)). The JIDs must
    /// already be normalised (the control plane does that).
    pub fn from_parts(sid: &str, requester: &str, target: &str) -> Self {
        let mut h = Sha1::new();
        h.update(sid.as_bytes());
        h.update(requester.as_bytes());
        h.update(target.as_bytes());
        let digest = h.finalize();
        let mut out = [0u8; 40];
        hex::encode_to_slice(digest, &mut out).expect("40 bytes hold a SHA1 in hex");
        StreamKey(out)
    }

    pub fn as_bytes(&self) -> &[u8; 40] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamKey({})", self.as_str())
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Maps a key to the worker core that owns it. Keyed with a per-process random seed so a
/// client cannot choose keys that all land on one core.
#[derive(Clone)]
pub struct KeyRouter {
    seed: std::collections::hash_map::RandomState,
    workers: usize,
}

impl KeyRouter {
    pub fn new(workers: usize) -> Self {
        assert!(workers > 0, "at least one worker");
        KeyRouter {
            seed: Default::default(),
            workers,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn owner(&self, key: &StreamKey) -> usize {
        (self.seed.hash_one(key) % self.workers as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parts_matches_xep0065_example() {
        // XEP-0065 example 23: SID 'vxf9n471bn46', requester romeo@montague.lit/orchard,
        // target juliet@capulet.lit/balcony.
        let k = StreamKey::from_parts(
            "vxf9n471bn46",
            "romeo@montague.lit/orchard",
            "juliet@capulet.lit/balcony",
        );
        let mut h = Sha1::new();
        h.update(b"vxf9n471bn46romeo@montague.lit/orchardjuliet@capulet.lit/balcony");
        assert_eq!(k.as_str(), hex::encode(h.finalize()));
    }

    #[test]
    fn parse_accepts_either_case_and_normalises() {
        let lower = "a".repeat(20) + &"0".repeat(20);
        let upper = lower.to_uppercase();
        let a = StreamKey::parse_hex(lower.as_bytes()).unwrap();
        let b = StreamKey::parse_hex(upper.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.as_str(), lower);
    }

    #[test]
    fn parse_rejects_wrong_length_and_non_hex() {
        assert!(StreamKey::parse_hex(&[b'a'; 39]).is_none());
        assert!(StreamKey::parse_hex(&[b'a'; 41]).is_none());
        let mut bad = [b'a'; 40];
        bad[17] = b'g';
        assert!(StreamKey::parse_hex(&bad).is_none());
    }

    #[test]
    fn router_is_stable_and_in_range() {
        let r = KeyRouter::new(3);
        let k = StreamKey::from_parts("s", "a@b/c", "d@e/f");
        let o = r.owner(&k);
        assert!(o < 3);
        assert_eq!(o, r.owner(&k));
    }
}
