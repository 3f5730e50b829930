//! The tar-split side of a layer build, on a thread of its own.
//!
//! Building a layer does two kinds of work: filesystem calls for each entry
//! (create, reflink, owner, mode, xattrs, times: the writer's thread) and,
//! for the tar-split, every file's bytes read back for their CRC-64 plus
//! the whole stream hashed for the diff-id check (this thread, which hands
//! the hashing to a third, [`super::hash_thread`]). The writer sends the
//! pieces of the tar stream here in order; the two halves overlap.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, ensure};

use crate::stores::containers_storage::format::{self as fmt, TarSplitWriter};

/// Pieces in flight between the two threads.
const QUEUE: usize = 256;

/// A file entry's content, for its CRC-64 and the stream's hash.
pub(super) enum Content {
    /// No content (not a regular file, or empty).
    None,
    /// Bytes kept inline in the splitstream.
    Inline(Vec<u8>),
    /// A repository object of `size` bytes; `what` names it in errors.
    Object { file: File, what: String },
}

/// A piece of the layer's tar stream.
pub(super) enum Piece {
    /// Raw tar bytes (headers, padding) between file contents.
    Segment(Vec<u8>),
    /// An entry: its name and size as the tar gives them, and its content.
    File {
        name: Vec<u8>,
        size: u64,
        content: Content,
    },
}

/// The running tar-split thread.
pub(super) struct SplitThread {
    tx: Option<SyncSender<Piece>>,
    handle: Option<JoinHandle<Result<String>>>,
}

impl SplitThread {
    /// Starts writing the tar-split into `out` (fsynced at the end).
    pub(super) fn spawn(out: BufWriter<File>) -> Result<Self> {
        let (tx, rx) = sync_channel::<Piece>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("tar-split".into())
            .spawn(move || -> Result<String> {
                let mut split = TarSplitWriter::new(out);
                let mut sha = super::hash_thread::Sha256Thread::new();
                let mut buf = vec![0u8; 1 << 20];
                for piece in rx {
                    match piece {
                        Piece::Segment(b) => {
                            sha.update(&b);
                            split.segment(&b)?;
                        }
                        Piece::File {
                            name,
                            size,
                            content,
                        } => {
                            let crc = match content {
                                Content::None => None,
                                Content::Inline(b) => {
                                    sha.update(&b);
                                    Some(fmt::crc64(&b))
                                }
                                Content::Object { file, what } => {
                                    let mut crc = fmt::crc64_digest();
                                    let mut total = 0u64;
                                    loop {
                                        let n = file
                                            .read_at(&mut buf, total)
                                            .with_context(|| format!("reading {what}"))?;
                                        if n == 0 {
                                            break;
                                        }
                                        crc.update(&buf[..n]);
                                        sha.update(&buf[..n]);
                                        total += n as u64;
                                    }
                                    ensure!(
                                        total == size,
                                        "{what} has {total} bytes, the layer says {size}"
                                    );
                                    Some(crc.finalize())
                                }
                            };
                            split.file(&name, size, crc)?;
                        }
                    }
                }
                // containers/storage ends every tar-split with an empty segment.
                split.segment(&[])?;
                let mut out = split.finish()?;
                out.flush()?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                Ok(format!("sha256:{}", hex::encode(sha.finalize())))
            })
            .context("starting the tar-split thread")?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Hands over the next piece. Fails with the thread's own error once it
    /// has stopped.
    pub(super) fn send(&mut self, piece: Piece) -> Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(piece).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        self.tx = None;
        Err(self
            .join()
            .err()
            .unwrap_or_else(|| anyhow!("the tar-split thread ended early")))
    }

    /// Ends the stream: the tar-split is written and synced; returns the
    /// stream's `sha256:` digest.
    pub(super) fn finish(mut self) -> Result<String> {
        self.tx = None;
        self.join()
    }

    fn join(&mut self) -> Result<String> {
        let h = self
            .handle
            .take()
            .ok_or_else(|| anyhow!("the tar-split thread was already joined"))?;
        h.join()
            .map_err(|_| anyhow!("the tar-split thread panicked"))?
    }
}

impl Drop for SplitThread {
    fn drop(&mut self) {
        // An abandoned build: close the queue and let the thread end.
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
