//! The layer's tar stream, rebuilt from three sources: byte ranges fetched
//! from the blob (zstd frames), contents the host has (objects of the
//! composefs repository), and tar headers the host has (the same entry in
//! an installed layer: same name, type, size, mode, owner, times, link and
//! xattrs as the table of contents gives).
//!
//! The blob is a run of segments: the headers and padding before each file
//! content (a "gap"), the content, the next gap... and a last gap with the
//! end-of-archive blocks. [`Plan`] says where each segment's bytes come
//! from; [`Plan::produce`] replays them in order. [`verify`] runs it once
//! to check everything before the repository is written: every fetched
//! content has the size and SHA-256 its entry gives, the stream parses as a
//! tar whose entries are the table's in order, and its SHA-256 is the
//! diff-id. Only then does the import run it again.

use std::io::Read;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use super::local::{Content, Local};
use super::toc::{Toc, TocEntry};
use crate::stores::composefs_repo::{ObjectId, Repo};
use crate::stores::tar_walk::{Body, Entry, Kind, LayerVisitor, Walker};

/// The most a gap of headers may decompress to (a PAX header with large
/// xattrs is the biggest real case).
const MAX_GAP: u64 = 64 << 20;

/// Where a segment's bytes come from.
#[derive(Debug, Clone)]
pub enum From {
    /// Fetched: this many bytes into the spool file.
    Spool(u64),
    /// Headers the host has (gaps only).
    Predicted(Vec<u8>),
    /// A content the host has (files only).
    Local(Content),
    /// Not decided yet (to be fetched).
    Fetch,
    /// A chunk of zeros (files only).
    Zeros,
}

/// One segment of the blob.
#[derive(Debug, Clone)]
pub struct Seg {
    pub start: u64,
    pub end: u64,
    /// A file's content: its entry; a gap: `None`.
    pub file: Option<usize>,
    /// A gap: the entries whose headers it holds.
    pub entries: std::ops::Range<usize>,
    /// A chunk of the file's content: (offset in the file, size); `None`:
    /// the whole content.
    pub chunk: Option<(u64, u64)>,
    pub from: From,
}

/// The segments of a layer and where each comes from.
pub struct Plan {
    pub segs: Vec<Seg>,
}

fn padding(size: u64) -> usize {
    (size.next_multiple_of(512) - size) as usize
}

impl Plan {
    /// Every segment of `toc`, contents the host has taken locally, gaps
    /// predicted from local headers when `predict`.
    pub fn new(toc: &Toc, local: &mut Local, repo: &Repo, predict: bool) -> Result<Self> {
        let mut segs = vec![];
        let (mut pos, mut first, mut prev_size) = (0u64, 0usize, 0u64);
        let es = &toc.entries;
        for (i, e) in es.iter().enumerate() {
            if !e.has_content() {
                continue;
            }
            let pred = if predict {
                predict_gap(local, &es[first..=i], prev_size)
            } else {
                None
            };
            segs.push(Seg {
                start: pos,
                end: e.offset,
                file: None,
                entries: first..i + 1,
                chunk: None,
                from: pred.map_or(From::Fetch, From::Predicted),
            });
            match local.content(repo, e)? {
                Some(c) => segs.push(Seg {
                    start: e.offset,
                    end: e.end_offset,
                    file: Some(i),
                    entries: i..i,
                    chunk: None,
                    from: From::Local(c),
                }),
                // A file the host lacks: its chunks the host has (the same
                // path changed elsewhere) or of zeros are not fetched.
                None if e.chunks.len() > 1 => {
                    for (k, c) in e.chunks.iter().enumerate() {
                        let end = e.chunks.get(k + 1).map_or(e.end_offset, |n| n.blob_offset);
                        let from = if c.zeros {
                            From::Zeros
                        } else {
                            local
                                .chunk(repo, &e.name, c)?
                                .map_or(From::Fetch, From::Local)
                        };
                        segs.push(Seg {
                            start: c.blob_offset,
                            end,
                            file: Some(i),
                            entries: i..i,
                            chunk: Some((c.offset, c.size)),
                            from,
                        });
                    }
                }
                None => segs.push(Seg {
                    start: e.offset,
                    end: e.end_offset,
                    file: Some(i),
                    entries: i..i,
                    chunk: None,
                    from: From::Fetch,
                }),
            }
            (pos, first, prev_size) = (e.end_offset, i + 1, e.size);
        }
        // The last gap: the remaining headers and the end-of-archive blocks,
        // whose length only the blob knows.
        segs.push(Seg {
            start: pos,
            end: toc.tar_end,
            file: None,
            entries: first..es.len(),
            chunk: None,
            from: From::Fetch,
        });
        Ok(Self { segs })
    }

