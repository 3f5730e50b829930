//! Building one layer of the store: its `diff` directory replayed from the
//! layer's splitstream (see the module documentation of
//! [`crate::stores::containers_storage::writer`]), its tar-split, link and `lower`, published in
//! that order.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use composefs::fsverity::FsVerityHashValue;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use serde_json::{Value, json};

use crate::stores::composefs_repo::{ObjectId, Repo};
use crate::stores::containers_storage::format::{self as fmt, LAYERS_DIR, LINK_DIR, OVERLAY_DIR};
use crate::stores::tar_walk::{self, Body, Entry, Kind, LayerVisitor};

use super::split_thread::{Content, Piece, SplitThread};
use super::{
    SourceLayer, TMP_PREFIX, UNRECORDED_MARKER, WriteOptions, WriteStats, links_to, remove_any,
};

/// Builds layer `id` into the store and returns its `layers.json` record.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_layer(
    repo: &Repo,
    store: &Path,
    id: &str,
    parent: Option<&str>,
    layer: &SourceLayer,
    opts: &WriteOptions,
    extra: &[(String, super::extra_xattrs::Xattrs)],
    stats: &mut WriteStats,
) -> Result<Value> {
    let overlay = store.join(OVERLAY_DIR);
    let staging = overlay.join(format!("{TMP_PREFIX}{id}"));
    remove_any(&staging)?;
    fmt::ensure_dir(&staging, 0o700)?;
    let result = (|| -> Result<Value> {
        // The diff root: 0555 for a base layer, the parent's mode otherwise.
        let root_mode = match parent {
            Some(p) => std::fs::metadata(overlay.join(p).join("diff"))
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o555),
            None => 0o555,
        };
        let diff = staging.join("diff");
        rustix::fs::mkdir(&diff, Mode::from_raw_mode(0o700))?;
        let root = rustix::fs::open(
            &diff,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&root, Mode::from_raw_mode(root_mode))?;
        for d in ["work", "merged"] {
            fmt::ensure_dir(&staging.join(d), 0o700)?;
        }
        if parent.is_none() {
            fmt::ensure_dir(&staging.join("empty"), 0o700)?;
        }

        let split_tmp = store
            .join(LAYERS_DIR)
            .join(format!("{TMP_PREFIX}{id}.tar-split.gz"));
        let split_file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&split_tmp)
            .with_context(|| format!("creating {}", split_tmp.display()))?;
        rustix::fs::fchmod(&split_file, Mode::from_raw_mode(0o600))?;
        let mut w = DiffWriter {
            repo,
            root,
            root_path: diff.clone(),
            split: SplitThread::spawn(BufWriter::new(split_file))?,
            seg: Vec::new(),
            size: 0,
            dirs: Vec::new(),
            uids: BTreeSet::new(),
            gids: BTreeSet::new(),
            allow_copy: opts.allow_copy,
            stats,
            cache: None,
            buf: vec![0u8; 1 << 20],
            layer: layer.diff_id.clone(),
        };
        // Start reading the layer's objects while the walk works on the
        // first ones: on a cold cache the reads, not the hashing, dominate.
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(|| prefetch_objects(repo, &layer.diff_id, &layer.verity));
            tar_walk::walk_layer(repo, &layer.diff_id, Some(&layer.verity), &mut w)
        })?;
        let (digest, diff_size, uids, gids) = w.finish()?;
        ensure!(
            digest == layer.diff_id,
            "the layer rebuilt from the composefs repository has digest {digest}, not {}: the repository's copy is damaged",
            layer.diff_id
        );
        // Issue 22: xattrs the tar does not carry (an ostree layer's).
        super::extra_xattrs::apply(&diff, extra)?;

        // Link, lower.
        let link = {
            // A layer rebuilt in place keeps its short name: children name
            // it in their `lower` files.
            let old = std::fs::read_to_string(overlay.join(id).join("link"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            match old.or_else(|| links_to(store, id).ok().and_then(|l| l.into_iter().next())) {
                Some(l) => l,
                None => fmt::new_link_name()?,
            }
        };
        fmt::atomic_replace(&staging.join("link"), link.as_bytes())?;
        rustix::fs::chmod(staging.join("link"), Mode::from_raw_mode(0o644))?;
        if let Some(p) = parent {
            let plink = std::fs::read_to_string(overlay.join(p).join("link"))
                .with_context(|| format!("reading the link of parent layer {p}"))?;
            let mut lower = format!("l/{}", plink.trim());
            if let Ok(pl) = std::fs::read_to_string(overlay.join(p).join("lower"))
                && !pl.trim().is_empty()
            {
                lower.push(':');
                lower.push_str(pl.trim());
            }
            fmt::atomic_replace(&staging.join("lower"), lower.as_bytes())?;
            rustix::fs::chmod(staging.join("lower"), Mode::from_raw_mode(0o644))?;
        }
        // Marks a directory this writer made until `layers.json` lists it.
        std::fs::write(staging.join(UNRECORDED_MARKER), b"")?;

        // Publish: data first, then names, then the record.
        rustix::fs::syncfs(File::open(store)?)?;
        let final_dir = overlay.join(id);
        if final_dir.exists() {
            let old = overlay.join(format!("{TMP_PREFIX}old-{id}"));
            std::fs::rename(&final_dir, &old)?;
            remove_any(&old)?;
        }
        std::fs::rename(&staging, &final_dir)
            .with_context(|| format!("renaming the new layer to {}", final_dir.display()))?;
        let link_path = store.join(LINK_DIR).join(&link);
        if std::fs::symlink_metadata(&link_path).is_err() {
            std::os::unix::fs::symlink(format!("../{id}/diff"), &link_path)
                .with_context(|| format!("creating {}", link_path.display()))?;
        }
        std::fs::rename(&split_tmp, store.join(fmt::tar_split_path(id)))?;

        let (cdigest, csize) = if layer.compression == fmt::compression::UNCOMPRESSED {
            (layer.diff_id.clone(), diff_size)
        } else {
            (layer.compressed_digest.clone(), layer.compressed_size)
        };
        let mut rec = json!({ "id": id });
        if let Some(p) = parent {
            rec["parent"] = json!(p);
        }
        rec["created"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        rec["compressed-diff-digest"] = json!(cdigest);
        rec["compressed-size"] = json!(csize);
        rec["diff-digest"] = json!(layer.diff_id);
        rec["diff-size"] = json!(diff_size);
        rec["compression"] = json!(layer.compression);
        rec["uidset"] = json!(uids);
        rec["gidset"] = json!(gids);
        Ok(rec)
    })();
    if result.is_err() {
        let _ = remove_any(&staging);
        let _ = remove_any(
            &store
                .join(LAYERS_DIR)
                .join(format!("{TMP_PREFIX}{id}.tar-split.gz")),
        );
    }
    result
}

