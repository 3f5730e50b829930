//! Applying OCI layer tarballs on top of one another, in memory, to get the final tree.
//!
//! Semantics follow the OCI image spec "applying changesets": within one layer, whiteouts
//! (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) act on the lower layers only, then the
//! layer's entries are added in order; a non-directory replaces whatever was at its path
//! (with all descendants), a directory over a directory only updates the metadata; hard
//! links share the target's inode. File contents are hashed while streaming, never kept.

use super::expected::{EntryKind, ExpectedEntry, assign_hardlinks, split_xattrs};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;
use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File {
        inode: u64,
        sha256: String,
        size: u64,
    },
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

enum Change {
    Whiteout(String),
    Opaque(String),
    Add(String, Node),
    Link(String, String),
}

/// An in-memory merged tree that layers are applied to, bottom first.
#[derive(Debug, Default)]
pub struct Merger {
    tree: BTreeMap<String, Node>,
    next_inode: u64,
}

/// Normalize a tar entry name to an absolute path ("/" for the root).
fn normalize(name: &[u8]) -> Result<String> {
    let name = std::str::from_utf8(name).context("non-UTF-8 path in layer")?;
    let mut out = String::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => bail!("path {name:?} escapes the root"),
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn base_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Merger {
    /// An empty tree (just the root directory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Remove `path` and everything below it.
    fn remove_subtree(&mut self, path: &str) {
        self.tree.remove(path);
        self.remove_children(path);
    }

    /// Remove everything below directory `path`, keeping `path`.
    fn remove_children(&mut self, path: &str) {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        let doomed: Vec<String> = self
            .tree
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.tree.remove(&k);
        }
    }

    fn insert(&mut self, path: String, node: Node) -> Result<()> {
        let parent = parent_of(&path);
        if parent != "/" {
            match self.tree.get(parent) {
                Some(Node {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => bail!("{path}: parent is not a directory"),
                None => bail!("{path}: parent directory missing"),
            }
        }
        match (self.tree.get_mut(&path), &node.kind) {
            (Some(old), Kind::Dir) if matches!(old.kind, Kind::Dir) => {
                *old = node;
            }
            (Some(_), _) => {
                self.remove_subtree(&path);
                self.tree.insert(path, node);
            }
            (None, _) => {
                self.tree.insert(path, node);
            }
        }
        Ok(())
    }

    fn read_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<Option<Change>> {
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            return Ok(None);
        }
        let path = normalize(&entry.path_bytes())?;
        let base = base_of(&path);
        if base == OPAQUE_MARKER {
            return Ok(Some(Change::Opaque(parent_of(&path).to_string())));
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            let parent = parent_of(&path);
            let target = if parent == "/" {
                format!("/{hidden}")
            } else {
                format!("{parent}/{hidden}")
            };
            return Ok(Some(Change::Whiteout(target)));
        }
        if path == "/" {
            // Root directory metadata: not part of the expected list.
            return Ok(None);
        }
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Some(name) = ext.key()?.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let h = entry.header();
        let mode = h.mode()? & 0o7777;
        let uid = u32::try_from(h.uid()?)?;
        let gid = u32::try_from(h.gid()?)?;
        let dev = || -> Result<(u32, u32)> {
            Ok((
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ))
        };
        let kind = match ty {
            EntryType::Directory => Kind::Dir,
            EntryType::Regular | EntryType::Continuous => {
                let mut hasher = Sha256::new();
                let size = std::io::copy(entry, &mut hasher)?;
                self.next_inode += 1;
                Kind::File {
                    inode: self.next_inode,
                    sha256: hex::encode(hasher.finalize()),
                    size,
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .with_context(|| format!("{path}: symlink without target"))?;
                Kind::Symlink(String::from_utf8(target.into_owned())?)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .with_context(|| format!("{path}: hardlink without target"))?;
                return Ok(Some(Change::Link(path, normalize(&target)?)));
            }
            EntryType::Char => {
                let (a, b) = dev()?;
                Kind::Char(a, b)
            }
            EntryType::Block => {
                let (a, b) = dev()?;
                Kind::Block(a, b)
            }
            EntryType::Fifo => Kind::Fifo,
            other => bail!("{path}: unsupported tar entry type {other:?}"),
        };
        Ok(Some(Change::Add(
            path,
            Node {
                kind,
                mode,
                uid,
                gid,
                xattrs,
            },
        )))
    }

    /// Apply one uncompressed layer tar stream.
    pub fn apply_tar(&mut self, reader: impl Read) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let mut changes = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            if let Some(c) = self.read_entry(&mut entry)? {
                changes.push(c);
            }
        }
        // Whiteouts and opaque markers only hide lower-layer content: apply them first.
        for c in &changes {
            match c {
                Change::Whiteout(p) => self.remove_subtree(p),
                Change::Opaque(d) => self.remove_children(d),
                _ => {}
            }
        }
        for c in changes {
            match c {
                Change::Add(p, node) => self.insert(p, node)?,
                Change::Link(p, target) => {
                    let node = self
                        .tree
                        .get(&target)
                        .with_context(|| format!("{p}: hardlink target {target} missing"))?
                        .clone();
                    if matches!(node.kind, Kind::Dir) {
                        bail!("{p}: hardlink to directory {target}");
                    }
                    self.insert(p, node)?;
                }
                Change::Whiteout(_) | Change::Opaque(_) => {}
            }
        }
        Ok(())
    }

    /// Apply one layer blob file, gzip-compressed or not (detected by magic bytes).
    pub fn apply_blob(&mut self, blob: &Path) -> Result<()> {
        let f = std::fs::File::open(blob).with_context(|| format!("opening {blob:?}"))?;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let head = std::io::BufRead::fill_buf(&mut r)?;
        let res = if head.starts_with(&[0x1f, 0x8b]) {
            self.apply_tar(flate2::read::GzDecoder::new(r))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            bail!("{blob:?}: zstd layers are not supported")
        } else {
            self.apply_tar(r)
        };
        res.with_context(|| format!("applying layer {blob:?}"))
    }

    /// The merged tree, sorted by path, hard links resolved.
    pub fn into_expected(self) -> Vec<ExpectedEntry> {
        let mut inodes = Vec::with_capacity(self.tree.len());
        let mut out: Vec<ExpectedEntry> = self
            .tree
            .into_iter()
            .map(|(path, n)| {
                let (kind, ino) = match n.kind {
                    Kind::Dir => (EntryKind::Dir, None),
                    Kind::File {
                        inode,
                        sha256,
                        size,
                    } => (EntryKind::File { sha256, size }, Some(inode)),
                    Kind::Symlink(target) => (EntryKind::Symlink { target }, None),
                    Kind::Char(major, minor) => (EntryKind::CharDev { major, minor }, None),
                    Kind::Block(major, minor) => (EntryKind::BlockDev { major, minor }, None),
                    Kind::Fifo => (EntryKind::Fifo, None),
                };
                inodes.push(ino);
                let (xattrs, layer_xattrs) = split_xattrs(n.xattrs);
                ExpectedEntry {
                    path,
                    kind,
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                    xattrs,
                    layer_xattrs,
                }
            })
            .collect();
        assign_hardlinks(&mut out, &inodes);
        out
    }
}

