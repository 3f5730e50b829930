//! `internals gc`, in bootc's order (entries are the truth):
//! 1. kernel directories no live entry names (never the booted one's);
//! 2. state directories with no live entry (interrupted deploys);
//! 3. every live deployment's manifest tagged; dead `localhost/bootc-*`
//!    tags removed (other tags are left alone: other apps share the repo);
//! 4. the host containers-storage pruned to live images (unified hosts);
//! 5. the repository GC from the tags.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::deployment;
use crate::host::HostState;
use crate::stores::composefs_repo;
use crate::sysroot::{BOOT_DIR, BOOTC_TAG_PREFIX, KERNEL_DIR_PREFIX, STATE_DEPLOY_DIR, Sysroot};
use crate::util;

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
fn du(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if m.is_file() {
        return std::fs::File::open(path)
            .and_then(|f| crate::extents::unshared_bytes(&f))
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

/// Runs the GC as its own operation: takes the lock and migrates first.
pub fn run(sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport> {
    let _lock = crate::lock::lock(sysroot)?;
    if !opts.dry_run {
        crate::migrate::migrate(sysroot)?;
    }
    gc(sysroot, opts)
}

/// Runs the GC. The caller holds the sysroot lock and no repository handle
/// (the repository GC needs its exclusive lock).
pub fn gc(sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport> {
    let host = HostState::read(sysroot)?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let live_ids = host.live_ids();
    let live_kernels = host.live_kernel_dirs();
    if host.entries.is_empty() {
        bail!("no boot entries: refusing to collect anything on a root without a deployment");
    }
    let dir = sysroot.dir();

    // 1. Kernel directories.
    for name in util::list_names(dir, BOOT_DIR)? {
        let is_ours = name.starts_with(KERNEL_DIR_PREFIX)
            || name.starts_with(&format!(".tmp-{KERNEL_DIR_PREFIX}"));
        if is_ours && !live_kernels.contains(&name) {
            let rel = format!("{BOOT_DIR}/{name}");
            report.other_bytes += du(&sysroot.join(&rel));
            if !opts.dry_run {
                util::remove_all(dir, &rel)?;
            }
            report.kernel_dirs.push(name);
        }
    }
    crate::crashpoint::hit("gc:after-kernels");
    // 2. State directories (and interrupted temporaries).
    for name in util::list_names(dir, STATE_DEPLOY_DIR)? {
        let id = name.strip_prefix(".tmp-").unwrap_or(&name);
        if !deployment::is_deployment_id(id) || live_ids.contains(&name) {
            continue;
        }
        let rel = format!("{STATE_DEPLOY_DIR}/{name}");
        report.other_bytes += du(&sysroot.join(&rel));
        if !opts.dry_run {
            util::remove_all(dir, &rel)?;
        }
        report.state_dirs.push(name);
    }
    // A staged entries directory without its marker is an interrupted stage.
    if host.marker.is_none() && dir.try_exists(crate::sysroot::STAGED_ENTRIES_DIR)? && !opts.dry_run
    {
        util::remove_all(dir, crate::sysroot::STAGED_ENTRIES_DIR)?;
    }

    crate::crashpoint::hit("gc:after-state-dirs");
    // 3. Tags.
    let repo = composefs_repo::open(sysroot)?;
    let mut live_digests = BTreeSet::new();
    for id in &live_ids {
        let origin = deployment::read_origin(sysroot, id)
            .with_context(|| format!("live deployment {id}: refusing to collect"))?;
        let d = deployment::manifest_digest(sysroot, &repo, id, &origin)
            .with_context(|| format!("live deployment {id}: refusing to collect"))?;
        live_digests.insert(d);
    }
    let tags = composefs_oci::oci_image::list_refs(repo.as_ref())?;
    let tagged: BTreeSet<String> = tags.iter().map(|(n, _)| n.clone()).collect();
    for d in &live_digests {
        let tag = composefs_repo::bootc_tag(d);
        if !tagged.contains(&tag) {
            if !opts.dry_run {
                composefs_oci::oci_image::tag_image(repo.as_ref(), &d.parse()?, &tag)?;
            }
            report.tags_added.push(tag);
        }
    }
    for (name, digest) in &tags {
        if name.starts_with(BOOTC_TAG_PREFIX) && !live_digests.contains(&digest.to_string()) {
            if !opts.dry_run {
                composefs_oci::oci_image::untag_image(repo.as_ref(), name)?;
            }
            report.tags_removed.push(name.clone());
        }
    }

    crate::crashpoint::hit("gc:after-tags");
    // 4. The host containers-storage: only images unistore put there, and
    // only those no live deployment uses. A dry run decides the same way
    // from the same record and JSON, and only reads.
    let live: Vec<String> = live_digests.iter().cloned().collect();
    report.prune_store(sysroot, &live)?;
    crate::crashpoint::hit("gc:before-repo-gc");

    // 5. Repository GC.
    let r = if opts.dry_run {
        repo.gc_dry_run(&[])?
    } else {
        repo.gc(&[])?
    };
    report.objects_removed = r.objects_removed;
    report.object_bytes = r.objects_bytes;
    report.streams_pruned = r.streams_pruned;
    report.images_pruned = r.images_pruned;
    Ok(report)
}
