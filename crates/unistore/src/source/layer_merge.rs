//! The merged tree of an image's layers, with one set of rules for every
//! store (issue 25): the boot image, the ostree commit and the
//! containers-storage writer ([`crate::stores::containers_storage`]) apply
//! the same ones, and they are podman's where composefs-oci's differ.
//!
//! composefs-oci's `create_filesystem` merges the layers for its EROFS
//! images. [`merged`] does the same merge entry by entry, with these
//! differences:
//!
//! * **A parent directory no layer declares** (tar writers emit `var/tmp`
//!   without `var`) is made, root-owned, mode 0755, as podman and tar
//!   extractors make it; composefs-oci fails the pull.
//! * **A hard link's own header** (mode, owner, times, xattrs) is the file's
//!   metadata from then on, for every name of the file, as podman applies
//!   it (`chmod`/`chown` on the link); composefs-oci keeps the first
//!   entry's. A link to a symlink keeps the symlink's metadata.
//! * **A directory whose header carries `trusted.overlay.opaque=y`** hides
//!   what lower layers have below it: podman writes the xattr in its store
//!   and overlayfs honours it; composefs-oci drops the xattr and showed the
//!   lower files.
//! * **A whiteout that names no file** (`.wh.`, `.wh..`, `.wh...`) refuses
//!   the image with one line naming the layer and the entry; composefs-oci
//!   ignores it and the store writer could not write it. A path that leaves
//!   the root (`..`) is refused the same way.
//!
//! Everything else (whiteouts, opaque markers, a directory over a
//! directory, the root's metadata from `/usr`, the xattr filter) is
//! composefs-oci's, so an image none of these rules touch gets exactly
//! composefs-oci's tree and EROFS images ([`Merged::deviates`] is false).
//! An opaque marker on a layer's root clears the tree below it here, as in
//! composefs-oci; overlayfs (podman) ignores it: a documented difference
//! (docs/differential.md).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{Context, Result, anyhow};
use composefs::generic_tree::{Inode, LeafContent, Stat};
use composefs::tree::{Directory, FileSystem};
use composefs_oci::oci_image::OciImage;
use composefs_oci::tar::{TarEntry, TarItem};

use crate::stores::composefs_repo::{ObjectId, Repo};
use crate::stores::tar_walk::{odd_whiteout, refusal};

/// A merged tree and whether one of this module's rules made it differ from
/// composefs-oci's merge of the same layers.
pub struct Merged {
    pub fs: FileSystem<ObjectId>,
    pub deviates: bool,
}

/// The merged tree of `img`'s layers (see the module's rules).
pub fn merged(repo: &Repo, img: &OciImage<ObjectId>) -> Result<Merged> {
    let oc = composefs_oci::open_config(repo, img.config_digest(), Some(img.config_verity()))?;
    let diff_ids = oc.config.rootfs().diff_ids();
    let mut m = Merger::new();
    for (i, diff_id) in diff_ids.iter().enumerate() {
        let layer = format!("{} of {} ({diff_id})", i + 1, diff_ids.len());
        let verity = oc
            .layer_refs
            .get(diff_id.as_str())
            .ok_or_else(|| anyhow!("layer {layer} is not in the composefs repository"))?;
        let mut stream = repo
            .open_stream("", Some(verity), Some(composefs_oci::LAYER_CONTENT_TYPE))
            .with_context(|| format!("opening layer {layer}"))?;
        while let Some(entry) = composefs_oci::tar::get_entry::<ObjectId>(&mut stream)
            .with_context(|| format!("reading layer {layer}"))?
        {
            m.apply(&layer, entry)?;
        }
    }
    m.finish()
}

/// The merge, one entry at a time (what [`merged`] feeds it from the
/// repository; the fuzz target `layer_merge` feeds it generated layers).
pub struct Merger {
    merged: Merged,
    /// The layer being applied, and the files it has put in the tree so far
    /// (what its hard links may name).
    layer: String,
    files: std::collections::HashSet<std::path::PathBuf>,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new()
    }
}

impl Merger {
    pub fn new() -> Self {
        Self {
            merged: Merged {
                fs: FileSystem::new(Stat::uninitialized()),
                deviates: false,
            },
            layer: String::new(),
            files: Default::default(),
        }
    }

    /// Applies the next entry of layer `layer` (named in messages).
    pub fn apply(&mut self, layer: &str, entry: TarEntry<ObjectId>) -> Result<()> {
        if layer != self.layer {
            self.layer = layer.to_string();
            self.files.clear();
        }
        let name = entry.path.to_string_lossy().into_owned();
        let refuse = |why: String| anyhow!(refusal(layer, &name, &why));
        let key: std::path::PathBuf = names(&entry.path).map_err(refuse)?.iter().collect();
        // A hard link names a file of its own layer: podman cannot make
        // one to a lower layer's file (it refuses the layer), so no store
        // can.
        if let TarItem::Hardlink(target) = &entry.item {
            let t: std::path::PathBuf = names(Path::new(target))
                .map_err(|e| refuse(format!("its hard link target {target:?}: {e}")))?
                .iter()
                .collect();
            if !self.files.contains(&t) {
                return Err(refuse(format!(
                    "a hard link to {:?}, which this layer does not have before it (a link cannot name a lower layer's file)",
                    target.to_string_lossy()
                )));
            }
        }
        let is_file = matches!(entry.item, TarItem::Leaf(_) | TarItem::Hardlink(_));
        apply(&mut self.merged, entry).map_err(refuse)?;
        if is_file {
            self.files.insert(key);
        } else {
            self.files.remove(&key);
        }
        Ok(())
    }