/// Merge the given layer blobs, bottom first.
pub fn merge_layer_blobs(blobs: &[impl AsRef<Path>]) -> Result<Vec<ExpectedEntry>> {
    let mut m = Merger::new();
    for b in blobs {
        m.apply_blob(b.as_ref())?;
    }
    Ok(m.into_expected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{LayerTar, Meta};

    fn layer(f: impl FnOnce(&mut LayerTar<Vec<u8>>)) -> Vec<u8> {
        let mut t = LayerTar::new(Vec::new());
        f(&mut t);
        t.finish().unwrap()
    }

    fn paths(v: &[ExpectedEntry]) -> Vec<&str> {
        v.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"./usr/bin/").unwrap(), "/usr/bin");
        assert_eq!(normalize(b"/a//b").unwrap(), "/a/b");
        assert_eq!(normalize(b"./").unwrap(), "/");
        assert!(normalize(b"a/../../b").is_err());
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(parent_of("/a/b"), "/a");
    }

    #[test]
    fn whiteouts_opaque_and_replacement() {
        let l1 = layer(|t| {
            t.dir("/d", Meta::root(0o755)).unwrap();
            t.file("/d/gone", Meta::root(0o644), b"x").unwrap();
            t.file("/d/kept", Meta::root(0o644), b"x").unwrap();
            t.dir("/o", Meta::root(0o755)).unwrap();
            t.dir("/o/sub", Meta::root(0o755)).unwrap();
            t.file("/o/sub/f", Meta::root(0o644), b"x").unwrap();
            t.dir("/o-sibling", Meta::root(0o755)).unwrap();
            t.dir("/r", Meta::root(0o755)).unwrap();
            t.file("/r/child", Meta::root(0o644), b"x").unwrap();
        });
        let l2 = layer(|t| {
            t.whiteout("/d/gone").unwrap();
            t.dir("/o", Meta::root(0o700)).unwrap();
            // A same-layer entry written before the marker survives it.
            t.file("/o/new", Meta::root(0o644), b"y").unwrap();
            t.opaque("/o").unwrap();
            // A file replaces a directory and its children.
            t.file("/r", Meta::root(0o600), b"file now").unwrap();
        });
        let mut m = Merger::new();
        m.apply_tar(&l1[..]).unwrap();
        m.apply_tar(&l2[..]).unwrap();
        let v = m.into_expected();
        assert_eq!(
            paths(&v),
            vec!["/d", "/d/kept", "/o", "/o-sibling", "/o/new", "/r"]
        );
        assert_eq!(find(&v, "/o").mode, 0o700);
        assert!(matches!(
            find(&v, "/r").kind,
            EntryKind::File { size: 8, .. }
        ));
    }

    fn find<'a>(v: &'a [ExpectedEntry], p: &str) -> &'a ExpectedEntry {
        crate::image::find_entry(v, p).unwrap()
    }

    #[test]
    fn hardlinks_and_xattrs() {
        let l1 = layer(|t| {
            t.dir("/a", Meta::root(0o755)).unwrap();
            t.file_from_reader(
                "/a/z",
                Meta::root(0o4755).owned(1000, 1000),
                2,
                &b"hi"[..],
                &[
                    ("user.k".into(), b"v".to_vec()),
                    ("security.capability".into(), b"cap".to_vec()),
                ],
            )
            .unwrap();
            t.hardlink("/a/b", "/a/z", Meta::root(0o644)).unwrap();
        });
        let v = {
            let mut m = Merger::new();
            m.apply_tar(&l1[..]).unwrap();
            m.into_expected()
        };
        let b = find(&v, "/a/b");
        let z = find(&v, "/a/z");
        // The first name in path order carries the content.
        assert!(matches!(b.kind, EntryKind::File { size: 2, .. }));
        assert_eq!(z.kind, EntryKind::Hardlink { to: "/a/b".into() });
        // A hard link shares the inode's metadata, not its own header's.
        assert_eq!((b.mode, b.uid, b.gid), (0o4755, 1000, 1000));
        assert_eq!(b.xattrs.len(), 1);
        assert_eq!(b.layer_xattrs.len(), 2);
    }

    #[test]
    fn missing_parent_is_an_error() {
        let l = layer(|t| t.file("/nodir/f", Meta::root(0o644), b"").unwrap());
        let err = Merger::new().apply_tar(&l[..]).unwrap_err();
        assert!(format!("{err:#}").contains("parent directory missing"));
    }
}
