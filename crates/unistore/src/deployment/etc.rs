//! Materializing part of an image tree (`/etc`, `/var`) as real files.
//!
//! A deployment's `/etc` is a writable copy of the image's `/etc`, kept in
//! its state directory. A regular file stored as a composefs object is a
//! reflink of that object where the filesystem can share extents (no data
//! written; copy-on-write keeps the object intact when the file is edited),
//! else a copy; small inline contents are written.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use composefs::generic_tree::{Directory, Inode, LeafContent, LeafId, Stat};
use composefs::tree::{FileSystem, RegularFile};
use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps};

use crate::fs::reflink::Tally;
use crate::stores::composefs_repo::{ObjectId, Repo, write_file_content};

/// What [`materialize`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Materialized {
    /// Entries created (directories, files, links, ...; not hardlinks).
    pub entries: u64,
    /// Regular file contents: reflinked or copied.
    pub content: Tally,
}

/// Copies the image directory `src` (e.g. `/etc`) of `fs` to `dest`, which
/// must not exist; a missing `src` gives an empty directory.
pub fn materialize(
    fs: &FileSystem<ObjectId>,
    src: &str,
    repo: &Repo,
    dest: &Path,
) -> Result<Materialized> {
    let root = fs.as_dir();
    let dir = match root.get_directory_opt(OsStr::new(src)) {
        Ok(Some(d)) => d,
        _ => {
            std::fs::create_dir(dest)?;
            return Ok(Materialized::default());
        }
    };
    let mut w = Writer {
        leaves: &fs.leaves,
        repo,
        links: HashMap::new(),
        done: Materialized::default(),
    };
    w.dir(dir, dest)?;
    Ok(w.done)
}

struct Writer<'a> {
    leaves: &'a [composefs::generic_tree::Leaf<RegularFile<ObjectId>>],
    repo: &'a Repo,
    links: HashMap<LeafId, PathBuf>,
    done: Materialized,
}

impl Writer<'_> {
    fn dir(&mut self, dir: &Directory<RegularFile<ObjectId>>, dest: &Path) -> Result<()> {
        std::fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
        for (name, inode) in dir.sorted_entries() {
            let path = dest.join(name);
            match inode {
                Inode::Directory(d) => self.dir(d, &path)?,
                Inode::Leaf(id, _) => self.leaf(*id, &path)?,
            }
        }
        apply_stat(dest, &dir.stat, false)?;
        self.done.entries += 1;
        Ok(())
    }

    fn leaf(&mut self, id: LeafId, path: &Path) -> Result<()> {
        if let Some(first) = self.links.get(&id) {
            std::fs::hard_link(first, path)
                .with_context(|| format!("linking {}", path.display()))?;
            return Ok(());
        }
        let leaf = &self.leaves[id.0];
        let mut is_link = false;
        match &leaf.content {
            LeafContent::Regular(f) => {
                let out = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                write_file_content(f, self.repo, &out, &mut self.done.content)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            LeafContent::Symlink(target) => {
                std::os::unix::fs::symlink(&**target, path)?;
                is_link = true;
            }
            LeafContent::Fifo => {
                rustix::fs::mknodat(CWD, path, rustix::fs::FileType::Fifo, Mode::from(0o600), 0)?;
            }
            LeafContent::CharacterDevice(dev) | LeafContent::BlockDevice(dev) => {
                let ft = if matches!(leaf.content, LeafContent::CharacterDevice(_)) {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                rustix::fs::mknodat(CWD, path, ft, Mode::from(0o600), *dev)?;
            }
            LeafContent::Socket => return Ok(()),
        }
        apply_stat(path, &leaf.stat, is_link)?;
        self.links.insert(id, path.to_path_buf());
        self.done.entries += 1;
        Ok(())
    }
}

fn apply_stat(path: &Path, st: &Stat, is_link: bool) -> Result<()> {
    let flags = if is_link {
        AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::empty()
    };
    rustix::fs::chownat(
        CWD,
        path,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
        flags,
    )
    .with_context(|| format!("chown {}", path.display()))?;
    for (k, v) in &st.xattrs {
        let r = if is_link {
            rustix::fs::lsetxattr(path, k.as_bytes(), v, rustix::fs::XattrFlags::empty())
        } else {
            rustix::fs::setxattr(path, k.as_bytes(), v, rustix::fs::XattrFlags::empty())
        };
        r.with_context(|| format!("setting xattr {k:?} on {}", path.display()))?;
    }
    if !is_link {
        // After chown, which clears setuid bits.
        rustix::fs::chmodat(CWD, path, Mode::from(st.st_mode & 0o7777), AtFlags::empty())?;
    }
    let t = Timespec {
        tv_sec: st.st_mtim_sec,
        tv_nsec: st.st_mtim_nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        flags,
    )?;
    Ok(())
}
