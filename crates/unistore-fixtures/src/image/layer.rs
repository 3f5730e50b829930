//! Writing one layer tarball entry by entry, with full control over metadata.
//!
//! Layer entries use relative names (`usr/bin/foo`), GNU headers (long names are
//! handled by the `tar` crate) and PAX `SCHILY.xattr.*` records for xattrs, as
//! container tools expect.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use tar::{EntryType, Header};

/// The fixed mtime of every generated entry (2023-11-14T22:13:20Z).
pub const FIXED_MTIME: u64 = 1_700_000_000;

/// Metadata of one layer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

impl Meta {
    /// Root-owned with `mode` and the fixed mtime.
    pub const fn root(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: FIXED_MTIME,
        }
    }

    /// The same metadata owned by `uid:gid`.
    pub const fn owned(self, uid: u32, gid: u32) -> Self {
        Self { uid, gid, ..self }
    }
}

/// Special (non-regular, non-directory) file kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
    /// Named pipe.
    Fifo,
}

/// A tar stream being written as one layer.
pub struct LayerTar<W: Write> {
    builder: tar::Builder<W>,
}

/// The layer-relative tar name of an absolute (or relative) path.
fn tar_name(path: &str) -> Result<&str> {
    let rel = path.trim_start_matches('/').trim_end_matches('/');
    anyhow::ensure!(!rel.is_empty(), "empty path {path:?} in layer");
    anyhow::ensure!(
        !rel.split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()),
        "non-normal path {path:?}"
    );
    Ok(rel)
}

fn header(ty: EntryType, meta: Meta, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(meta.mode & 0o7777);
    h.set_uid(meta.uid.into());
    h.set_gid(meta.gid.into());
    h.set_mtime(meta.mtime);
    h.set_size(size);
    h
}

impl<W: Write> LayerTar<W> {
    /// Start a layer on `w`.
    pub fn new(w: W) -> Self {
        let mut builder = tar::Builder::new(w);
        builder.follow_symlinks(false);
        Self { builder }
    }

    fn xattrs(&mut self, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        self.builder.append_pax_extensions(
            keys.iter()
                .map(String::as_str)
                .zip(xattrs.iter().map(|(_, v)| v.as_slice())),
        )?;
        Ok(())
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, meta: Meta) -> Result<()> {
        self.dir_x(path, meta, &[])
    }

    /// A directory with xattrs.
    pub fn dir_x(&mut self, path: &str, meta: Meta, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        let name = format!("{}/", tar_name(path)?);
        self.xattrs(xattrs)?;
        let mut h = header(EntryType::Directory, meta, 0);
        self.builder
            .append_data(&mut h, &name, std::io::empty())
            .with_context(|| format!("writing dir {path}"))
    }

    /// A regular file with in-memory content.
    pub fn file(&mut self, path: &str, meta: Meta, data: &[u8]) -> Result<()> {
        self.file_from_reader(path, meta, data.len() as u64, data, &[])
    }

    /// A regular file streamed from `reader`, which must yield exactly `size` bytes.
    pub fn file_from_reader(
        &mut self,
        path: &str,
        meta: Meta,
        size: u64,
        reader: impl Read,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let name = tar_name(path)?;
        self.xattrs(xattrs)?;
        let mut h = header(EntryType::Regular, meta, size);
        let mut counted = CountingReader {
            inner: reader.take(size),
            n: 0,
        };
        self.builder
            .append_data(&mut h, name, &mut counted)
            .with_context(|| format!("writing file {path}"))?;
        anyhow::ensure!(
            counted.n == size,
            "{path}: source yielded {} bytes, header says {size}; the layer is corrupt",
            counted.n
        );
        Ok(())
    }

