//! The `.file` object writer of a bare ostree repository.
//!
//! libostree computes every checksum (`checksum_file_from_input`) and writes
//! inline files and symlinks itself; this module writes only the content
//! objects whose bytes already exist as composefs objects, the one thing
//! libostree cannot do without copying: an `O_TMPFILE` in `repo/tmp`, its
//! content a reflink of the composefs object (a copy where the filesystem
//! has no reflinks), owner, xattrs and mode on the inode, mtime 0, then
//! `linkat` to `objects/XX/<62 hex>.file`. A reflink, not a hardlink: one
//! composefs object may back several ostree objects with other metadata.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::Dir;
use ostree::{gio, glib};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use crate::fs::reflink::{self, Tally};

/// Owner, mode (with the file type bits) and xattrs of a content object.
#[derive(Debug, Clone)]
pub struct FileMeta<'a> {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode`, file type bits included.
    pub mode: u32,
    /// Extended attributes, names without the trailing NUL.
    pub xattrs: &'a BTreeMap<Box<OsStr>, Box<[u8]>>,
}

/// The `a(ayay)` xattrs variant libostree checksums: names NUL-terminated,
/// sorted by name.
pub fn xattrs_variant(xattrs: &BTreeMap<Box<OsStr>, Box<[u8]>>) -> glib::Variant {
    use glib::prelude::ToVariant;
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = xattrs
        .iter()
        .map(|(k, val)| {
            let mut name = k.as_encoded_bytes().to_vec();
            name.push(0);
            (name, val.to_vec())
        })
        .collect();
    v.sort();
    v.to_variant()
}

/// A `GFileInfo` as libostree's file header reads it.
pub fn file_info(meta: &FileMeta<'_>, size: u64, symlink_target: Option<&str>) -> gio::FileInfo {
    let info = gio::FileInfo::new();
    info.set_attribute_uint32("unix::uid", meta.uid);
    info.set_attribute_uint32("unix::gid", meta.gid);
    info.set_attribute_uint32("unix::mode", meta.mode);
    match symlink_target {
        Some(t) => {
            info.set_file_type(gio::FileType::SymbolicLink);
            info.set_symlink_target(t);
        }
        None => {
            info.set_file_type(gio::FileType::Regular);
            info.set_size(size as i64);
        }
    }
    info
}

/// The bytes libostree puts before a regular file's content, in its
/// content stream and its checksum alike: the size-prefixed `(uuuus
/// a(ayay))` header. Taken from libostree (`raw_file_to_content_stream` of
/// an empty input), so the format is libostree's, not reimplemented.
pub fn file_header(meta: &FileMeta<'_>, size: u64) -> Result<Vec<u8>> {
    use gio::prelude::InputStreamExtManual;
    let empty = gio::MemoryInputStream::new();
    let (stream, len) = ostree::raw_file_to_content_stream(
        &empty,
        &file_info(meta, size, None),
        Some(&xattrs_variant(meta.xattrs)),
        gio::Cancellable::NONE,
    )
    .map_err(|e| anyhow::anyhow!("building an ostree file header: {e}"))?;
    let mut out = vec![0u8; len as usize];
    let (n, _) = stream
        .read_all(&mut out, gio::Cancellable::NONE)
        .map_err(|e| anyhow::anyhow!("reading an ostree file header: {e}"))?;
    out.truncate(n);
    Ok(out)
}

/// Relative path of a content object below the repository.
pub fn object_path(checksum: &str) -> String {
    format!("objects/{}/{}.file", &checksum[..2], &checksum[2..])
}

