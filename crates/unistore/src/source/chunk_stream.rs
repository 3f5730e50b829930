//! A byte stream made of chunks sent through a channel, read blocking
//! ([`Read`], on a thread of its own) or async ([`AsyncRead`], into
//! composefs-oci's import), an error sent down the channel ending it with
//! that error. The layer fetch ([`super::layer_fetch`]) and the partial pull
//! ([`super::chunked`]) feed their tar streams to the import through it.

use std::io::Read;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// Chunks from a channel as a byte stream: blocking ([`Read`], the
/// compressed chunks of [`super::layer_fetch`] on its inflating thread) or async
/// ([`AsyncRead`], the tar stream into the import).
pub struct ChunkReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<std::io::Result<Vec<u8>>>) -> Self {
        Self {
            rx,
            cur: vec![],
            pos: 0,
        }
    }

    /// Up to `max` bytes of what is left of the current chunk, consumed.
    fn consume(&mut self, max: usize) -> &[u8] {
        let start = self.pos;
        self.pos += max.min(self.cur.len() - start);
        &self.cur[start..self.pos]
    }

    /// Takes the next message: `Ok(true)` a chunk, `Ok(false)` the end.
    fn next(&mut self, msg: Option<std::io::Result<Vec<u8>>>) -> std::io::Result<bool> {
        match msg {
            Some(Ok(chunk)) => {
                self.cur = chunk;
                self.pos = 0;
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            let msg = self.rx.blocking_recv();
            if !self.next(msg)? {
                return Ok(0);
            }
        }
        let bytes = self.consume(buf.len());
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(bytes.len())
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.pos == self.cur.len() {
            let msg = std::task::ready!(self.rx.poll_recv(cx));
            if !self.next(msg)? {
                return Poll::Ready(Ok(()));
            }
        }
        let max = buf.remaining();
        buf.put_slice(self.consume(max));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunk_reader_passes_bytes_then_the_error() {
        use tokio::io::AsyncReadExt;
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(b"abc".to_vec())).await.unwrap();
        tx.send(Ok(b"de".to_vec())).await.unwrap();
        tx.send(Err(std::io::Error::other("digest mismatch")))
            .await
            .unwrap();
        drop(tx);
        let mut r = ChunkReader::new(rx);
        let mut got = vec![];
        let err = AsyncReadExt::read_to_end(&mut r, &mut got)
            .await
            .unwrap_err();
        assert_eq!(got, b"abcde");
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[test]
    fn chunk_reader_blocking_side_passes_bytes_then_the_error() {
        let (tx, rx) = mpsc::channel(4);
        tx.blocking_send(Ok(b"abc".to_vec())).unwrap();
        tx.blocking_send(Ok(vec![])).unwrap();
        tx.blocking_send(Ok(b"de".to_vec())).unwrap();
        tx.blocking_send(Err(std::io::Error::other("cut short")))
            .unwrap();
        drop(tx);
        let mut r = ChunkReader::new(rx);
        let mut got = vec![];
        let err = Read::read_to_end(&mut r, &mut got).unwrap_err();
        assert_eq!(got, b"abcde");
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
