//! `internals gc` on an ostree host: image refs no deployment uses, layer
//! refs no remaining image names, the
//! deployments and kernels no boot entry names (libostree's
//! `prepare_cleanup`), a staging repository left by a killed run, then a
//! repository prune from the refs (libostree keeps a ref per deployment).
//! On a bound or unified host, then: the host's composefs repository keeps
//! the images a live deployment records (their `localhost/bootc-<digest>`
//! tags are the roots; other such tags go), the host containers-storage
//! keeps only live images among those unistore put there, and the
//! checksum cache forgets objects the prune removed.

use std::collections::BTreeSet;

use anyhow::{Result, anyhow};
use ostree::gio;

use super::{name, staging};
use crate::command::gc::{GcOpts, GcReport};
use crate::stores::composefs_repo;
use crate::stores::ostree_repo;
use crate::stores::ostree_repo::checksum_cache::ChecksumCache;
use crate::stores::ostree_repo::layers;
use crate::sysroot::BOOTC_TAG_PREFIX;
use crate::sysroot::Sysroot;
use crate::util;

/// Deployment directories on disk: `<stateroot>/<commit>.<serial>`.
fn deploy_dirs(sysroot: &Sysroot) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for sr in util::list_names(sysroot.dir(), "ostree/deploy")? {
        for d in util::list_names(sysroot.dir(), format!("ostree/deploy/{sr}/deploy"))? {
            if !d.ends_with(".origin") && !d.starts_with('.') {
                out.insert(format!("{sr}/{d}"));
            }
        }
    }
    Ok(out)
}

/// Kernel directories on disk: `boot/ostree/<stateroot>-<bootcsum>`.
fn kernel_dirs(sysroot: &Sysroot) -> Result<BTreeSet<String>> {
    Ok(util::list_names(sysroot.dir(), "boot/ostree")?
        .into_iter()
        .collect())
}

