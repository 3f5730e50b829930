//! `internals gc` on an ostree host: image refs no deployment uses, the
//! deployments and kernels no boot entry names (libostree's
//! `prepare_cleanup`), a staging repository left by a killed run, then a
//! repository prune from the refs (libostree keeps a ref per deployment).

use std::collections::BTreeSet;

use anyhow::{Result, anyhow};
use ostree::gio;

use super::{lock, name, staging};
use crate::ops::gc::{GcOpts, GcReport};
use crate::stores::ostree_repo;
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
    let _lock = if opts.dry_run { None } else { Some(lock(&os)?) };
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
    report.tags_removed = dead_refs.clone();
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
        return Ok(report);
    }
    for r in &dead_refs {
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
    Ok(report)
}
