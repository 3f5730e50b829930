//! Walking a layer as composefs stores it: the tar stream of an OCI layer
//! kept as a splitstream (headers, padding and small files inline, the
//! content of larger files as references to objects in the repository).
//!
//! [`walk_layer`] replays the stream in order and hands a [`LayerVisitor`]
//! every byte of the original tar: the raw structural bytes (headers,
//! extension headers, padding, end-of-archive blocks) as
//! [`LayerVisitor::raw`], and each entry with its content, inline bytes or
//! the object id, as [`LayerVisitor::entry`]. Nothing is copied out of the
//! objects: a visitor that needs their bytes opens them (and can reflink
//! them instead of copying).
//!
//! Concatenating, in call order, the `raw` bytes and the entry contents gives
//! back the layer tar byte for byte, so a visitor can check the diff-id.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result, bail, ensure};
use composefs::splitstream::SplitStreamData;
use tar_core::parse::{ParseEvent, Parser};
use tar_core::{EntryType, HEADER_SIZE, PaxExtensions};

use composefs::fsverity::FsVerityHashValue;

use crate::stores::composefs_repo::layer_stream_id;
use crate::stores::composefs_repo::{ObjectId, Repo};

/// Issue 25: why a whiteout's name is refused, if it is: the name after `.wh.`
/// names no file (empty, `.` or `..`).
pub fn odd_whiteout(file_name: &[u8]) -> Option<&'static str> {
    match file_name.strip_prefix(b".wh.")? {
        b"" => Some("a whiteout of an empty name"),
        b"." => Some("a whiteout of \".\" (its own directory)"),
        b".." => Some("a whiteout of \"..\" (its parent directory)"),
        _ => None,
    }
}

/// The message for an entry refused for `why`.
pub fn refusal(layer: &str, entry: &str, why: &str) -> String {
    format!("layer {layer}: entry {entry:?}: {why}; the image is refused")
}

/// The kind of a tar entry, as it matters for unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A PAX global header (`g`): carries no file. Reported so a visitor can
    /// mirror tools that list it as an entry (tar-split does).
    GlobalHeader,
}

/// One entry of the layer tar, with every extension applied.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path exactly as the tar names it (PAX `path`, GNU long name or
    /// ustar prefix + name): for example `usr/bin/` or `./etc/hosts`.
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Link target (symlinks, hard links), as in the tar.
    pub link_target: Option<Vec<u8>>,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Content size in the tar.
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` entries.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The path relative to the layer root, without `./`, leading or
    /// trailing slashes; empty for the root itself. Fails on `..`.
    pub fn rel_path(&self) -> Result<Vec<u8>> {
        normalize(&self.name)
    }

    /// The normalized hard link target.
    pub fn rel_link_target(&self) -> Result<Vec<u8>> {
        normalize(self.link_target.as_deref().unwrap_or_default())
    }

    /// The path for messages.
    pub fn display(&self) -> String {
        format!(
            "/{}",
            String::from_utf8_lossy(&self.rel_path().unwrap_or_default())
        )
    }
}

/// A tar path relative to the layer root: `./a//b/` -> `a/b`. Rejects `..`.
pub fn normalize(name: &[u8]) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(name.len());
    for comp in name.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => bail!(
                "tar path {:?} leaves the layer",
                String::from_utf8_lossy(name)
            ),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// The content of an entry.
