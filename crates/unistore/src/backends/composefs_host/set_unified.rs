//! `image set-unified`: bring a host's images into the host containers-storage
//! and mark it unified.
//!
//! `full`: for every image a boot entry names (booted, rollback, and the
//! staged one when the staged marker exists), import it from the composefs
//! repository into the store (no network: exported, copied by skopeo, then
//! sharing extents with the composefs objects), and only then write the
//! flag `composefs/bootc.json`. A failure or a crash at any point leaves the
//! host unmarked; running again resumes (images already in the store are
//! not copied again) and, once marked, is a no-op.
//!
//! `composefs`: on a native composefs host the composefs↔ostree binding of
//! bootc's design is intrinsic: nothing to do.

use anyhow::{Context, Result, anyhow, bail};

use crate::command::set_unified::LiveImage;
use crate::command::set_unified::LiveImages;
use crate::command::set_unified::SetUnifiedOpts;
use crate::command::set_unified::SetUnifiedOutcome;
use crate::command::set_unified::Target;
use crate::deployment;
use crate::deployment::host_state::HostState;
use crate::progress::{self, Progress};
use crate::source::pull;
use crate::stores::composefs_repo;
use crate::stores::containers_storage;
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};
use crate::unified::{self};
use crate::{crashpoint, lock};

/// The live images, booted first, each manifest once. Fails on a live
/// deployment whose image cannot be told (set-unified must not mark a host
/// it could not fully bring into the store).
pub fn live_images(sysroot: &Sysroot) -> Result<LiveImages> {
    let (images, errors) = collect_live_images(sysroot, true)?;
    debug_assert!(errors.is_empty());
    Ok(images)
}

/// Like [`live_images`], but a deployment whose origin or manifest cannot be
/// read is reported in the second list instead of failing (for listings).
pub fn live_images_lenient(sysroot: &Sysroot) -> Result<(LiveImages, Vec<String>)> {
    collect_live_images(sysroot, false)
}

fn collect_live_images(sysroot: &Sysroot, strict: bool) -> Result<(LiveImages, Vec<String>)> {
    let host = HostState::read(sysroot)?;
    let repo = composefs_repo::open(sysroot)?;
    let staged = host.staged_entry().and_then(|e| e.deployment_id());
    let mut order: Vec<(&crate::boot::bls::BlsEntry, &str)> = vec![];
    if let Some(b) = host.booted_entry() {
        order.push((b, "booted"));
    }
    if let Some(s) = host.staged_entry() {
        order.push((s, "staged"));
    }
    let mut rollback_seen = false;
    for (i, e) in host.entries.iter().enumerate() {
        if Some(i) != host.booted {
            let role = if rollback_seen { "other" } else { "rollback" };
            rollback_seen = true;
            order.push((e, role));
        }
    }
    for e in &host.staged_entries {
        if e.deployment_id() != staged {
            order.push((e, "other"));
        }
    }
    let mut out: LiveImages = vec![];
    let mut errors = vec![];
    for (e, role) in order {
        let found = e
            .deployment_id()
            .ok_or_else(|| anyhow!("boot entry {} names no deployment", e.file_name))
            .and_then(|id| {
                let origin = deployment::read_origin(sysroot, id)?;
                let digest = deployment::manifest_digest(sysroot, &repo, id, &origin)?;
                Ok((origin, digest, id.to_string()))
            })
            .with_context(|| format!("{role} deployment of {}", e.file_name));
        let (origin, digest, deployment_id) = match found {
            Ok(x) => x,
            Err(err) if !strict => {
                errors.push(format!("{err:#}"));
                continue;
            }
            Err(err) => return Err(err),
        };
        if out.iter().any(|(l, _)| l.manifest_digest == digest) {
            continue;
        }
        out.push((
            LiveImage {
                manifest_digest: digest,
                image: origin.image.to_string(),
                role: role.to_string(),
                deployment_id,
            },
            origin.image,
        ));
    }
    Ok((out, errors))
}