/// Runs the GC (or, with `dry_run`, reports what it would remove).
pub fn run(sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport> {
    let os = super::load(sysroot)?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(super::lock_and_migrate(sysroot, &os)?)
    };
    let repo = os.repo();
    let mut deps = os.deployments();
    if let Some(s) = os.staged_deployment()
        && !deps.iter().any(|d| d.equal(&s))
    {
        deps.push(s);
    }
    let live_commits: BTreeSet<String> = deps.iter().map(|d| d.csum().to_string()).collect();
    let live_dirs: BTreeSet<String> = deps
        .iter()
        .map(|d| format!("{}/{}", d.osname(), name(d)))
        .collect();
    let live_kernels: BTreeSet<String> = deps
        .iter()
        .map(|d| format!("{}-{}", d.osname(), d.bootcsum()))
        .collect();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let dead_refs: Vec<String> = ostree_repo::image_refs(&repo)?
        .into_iter()
        .filter(|(_, c)| !live_commits.contains(c))
        .map(|(r, _)| r)
        .collect();
    // Layer refs no remaining image's manifest names (ostree-ext's layer
    // GC keeps exactly those).
    let mut named = BTreeSet::new();
    for (r, c) in ostree_repo::image_refs(&repo)? {
        if !dead_refs.contains(&r) {
            named.extend(layers::blob_refs_of(&repo, &c)?);
        }
    }
    for c in &live_commits {
        named.extend(layers::blob_refs_of(&repo, c)?);
    }
    let dead_layers: Vec<String> = layers::blob_refs(&repo)?
        .into_iter()
        .filter(|(r, _)| !named.contains(r))
        .map(|(r, _)| r)
        .collect();
    report.tags_removed = dead_refs.clone();
    report.layer_refs_removed = dead_layers.clone();
    report.state_dirs = deploy_dirs(sysroot)?
        .difference(&live_dirs)
        .cloned()
        .collect();
    report.kernel_dirs = kernel_dirs(sysroot)?
        .difference(&live_kernels)
        .cloned()
        .collect();
    if sysroot.dir().try_exists(staging::STAGING_DIR)? {
        report.state_dirs.push(staging::STAGING_DIR.to_string());
    }
    let none = gio::Cancellable::NONE;
    let live_digests: BTreeSet<String> = live_commits
        .iter()
        .filter_map(|c| ostree_repo::commit_info(&repo, c).ok())
        .flat_map(|i| i.manifest_digest.into_iter().chain(i.composefs_manifest))
        .collect();
    if opts.dry_run {
        let (_, pruned, bytes) = repo
            .prune(
                ostree::RepoPruneFlags::NO_PRUNE | ostree::RepoPruneFlags::REFS_ONLY,
                0,
                none,
            )
            .map_err(|e| anyhow!("counting unreachable objects: {e}"))?;
        report.objects_removed = pruned.max(0) as u64;
        report.object_bytes = bytes;
        collect_composefs(sysroot, &live_digests, &mut report)?;
        return Ok(report);
    }
    for r in dead_refs.iter().chain(&dead_layers) {
        repo.set_ref_immediate(None, r, None, none)
            .map_err(|e| anyhow!("removing ref {r}: {e}"))?;
    }
    staging::remove(sysroot)?;
    crate::crashpoint::hit("ostree-gc:before-cleanup");
    os.prepare_cleanup(none)
        .map_err(|e| anyhow!("removing unused deployments: {e}"))?;
    let (_, pruned, bytes) = repo
        .prune(ostree::RepoPruneFlags::REFS_ONLY, 0, none)
        .map_err(|e| anyhow!("pruning the ostree repository: {e}"))?;
    report.objects_removed = pruned.max(0) as u64;
    report.object_bytes = bytes;
    let repo_dir = sysroot.dir().open_dir(ostree_repo::REPO_DIR)?;
    let mut cache = ChecksumCache::load(sysroot);
    cache.retain(&repo_dir, |_, _| true);
    cache.save(sysroot)?;
    collect_composefs(sysroot, &live_digests, &mut report)?;
    Ok(report)
}

/// The composefs repository and the store of a bound or unified host:
/// tags, store images and objects no live deployment needs.
fn collect_composefs(
    sysroot: &Sysroot,
    live_digests: &BTreeSet<String>,
    report: &mut GcReport,
) -> Result<()> {
    if !super::unified::has_composefs(sysroot)? {
        return Ok(());
    }
    let cfs = composefs_repo::open(sysroot)?;
    let tags = composefs_oci::oci_image::list_refs(cfs.as_ref())?;
    // Live: the tags of the digests the commits record, and the manifests
    // those tags lead to (an image in Docker's format has two digests).
    let mut live: BTreeSet<String> = live_digests.clone();
    for (n, m) in &tags {
        if let Some(d) = n.strip_prefix(BOOTC_TAG_PREFIX)
            && live_digests.contains(d)
        {
            live.insert(m.to_string());
        }
    }
    let mut live_manifests = vec![];
    for (n, m) in &tags {
        let Some(d) = n.strip_prefix(BOOTC_TAG_PREFIX) else {
            continue;
        };
        if live.contains(d) {
            live_manifests.push(m.to_string());
            continue;
        }
        if !report.dry_run {
            composefs_oci::oci_image::untag_image(cfs.as_ref(), n)?;
        }
        report.tags_removed.push(n.clone());
    }
    live_manifests.sort();
    live_manifests.dedup();
    report.prune_store(sysroot, &live_manifests)?;
    crate::crashpoint::hit("ostree-gc:before-composefs-gc");
    let r = if report.dry_run {
        cfs.gc_dry_run(&[])?
    } else {
        cfs.gc(&[])?
    };
    report.objects_removed += r.objects_removed;
    report.object_bytes += r.objects_bytes;
    report.streams_pruned = r.streams_pruned;
    report.images_pruned = r.images_pruned;
    Ok(())
}