#[derive(Debug)]
pub enum Body<'a> {
    /// No content (directories, links, devices, empty files).
    Empty,
    /// Content stored inline in the splitstream.
    Inline(&'a [u8]),
    /// Content stored as an object of the repository (its whole content).
    External(&'a ObjectId),
}

/// Receives a layer in tar order.
pub trait LayerVisitor {
    /// Structural bytes of the tar: headers (with their extension headers),
    /// padding, end-of-archive blocks. Called just before the matching
    /// [`Self::entry`] for headers.
    fn raw(&mut self, bytes: &[u8]) -> Result<()>;
    /// An entry and its content (which follows its header in the tar).
    fn entry(&mut self, entry: &Entry, body: Body<'_>) -> Result<()>;
}

/// Walks the layer `diff_id` (whose splitstream has fs-verity id `verity`
/// when known) and hands it to `visitor`.
pub fn walk_layer(
    repo: &Repo,
    diff_id: &str,
    verity: Option<&ObjectId>,
    visitor: &mut dyn LayerVisitor,
) -> Result<()> {
    let stream_id = layer_stream_id(diff_id)?;
    let mut reader = match verity {
        // Read without touching its atime (a check must change nothing);
        // an insecure repository does not verify the stream either.
        Some(v) if repo.is_insecure() => {
            let fd = rustix::fs::openat(
                repo.objects_dir()?,
                v.to_object_pathname(),
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::CLOEXEC
                    | rustix::fs::OFlags::NOATIME,
                rustix::fs::Mode::empty(),
            )
            .with_context(|| format!("opening the splitstream of layer {diff_id}"))?;
            composefs::splitstream::SplitStreamReader::new(
                std::fs::File::from(fd),
                Some(composefs_oci::LAYER_CONTENT_TYPE),
            )?
        }
        _ => repo
            .open_stream(&stream_id, verity, Some(composefs_oci::LAYER_CONTENT_TYPE))
            .with_context(|| format!("opening the splitstream of layer {diff_id}"))?,
    };
    let mut walker = Walker::new(visitor);
    reader
        .for_each_chunk(|chunk| match chunk {
            SplitStreamData::Inline(bytes) => walker.inline(&bytes),
            SplitStreamData::External(id) => walker.external(&id),
        })
        .with_context(|| format!("reading layer {diff_id}"))?;
    walker.finish()
}

/// Walks a layer given as chunks of its splitstream: `Ok(bytes)` for
/// inline tar bytes, `Err(id)` for a reference to an object holding a
/// file's whole content (what [`walk_layer`] reads from the repository).
pub fn walk_chunks<'a>(
    chunks: impl IntoIterator<Item = std::result::Result<&'a [u8], &'a ObjectId>>,
    visitor: &mut dyn LayerVisitor,
) -> Result<()> {
    let mut walker = Walker::new(visitor);
    for c in chunks {
        match c {
            Ok(bytes) => walker.inline(bytes)?,
            Err(id) => walker.external(id)?,
        }
    }
    walker.finish()
}

enum State {
    /// Expecting a header.
    Header,
    /// Collecting the content of `entry` (`got` bytes so far, kept in
    /// `collected` unless the walker keeps no contents).
    Content {
        entry: Entry,
        collected: Vec<u8>,
        got: u64,
    },
    /// Padding after content.
    Padding { remaining: usize },
    /// After the end-of-archive marker: everything is raw.
    Trailer,
}

/// A push parser over the chunks of a layer splitstream (or any tar
/// stream whose contents may be objects of the repository).
pub struct Walker<'v> {
    visitor: &'v mut dyn LayerVisitor,
    /// Keep inline contents for the visitor (else it gets an empty slice
    /// and the bytes are only counted).
    keep: bool,
    parser: Parser,
    buf: Vec<u8>,
    pos: usize,
    state: State,
}

fn padding_of(size: u64) -> usize {
    (size.next_multiple_of(HEADER_SIZE as u64) - size) as usize
}

/// The sub-second part of a PAX `mtime` (`<sec>.<frac>`), in nanoseconds.
fn pax_mtime_nsec(pax: Option<&[u8]>) -> u32 {
    let Some(pax) = pax else { return 0 };
    for ext in PaxExtensions::new(pax).flatten() {
        if ext.key_bytes() == b"mtime" {
            let Ok(v) = ext.value() else { return 0 };
            let Some((_, frac)) = v.split_once('.') else {
                return 0;
            };
            let digits: String = frac
                .chars()
                .take_while(char::is_ascii_digit)
                .take(9)
                .collect();
            if digits.is_empty() {
                return 0;
            }
            let n: u32 = digits.parse().unwrap_or(0);
            return n * 10u32.pow(9 - digits.len() as u32);
        }
    }
    0
}

impl<'v> Walker<'v> {
    pub fn new(visitor: &'v mut dyn LayerVisitor) -> Self {
        Self {
            visitor,
            keep: true,
            parser: Parser::with_defaults(),
            buf: Vec::new(),
            pos: 0,
            state: State::Header,
        }
    }

    /// A walker whose visitor gets no inline contents (an empty slice):
    /// for checks of a stream with files of any size.
    pub fn without_contents(visitor: &'v mut dyn LayerVisitor) -> Self {
        Self {
            keep: false,
            ..Self::new(visitor)
        }
    }