/// Runs `set-unified` on a native composefs host.
pub async fn set_unified(
    sysroot: &Sysroot,
    opts: &SetUnifiedOpts,
    progress: Progress,
) -> Result<SetUnifiedOutcome> {
    if !sysroot
        .dir()
        .try_exists(format!("{COMPOSEFS_DIR}/meta.json"))?
    {
        bail!(
            "{} holds no composefs host (no {COMPOSEFS_DIR}/meta.json)",
            sysroot.path().display()
        );
    }
    if opts.target == Target::Composefs {
        return Ok(SetUnifiedOutcome::NoOp {
            message: "this is a native composefs host: its images already live in the composefs repository, \
                      so there is no ostree repository to bind (set-unified composefs is for ostree hosts); \
                      use `set-unified full` to share them with containers-storage"
                .into(),
        });
    }
    let Some(policy) = opts.mode.policy() else {
        bail!("set-unified full needs a mode: enabled or enabled-with-copy");
    };
    let _lock = lock::lock(sysroot)?;
    let probe = unified::probe_reflinks(sysroot)?;
    opts.mode.require_reflinks(&probe, sysroot.path())?;
    let live = live_images(sysroot)?;
    if live.is_empty() {
        bail!("no boot entry names a deployment: nothing to unify");
    }
    let repo = composefs_repo::open(sysroot)?;
    let mut missing = vec![];
    for (l, _) in &live {
        let img = composefs_repo::open_image(&repo, &l.manifest_digest)?;
        if !unified::image_in_store(sysroot, img.config_digest().as_ref())? {
            missing.push(l.manifest_digest.clone());
        }
    }
    let flag = unified::unified_mode(sysroot)?;
    if flag == Some(opts.mode) && missing.is_empty() {
        return Ok(SetUnifiedOutcome::AlreadyUnified {
            mode: opts.mode,
            images: live.into_iter().map(|(l, _)| l).collect(),
        });
    }
    crashpoint::hit("set-unified:start");

    let mut reports = vec![];
    let mut messages = vec![];
    for (l, origin) in &live {
        progress::step(
            &progress,
            format!("{} image {} ({})", l.role, l.image, l.manifest_digest),
        );
        // An image in Docker's format: the store gets the registry's
        // manifest, which its deployment kept.
        let registry = deployment::read_registry_manifest(sysroot, &l.deployment_id)?
            .map(|(digest, bytes)| pull::RegistryManifest { digest, bytes });
        let r = unified::import_into_store(
            sysroot,
            &repo,
            &l.manifest_digest,
            Some(origin),
            unified::NameRule::IfFree,
            policy,
            &probe,
            &progress,
            registry.as_ref(),
        )
        .await
        .with_context(|| format!("bringing {} into containers-storage", l.manifest_digest))?;
        let m = unified::import_message(opts.mode, &probe, &r);
        progress::step(&progress, m.clone());
        messages.push(m);
        reports.push(r);
        crashpoint::hit("set-unified:after-image");
    }
    // Every image must be there before the flag says so.
    for (l, _) in &live {
        let img = composefs_repo::open_image(&repo, &l.manifest_digest)?;
        if !unified::image_in_store(sysroot, img.config_digest().as_ref())? {
            bail!(
                "{} is still missing from containers-storage",
                l.manifest_digest
            );
        }
    }
    drop(repo);
    // What the imports superseded (splitstreams composefs-oci wrote again):
    // a host just made unified has nothing left to collect. Every live
    // image is tagged.
    composefs_repo::open(sysroot)?
        .gc(&[])
        .context("collecting what the import superseded")?;
    crashpoint::hit("set-unified:before-flag");
    unified::write_flag(sysroot, opts.mode)?;
    crashpoint::hit("set-unified:after-flag");
    crate::fs::xfs_prealloc::trim_quietly(sysroot);
    Ok(SetUnifiedOutcome::Unified {
        mode: opts.mode,
        reflinks: probe.supported,
        filesystem: probe.describe(),
        images: reports,
        messages,
    })
}

/// Whether the store has every live image (for checks and tests).
pub fn all_live_in_store(sysroot: &Sysroot) -> Result<bool> {
    if !containers_storage::store_exists(sysroot)? {
        return Ok(false);
    }
    let repo = composefs_repo::open(sysroot)?;
    for (l, _) in live_images(sysroot)? {
        let img = composefs_repo::open_image(&repo, &l.manifest_digest)?;
        if !unified::image_in_store(sysroot, img.config_digest().as_ref())? {
            return Ok(false);
        }
    }
    Ok(true)
}
