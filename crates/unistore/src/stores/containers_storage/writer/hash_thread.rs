//! SHA-256 of a byte stream, computed on a thread of its own.
//!
//! The native store writer has to hash every byte of a layer (the diff-id
//! check) while it also reads, checksums (CRC-64) and reflinks each file: on
//! the sample image hashing was a quarter of its CPU time. Handing the bytes
//! to a second thread overlaps the two; the copy into the hand-off buffers
//! costs far less than the hash.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Size of one hand-off buffer.
const CHUNK: usize = 1 << 20;
/// Buffers in flight (bounds memory to `BUFFERS * CHUNK`).
const BUFFERS: usize = 4;

/// A SHA-256 hasher whose work happens on a background thread.
pub struct Sha256Thread {
    cur: Vec<u8>,
    to_hasher: Option<SyncSender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<Sha256>>,
}

impl Sha256Thread {
    /// Starts the hashing thread.
    pub fn new() -> Self {
        let (to_hasher, work) = sync_channel::<Vec<u8>>(BUFFERS);
        let (give_back, free) = sync_channel::<Vec<u8>>(BUFFERS + 1);
        for _ in 0..BUFFERS {
            give_back
                .send(Vec::with_capacity(CHUNK))
                .expect("the channel has room");
        }
        let handle = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for mut buf in work {
                    h.update(&buf);
                    buf.clear();
                    // The writer may be gone (finalize); then drop the buffer.
                    let _ = give_back.send(buf);
                }
                h
            })
            .expect("spawning the hashing thread");
        let cur = free.recv().expect("a free buffer");
        Self {
            cur,
            to_hasher: Some(to_hasher),
            free,
            handle: Some(handle),
        }
    }

    /// Adds bytes to the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = CHUNK - self.cur.len();
            let n = room.min(data.len());
            self.cur.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.cur.len() == CHUNK {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let next = self
            .free
            .recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.cur, next);
        if let Some(tx) = &self.to_hasher {
            // Only fails if the thread died, which `finalize` reports.
            let _ = tx.send(full);
        }
    }

    /// The digest of everything passed to [`update`](Self::update).
    pub fn finalize(mut self) -> [u8; 32] {
        if !self.cur.is_empty() {
            self.flush();
        }
        drop(self.to_hasher.take());
        let h = self
            .handle
            .take()
            .expect("finalize runs once")
            .join()
            .expect("the hashing thread panicked");
        h.finalize().into()
    }
}

impl Default for Sha256Thread {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sha256Thread {
    fn drop(&mut self) {
        drop(self.to_hasher.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_as_sha2_for_any_split() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12345) as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let want: [u8; 32] = Sha256::digest(&data).into();
        for step in [1usize, 7, 4096, CHUNK - 1, CHUNK, CHUNK + 1, data.len()] {
            let mut h = Sha256Thread::new();
            for c in data.chunks(step) {
                h.update(c);
            }
            assert_eq!(h.finalize(), want, "chunks of {step}");
        }
        assert_eq!(
            Sha256Thread::new().finalize(),
            <[u8; 32]>::from(Sha256::digest(b""))
        );
        // Dropped without finalize: the thread ends.
        let mut h = Sha256Thread::new();
        h.update(&data);
        drop(h);
    }
}
