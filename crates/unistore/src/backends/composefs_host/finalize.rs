//! `internals finalize-staged`: the shutdown step that makes a staged
//! deployment the next boot.
//!
//! 1. three-way merge of `/etc` into the staged deployment (a conflict is an
//!    error that leaves the old boot in place, still staged);
//! 2. exchange `entries.staged` with `entries` (renameat2, atomic);
//! 3. remove the marker and the old entries.
//!
//! Interrupted after (2), the current entries already name the staged
//! deployment: the next run only cleans up. On a root that is not the
//! running system this is how "reboot" happens.

use anyhow::{Context, Result, anyhow, bail};

use crate::boot::bls;
use crate::boot::migrate;
use crate::command::finalize::FinalizeOutcome;
use crate::deployment;
use crate::deployment::etc_merge;
use crate::deployment::host_state::HostState;
use crate::deployment::staged;
use crate::stores::composefs_repo;
use crate::sysroot::Sysroot;
use crate::{crashpoint, lock, util};

/// Runs finalize.
pub fn finalize(sysroot: &Sysroot) -> Result<FinalizeOutcome> {
    let _lock = lock::lock(sysroot)?;
    migrate::migrate(sysroot)?;
    let host = HostState::read(sysroot)?;
    let Some(marker) = host.marker.clone() else {
        return Ok(FinalizeOutcome::NothingStaged);
    };
    let new_id = marker.depl_id.clone();
    if marker.finalization_locked {
        return Ok(FinalizeOutcome::Locked {
            deployment_id: new_id,
        });
    }
    let boot = sysroot.boot_root();
    let (entries_dir, staged_dir) = (sysroot.entries_dir(), sysroot.staged_entries_dir());
    let cleanup = || -> Result<()> {
        staged::remove(sysroot)?;
        crashpoint::hit("finalize:after-unmark");
        util::remove_all(boot, staged_dir)?;
        Ok(())
    };
    if host.entries.first().and_then(|e| e.deployment_id()) == Some(new_id.as_str()) {
        // Interrupted after the exchange.
        cleanup()?;
        return Ok(FinalizeOutcome::Finalized {
            deployment_id: new_id,
            etc_local_changes_kept: 0,
        });
    }
    if host.staged_entry().is_none() {
        bail!(
            "staged deployment {new_id} has no entry in {staged_dir}; the current boot stays; run an upgrade again"
        );
    }

    // 1. /etc.
    let booted_id = host
        .booted_id()
        .ok_or_else(|| anyhow!("no booted deployment"))?
        .to_string();
    let kept = merge_etc(sysroot, &booted_id, &new_id)?;
    crashpoint::hit("finalize:after-etc");

    // 2. The boot menu.
    bls::exchange(boot, staged_dir, entries_dir).context("swapping in the staged boot entries")?;
    util::fsync_dir(boot, std::path::Path::new(entries_dir).parent())?;
    crashpoint::hit("finalize:after-swap");

    // 3. Clean up.
    cleanup()?;
    Ok(FinalizeOutcome::Finalized {
        deployment_id: new_id,
        etc_local_changes_kept: kept,
    })
}

/// Merges the booted deployment's `/etc` into the staged one's. Returns the
/// number of local changes carried over.
fn merge_etc(sysroot: &Sysroot, booted_id: &str, new_id: &str) -> Result<usize> {
    let repo = composefs_repo::open(sysroot)?;
    let origin = deployment::read_origin(sysroot, booted_id)?;
    let digest = deployment::manifest_digest(sysroot, &repo, booted_id, &origin)?;
    let img = composefs_repo::open_image(&repo, &digest)?;
    let fs = img.read_filesystem(&repo, false)?;
    let old = etc_merge::scan_image(&fs, &repo, "/etc")?;
    let cur_path = sysroot.join(format!("{}/etc", deployment::state_dir(booted_id)));
    let new_rel = format!("{}/etc", deployment::state_dir(new_id));
    let new_path = sysroot.join(&new_rel);
    let cur = etc_merge::scan_disk(&cur_path)?;
    let new = etc_merge::scan_disk(&new_path)?;
    let plan = etc_merge::plan(&old, &cur, &new);
    if !plan.conflicts.is_empty() {
        bail!(
            "/etc merge conflict: {} changed both on this host and in the new image; the current deployment stays the next boot",
            plan.conflicts.join(", ")
        );
    }
    if plan.ops.is_empty() {
        return Ok(0);
    }
    let merge_rel = format!("{new_rel}.merge");
    util::remove_all(sysroot.dir(), &merge_rel)?;
    let st = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(&new_path)
        .arg(sysroot.join(&merge_rel))
        .status()?;
    if !st.success() {
        bail!("copying {} failed", new_path.display());
    }
    etc_merge::apply(&plan, &cur_path, &sysroot.join(&merge_rel))?;
    rustix::fs::sync();
    bls::exchange(sysroot.dir(), &merge_rel, &new_rel)?;
    util::remove_all(sysroot.dir(), &merge_rel)?;
    Ok(plan.ops.len())
}
