//! The content objects of a commit, written ahead on all CPUs before its
//! tree is built: each is a reflink of its composefs object (a copy without
//! reflinks), its checksum from the [`ChecksumCache`] where known.

use std::collections::HashMap;
use std::ffi::OsStr;

use anyhow::{Context, Result, anyhow};
use cap_std_ext::cap_std::fs::Dir;
use composefs::generic_tree::{Inode, LeafContent, Stat};
use composefs::tree::{Directory, FileSystem, RegularFile};

use super::checksum_cache::{self, ChecksumCache};
use super::objects::{ContentWriter, FileMeta};
use crate::fs::reflink::Tally;
use crate::stores::composefs_repo::{ObjectId, Repo};

/// Top-level directories kept empty in the commit.
pub(super) const EMPTIED: [&str; 5] = ["run", "tmp", "proc", "sys", "dev"];

/// What [`prepare_content`] did.
pub(super) struct Prepared {
    /// Leaf index -> ostree checksum.
    pub(super) checksums: HashMap<usize, String>,
    /// Files read (their checksum was not cached), and their bytes.
    pub(super) files_read: u64,
    pub(super) bytes_read: u64,
    /// Files whose checksum came from the cache.
    pub(super) cached: u64,
    /// How content reached the objects written.
    pub(super) tally: Tally,
    pub(super) written: u64,
    pub(super) reused: u64,
    pub(super) reused_shared: u64,
}

/// The cache key of a leaf with a composefs object.
fn leaf_key(obj: &ObjectId, st: &Stat) -> String {
    use composefs::fsverity::FsVerityHashValue;
    checksum_cache::key(
        &obj.to_hex(),
        st.st_uid,
        st.st_gid,
        (st.st_mode & 0o7777) | libc::S_IFREG,
        &st.xattrs,
    )
}

/// The leaves the commit keeps: everything but what lies below the
/// top-level directories it keeps empty.
fn kept_leaves(fs: &FileSystem<ObjectId>) -> std::collections::HashSet<usize> {
    fn walk(d: &Directory<ObjectId>, out: &mut std::collections::HashSet<usize>) {
        for (_, inode) in d.entries() {
            match inode {
                Inode::Directory(sub) => walk(sub, out),
                Inode::Leaf(id, _) => {
                    out.insert(id.0);
                }
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    for (name, inode) in fs.root.entries() {
        match inode {
            Inode::Directory(d) if !EMPTIED.iter().any(|e| OsStr::new(e) == name) => {
                walk(d, &mut out)
            }
            Inode::Directory(_) => {}
            Inode::Leaf(id, _) => {
                out.insert(id.0);
            }
        }
    }
    out
}

/// The ostree content object of every kept leaf whose content is a
/// composefs object, written on all CPUs before the tree is built (each is
/// independent: reading and hashing the content, then an `O_TMPFILE`
/// reflink, is most of a commit's time). Checksums come from the cache when
/// it knows the object with that metadata and the repository still has the
/// ostree object (then nothing is read, and with `share_reused` the object
/// is only made to share the composefs object's extents); otherwise they
/// are computed (`ContentWriter::checksum`) and go into the cache.
pub(super) fn prepare_content(
    cfs: &Repo,
    fs: &FileSystem<ObjectId>,
    repo_dir: &Dir,
    cache: &mut ChecksumCache,
    share_reused: bool,
) -> Result<Prepared> {
    let kept = kept_leaves(fs);
    /// (leaf, object, size, cache key, cached checksum, already shared).
    type Work<'f> = (usize, &'f ObjectId, u64, String, Option<String>, bool);
    let mut work: Vec<Work<'_>> = vec![];
    for (i, l) in fs.leaves.iter().enumerate() {
        if !kept.contains(&i) {
            continue;
        }
        if let LeafContent::Regular(
            RegularFile::External(o, size) | RegularFile::ExternalNoVerity(o, size),
        ) = &l.content
        {
            let k = leaf_key(o, &l.stat);
            let known = cache.lookup(repo_dir, &k);
            let shared = known.is_some() && cache.is_shared(&k);
            work.push((i, o, *size, k, known, shared));
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    /// (leaf, checksum, shares its composefs object's extents).
    type Out = (Vec<(usize, String, bool)>, Tally, u64, u64, u64);
    let results: Vec<Result<Out>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<Out> {
                    let mut out = vec![];
                    let mut writer = ContentWriter::new(repo_dir);
                    writer.share_reused = share_reused;
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((i, obj, size, _, known, shared)) = work.get(k) else {
                            break;
                        };
                        // Known, and nothing to check: not even opened.
                        if let Some(c) = known
                            && (!share_reused || *shared)
                        {
                            writer.reused += 1;
                            out.push((*i, c.clone(), *shared));
                            continue;
                        }
                        let st = &fs.leaves[*i].stat;
                        let meta = FileMeta {
                            uid: st.st_uid,
                            gid: st.st_gid,
                            mode: (st.st_mode & 0o7777) | libc::S_IFREG,
                            xattrs: &st.xattrs,
                        };
                        let f = std::fs::File::from(cfs.open_object(obj).with_context(|| {
                            use composefs::fsverity::FsVerityHashValue;
                            format!("opening composefs object {}", obj.to_hex())
                        })?);
                        let c = match known {
                            Some(c) => c.clone(),
                            None => ContentWriter::checksum(&meta, &f, *size)?,
                        };
                        let c = writer
                            .write_from_object(&meta, &f, *size, Some(c))
                            .context("writing an ostree content object")?;
                        out.push((*i, c, writer.last_shared));
                    }
                    Ok((
                        out,
                        writer.tally,
                        writer.written,
                        writer.reused,
                        writer.reused_shared,
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a content object thread panicked")))
            })
            .collect()
    });
    let mut p = Prepared {
        checksums: HashMap::with_capacity(work.len()),
        files_read: 0,
        bytes_read: 0,
        cached: 0,
        tally: Tally::default(),
        written: 0,
        reused: 0,
        reused_shared: 0,
    };
    let mut shared_leaves = std::collections::HashSet::new();
    for r in results {
        let (out, tally, written, reused, shared) = r?;
        for (i, c, s) in out {
            if s {
                shared_leaves.insert(i);
            }
            p.checksums.insert(i, c);
        }
        p.tally.merge(&tally);
        p.written += written;
        p.reused += reused;
        p.reused_shared += shared;
    }
    for (i, _, size, k, known, _) in work {
        if known.is_some() {
            p.cached += 1;
        } else if let Some(c) = p.checksums.get(&i) {
            cache.insert(k.clone(), c.clone());
            p.files_read += 1;
            p.bytes_read += size;
        }
        // Only a synthesized commit's objects share the host's composefs
        // objects (a classic commit's were reflinked from a staging
        // repository that is gone).
        if share_reused && shared_leaves.contains(&i) {
            cache.mark_shared(&k);
        } else {
            cache.mark_unshared(&k);
        }
    }
    Ok(p)
}
