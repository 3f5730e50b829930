//! `status` of a composefs host: the boot entries, each deployment's
//! origin and image, in bootc's `BootcHost` shape. Reads only.

use anyhow::Result;

use crate::boot::bls::BlsEntry;
use crate::command::status::{
    BootEntry, ComposefsStatus, Host, HostStatus, ImageStatus, StorageStatus, assemble,
};
use crate::deployment;
use crate::stores::composefs_repo::{self, Repo};
use crate::sysroot::{BootedMode, Sysroot};

/// Describes the deployment an entry names.
pub fn describe_entry(sysroot: &Sysroot, repo: Option<&Repo>, entry: &BlsEntry) -> BootEntry {
    let mut errors = vec![];
    let id = entry.deployment_id().unwrap_or_default().to_string();
    if id.is_empty() {
        errors.push(format!(
            "{} names no composefs= deployment",
            entry.file_name
        ));
    }
    let origin = match deployment::read_origin(sysroot, &id) {
        Ok(o) => Some(o),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let mut image = None;
    if let (Some(origin), Some(repo)) = (&origin, repo) {
        match deployment::manifest_digest(sysroot, repo, &id, origin)
            .and_then(|d| Ok((composefs_repo::open_image(repo, &d)?, d)))
        {
            Ok((img, digest)) => {
                let version = img
                    .label("org.opencontainers.image.version")
                    .map(str::to_string);
                image = Some(ImageStatus {
                    image: (&origin.image).into(),
                    version,
                    timestamp: img.created().map(str::to_string),
                    image_digest: origin.registry_digest.clone().unwrap_or(digest),
                    architecture: img.architecture(),
                });
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    BootEntry {
        image,
        cached_update: None,
        incompatible: false,
        pinned: false,
        soft_reboot_capable: false,
        download_only: false,
        store: None,
        ostree: None,
        composefs: Some(ComposefsStatus {
            verity: id,
            boot_type: origin
                .as_ref()
                .map(|o| o.boot_type.clone())
                .unwrap_or_else(|| "bls".into()),
            bootloader: "grub".into(),
            boot_digest: origin.as_ref().and_then(|o| o.boot_digest.clone()),
            missing_verity_allowed: entry.missing_verity_allowed(),
        }),
        entry_file: entry.file_name.clone(),
        errors,
    }
}

/// `status.storage` from the unified flag (`composefs/bootc.json`); `None`
/// when the host is not marked. Reads one file, creates nothing.
pub fn storage_status(sysroot: &Sysroot) -> Result<Option<StorageStatus>> {
    Ok(
        crate::unified::unified_mode(sysroot)?.map(|m| StorageStatus {
            unified: m.to_string(),
            ostree_composefs_bound: false,
        }),
    )
}

/// The status of a native composefs host.
pub fn composefs_status(sysroot: &Sysroot) -> Result<Host> {
    let repo = composefs_repo::open(sysroot).ok();
    let host = crate::deployment::host_state::HostState::read(sysroot)?;
    let entries = &host.entries;
    let booted_idx = host.booted;
    let staged = host
        .staged_entry()
        .map(|e| describe_entry(sysroot, repo.as_deref(), e));
    let mut booted = None;
    let mut rollback = None;
    let mut other = vec![];
    for (i, e) in entries.iter().enumerate() {
        let d = describe_entry(sysroot, repo.as_deref(), e);
        if Some(i) == booted_idx {
            booted = Some(d);
        } else if rollback.is_none() {
            rollback = Some(d);
        } else {
            other.push(d);
        }
    }
    Ok(assemble(HostStatus {
        staged,
        booted,
        rollback,
        other_deployments: other,
        rollback_queued: booted_idx.is_some_and(|i| i != 0),
        ty: Some("bootcHost"),
        storage: storage_status(sysroot)?,
        booted_is_primary_entry: *sysroot.booted_mode() == BootedMode::Offline,
    }))
}
