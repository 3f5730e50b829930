//! Deterministic pseudo-random content.
//!
//! Large fixture files (kernels, payload blobs) must be incompressible, reproducible and
//! different from one another; a SplitMix64 stream seeded from a string gives that cheaply
//! without keeping whole files in memory.

use sha2::{Digest, Sha256};
use std::io::Read;

/// A finite reader producing `len` deterministic pseudo-random bytes derived from a seed.
#[derive(Debug, Clone)]
pub struct PseudoRandom {
    state: u64,
    remaining: u64,
    buf: [u8; 8],
    buf_pos: usize,
}

impl PseudoRandom {
    /// A stream of `len` bytes; the same `seed` always yields the same bytes.
    pub fn new(seed: &str, len: u64) -> Self {
        let digest = Sha256::digest(seed.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self {
            state: u64::from_le_bytes(first),
            remaining: len,
            buf: [0; 8],
            buf_pos: 8,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Read for PseudoRandom {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        for b in out[..want].iter_mut() {
            if self.buf_pos == 8 {
                self.buf = self.next_u64().to_le_bytes();
                self.buf_pos = 0;
            }
            *b = self.buf[self.buf_pos];
            self.buf_pos += 1;
        }
        self.remaining -= want as u64;
        Ok(want)
    }
}

/// Convenience: the whole pseudo-random stream for `seed` as a vector.
pub fn pseudo_random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    PseudoRandom::new(seed, len as u64)
        .read_to_end(&mut v)
        .expect("reading from memory cannot fail");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = pseudo_random_bytes("a", 1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, pseudo_random_bytes("a", 1000));
        assert_ne!(a, pseudo_random_bytes("b", 1000));
        // A prefix of a longer stream is the shorter stream.
        assert_eq!(&pseudo_random_bytes("a", 2000)[..1000], &a[..]);
    }

    #[test]
    fn odd_sized_reads() {
        let mut r = PseudoRandom::new("x", 13);
        let mut out = Vec::new();
        let mut chunk = [0u8; 3];
        loop {
            let n = r.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out, pseudo_random_bytes("x", 13));
    }

    #[test]
    fn looks_incompressible() {
        let data = pseudo_random_bytes("entropy", 64 * 1024);
        let mut counts = [0usize; 256];
        for b in &data {
            counts[*b as usize] += 1;
        }
        // Every byte value shows up, none dominates.
        assert!(counts.iter().all(|&c| c > 100 && c < 450), "{counts:?}");
    }
}