/// Asks the kernel to read ahead every object the layer references, in
/// order (best effort).
fn prefetch_objects(repo: &Repo, diff_id: &str, verity: &ObjectId) {
    let Ok(stream_id) = crate::stores::composefs_repo::layer_stream_id(diff_id) else {
        return;
    };
    let Ok(mut reader) = repo.open_stream(&stream_id, Some(verity), None) else {
        return;
    };
    let mut ids = vec![];
    if reader.get_object_refs(|id| ids.push(id.clone())).is_err() {
        return;
    }
    for id in ids {
        if let Ok(fd) = repo.open_object(&id) {
            let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::WillNeed);
        }
    }
}

/// Unpacks a layer into a `diff` directory and writes its tar-split.
struct DiffWriter<'a> {
    repo: &'a Repo,
    root: OwnedFd,
    root_path: PathBuf,
    /// The tar-split and the stream's hash, on their own thread.
    split: SplitThread,
    /// Raw bytes of the segment being collected.
    seg: Vec<u8>,
    size: u64,
    /// Directories whose mtimes are set at the end.
    dirs: Vec<(Vec<u8>, i64, u32)>,
    uids: BTreeSet<u64>,
    gids: BTreeSet<u64>,
    allow_copy: bool,
    stats: &'a mut WriteStats,
    /// The last parent directory opened.
    cache: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
    /// The layer's diff-id, for messages.
    layer: String,
}

