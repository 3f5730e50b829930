//! `status` of a composefs host: the boot entries, each deployment's
//! origin and image, in bootc's `BootcHost` shape. Reads only.

use anyhow::Result;
use composefs_oci::oci_image::OciImage;

use crate::boot::bls::BlsEntry;
use crate::command::status::{
    BootEntry, BootType, ComposefsStatus, Host, HostStatus, ImageStatus, StorageStatus, assemble,
    image_version, normalize_timestamp, root_is_read_only,
};
use crate::deployment;
use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::sysroot::{BootedMode, Sysroot};

/// An image's version as [`image_version`] reads it (label, legacy
/// label, manifest annotation).
pub fn version_of(img: &OciImage<ObjectId>) -> Option<String> {
    let config = img.config().and_then(|c| serde_json::to_value(c).ok());
    let manifest = serde_json::to_value(img.manifest()).ok();
    image_version(config.as_ref(), manifest.as_ref())
}

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
    let boot_type = match origin.as_ref().map(|o| o.boot_type.as_str()) {
        None => BootType::Bls,
        Some(t) => BootType::from_origin(t).unwrap_or_else(|| {
            errors.push(format!("unknown boot_type {t:?} in the origin of {id}"));
            BootType::Bls
        }),
    };
    let mut image = None;
    if let (Some(origin), Some(repo)) = (&origin, repo) {
        match deployment::manifest_digest(sysroot, repo, &id, origin)
            .and_then(|d| Ok((composefs_repo::open_image(repo, &d)?, d)))
        {
            Ok((img, digest)) => {
                image = Some(ImageStatus {
                    image: (&origin.image).into(),
                    version: version_of(&img),
                    // bootc reads only the config's `created` here.
                    timestamp: img.created().and_then(normalize_timestamp),
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
            boot_type,
            // bootc's names: entries on an ESP are systemd-boot's.
            bootloader: if sysroot.esp_path().is_some() {
                "systemd"
            } else {
                "grub"
            },
            boot_digest: origin.as_ref().and_then(|o| o.boot_digest.clone()),
            missing_verity_allowed: entry.missing_verity_allowed(),
            verity_enforced: !entry.missing_verity_allowed()
                && repo.is_some_and(|r| !r.is_insecure()),
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
    let staged = host.staged_entry().map(|e| BootEntry {
        // The marker's `finalization_locked` (`upgrade --download-only`).
        download_only: host.marker.as_ref().is_some_and(|m| m.finalization_locked),
        ..describe_entry(sysroot, repo.as_deref(), e)
    });
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
        // bootc sets `type` only on ostree hosts.
        ty: None,
        // What is mounted on the running `/usr` is not on the root.
        usr_overlay: None,
        read_only: root_is_read_only(sysroot),
        storage: storage_status(sysroot)?,
        booted_is_primary_entry: *sysroot.booted_mode() == BootedMode::Offline,
    }))
}
