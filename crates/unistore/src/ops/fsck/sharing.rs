//! Whether the store files of an image share their data extents with the
//! composefs objects of the same content (one physical copy), on a unified
//! host whose filesystem has reflinks.
//!
//! Store files are paired with objects by walking the image's layer
//! splitstreams ([`crate::unified::for_each_object_file`], the walk the
//! share pass makes); each pair is compared by its extent maps
//! ([`crate::extents::files_share_extents`]): no data is read, files are
//! opened with `O_NOATIME`, nothing is written.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use composefs::fsverity::FsVerityHashValue;

use crate::extents;
use crate::stores::composefs_repo::{self, Repo};
use crate::stores::containers_storage::format as cfmt;
use crate::unified;

/// What the check found for one image.
#[derive(Debug, Default)]
pub(super) struct SharingCheck {
    /// Store files that share their object's extents.
    pub(super) shared: u64,
    /// Store files that hold their own copy.
    pub(super) unshared: u64,
    /// Their bytes.
    pub(super) unshared_bytes: u64,
    /// The store layers (ids) that hold them.
    pub(super) unshared_layers: BTreeSet<String>,
    /// Files that could not be compared (missing in the store, another
    /// size, not a regular file, an object that cannot be opened): the
    /// layer checks (`--verify-content`) say what is wrong with them.
    pub(super) unchecked: u64,
}

/// Compares every store file of the image that composefs keeps as an
/// object with that object. `store` is the store's path, `objects` the
/// repository's `objects/`; the image must be whole in both (its store
/// layer ids are the chain of its diff-ids).
pub(super) fn check_sharing(
    repo: &Repo,
    objects: &Path,
    store: &Path,
    manifest_digest: &str,
) -> Result<SharingCheck> {
    let img = composefs_repo::open_image(repo, manifest_digest)?;
    let diff_ids: Vec<String> = img.layer_diff_ids().iter().map(|d| d.to_string()).collect();
    let layer_ids = cfmt::chain_ids(&diff_ids)?;
    let mut c = SharingCheck::default();
    for (layer_id, diff_id) in layer_ids.iter().zip(&diff_ids) {
        let verity = img
            .layer_verity(diff_id)
            .ok_or_else(|| anyhow!("no layer {diff_id} in the composefs image"))?;
        let diff = store.join("overlay").join(layer_id).join("diff");
        unified::for_each_object_file(repo, diff_id, verity, |file| {
            let path = diff.join(&file.rel);
            let same_size =
                std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == file.size);
            let opened = same_size
                .then(|| {
                    let f = cfmt::open_noatime(&path).ok()?;
                    let o =
                        cfmt::open_noatime(&objects.join(file.object.to_object_pathname())).ok()?;
                    Some((f, o))
                })
                .flatten();
            match opened.map(|(f, o)| extents::files_share_extents(&f, &o)) {
                Some(Ok(true)) => c.shared += 1,
                Some(Ok(false)) => {
                    c.unshared += 1;
                    c.unshared_bytes += file.size;
                    c.unshared_layers.insert(layer_id.clone());
                }
                _ => c.unchecked += 1,
            }
            Ok(())
        })
        .with_context(|| format!("walking layer {diff_id}"))?;
    }
    Ok(c)
}

/// `3.4 MiB`, `812 KiB`, `100 bytes`.
pub(super) fn human_bytes(b: u64) -> String {
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