    /// The merged tree, with composefs-oci's finishing rules (the root's
    /// metadata from `/usr`, `/run` emptied, the xattr filter).
    pub fn finish(mut self) -> Result<Merged> {
        self.merged
            .fs
            .transform_for_oci(&Default::default())
            .context("finishing the merged tree")?;
        Ok(self.merged)
    }
}

/// The names of `path` below the root; `..` is refused.
fn names(path: &Path) -> std::result::Result<Vec<&OsStr>, String> {
    let mut out = vec![];
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err("the path leaves the image's root (\"..\")".into());
            }
        }
    }
    Ok(out)
}

/// A directory made for a parent no layer declares: root, 0755.
fn implicit_dir_stat() -> Stat {
    Stat {
        st_mode: 0o755,
        ..Stat::uninitialized()
    }
}

/// The directory at `parents`, made (and counted as a deviation) where
/// missing.
fn parent_dir<'d>(
    dir: &'d mut Directory<ObjectId>,
    parents: &[&OsStr],
    deviates: &mut bool,
) -> std::result::Result<&'d mut Directory<ObjectId>, String> {
    let Some((first, rest)) = parents.split_first() else {
        return Ok(dir);
    };
    match dir.lookup(first) {
        None => {
            dir.insert(
                first,
                Inode::Directory(Box::new(Directory::new(implicit_dir_stat()))),
            );
            *deviates = true;
        }
        Some(Inode::Directory(_)) => {}
        Some(Inode::Leaf(..)) => {
            return Err(format!(
                "its parent {:?} is not a directory",
                first.to_string_lossy()
            ));
        }
    }
    let sub = dir.get_directory_mut(first).map_err(|e| format!("{e}"))?;
    parent_dir(sub, rest, deviates)
}

/// Whether two stats differ in what a hard link's header sets.
fn differs(a: &Stat, b: &Stat) -> bool {
    a.st_mode != b.st_mode
        || a.st_uid != b.st_uid
        || a.st_gid != b.st_gid
        || a.st_mtim_sec != b.st_mtim_sec
        || a.st_mtim_nsec != b.st_mtim_nsec
        || a.xattrs != b.xattrs
}

fn apply(m: &mut Merged, entry: TarEntry<ObjectId>) -> std::result::Result<(), String> {
    let path = names(&entry.path)?;
    let Some((file, parents)) = path.split_last() else {
        if !matches!(entry.item, TarItem::Directory) {
            return Err("the image's root must be a directory".into());
        }
        m.fs.set_root_stat(entry.stat);
        return Ok(());
    };
    if let Some(why) = odd_whiteout(file.as_bytes()) {
        return Err(format!("{why} names no file"));
    }
    let inode = match entry.item {
        TarItem::Directory => Inode::Directory(Box::new(Directory::new(entry.stat))),
        TarItem::Leaf(content) => Inode::leaf(m.fs.push_leaf(entry.stat, content)),
        TarItem::Hardlink(target) => {
            let tnames = names(Path::new(&target))
                .map_err(|e| format!("its hard link target {target:?}: {e}"))?;
            let missing = || {
                format!(
                    "a hard link to {:?}, which no layer before it has as a file",
                    target.to_string_lossy()
                )
            };
            let Some((tfile, tparents)) = tnames.split_last() else {
                return Err(missing());
            };
            let mut d = &m.fs.root;
            for p in tparents {
                d = match d.lookup(p) {
                    Some(Inode::Directory(sub)) => sub,
                    _ => return Err(missing()),
                };
            }
            let id = match d.lookup(tfile) {
                Some(Inode::Leaf(id, _)) => *id,
                _ => return Err(missing()),
            };
            // podman's rule: the link's header is the file's metadata now
            // (a symlink keeps its own).
            let leaf = &mut m.fs.leaves[id.0];
            if !matches!(leaf.content, LeafContent::Symlink(_)) && differs(&leaf.stat, &entry.stat)
            {
                leaf.stat = entry.stat;
                m.deviates = true;
            }
            Inode::leaf(id)
        }
    };
    // A directory whose header carries `trusted.overlay.opaque=y` is opaque
    // in the store (podman writes the xattr and overlayfs honours it): it
    // hides what lower layers have below it, like `.wh..wh..opq`.
    let opaque_xattr = matches!(&inode, Inode::Directory(d)
        if d.stat.xattrs.get(OsStr::new("trusted.overlay.opaque")).map(|v| &v[..]) == Some(b"y"));
    let dir = parent_dir(&mut m.fs.root, parents, &mut m.deviates)?;
    match file.as_bytes().strip_prefix(b".wh.") {
        Some(b".wh..opq") => dir.clear(),
        Some(w) => dir.remove(OsStr::from_bytes(w)),
        None => {
            dir.merge(file, inode);
            if opaque_xattr
                && let Ok(d) = dir.get_directory_mut(file)
                && d.entries().next().is_some()
            {
                d.clear();
                m.deviates = true;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_leaving_the_root_are_refused() {
        assert!(names(Path::new("/../../escape")).is_err());
        assert_eq!(names(Path::new("/./a/b")).unwrap(), ["a", "b"]);
    }
}