    /// Gaps predicted: fetched instead (after a diff-id mismatch).
    pub fn unpredict(&mut self) {
        for s in &mut self.segs {
            if matches!(s.from, From::Predicted(_)) {
                s.from = From::Fetch;
            }
        }
    }

    /// The ranges to fetch, (start, end, spool offset), merging neighbours
    /// no more than `slack` bytes apart, spooled from offset `base` on;
    /// marks their segments spooled.
    pub fn ranges(&mut self, slack: u64, base: u64) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = vec![];
        let mut spooled = base;
        for s in &mut self.segs {
            if !matches!(s.from, From::Fetch) || s.end == s.start {
                if matches!(s.from, From::Fetch) {
                    s.from = From::Spool(spooled);
                }
                continue;
            }
            match out.last_mut() {
                Some(last) if s.start <= last.1 + slack => {
                    spooled += s.start - last.1;
                    last.1 = s.end;
                }
                _ => out.push((s.start, s.end, spooled)),
            }
            s.from = From::Spool(spooled);
            spooled += s.end - s.start;
        }
        out
    }

    /// Bytes of the blob that segments of these kinds hold.
    pub fn bytes(&self, pred: impl Fn(&Seg) -> bool) -> u64 {
        self.segs
            .iter()
            .filter(|s| pred(s))
            .map(|s| s.end - s.start)
            .sum()
    }

    /// Replays the tar stream into `sink`: raw bytes, and contents with the
    /// object they come from when local.
    pub fn produce(
        &self,
        toc: &Toc,
        repo: &Repo,
        spool: &std::fs::File,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let mut i = 0;
        while i < self.segs.len() {
            let s = &self.segs[i];
            let Some(f) = s.file else {
                self.gap(s, spool, sink).with_context(|| {
                    match toc.entries.get(s.entries.end.saturating_sub(1)) {
                        Some(e) if !s.entries.is_empty() => {
                            format!("the headers before file {:?}", e.name)
                        }
                        _ => "the end of the tar".to_string(),
                    }
                })?;
                i += 1;
                continue;
            };
            let n = self.segs[i..]
                .iter()
                .take_while(|s| s.file == Some(f))
                .count();
            let e = &toc.entries[f];
            file(e, &self.segs[i..i + n], repo, spool, sink)
                .with_context(|| format!("file {:?}", e.name))?;
            i += n;
        }
        Ok(())
    }

    fn gap(&self, s: &Seg, spool: &std::fs::File, sink: &mut dyn Sink) -> Result<()> {
        match &s.from {
            From::Predicted(b) => sink.bytes(b),
            From::Spool(at) => {
                let raw = read_spool(spool, *at, s.end - s.start)?;
                sink.bytes(&decompress(&raw, MAX_GAP, false)?)
            }
            from => bail!("internal: gap {}..{} from {from:?}", s.start, s.end),
        }
    }
}

