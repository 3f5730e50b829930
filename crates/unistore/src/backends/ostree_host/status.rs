//! `status` of an ostree host, in bootc's `BootcHost` shape. Reads only:
//! libostree loads the sysroot without writing.

use anyhow::Result;

use crate::command::status::{BootEntry, Host, HostStatus, ImageStatus, StorageStatus};
use crate::stores::ostree_repo;
use crate::sysroot::{BootedMode, Sysroot};

/// Describes one deployment.
pub fn describe(
    os: &ostree::Sysroot,
    d: &ostree::Deployment,
    index: usize,
    total: usize,
) -> BootEntry {
    let mut errors = vec![];
    let repo = os.repo();
    let image = match super::deployment_image(d) {
        Ok(img) => Some(img),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let info = match ostree_repo::commit_info(&repo, &d.csum()) {
        Ok(i) => Some(i),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let image_status = match (&image, &info) {
        (Some(img), Some(info)) => match &info.manifest_digest {
            Some(digest) => Some(ImageStatus {
                image: img.into(),
                version: info.version(),
                timestamp: info.created(),
                image_digest: digest.clone(),
                architecture: info.architecture().unwrap_or_default(),
            }),
            None => {
                errors.push(format!(
                    "commit {} records no image (no ostree.manifest-digest)",
                    d.csum()
                ));
                None
            }
        },
        _ => None,
    };
    let osname = d.osname().to_string();
    BootEntry {
        image: image_status,
        cached_update: None,
        incompatible: false,
        pinned: d.is_pinned(),
        soft_reboot_capable: false,
        download_only: false,
        store: None,
        ostree: Some(serde_json::json!({
            "checksum": d.csum().to_string(),
            "deploySerial": d.deployserial(),
            "stateroot": osname,
        })),
        composefs: None,
        entry_file: entry_file_name(&osname, index, total),
        errors,
    }
}

/// The loader entry libostree 2022.7 writes for the deployment at `index`
/// of `total`: `ostree-<total - index>-<stateroot>.conf`.
pub fn entry_file_name(stateroot: &str, index: usize, total: usize) -> String {
    format!("ostree-{}-{stateroot}.conf", total - index)
}

/// `status.storage` of an ostree host: shown once bound to composefs,
/// with the unified mode once `set-unified full` marked it. Reads only.
fn storage(sysroot: &Sysroot, os: &ostree::Sysroot) -> Result<Option<StorageStatus>> {
    let bound = ostree_repo::is_bound(&os.repo());
    let mode = crate::unified::unified_mode(sysroot)?;
    Ok((bound || mode.is_some()).then(|| StorageStatus {
        unified: mode.map_or_else(|| "disabled".to_string(), |m| m.to_string()),
        ostree_composefs_bound: bound,
    }))
}

/// The status of an ostree host.
pub fn status(sysroot: &Sysroot) -> Result<Host> {
    host(sysroot, &super::load(sysroot)?)
}

/// The status from a loaded libostree sysroot.
fn host(sysroot: &Sysroot, os: &ostree::Sysroot) -> Result<Host> {
    let (deps, booted_idx) = super::deployments(sysroot, os);
    let total = deps.len();
    let staged = os
        .staged_deployment()
        .map(|d| describe(os, &d, 0, total + 1));
    let mut booted = None;
    let mut rollback = None;
    let mut other = vec![];
    for (i, d) in deps.iter().enumerate() {
        if d.is_staged() {
            continue;
        }
        let e = describe(os, d, i, total);
        if Some(i) == booted_idx {
            booted = Some(e);
        } else if rollback.is_none() {
            rollback = Some(e);
        } else {
            other.push(e);
        }
    }
    Ok(crate::command::status::assemble(HostStatus {
        staged,
        booted,
        rollback,
        other_deployments: other,
        rollback_queued: booted_idx.is_some_and(|i| i != 0),
        ty: Some("bootcHost"),
        storage: storage(sysroot, os)?,
        booted_is_primary_entry: *sysroot.booted_mode() == BootedMode::Offline,
    }))
}

/// `image list` of an ostree host: each deployment's image (booted,
/// rollback, staged, other) and each image ref, with whether its commit is
/// in the repository. Reads only.
pub fn image_list(sysroot: &Sysroot) -> Result<crate::command::image_list::ImageList> {
    use crate::command::image_list::{HostImage, ImageList};
    let os = super::load(sysroot)?;
    let host = host(sysroot, &os)?;
    let repo = os.repo();
    let mut images: Vec<HostImage> = vec![];
    let mut errors = vec![];
    let s = &host.status;
    let roles = [
        ("staged", s.staged.iter().collect::<Vec<_>>()),
        ("booted", s.booted.iter().collect()),
        ("rollback", s.rollback.iter().collect()),
        ("other", s.other_deployments.iter().collect()),
    ];
    for (role, entries) in roles {
        for e in entries {
            let Some(img) = &e.image else {
                errors.extend(e.errors.iter().cloned());
                continue;
            };
            if let Some(h) = images
                .iter_mut()
                .find(|h| h.manifest_digest == img.image_digest)
            {
                h.roles.push(role.into());
                continue;
            }
            images.push(HostImage {
                manifest_digest: img.image_digest.clone(),
                config_digest: None,
                image: Some(format!("{}:{}", img.image.transport, img.image.image)),
                roles: vec![role.into()],
                version: img.version.clone(),
                in_composefs: false,
                in_containers_storage: false,
                store_names: vec![],
                owned_by_unistore: false,
                in_ostree: Some(true),
            });
        }
    }
    for (r, c) in ostree_repo::image_refs(&repo)? {
        let Ok(info) = ostree_repo::commit_info(&repo, &c) else {
            errors.push(format!("ref {r}: commit {c} cannot be read"));
            continue;
        };
        let Some(d) = info.manifest_digest.clone() else {
            continue;
        };
        if images.iter().any(|h| h.manifest_digest == d) {
            continue;
        }
        images.push(HostImage {
            manifest_digest: d,
            config_digest: None,
            image: Some(r),
            roles: vec![],
            version: info.version(),
            in_composefs: false,
            in_containers_storage: false,
            store_names: vec![],
            owned_by_unistore: false,
            in_ostree: Some(true),
        });
    }
    // Bound or unified: where else each image is.
    if super::unified::has_composefs(sysroot)? {
        let cfs = crate::stores::composefs_repo::open(sysroot)?;
        let owned = crate::unified::owned_images(sysroot).unwrap_or_default();
        for h in &mut images {
            let Some(m) = super::unified::composefs_digest_of(&cfs, &h.manifest_digest)? else {
                continue;
            };
            h.in_composefs = true;
            let Ok(img) = crate::stores::composefs_repo::open_image(&cfs, &m) else {
                continue;
            };
            let config = img.config_digest().to_string();
            if let Some(si) = crate::unified::store_image(sysroot, &config)? {
                h.in_containers_storage = true;
                h.store_names = si.names;
            }
            h.owned_by_unistore = owned.iter().any(|o| o.manifest_digest == m);
            h.config_digest = Some(config);
        }
    }
    Ok(ImageList {
        unified: crate::unified::unified_mode(sysroot)?,
        images,
        errors,
    })
}
