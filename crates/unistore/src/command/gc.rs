//! The shape of `internals gc` on every kind of host.

use crate::sysroot::Sysroot;
use anyhow::Result;
use serde::Serialize;

/// Options of a GC.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOpts {
    /// Report what would be removed; remove nothing.
    pub dry_run: bool,
}

/// What a GC removed (or would remove).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub kernel_dirs: Vec<String>,
    pub state_dirs: Vec<String>,
    pub tags_removed: Vec<String>,
    pub tags_added: Vec<String>,
    /// Layer refs (`ostree/container/blob/...`) no remaining image names
    /// (ostree hosts).
    pub layer_refs_removed: Vec<String>,
    pub objects_removed: u64,
    pub object_bytes: u64,
    /// Bytes of kernel and state directories removed.
    pub other_bytes: u64,
    pub streams_pruned: u64,
    pub images_pruned: u64,
    pub dry_run: bool,
    /// Images removed from the host containers-storage (unified hosts).
    pub store_images_removed: Vec<String>,
    /// `id name` pairs of store images that lose unistore's names (kept:
    /// others named them).
    pub store_images_untagged: Vec<String>,
    /// Store layers removed with those images.
    pub store_layers_removed: Vec<String>,
    /// Uncompressed bytes of those layers (extents they share with
    /// composefs objects stay allocated, so not counted as freed).
    pub store_layer_bytes: u64,
    /// Problems pruning the store (the images are tried again next time).
    pub store_errors: Vec<String>,
}

impl GcReport {
    /// Whether nothing was (or would be) removed or added.
    pub fn is_no_op(&self) -> bool {
        self.kernel_dirs.is_empty()
            && self.state_dirs.is_empty()
            && self.tags_removed.is_empty()
            && self.layer_refs_removed.is_empty()
            && self.tags_added.is_empty()
            && self.objects_removed == 0
            && self.streams_pruned == 0
            && self.images_pruned == 0
            && self.store_images_removed.is_empty()
            && self.store_images_untagged.is_empty()
    }

    /// Bytes freed in all.
    pub fn bytes_freed(&self) -> u64 {
        self.object_bytes + self.other_bytes
    }

    /// Prunes the host containers-storage to the images of `live` (manifest
    /// digests in composefs) among those unistore put there, and records
    /// what went. A dry run decides the same way from the same record and
    /// JSON, and only reads.
    pub fn prune_store(&mut self, sysroot: &Sysroot, live: &[String]) -> Result<()> {
        let pruned = if self.dry_run {
            crate::unified::preview_prune_store(sysroot, live)?
        } else {
            crate::unified::prune_store(sysroot, live)?
        };
        self.store_images_removed = pruned.removed;
        self.store_images_untagged = pruned.untagged;
        self.store_layers_removed = pruned.layers_removed;
        self.store_layer_bytes = pruned.layer_bytes;
        self.store_errors = pruned.errors;
        Ok(())
    }
}

/// What removing `path` frees: allocated bytes, without the extents its
/// files share with others (deployment files are reflinks of objects).
pub(crate) fn du(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if m.is_file() {
        return std::fs::File::open(path)
            .and_then(|f| crate::fs::extents::unshared_bytes(&f))
            .unwrap_or(m.blocks() * 512);
    }
    let mut n = m.blocks() * 512;
    if m.is_dir()
        && let Ok(rd) = std::fs::read_dir(path)
    {
        for e in rd.flatten() {
            n += du(&e.path());
        }
    }
    n
}