    /// Tar bytes (headers, padding, inline contents).
    pub fn inline(&mut self, bytes: &[u8]) -> Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.process()
    }

    /// The whole content of the file whose header came last.
    pub fn external(&mut self, id: &ObjectId) -> Result<()> {
        ensure!(
            self.pos == self.buf.len(),
            "an object reference in the middle of inline tar data"
        );
        match std::mem::replace(&mut self.state, State::Header) {
            State::Content { entry, got: 0, .. } => {
                ensure!(
                    entry.kind == Kind::Regular,
                    "an object reference as the content of {} (not a regular file)",
                    entry.display()
                );
                self.visitor.entry(&entry, Body::External(id))?;
                self.state = State::Padding {
                    remaining: padding_of(entry.size),
                };
                Ok(())
            }
            _ => bail!("an object reference where the tar has no file content"),
        }
    }

    fn process(&mut self) -> Result<()> {
        loop {
            let avail = self.buf.len() - self.pos;
            match &mut self.state {
                State::Header => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let input = &self.buf[self.pos..];
                    match self.parser.parse(input).context("parsing the layer tar")? {
                        ParseEvent::NeedData { .. } => return Ok(()),
                        ParseEvent::GlobalExtensions { consumed, .. } => {
                            let raw = &input[..consumed];
                            let hdr: &[u8; HEADER_SIZE] =
                                raw[..HEADER_SIZE].try_into().expect("a header");
                            let name = tar_core::Header::from_bytes(hdr).path_bytes().to_vec();
                            self.visitor.raw(raw)?;
                            self.visitor.entry(
                                &Entry {
                                    name,
                                    kind: Kind::GlobalHeader,
                                    link_target: None,
                                    mode: 0,
                                    uid: 0,
                                    gid: 0,
                                    mtime_sec: 0,
                                    mtime_nsec: 0,
                                    size: 0,
                                    dev_major: 0,
                                    dev_minor: 0,
                                    xattrs: vec![],
                                },
                                Body::Empty,
                            )?;
                            self.pos += consumed;
                        }
                        ParseEvent::End { consumed } => {
                            self.visitor.raw(&input[..consumed])?;
                            self.pos += consumed;
                            self.state = State::Trailer;
                        }
                        ParseEvent::SparseEntry { entry, .. } => bail!(
                            "sparse tar entries are not supported ({})",
                            String::from_utf8_lossy(&entry.path)
                        ),
                        ParseEvent::Entry { consumed, entry } => {
                            let kind = match entry.entry_type {
                                EntryType::Regular | EntryType::Continuous => Kind::Regular,
                                EntryType::Directory => Kind::Directory,
                                EntryType::Symlink => Kind::Symlink,
                                EntryType::Link => Kind::Hardlink,
                                EntryType::Char => Kind::CharDevice,
                                EntryType::Block => Kind::BlockDevice,
                                EntryType::Fifo => Kind::Fifo,
                                other => bail!(
                                    "unsupported tar entry type {other:?} ({})",
                                    String::from_utf8_lossy(&entry.path)
                                ),
                            };
                            let e = Entry {
                                name: entry.path.to_vec(),
                                kind,
                                link_target: entry.link_target.as_deref().map(<[u8]>::to_vec),
                                mode: entry.mode & 0o7777,
                                uid: entry.uid,
                                gid: entry.gid,
                                mtime_sec: entry.mtime as i64,
                                mtime_nsec: pax_mtime_nsec(entry.pax),
                                size: entry.size,
                                dev_major: entry.dev_major.unwrap_or(0),
                                dev_minor: entry.dev_minor.unwrap_or(0),
                                xattrs: entry
                                    .xattrs
                                    .iter()
                                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                                    .collect(),
                            };
                            self.visitor.raw(&input[..consumed])?;
                            self.pos += consumed;
                            if e.size == 0 {
                                self.visitor.entry(&e, Body::Empty)?;
                            } else {
                                self.state = State::Content {
                                    entry: e,
                                    collected: Vec::new(),
                                    got: 0,
                                };
                            }
                        }
                    }
                }
                State::Content {
                    entry,
                    collected,
                    got,
                } => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let want = entry.size - *got;
                    let take = (want.min(avail as u64)) as usize;
                    if self.keep {
                        collected.extend_from_slice(&self.buf[self.pos..self.pos + take]);
                    }
                    self.pos += take;
                    *got += take as u64;
                    if *got == entry.size {
                        let State::Content {
                            entry, collected, ..
                        } = std::mem::replace(&mut self.state, State::Header)
                        else {
                            unreachable!()
                        };
                        self.visitor.entry(&entry, Body::Inline(&collected))?;
                        self.state = State::Padding {
                            remaining: padding_of(entry.size),
                        };
                    }
                }
                State::Padding { remaining } => {
                    if *remaining == 0 {
                        self.state = State::Header;
                        continue;
                    }
                    if avail == 0 {
                        return Ok(());
                    }
                    let take = (*remaining).min(avail);
                    *remaining -= take;
                    let (start, end) = (self.pos, self.pos + take);
                    self.pos = end;
                    self.visitor.raw(&self.buf[start..end])?;
                }
                State::Trailer => {
                    if avail > 0 {
                        let start = self.pos;
                        self.pos = self.buf.len();
                        self.visitor.raw(&self.buf[start..])?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The end of the stream: fails unless the tar ended cleanly.
    pub fn finish(mut self) -> Result<()> {
        self.process()?;
        match &self.state {
            State::Trailer => Ok(()),
            State::Header if self.pos == self.buf.len() => Ok(()),
            State::Padding { remaining: 0 } => Ok(()),
            State::Content { entry, .. } => {
                bail!(
                    "the layer tar ends inside the content of {}",
                    entry.display()
                )
            }
            _ => bail!("the layer tar ends in the middle of a header or padding"),
        }
    }
}

/// An entry name as a path, for messages and file system calls.
pub fn as_os_str(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_whiteouts_are_named() {
        assert!(odd_whiteout(b".wh.").is_some());
        assert!(odd_whiteout(b".wh..").is_some());
        assert!(odd_whiteout(b".wh...").is_some());
        assert!(odd_whiteout(b".wh..wh..opq").is_none());
        assert!(odd_whiteout(b".wh.a").is_none());
        assert!(odd_whiteout(b".wh....").is_none());
        assert!(odd_whiteout(b"a.wh.").is_none());
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(b"./a//b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"/usr/").unwrap(), b"usr");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"a/../../etc").is_err());
    }

    #[test]
    fn pax_fractions() {
        assert_eq!(
            pax_mtime_nsec(Some(b"30 mtime=1234567890.123456789\n")),
            123_456_789
        );
        assert_eq!(
            pax_mtime_nsec(Some(b"22 mtime=1234567890.5\n")),
            500_000_000
        );
        assert_eq!(pax_mtime_nsec(Some(b"20 mtime=1234567890\n")), 0);
        assert_eq!(pax_mtime_nsec(None), 0);
    }

    struct Collect {
        out: Vec<u8>,
        names: Vec<String>,
    }

    impl LayerVisitor for Collect {
        fn raw(&mut self, bytes: &[u8]) -> Result<()> {
            self.out.extend_from_slice(bytes);
            Ok(())
        }
        fn entry(&mut self, e: &Entry, body: Body<'_>) -> Result<()> {
            self.names
                .push(String::from_utf8_lossy(&e.name).into_owned());
            match body {
                Body::Inline(b) => self.out.extend_from_slice(b),
                Body::Empty => {}
                Body::External(_) => panic!("no objects here"),
            }
            Ok(())
        }
    }

    /// Feeding a tar in arbitrary inline pieces gives it back byte for byte.
    #[test]
    fn replays_a_tar_fed_in_pieces() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, "a/file", &b"hello"[..]).unwrap();
        let long = format!("d/{}", "x".repeat(200));
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        tar.append_data(&mut h, &long, &[][..]).unwrap();
        let mut bytes = tar.into_inner().unwrap();
        bytes.extend_from_slice(&[0u8; 4096]); // record padding
        for piece in [1usize, 7, 512, 1000, bytes.len()] {
            let mut c = Collect {
                out: vec![],
                names: vec![],
            };
            let mut w = Walker::new(&mut c);
            for chunk in bytes.chunks(piece) {
                w.inline(chunk).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(c.out, bytes, "piece size {piece}");
            assert_eq!(c.names, vec!["a/file".to_string(), long.clone()]);
        }
    }
}
