//! `internals gc`, in bootc's order (entries are the truth):
//! 1. kernel directories no live entry names (never the booted one's);
//! 2. state directories with no live entry (interrupted deploys);
//! 3. every live deployment's manifest tagged; dead `localhost/bootc-*`
//!    tags removed (other tags are left alone: other apps share the repo);
//! 4. the host containers-storage pruned to live images (unified hosts);
//! 5. the repository GC from the tags.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};

use crate::command::gc::GcOpts;
use crate::command::gc::GcReport;
use crate::command::gc::du;
use crate::deployment;
use crate::deployment::host_state::HostState;
use crate::stores::composefs_repo;
use crate::sysroot::{BOOTC_TAG_PREFIX, KERNEL_DIR_PREFIX, STATE_DEPLOY_DIR, Sysroot};
use crate::util;

/// Runs the GC as its own operation: takes the lock and migrates first.
pub fn run(sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport> {
    let _lock = crate::lock::lock(sysroot)?;
    if !opts.dry_run {
        crate::boot::migrate::migrate(sysroot)?;
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

    // 1. Kernel directories (under `boot/`, or `EFI/Linux/` on an ESP).
    let (boot, kernels) = (sysroot.boot_root(), sysroot.kernels_dir());
    for name in util::list_names(boot, kernels)? {
        let is_ours = name.starts_with(KERNEL_DIR_PREFIX)
            || name.starts_with(&format!(".tmp-{KERNEL_DIR_PREFIX}"));
        if is_ours && !live_kernels.contains(&name) {
            let rel = format!("{kernels}/{name}");
            report.other_bytes += du(&sysroot.boot_root_path().join(&rel));
            if !opts.dry_run {
                util::remove_all(boot, &rel)?;
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
    let staged = sysroot.staged_entries_dir();
    if host.marker.is_none() && boot.try_exists(staged)? && !opts.dry_run {
        util::remove_all(boot, staged)?;
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
    let r = if opts.dry_run && !report.tags_removed.is_empty() {
        // What the real run collects once those tags are gone.
        drop(repo);
        crate::stores::composefs_gc_view::gc_dry_run_without(sysroot, &report.tags_removed)?
    } else if opts.dry_run {
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