/// A file's content from its segments (one, or its chunks), checked
/// against its size and SHA-256 as it goes into `sink`.
fn file(
    e: &TocEntry,
    segs: &[Seg],
    repo: &Repo,
    spool: &std::fs::File,
    sink: &mut dyn Sink,
) -> Result<()> {
    // A whole local content: as it is (an object the walker knows by id).
    if let [
        Seg {
            chunk: None,
            from: From::Local(c),
            ..
        },
    ] = segs
    {
        let object = match c {
            Content::Object(id) => Some(id),
            _ => None,
        };
        sink.content_start(e.size, object)?;
        // An object can only change under fs-verity's eye in an insecure
        // repository: the size is checked here, the rest by the diff-id.
        return stream(c.open(repo)?, e.size, |b| sink.content(b))
            .context("the local copy changed");
    }
    sink.content_start(e.size, None)?;
    let mut sha = Sha256::new();
    for s in segs {
        let (offset, size) = s.chunk.unwrap_or((0, e.size));
        let mut feed = |b: &[u8]| {
            sha.update(b);
            sink.content(b)
        };
        match &s.from {
            From::Spool(at) => {
                let range = SpoolRange {
                    file: spool,
                    pos: *at,
                    end: *at + (s.end - s.start),
                };
                let d = zstd::stream::read::Decoder::new(range).context("not zstd data")?;
                stream(d, size, &mut feed).with_context(|| {
                    format!(
                        "bytes {}..{} of the blob are not its zstd frames",
                        s.start, s.end
                    )
                })?;
            }
            From::Local(c) => {
                let mut r = c.open(repo)?;
                std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())?;
                stream(r.take(size), size, &mut feed).context("the local copy changed")?;
            }
            From::Zeros => stream(std::io::repeat(0).take(size), size, &mut feed)?,
            from => bail!("internal: content {}..{} from {from:?}", s.start, s.end),
        }
    }
    check_digest(e, sha)
}

/// Headers the host has for every entry of a gap, after the padding of the
/// previous content.
fn predict_gap(local: &Local, entries: &[TocEntry], prev_size: u64) -> Option<Vec<u8>> {
    let mut out = vec![0u8; padding(prev_size)];
    for e in entries {
        out.extend_from_slice(local.header(e)?);
    }
    Some(out)
}

/// A range of the spool file, read in order.
struct SpoolRange<'f> {
    file: &'f std::fs::File,
    pos: u64,
    end: u64,
}

impl Read for SpoolRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Passes exactly `size` bytes of `r` to `f`, 1 MiB at a time; fails on
/// fewer or more.
fn stream(mut r: impl Read, size: u64, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(size as usize + 1).max(1)];
    let mut got = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        got += n as u64;
        ensure!(got <= size, "it holds more than its size {size}");
        f(&buf[..n])?;
    }
    ensure!(got == size, "it holds {got} bytes, not its size {size}");
    Ok(())
}

fn read_spool(spool: &std::fs::File, at: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    spool
        .read_exact_at(&mut buf, at)
        .context("reading the spool")?;
    Ok(buf)
}

/// Decompresses zstd frames, to at most `limit` bytes (`exact`: exactly).
fn decompress(raw: &[u8], limit: u64, exact: bool) -> Result<Vec<u8>> {
    let d = zstd::stream::read::Decoder::with_buffer(raw).context("not zstd data")?;
    let mut out = vec![];
    d.take(limit + 1)
        .read_to_end(&mut out)
        .context("not zstd data")?;
    ensure!(
        out.len() as u64 <= limit,
        "its zstd frames hold more than {limit} bytes"
    );
    ensure!(
        !exact || out.len() as u64 == limit,
        "its zstd frames hold {} bytes, not its size {limit}",
        out.len()
    );
    Ok(out)
}

fn check_digest(e: &TocEntry, sha: Sha256) -> Result<()> {
    let got = format!("sha256:{}", hex::encode(sha.finalize()));
    ensure!(
        got == e.digest,
        "the bytes of its range have digest {got}, not {} as the table of contents says",
        e.digest
    );
    Ok(())
}

/// Receives the rebuilt tar stream.
pub trait Sink {
    /// Headers, padding, end-of-archive blocks.
    fn bytes(&mut self, b: &[u8]) -> Result<()>;
    /// A file's content of `size` bytes follows (in [`Self::content`]
    /// pieces); `object` when it is an object of the repository.
    fn content_start(&mut self, size: u64, object: Option<&ObjectId>) -> Result<()>;
    /// A piece of a file's content.
    fn content(&mut self, b: &[u8]) -> Result<()>;
}

/// The stream's digest did not match the diff-id.
#[derive(Debug, thiserror::Error)]
#[error("the rebuilt tar stream has digest {got}, not the diff-id {want} the image's config names")]
pub struct DiffIdMismatch {
    pub got: String,
    pub want: String,
}