/// Writes content objects from composefs objects into one repository.
pub struct ContentWriter<'r> {
    repo_dir: &'r Dir,
    /// How content reached the objects: reflinked or copied.
    pub tally: Tally,
    /// Objects written by this writer.
    pub written: u64,
    /// Objects that were already in the repository.
    pub reused: u64,
    /// Make objects already in the repository share the composefs object's
    /// extents (a synthesized commit on a bound host: objects of a classic
    /// commit hold their own copy).
    pub share_reused: bool,
    /// Reused objects made to share by that.
    pub reused_shared: u64,
    /// Whether the object of the last [`Self::write_from_object`] shares
    /// its composefs object's extents (reflinked, or found or made so).
    pub last_shared: bool,
}

impl<'r> ContentWriter<'r> {
    /// A writer into the bare repository opened at `repo_dir`.
    pub fn new(repo_dir: &'r Dir) -> Self {
        Self {
            repo_dir,
            tally: Tally::default(),
            written: 0,
            reused: 0,
            share_reused: false,
            reused_shared: 0,
            last_shared: false,
        }
    }

    /// The checksum libostree gives a regular file with `meta` and the
    /// content of `src` (read from offset 0, whatever the file's offset): SHA-256 over libostree's
    /// file header (serialized by libostree itself,
    /// [`file_header`]) and the content, hashed with the `sha2` crate (which
    /// uses the CPU's SHA extensions; GLib's checksum does not). The unit
    /// tests check it against libostree's `checksum_file_from_input`.
    pub fn checksum(meta: &FileMeta<'_>, src: &File, size: u64) -> Result<String> {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let mut h = sha2::Sha256::new();
        h.update(file_header(meta, size)?);
        let mut buf = vec![0u8; 256 * 1024];
        let mut off = 0u64;
        while off < size {
            let want = buf.len().min((size - off) as usize);
            let n = src
                .read_at(&mut buf[..want], off)
                .context("reading a file to checksum")?;
            if n == 0 {
                anyhow::bail!("the file ended {} bytes before its size", size - off);
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(hex::encode(h.finalize()))
    }

    /// [`Self::checksum`] computed by libostree alone (for tests).
    pub fn checksum_by_libostree(meta: &FileMeta<'_>, src: &File, size: u64) -> Result<String> {
        let dup = src.try_clone().context("duplicating a file descriptor")?;
        // SAFETY: the stream owns the duplicated descriptor and closes it.
        let stream = unsafe { gio::UnixInputStream::take_fd(dup) };
        let csum = ostree::checksum_file_from_input(
            &file_info(meta, size, None),
            Some(&xattrs_variant(meta.xattrs)),
            Some(&stream),
            ostree::ObjectType::File,
            gio::Cancellable::NONE,
        )
        .map_err(|e| anyhow::anyhow!("computing an ostree checksum: {e}"))?;
        Ok(csum.to_hex())
    }

    /// Writes the object for `src` (a composefs object of `size` bytes)
    /// with `meta` unless the repository has it; returns its checksum.
    /// `known` is its checksum when already computed ([`Self::checksum`]).
    pub fn write_from_object(
        &mut self,
        meta: &FileMeta<'_>,
        src: &File,
        size: u64,
        known: Option<String>,
    ) -> Result<String> {
        let checksum = match known {
            Some(c) => c,
            None => Self::checksum(meta, src, size)?,
        };
        let rel = object_path(&checksum);
        if self.repo_dir.try_exists(&rel)? {
            self.reused += 1;
            if self.share_reused && size >= 4096 {
                let dst = self.repo_dir.open(&rel)?.into_std();
                if reflink::share_identical(src, &dst, reflink::Policy::ReflinkOrCopy)
                    .with_context(|| {
                        format!("sharing ostree object {checksum} with its composefs object")
                    })?
                    == reflink::Method::Reflinked
                {
                    self.reused_shared += 1;
                }
            }
            return Ok(checksum);
        }
        let tmp = rustix::fs::openat(
            self.repo_dir.open_dir("tmp")?.as_fd(),
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .context("creating a temporary object in the ostree repository")?;
        let tmp = File::from(tmp);
        let method = reflink::clone_or_copy(src, &tmp, reflink::Policy::ReflinkOrCopy)?;
        self.tally.record(method, size);
        self.last_shared = method != reflink::Method::Copied || size < 4096;
        // Owner first (chown clears set-id bits and capabilities), then
        // xattrs, then the mode.
        rustix::fs::fchown(
            &tmp,
            Some(rustix::process::Uid::from_raw(meta.uid)),
            Some(rustix::process::Gid::from_raw(meta.gid)),
        )?;
        for (k, v) in meta.xattrs {
            rustix::fs::fsetxattr(&tmp, k.as_ref(), v, rustix::fs::XattrFlags::empty())
                .with_context(|| format!("setting xattr {}", k.to_string_lossy()))?;
        }
        rustix::fs::fchmod(&tmp, Mode::from_raw_mode(meta.mode & 0o7777))?;
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::fs::futimens(
            &tmp,
            &Timestamps {
                last_access: zero,
                last_modification: zero,
            },
        )?;
        let objects = self.repo_dir.open_dir("objects")?;
        let prefix = &checksum[..2];
        match objects.create_dir(prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("creating an objects directory"),
        }
        let dir = objects.open_dir(prefix)?;
        match rustix::fs::linkat(
            &tmp,
            "",
            dir.as_fd(),
            format!("{}.file", &checksum[2..]),
            AtFlags::EMPTY_PATH,
        ) {
            Ok(()) => self.written += 1,
            Err(rustix::io::Errno::EXIST) => self.reused += 1,
            Err(e) => return Err(e).with_context(|| format!("linking object {checksum}")),
        }
        Ok(checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_names_are_nul_terminated_and_sorted() {
        let mut x: BTreeMap<Box<OsStr>, Box<[u8]>> = BTreeMap::new();
        x.insert(OsStr::new("user.b").into(), b"2".to_vec().into());
        x.insert(
            OsStr::new("security.capability").into(),
            b"1".to_vec().into(),
        );
        let v = xattrs_variant(&x);
        assert_eq!(v.type_().as_str(), "a(ayay)");
        let back: Vec<(Vec<u8>, Vec<u8>)> = v.get().unwrap();
        assert_eq!(back[0].0, b"security.capability\0");
        assert_eq!(back[1].0, b"user.b\0");
    }

    /// The header + `sha2` checksum is libostree's, for files with and
    /// without xattrs, set-id bits, other owners, empty and multi-chunk.
    #[test]
    fn checksums_match_libostree() {
        use std::io::{Seek, Write};
        let mut caps: BTreeMap<Box<OsStr>, Box<[u8]>> = BTreeMap::new();
        caps.insert(
            OsStr::new("security.capability").into(),
            vec![1, 0, 0, 2, 0, 32, 0, 0].into(),
        );
        caps.insert(OsStr::new("user.x").into(), b"y".to_vec().into());
        let none = BTreeMap::new();
        for (len, uid, gid, mode, x) in [
            (0usize, 0, 0, 0o100644, &none),
            (1, 0, 0, 0o100644, &none),
            (70_000, 1000, 100, 0o104755, &caps),
            (600_000, 0, 0, 0o100600, &none),
        ] {
            let mut f = tempfile::tempfile().unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            f.write_all(&data).unwrap();
            let meta = FileMeta {
                uid,
                gid,
                mode,
                xattrs: x,
            };
            f.rewind().unwrap();
            let ours = ContentWriter::checksum(&meta, &f, len as u64).unwrap();
            f.rewind().unwrap();
            let theirs = ContentWriter::checksum_by_libostree(&meta, &f, len as u64).unwrap();
            assert_eq!(ours, theirs, "len {len} mode {mode:o}");
        }
    }

    #[test]
    fn object_paths_split_the_checksum() {
        let c = "ab".to_string() + &"0".repeat(62);
        assert_eq!(
            object_path(&c),
            format!("objects/ab/{}.file", "0".repeat(62))
        );
    }
}
