//! Whether the store files of an image share their data extents with the
//! composefs objects of the same content (one physical copy), on a unified
//! host whose filesystem has reflinks.
//!
//! Store files are paired with objects by walking the image's layer
//! splitstreams (`crate::unified::for_each_object_file`, the walk the
//! share pass makes); each pair is compared by its extent maps
//! ([`crate::fs::extents::files_share_extents`]): no data is read, files are
//! opened with `O_NOATIME`, nothing is written.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use composefs::fsverity::FsVerityHashValue;

use super::memo::{LayerMemo, LayerSharing};
use crate::fs::extents;
use crate::stores::composefs_repo::{self, Repo};
use crate::stores::containers_storage::format as cfmt;
use crate::unified;

/// What the check found for one image.
#[derive(Debug, Default)]
pub struct SharingCheck {
    /// Store files that share their object's extents.
    pub shared: u64,
    /// Store files (or their objects) the filesystem keeps inline in its
    /// metadata (btrfs, small files): they have no extent to share, so they
    /// are neither shared nor a copy to repair.
    pub inline: u64,
    /// Store files that hold their own copy.
    pub unshared: u64,
    /// Their bytes.
    pub unshared_bytes: u64,
    /// The store layers (ids) that hold them.
    pub unshared_layers: BTreeSet<String>,
    /// Files that could not be compared (missing in the store, another
    /// size, not a regular file, an object that cannot be opened): the
    /// layer checks (`--verify-content`) say what is wrong with them.
    pub unchecked: u64,
}

/// Compares every store file of the image that composefs keeps as an
/// object with that object. `store` is the store's path, `objects` the
/// repository's `objects/`; the image must be whole in both (its store
/// layer ids are the chain of its diff-ids).
pub fn check_sharing(
    repo: &Repo,
    objects: &Path,
    store: &Path,
    manifest_digest: &str,
    memo: &LayerMemo,
) -> Result<SharingCheck> {
    let img = composefs_repo::open_image(repo, manifest_digest)?;
    let diff_ids: Vec<String> = img.layer_diff_ids().iter().map(|d| d.to_string()).collect();
    let layer_ids = cfmt::chain_ids(&diff_ids)?;
    let mut c = SharingCheck::default();
    for (layer_id, diff_id) in layer_ids.iter().zip(&diff_ids) {
        let l = memo.sharing_of(layer_id, || {
            let verity = img
                .layer_verity(diff_id)
                .ok_or_else(|| anyhow!("no layer {diff_id} in the composefs image"))?;
            let diff = store.join("overlay").join(layer_id).join("diff");
            layer_sharing(repo, objects, &diff, diff_id, verity)
        })?;
        c.shared += l.shared;
        c.inline += l.inline;
        c.unshared += l.unshared;
        c.unshared_bytes += l.unshared_bytes;
        c.unchecked += l.unchecked;
        if l.unshared > 0 {
            c.unshared_layers.insert(layer_id.clone());
        }
    }
    Ok(c)
}

/// One store layer's files (`diff`) against the objects of layer `diff_id`.
fn layer_sharing(
    repo: &Repo,
    objects: &Path,
    diff: &Path,
    diff_id: &str,
    verity: &composefs_repo::ObjectId,
) -> Result<LayerSharing> {
    let mut l = LayerSharing::default();
    let dir = |p: &Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (diff, objects) = (dir(diff)?, dir(objects)?);
    unified::for_each_object_file(repo, diff_id, verity, |file| {
        let opened = cfmt::open_noatime_at(&diff, &file.rel)
            .ok()
            .filter(|f| {
                f.metadata()
                    .is_ok_and(|m| m.is_file() && m.len() == file.size)
            })
            .and_then(|f| {
                let o =
                    cfmt::open_noatime_at(&objects, Path::new(&file.object.to_object_pathname()));
                Some((f, o.ok()?))
            });
        match opened.map(|(f, o)| {
            extents::files_share_extents(&f, &o)
                .map(|shared| (shared, extents::is_inline(&f) || extents::is_inline(&o)))
        }) {
            Some(Ok((true, _))) => l.shared += 1,
            Some(Ok((false, true))) => l.inline += 1,
            Some(Ok((false, false))) => {
                l.unshared += 1;
                l.unshared_bytes += file.size;
            }
            _ => l.unchecked += 1,
        }
        Ok(())
    })
    .with_context(|| format!("walking layer {diff_id}"))?;
    Ok(l)
}

/// `3.4 MiB`, `812 KiB`, `100 bytes`.
pub fn human_bytes(b: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = b as f64;
    if f >= KIB * KIB * KIB {
        format!("{:.1} GiB", f / (KIB * KIB * KIB))
    } else if f >= KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else if f >= KIB {
        format!("{:.0} KiB", f / KIB)
    } else {
        format!("{b} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_humans() {
        assert_eq!(human_bytes(100), "100 bytes");
        assert_eq!(human_bytes(8192), "8 KiB");
        assert_eq!(human_bytes(3_565_158), "3.4 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