/// Checks the rebuilt stream before anything is written (see the module).
pub fn verify(
    plan: &Plan,
    toc: &Toc,
    repo: &Repo,
    spool: &std::fs::File,
    diff_id: &str,
) -> Result<()> {
    let mut order = Order { toc, next: 0 };
    let mut v = VerifySink {
        sha: Sha256::new(),
        walker: Walker::without_contents(&mut order),
        object: false,
    };
    plan.produce(toc, repo, spool, &mut v)?;
    let VerifySink { sha, walker, .. } = v;
    walker.finish().context("the rebuilt tar stream")?;
    ensure!(
        order.next == toc.entries.len(),
        "the blob's tar ends before file {:?} of the table of contents",
        toc.entries[order.next].name
    );
    let got = format!("sha256:{}", hex::encode(sha.finalize()));
    if got != diff_id {
        return Err(DiffIdMismatch {
            got,
            want: diff_id.to_string(),
        }
        .into());
    }
    Ok(())
}

struct VerifySink<'v> {
    sha: Sha256,
    walker: Walker<'v>,
    /// The current content is an object's (the walker has its id).
    object: bool,
}

impl Sink for VerifySink<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.sha.update(b);
        self.walker.inline(b)
    }

    fn content_start(&mut self, _: u64, object: Option<&ObjectId>) -> Result<()> {
        self.object = object.is_some();
        match object {
            Some(id) => self.walker.external(id),
            None => Ok(()),
        }
    }

    fn content(&mut self, b: &[u8]) -> Result<()> {
        self.sha.update(b);
        if self.object {
            Ok(())
        } else {
            self.walker.inline(b)
        }
    }
}

/// Checks that the tar's entries are the table's, in order.
struct Order<'t> {
    toc: &'t Toc,
    next: usize,
}

impl LayerVisitor for Order<'_> {
    fn raw(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }

    fn entry(&mut self, e: &Entry, _: Body<'_>) -> Result<()> {
        if e.kind == Kind::GlobalHeader {
            return Ok(());
        }
        let Some(t) = self.toc.entries.get(self.next) else {
            bail!(
                "the blob holds entry {} after the last entry of the table of contents",
                e.display()
            );
        };
        let size = if t.kind == "reg" { t.size } else { 0 };
        ensure!(
            e.name == t.name.as_bytes() && e.size == size,
            "file {:?}: the blob holds {} ({} bytes) where the table of contents puts it ({size} bytes)",
            t.name,
            e.display(),
            e.size
        );
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_ranges_merge_and_spool_offsets_follow() {
        let seg = |start, end, from| Seg {
            start,
            end,
            file: None,
            entries: 0..0,
            chunk: None,
            from,
        };
        let mut p = Plan {
            segs: vec![
                seg(0, 10, From::Fetch),
                seg(10, 20, From::Local(Content::Inline(vec![]))),
                seg(20, 30, From::Fetch),
                seg(30, 40, From::Fetch),
                seg(40, 45, From::Predicted(vec![])),
                seg(45, 50, From::Fetch),
            ],
        };
        let r = p.ranges(5, 100);
        assert_eq!(r, vec![(0, 10, 100), (20, 50, 110)]);
        assert!(matches!(p.segs[2].from, From::Spool(110)));
        assert!(matches!(p.segs[3].from, From::Spool(120)));
        assert!(matches!(p.segs[5].from, From::Spool(135)));
    }

    #[test]
    fn contents_are_checked_against_size_and_digest() {
        use sha2::Digest;
        let data = b"hello";
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(decompress(&z, 5, true).unwrap(), data);
        assert!(decompress(&z, 4, true).is_err());
        assert!(decompress(&z, 6, true).is_err());
        assert!(decompress(b"not zstd", 6, false).is_err());
        let mut e = TocEntry {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(data))),
            ..Default::default()
        };
        check_digest(&e, Sha256::new_with_prefix(data)).unwrap();
        e.digest = format!("sha256:{}", "0".repeat(64));
        assert!(check_digest(&e, Sha256::new_with_prefix(data)).is_err());
        let mut got = vec![];
        stream(&data[..], 5, |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, data);
        assert!(stream(&data[..], 4, |_| Ok(())).is_err());
        assert!(stream(&data[..], 6, |_| Ok(())).is_err());
    }
}