    /// A symbolic link (mode 0777) to `target`, verbatim.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.symlink_meta(path, target, Meta::root(0o777))
    }

    /// A symbolic link with explicit metadata.
    pub fn symlink_meta(&mut self, path: &str, target: &str, meta: Meta) -> Result<()> {
        self.symlink_x(path, target, meta, &[])
    }

    /// A symbolic link with explicit metadata and xattrs.
    pub fn symlink_x(
        &mut self,
        path: &str,
        target: &str,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let name = tar_name(path)?;
        self.xattrs(xattrs)?;
        let mut h = header(EntryType::Symlink, meta, 0);
        self.builder
            .append_link(&mut h, name, target)
            .with_context(|| format!("writing symlink {path}"))
    }

    /// A hard link named `path` to the earlier entry `target` (given like `path`).
    pub fn hardlink(&mut self, path: &str, target: &str, meta: Meta) -> Result<()> {
        let name = tar_name(path)?;
        let target = tar_name(target)?;
        let mut h = header(EntryType::Link, meta, 0);
        self.builder
            .append_link(&mut h, name, target)
            .with_context(|| format!("writing hardlink {path}"))
    }

    /// A device node or FIFO.
    pub fn special(
        &mut self,
        path: &str,
        kind: Special,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let name = tar_name(path)?;
        self.xattrs(xattrs)?;
        let (ty, dev) = match kind {
            Special::Char(a, b) => (EntryType::Char, Some((a, b))),
            Special::Block(a, b) => (EntryType::Block, Some((a, b))),
            Special::Fifo => (EntryType::Fifo, None),
        };
        let mut h = header(ty, meta, 0);
        if let Some((major, minor)) = dev {
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
        }
        self.builder
            .append_data(&mut h, name, std::io::empty())
            .with_context(|| format!("writing special file {path}"))
    }

    /// A whiteout deleting `path` from lower layers (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> Result<()> {
        let rel = tar_name(path)?;
        let wh = match rel.rsplit_once('/') {
            Some((parent, base)) => format!("{parent}/.wh.{base}"),
            None => format!(".wh.{rel}"),
        };
        self.file(&wh, Meta::root(0o644), &[])
    }

    /// An opaque marker: lower-layer contents of directory `dir` are hidden.
    pub fn opaque(&mut self, dir: &str) -> Result<()> {
        let rel = tar_name(dir)?;
        self.file(&format!("{rel}/.wh..wh..opq"), Meta::root(0o644), &[])
    }

    /// Write the end-of-archive marker and give back the writer.
    pub fn finish(self) -> Result<W> {
        Ok(self.builder.into_inner()?)
    }
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(data: &[u8]) -> Vec<(String, EntryType, crate::image::expected::Xattrs)> {
        let mut ar = tar::Archive::new(data);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let x = e
                    .pax_extensions()
                    .unwrap()
                    .map(|p| {
                        p.map(|p| {
                            let p = p.unwrap();
                            (p.key().unwrap().to_string(), p.value_bytes().to_vec())
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    x,
                )
            })
            .collect()
    }

    #[test]
    fn writes_all_kinds() {
        let mut t = LayerTar::new(Vec::new());
        t.dir("/usr", Meta::root(0o755)).unwrap();
        t.file_from_reader(
            "/usr/f",
            Meta::root(0o4755),
            3,
            &b"abc"[..],
            &[("user.a".into(), b"1".to_vec())],
        )
        .unwrap();
        t.symlink("/usr/s", "f").unwrap();
        t.hardlink("/usr/h", "/usr/f", Meta::root(0o4755)).unwrap();
        t.whiteout("/usr/gone").unwrap();
        t.opaque("/usr").unwrap();
        t.special("/usr/fifo", Special::Fifo, Meta::root(0o600), &[])
            .unwrap();
        let long = format!("/usr/{}", "x".repeat(150));
        t.file(&long, Meta::root(0o644), b"").unwrap();
        let data = t.finish().unwrap();
        let e = entries(&data);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "usr/",
                "usr/f",
                "usr/s",
                "usr/h",
                "usr/.wh.gone",
                "usr/.wh..wh..opq",
                "usr/fifo",
                &long[1..]
            ]
        );
        assert_eq!(e[1].2, vec![("SCHILY.xattr.user.a".into(), b"1".to_vec())]);
        assert_eq!(e[3].1, EntryType::Link);
    }

    #[test]
    fn short_reader_is_an_error() {
        let mut t = LayerTar::new(Vec::new());
        let err = t
            .file_from_reader("/a", Meta::root(0o644), 10, &b"abc"[..], &[])
            .unwrap_err();
        assert!(format!("{err:#}").contains("yielded 3 bytes"), "{err:#}");
    }

    #[test]
    fn rejects_bad_paths() {
        let mut t = LayerTar::new(Vec::new());
        assert!(t.dir("/", Meta::root(0o755)).is_err());
        assert!(t.file("/a/../b", Meta::root(0o644), b"").is_err());
    }
}