/// Sets the entry's xattrs with `set` (by fd or by path). A PAX xattr
/// record with an empty value sets nothing: POSIX pax (and Go's tar, podman's
/// reader) take an empty value as "no such record" (issue 25: an empty
/// `trusted.overlay.metacopy` on a store file makes overlayfs refuse it).
fn set_xattrs(e: &Entry, set: impl Fn(&OsStr, &[u8]) -> rustix::io::Result<()>) -> Result<()> {
    for (k, v) in &e.xattrs {
        if v.is_empty() {
            continue;
        }
        set(os(k), v).with_context(|| {
            format!(
                "setting xattr {} on {}",
                String::from_utf8_lossy(k),
                e.display()
            )
        })?;
    }
    Ok(())
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn ts(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl DiffWriter<'_> {
    fn finish(mut self) -> Result<(String, u64, Vec<u64>, Vec<u64>)> {
        // Directory mtimes last (children changed them), deepest first.
        for (rel, sec, nsec) in std::mem::take(&mut self.dirs).iter().rev() {
            let t = ts(*sec, *nsec);
            if rel.is_empty() {
                rustix::fs::futimens(&self.root, &t)?;
            } else {
                let (p, n) = split_parent(rel);
                let pfd = self.dir(p, false)?;
                rustix::fs::utimensat(&pfd, os(n), &t, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        if !self.seg.is_empty() {
            let seg = std::mem::take(&mut self.seg);
            self.split.send(Piece::Segment(seg))?;
        }
        let digest = self.split.finish()?;
        Ok((
            digest,
            self.size,
            self.uids.into_iter().collect(),
            self.gids.into_iter().collect(),
        ))
    }

    /// Opens directory `rel` of the diff (empty: the root), creating missing
    /// ones (0755 root) when `create`. Never follows a symlink.
    fn dir(&mut self, rel: &[u8], create: bool) -> Result<OwnedFd> {
        if let Some((k, fd)) = &self.cache
            && k == rel
        {
            return Ok(fd.try_clone()?);
        }
        let mut cur = self.root.try_clone()?;
        if !rel.is_empty() {
            for comp in rel.split(|b| *b == b'/') {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                cur = match rustix::fs::openat(&cur, os(comp), flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) if create => {
                        rustix::fs::mkdirat(&cur, os(comp), Mode::from_raw_mode(0o755))?;
                        let fd = rustix::fs::openat(&cur, os(comp), flags, Mode::empty())?;
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                        fd
                    }
                    Err(Errno::NOTDIR | Errno::LOOP) => bail!(
                        "/{} is not a directory in the layer",
                        String::from_utf8_lossy(rel)
                    ),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("opening /{} in the layer", String::from_utf8_lossy(rel))
                        });
                    }
                };
            }
        }
        self.cache = Some((rel.to_vec(), cur.try_clone()?));
        Ok(cur)
    }

    /// Removes whatever is at `name` in `parent` (a directory recursively),
    /// unless it is a directory and `keep_dir`. Returns whether a directory
    /// was kept.
    fn clear(&mut self, parent: &OwnedFd, rel: &[u8], name: &[u8], keep_dir: bool) -> Result<bool> {
        match rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if is_dir && keep_dir {
                    return Ok(true);
                }
                if is_dir {
                    self.cache = None;
                    std::fs::remove_dir_all(self.root_path.join(os(rel)))?;
                } else {
                    rustix::fs::unlinkat(parent, os(name), AtFlags::empty())?;
                }
                Ok(false)
            }
        }
    }

    /// Owner, mode and xattrs of a directory now; its mtime at the end.
    fn dir_attrs(&mut self, fd: &OwnedFd, rel: Vec<u8>, e: &Entry) -> Result<()> {
        rustix::fs::fchown(
            fd,
            Some(Uid::from_raw(e.uid as u32)),
            Some(Gid::from_raw(e.gid as u32)),
        )?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))?;
        self.set_xattrs_fd(fd, e)?;
        self.dirs.push((rel, e.mtime_sec, e.mtime_nsec));
        Ok(())
    }

    fn set_xattrs_fd(&self, fd: &OwnedFd, e: &Entry) -> Result<()> {
        set_xattrs(e, |k, v| {
            rustix::fs::fsetxattr(fd, k, v, XattrFlags::empty())
        })
    }

    fn set_xattrs_path(&self, rel: &[u8], e: &Entry) -> Result<()> {
        let p = self.root_path.join(os(rel));
        set_xattrs(e, |k, v| {
            rustix::fs::lsetxattr(&p, k, v, XattrFlags::empty())
        })
    }

    /// Owner, mode, xattrs and times of a non-directory created at `name`.
    fn finish_at(
        &self,
        parent: &OwnedFd,
        rel: &[u8],
        name: &[u8],
        e: &Entry,
        chmod: bool,
    ) -> Result<()> {
        rustix::fs::chownat(
            parent,
            os(name),
            Some(Uid::from_raw(e.uid as u32)),
            Some(Gid::from_raw(e.gid as u32)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if chmod {
            rustix::fs::chmodat(
                parent,
                os(name),
                Mode::from_raw_mode(e.mode),
                AtFlags::empty(),
            )?;
        }
        self.set_xattrs_path(rel, e)?;
        rustix::fs::utimensat(
            parent,
            os(name),
            &ts(e.mtime_sec, e.mtime_nsec),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Writes a regular file's content; returns its CRC-64.
    /// Puts the entry's content into `file` (a reflink of its object where
    /// possible) and returns it for the tar-split thread.
    fn write_content(&mut self, file: &File, e: &Entry, body: Body<'_>) -> Result<Content> {
        match body {
            Body::Empty => Ok(Content::None),
            Body::Inline(bytes) => {
                (&*file).write_all(bytes)?;
                self.stats.bytes_inline += bytes.len() as u64;
                Ok(Content::Inline(bytes.to_vec()))
            }
            Body::External(id) => {
                let src = File::from(self.repo.open_object(id).with_context(|| {
                    format!("opening object {} ({})", id.to_hex(), e.display())
                })?);
                let reflinked = match rustix::fs::ioctl_ficlone(file, &src) {
                    Ok(()) => true,
                    Err(err)
                        if crate::stores::containers_storage::writer::reflink_unsupported(err)
                            && self.allow_copy =>
                    {
                        false
                    }
                    Err(err) => {
                        return Err(std::io::Error::from(err)).with_context(|| {
                            format!("reflinking {} from object {}", e.display(), id.to_hex())
                        });
                    }
                };
                if reflinked {
                    self.stats.files_reflinked += 1;
                    self.stats.bytes_reflinked += e.size;
                } else {
                    let mut r = &src;
                    loop {
                        let n = r.read(&mut self.buf)?;
                        if n == 0 {
                            break;
                        }
                        (&*file).write_all(&self.buf[..n])?;
                    }
                    self.stats.files_copied += 1;
                    self.stats.bytes_copied += e.size;
                }
                // Its bytes are read again there (from the page cache) for
                // the CRC-64 and the hash, and its size checked.
                Ok(Content::Object {
                    file: src,
                    what: format!("object {} ({})", id.to_hex(), e.display()),
                })
            }
        }
    }

    fn unpack(&mut self, e: &Entry, body: Body<'_>) -> Result<Content> {
        if e.kind == Kind::GlobalHeader {
            return Ok(Content::None);
        }
        let rel = e.rel_path().map_err(|why| {
            anyhow::anyhow!(tar_walk::refusal(
                &self.layer,
                &String::from_utf8_lossy(&e.name),
                &why.to_string()
            ))
        })?;
        let (prel, name) = split_parent(&rel);
        if let Some(why) = tar_walk::odd_whiteout(name) {
            bail!(tar_walk::refusal(
                &self.layer,
                &e.display(),
                &format!("{why} names no file")
            ));
        }
        if rel.is_empty() {
            // The layer root itself.
            if e.kind == Kind::Directory {
                let root = self.root.try_clone()?;
                self.dir_attrs(&root, vec![], e)?;
            }
            return Ok(Content::None);
        }
        let parent = self.dir(prel, true)?;
        // Whiteouts, as the overlay driver stores them.
        if let Some(target) = name.strip_prefix(b".wh.") {
            if target == b".wh..opq" {
                rustix::fs::fsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .with_context(|| format!("marking {} opaque", e.display()))?;
            } else {
                let mut trel = prel.to_vec();
                if !trel.is_empty() {
                    trel.push(b'/');
                }
                trel.extend_from_slice(target);
                self.clear(&parent, &trel, target, false)?;
                rustix::fs::mknodat(
                    &parent,
                    os(target),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .with_context(|| format!("creating the whiteout for {}", e.display()))?;
                rustix::fs::chownat(
                    &parent,
                    os(target),
                    Some(Uid::from_raw(e.uid as u32)),
                    Some(Gid::from_raw(e.gid as u32)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            return Ok(Content::None);
        }
        let mut content = Content::None;
        match e.kind {
            Kind::GlobalHeader => {}
            Kind::Directory => {
                if !self.clear(&parent, &rel, name, true)? {
                    rustix::fs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o700))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.dir_attrs(&fd, rel.clone(), e)?;
            }
            Kind::Regular => {
                self.clear(&parent, &rel, name, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::CLOEXEC
                        | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )
                .with_context(|| format!("creating {}", e.display()))?;
                let file = File::from(fd);
                content = self.write_content(&file, e, body)?;
                // chown before chmod: chown clears setuid/setgid.
                rustix::fs::fchown(
                    &file,
                    Some(Uid::from_raw(e.uid as u32)),
                    Some(Gid::from_raw(e.gid as u32)),
                )?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(e.mode))?;
                let fd: OwnedFd = file.into();
                self.set_xattrs_fd(&fd, e)?;
                rustix::fs::futimens(&fd, &ts(e.mtime_sec, e.mtime_nsec))?;
            }
            Kind::Symlink => {
                self.clear(&parent, &rel, name, false)?;
                let target = e.link_target.as_deref().unwrap_or_default();
                rustix::fs::symlinkat(os(target), &parent, os(name))
                    .with_context(|| format!("creating symlink {}", e.display()))?;
                self.finish_at(&parent, &rel, name, e, false)?;
            }
            Kind::Hardlink => {
                let trel = e.rel_link_target()?;
                let (tp, tn) = split_parent(&trel);
                let tparent = self.dir(tp, false).with_context(|| {
                    format!(
                        "hard link {} -> /{}",
                        e.display(),
                        String::from_utf8_lossy(&trel)
                    )
                })?;
                self.clear(&parent, &rel, name, false)?;
                rustix::fs::linkat(&tparent, os(tn), &parent, os(name), AtFlags::empty())
                    .with_context(|| {
                        format!(
                            "hard link {} -> /{}",
                            e.display(),
                            String::from_utf8_lossy(&trel)
                        )
                    })?;
                let st = rustix::fs::statat(&parent, os(name), AtFlags::SYMLINK_NOFOLLOW)?;
                let is_symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
                self.finish_at(&parent, &rel, name, e, !is_symlink)?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                self.clear(&parent, &rel, name, false)?;
                let ft = match e.kind {
                    Kind::CharDevice => FileType::CharacterDevice,
                    Kind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                rustix::fs::mknodat(
                    &parent,
                    os(name),
                    ft,
                    Mode::from_raw_mode(e.mode),
                    rustix::fs::makedev(e.dev_major, e.dev_minor),
                )
                .with_context(|| format!("creating {}", e.display()))?;
                self.finish_at(&parent, &rel, name, e, true)?;
            }
        }
        Ok(content)
    }
}

impl LayerVisitor for DiffWriter<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.seg.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, e: &Entry, body: Body<'_>) -> Result<()> {
        // The headers collected so far (with the previous padding) are one
        // segment, then the entry.
        let seg = std::mem::take(&mut self.seg);
        self.split.send(Piece::Segment(seg))?;
        self.uids.insert(e.uid);
        self.gids.insert(e.gid);
        let content = self.unpack(e, body)?;
        self.size += e.size;
        self.split.send(Piece::File {
            name: e.name.clone(),
            size: e.size,
            content,
        })
    }
}
