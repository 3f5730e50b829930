//! `upgrade` and `switch`: stage a new deployment for the next boot.
//!
//! Order (the staged marker is written last):
//! 1. lock; migrate an old layout;
//! 2. ask the source for its manifest digest: unchanged means nothing to do
//!    (`switch` to the booted or staged image under another reference only
//!    rewrites that deployment's origin, as bootc does);
//! 3. pull; state directory; kernel directory (reusing an identical pair);
//! 4. `boot/loader/entries.staged/` = new (primary) + booted (rollback);
//! 5. the staged-deployment marker;
//! 6. GC.

use anyhow::{Context, Result, anyhow};

use super::gc;
use crate::boot::bls;
use crate::boot::migrate;
use crate::command::gc::GcOpts;
use crate::command::upgrade::UpgradeOpts;
use crate::command::upgrade::UpgradeOutcome;
use crate::deployment;
use crate::deployment::create::{self, DeployRequest};
use crate::deployment::host_state::HostState;
use crate::deployment::staged::{self, StagedMarker};
use crate::progress::{self, Progress};
use crate::source::remote;
use crate::stores::composefs_repo;
use crate::sysroot::Sysroot;
use crate::{crashpoint, lock};

/// Runs `upgrade` (or `switch` when `opts.target` is set).
pub async fn upgrade(
    sysroot: &Sysroot,
    opts: &UpgradeOpts,
    progress: Progress,
) -> Result<UpgradeOutcome> {
    let _lock = if opts.check {
        None
    } else {
        Some(lock::lock(sysroot)?)
    };
    if !opts.check {
        migrate::migrate(sysroot)?;
    }
    let host = HostState::read(sysroot)?;
    let booted = host
        .booted_entry()
        .ok_or_else(|| anyhow!("no booted deployment: install a host first"))?;
    let booted_id = booted.deployment_id().unwrap_or_default().to_string();
    let booted_origin = deployment::read_origin(sysroot, &booted_id)?;
    let repo = composefs_repo::open(sysroot)?;
    let booted_digest =
        deployment::manifest_digest(sysroot, &repo, &booted_id, &booted_origin).ok();
    let imgref = opts
        .target
        .clone()
        .unwrap_or_else(|| booted_origin.image.clone());

    progress::step(&progress, format!("Checking {imgref}"));
    crate::source::sigpolicy::check(&opts.fetch)?;
    let remote = remote::inspect_remote(&imgref, &opts.fetch, opts.check).await?;
    // What names an image for this check is the registry's digest where it
    // differs from the repository's (an image in Docker's format).
    let staged_digest = match host.marker.as_ref() {
        Some(m) => deployment::read_origin(sysroot, &m.depl_id)
            .ok()
            .and_then(|o| {
                o.registry_digest
                    .clone()
                    .or_else(|| deployment::manifest_digest(sysroot, &repo, &m.depl_id, &o).ok())
            }),
        None => None,
    };
    let booted_identity = booted_origin
        .registry_digest
        .clone()
        .or_else(|| booted_digest.clone());
    let remote_digest = Some(remote.manifest_digest.as_str());
    // `switch` to the image already booted (or staged) under another
    // reference: as bootc does, only the origin changes, so that `upgrade`
    // follows the new reference; nothing is pulled or deployed.
    let same_image = if booted_identity.as_deref() == remote_digest {
        Some((booted_id.clone(), booted_origin.clone()))
    } else if staged_digest.as_deref() == remote_digest {
        host.marker.as_ref().and_then(|m| {
            deployment::read_origin(sysroot, &m.depl_id)
                .ok()
                .map(|o| (m.depl_id.clone(), o))
        })
    } else {
        None
    };
    if let Some((id, mut origin)) = same_image
        && opts.target.is_some()
        && !opts.check
        && origin.image != imgref
    {
        let previous = std::mem::replace(&mut origin.image, imgref.clone());
        deployment::write_origin(sysroot, &id, &origin)?;
        crashpoint::hit("switch:after-origin");
        return Ok(UpgradeOutcome::OriginUpdated {
            image: imgref.to_string(),
            previous_image: previous.to_string(),
            manifest_digest: remote.manifest_digest,
            deployment_id: id,
        });
    }
    if booted_identity.as_deref() == remote_digest || staged_digest.as_deref() == remote_digest {
        return Ok(UpgradeOutcome::NoChange {
            image: imgref.to_string(),
            manifest_digest: remote.manifest_digest,
            staged: staged_digest.is_some() && booted_identity != staged_digest,
        });
    }
    if opts.check {
        return Ok(UpgradeOutcome::UpdateAvailable {
            image: imgref.to_string(),
            booted_digest: booted_identity,
            remote,
        });
    }

    progress::step(&progress, format!("Pulling {imgref}"));
    // A unified host pulls through its containers-storage.
    let mode = crate::unified::unified_mode(sysroot)?;
    let pulled =
        super::install::fetch(sysroot, &repo, &imgref, &opts.fetch, mode, progress.clone()).await?;
    crashpoint::hit("upgrade:after-pull");
    let id = pulled.boot_image_id.clone();
    if id == booted_id {
        return Ok(UpgradeOutcome::NoChange {
            image: imgref.to_string(),
            manifest_digest: pulled.identity_digest().to_string(),
            staged: false,
        });
    }

    progress::step(&progress, format!("Deploying {id}"));
    // Kernels of live deployments that an identical pair may share.
    let reusable: Vec<(String, String)> = host
        .entries
        .iter()
        .filter_map(|e| {
            let id = e.deployment_id()?;
            let o = deployment::read_origin(sysroot, id).ok()?;
            Some((e.kernel_dir()?.to_string(), o.boot_digest?))
        })
        .collect();
    // The booted entry's arguments (the user's stay), less what the old
    // image asked for, plus what the new one asks for.
    let booted_kargs: Vec<String> = booted
        .options
        .iter()
        .filter(|o| !o.starts_with("composefs=") && *o != "rw")
        .cloned()
        .collect();
    let old_image_kargs = match &booted_digest {
        Some(d) => create::image_kargs(&repo, d)
            .with_context(|| format!("reading the kernel arguments of the booted image {d}"))?,
        None => vec![],
    };
    let tree = create::ImageTree::read(&repo, &pulled.manifest_digest)?;
    let new_image_kargs = tree
        .kargs(&repo)
        .with_context(|| format!("reading the kernel arguments of {imgref}"))?;
    let kargs =
        crate::install_config::upgrade_kargs(&booted_kargs, &old_image_kargs, &new_image_kargs);
    let deployed = create::deploy_image(
        sysroot,
        &repo,
        &DeployRequest {
            manifest_digest: &pulled.manifest_digest,
            tree: &tree,
            registry: pulled.registry.as_ref(),
            id: &id,
            origin_image: &imgref,
            kargs: Some(kargs),
            extra_kargs: &[],
            reusable_kernels: &reusable,
        },
        &mut |_, _| Ok(()),
    )?;
    crashpoint::hit("upgrade:after-deploy");
    progress::step(
        &progress,
        format!("Deployment files: {}", deployed.files.describe()),
    );

    // Next boot: the new deployment, then the booted one as rollback.
    let entries = vec![deployed.entry.clone(), booted.clone()];
    // An older staged deployment is replaced: unmark it first, so no marker
    // ever names entries that are not there.
    staged::remove(sysroot)?;
    bls::replace_entries_dir(sysroot, sysroot.staged_entries_dir(), &entries)
        .context("writing the staged boot entries")?;
    crashpoint::hit("upgrade:after-entries");
    staged::write(
        sysroot,
        &StagedMarker {
            depl_id: id.clone(),
            finalization_locked: false,
        },
    )?;
    crashpoint::hit("upgrade:after-marker");

    drop(repo);
    progress::step(&progress, "Collecting garbage");
    let gc_report = gc::gc(sysroot, GcOpts::default())?;
    crate::fs::xfs_prealloc::trim_quietly(sysroot);
    let version = composefs_repo::open(sysroot)
        .ok()
        .and_then(|r| composefs_repo::open_image(&r, &pulled.manifest_digest).ok())
        .and_then(|i| {
            i.label("org.opencontainers.image.version")
                .map(str::to_string)
        });
    Ok(UpgradeOutcome::Staged {
        image: imgref.to_string(),
        deployment_id: id,
        manifest_digest: pulled.identity_digest().to_string(),
        version,
        kernel_reused: deployed.kernel_reused,
        gc: Some(Box::new(gc_report)),
        commit: None,
    })
}
