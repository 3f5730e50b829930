//! `upgrade`, `switch`, `rollback` and `internals finalize-staged` on an
//! ostree host, all through libostree.
//!
//! A new image is pulled through the staging repository, written as one
//! commit, then deployed with the booted deployment as merge deployment
//! (libostree's `/etc` three-way merge). On the running system libostree
//! stages it (`stage_tree_with_options`) and `ostree-finalize-staged`
//! (or `internals finalize-staged`) writes it at shutdown; on a root that
//! is not running, libostree cannot stage, so the deployment is written as
//! the next boot at once (`simple_write_deployment`), as `ostree admin
//! deploy` does. The boot-version swap is the "done" marker either way.

use anyhow::{Context, Result, anyhow, bail};
use ostree::gio;

use super::staging::Source;
use super::{deployment_image, name, origin_keyfile, staging};
use crate::command::finalize::FinalizeOutcome;
use crate::command::gc::GcOpts;
use crate::command::rollback::RollbackReport;
use crate::command::upgrade::{UpgradeOpts, UpgradeOutcome};
use crate::crashpoint;
use crate::progress::{self, Progress};
use crate::source::remote;
use crate::stores::ostree_repo;
use crate::sysroot::{BootedMode, Sysroot};

/// The kernel arguments of a deployment, without the `ostree=` libostree
/// adds itself.
fn kargs_of(d: &ostree::Deployment) -> Vec<String> {
    d.bootconfig()
        .and_then(|b| b.get("options"))
        .map(|o| {
            o.split_whitespace()
                .filter(|a| !a.starts_with("ostree="))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `upgrade` (or `switch` when `opts.target` is set).
pub async fn upgrade(
    sysroot: &Sysroot,
    opts: &UpgradeOpts,
    progress: Progress,
) -> Result<UpgradeOutcome> {
    let os = super::load(sysroot)?;
    let _lock = if opts.check {
        None
    } else {
        Some(super::lock_and_migrate(sysroot, &os)?)
    };
    let (deps, booted) = super::deployments(sysroot, &os);
    let booted = booted
        .map(|i| deps[i].clone())
        .ok_or_else(|| anyhow!("no booted deployment"))?;
    let stateroot = booted.osname().to_string();
    let current = deployment_image(&booted).context("the booted deployment's origin")?;
    let target = opts.target.clone().unwrap_or_else(|| current.clone());
    let repo = os.repo();
    let booted_info = ostree_repo::commit_info(&repo, &booted.csum())?;
    let booted_digest = booted_info.manifest_digest.clone();
    // A bound host pulls into its composefs repository and synthesizes;
    // its booted classic commit is re-synthesized even when the image is
    // the same, so that the binding takes effect.
    let bound = ostree_repo::is_bound(&repo);
    let resynthesize = bound && booted_info.composefs_manifest.is_none();

    progress::step(&progress, format!("Checking {target}"));
    crate::source::sigpolicy::check(&opts.fetch)?;
    if !opts.check {
        // A classic host an older version wrote keeps no layers of its
        // images: fetch them once, so that bootc can read every deployment.
        for n in super::migrate::fetch_missing_layers(sysroot, &os, &opts.fetch, &progress).await? {
            progress::step(&progress, format!("note: {n}"));
        }
    }
    let remote = remote::inspect_remote(&target, &opts.fetch, opts.check).await?;
    if booted_digest.as_deref() == Some(remote.manifest_digest.as_str()) && !resynthesize {
        if target == current || opts.check {
            return Ok(UpgradeOutcome::NoChange {
                image: target.to_string(),
                manifest_digest: remote.manifest_digest,
                staged: false,
            });
        }
        // The same image under another reference: follow it, deploy nothing.
        os.write_origin_file(
            &booted,
            Some(&origin_keyfile(&target)),
            gio::Cancellable::NONE,
        )
        .map_err(|e| anyhow!("rewriting the origin of {}: {e}", name(&booted)))?;
        return Ok(UpgradeOutcome::OriginUpdated {
            image: target.to_string(),
            previous_image: current.to_string(),
            manifest_digest: remote.manifest_digest,
            deployment_id: name(&booted),
        });
    }
    if opts.check {
        return Ok(UpgradeOutcome::UpdateAvailable {
            image: target.to_string(),
            booted_digest,
            remote,
        });
    }

    let source = if bound {
        Source::Host(crate::unified::unified_mode(sysroot)?)
    } else {
        Source::Staging
    };
    progress::step(&progress, format!("Pulling {target}"));
    let staged = staging::pull(sysroot, &target, &opts.fetch, source, progress.clone()).await?;
    crate::boot::bls::find_kernel(&staged.fs)?;
    crashpoint::hit("ostree-upgrade:after-pull");
    let imported = staged.commit(sysroot, &repo, &target, &progress)?;
    let manifest_digest = staged.manifest_digest.clone();
    drop(staged);
    staging::remove(sysroot)?;
    crashpoint::hit("ostree-upgrade:after-commit");

    let kargs = kargs_of(&booted);
    let kargs_ref: Vec<&str> = kargs.iter().map(String::as_str).collect();
    let deploy_opts = ostree::SysrootDeployTreeOpts {
        override_kernel_argv: Some(&kargs_ref),
        ..Default::default()
    };
    let origin = origin_keyfile(&target);
    let none = gio::Cancellable::NONE;
    let version = ostree_repo::commit_info(&repo, &imported.checksum)?.version();
    progress::step(&progress, format!("Deploying {}", &imported.checksum[..12]));
    let running = matches!(sysroot.booted_mode(), BootedMode::Running { .. });
    let new = if running {
        os.stage_tree_with_options(
            Some(&stateroot),
            &imported.checksum,
            Some(&origin),
            Some(&booted),
            &deploy_opts,
            none,
        )
        .map_err(|e| anyhow!("staging commit {}: {e}", imported.checksum))?
    } else {
        let new = os
            .deploy_tree_with_options(
                Some(&stateroot),
                &imported.checksum,
                Some(&origin),
                Some(&booted),
                Some(&deploy_opts),
                none,
            )
            .map_err(|e| anyhow!("deploying commit {}: {e}", imported.checksum))?;
        crashpoint::hit("ostree-upgrade:after-deploy");
        progress::step(&progress, "Writing the boot entries");
        os.simple_write_deployment(
            Some(&stateroot),
            &new,
            Some(&booted),
            ostree::SysrootSimpleWriteDeploymentFlags::NO_CLEAN,
            none,
        )
        .map_err(|e| anyhow!("writing the boot entries: {e}"))?;
        new
    };
    crashpoint::hit("ostree-upgrade:after-write");
    drop(_lock);
    progress::step(&progress, "Collecting garbage");
    let gc = super::gc::run(sysroot, GcOpts::default())?;
    crate::fs::xfs_prealloc::trim_quietly(sysroot);
    let (image, deployment_id) = (target.to_string(), name(&new));
    let gc = Some(Box::new(gc));
    let commit = Some(Box::new(imported));
    Ok(if running {
        UpgradeOutcome::Staged {
            image,
            deployment_id,
            manifest_digest,
            version,
            kernel_reused: false,
            gc,
            commit,
        }
    } else {
        UpgradeOutcome::Deployed {
            image,
            deployment_id,
            manifest_digest,
            version,
            gc,
            commit,
        }
    })
}

/// Makes the rollback deployment the next boot (again: undoes it), as
/// `ostree admin rollback` does: the first two deployments swap places.
pub fn rollback(sysroot: &Sysroot) -> Result<RollbackReport> {
    let os = super::load(sysroot)?;
    let _lock = super::lock_and_migrate(sysroot, &os)?;
    let mut deps: Vec<ostree::Deployment> = os
        .deployments()
        .into_iter()
        .filter(|d| !d.is_staged())
        .collect();
    if deps.len() < 2 {
        bail!(
            "no rollback deployment: the host has {} deployment{}",
            deps.len(),
            if deps.len() == 1 { "" } else { "s" }
        );
    }
    let discarded_staged = os.staged_deployment().map(|d| name(&d));
    deps.swap(0, 1);
    crashpoint::hit("ostree-rollback:before-write");
    os.write_deployments(&deps, gio::Cancellable::NONE)
        .map_err(|e| anyhow!("writing the boot entries: {e}"))?;
    crashpoint::hit("ostree-rollback:after-write");
    os.load(gio::Cancellable::NONE)
        .map_err(|e| anyhow!("reloading the ostree sysroot: {e}"))?;
    let (after, booted) = super::deployments(sysroot, &os);
    Ok(RollbackReport {
        next_boot: name(&after[0]),
        rollback: name(&after[1]),
        discarded_staged,
        rollback_queued: booted.is_some_and(|i| i != 0),
    })
}

/// Writes a deployment libostree staged; on a root that is not running
/// nothing is ever staged. The result is checked: the staged deployment
/// must now be the first (`ostree admin finalize-staged` exits 0 when it
/// decides not to finalize).
pub fn finalize(sysroot: &Sysroot) -> Result<FinalizeOutcome> {
    let os = super::load(sysroot)?;
    let Some(staged) = os.staged_deployment() else {
        return Ok(FinalizeOutcome::NothingStaged);
    };
    let want = name(&staged);
    // libostree 2022.7 finalizes only through its (hidden) admin verb, the
    // one ostree-finalize-staged.service runs at shutdown.
    let out = std::process::Command::new("ostree")
        .args(["admin", "finalize-staged", "--sysroot"])
        .arg(sysroot.ostree_path())
        .output()
        .context("running ostree admin finalize-staged")?;
    let said = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if !out.status.success() {
        bail!("ostree admin finalize-staged failed: {}", said.trim());
    }
    let os = super::load(sysroot)?;
    let first = os.deployments().into_iter().find(|d| !d.is_staged());
    match first {
        Some(d) if name(&d) == want && os.staged_deployment().is_none() => {
            Ok(FinalizeOutcome::Finalized {
                deployment_id: want,
                etc_local_changes_kept: 0,
            })
        }
        _ => bail!(
            "ostree admin finalize-staged did not make {want} the next boot ({})",
            said.trim()
        ),
    }
}
