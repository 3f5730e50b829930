//! `status` of an ostree host, in bootc's `BootcHost` shape. Reads only:
//! libostree loads the sysroot without writing.

use anyhow::{Context, Result, anyhow};
use ostree::{gio, glib};
use serde_json::Value;

use crate::command::status::{
    BootEntry, FilesystemOverlay, Host, HostStatus, ImageReference, ImageStatus, StorageStatus,
    image_status_of, image_version, root_is_read_only,
};
use crate::stores::ostree_repo;
use crate::sysroot::{BootedMode, Sysroot};

/// Detached-metadata keys ostree-ext writes on an image's merge commit
/// when an update check finds a newer image (`ImageImporter::prepare`).
const CACHED_MANIFEST_DIGEST: &str = "ostree-ext.cached.manifest-digest";
const CACHED_MANIFEST: &str = "ostree-ext.cached.manifest";
const CACHED_CONFIG: &str = "ostree-ext.cached.config";

/// Origin groups of machine-local changes (rpm-ostree's): bootc calls such
/// a deployment incompatible and shows no image for it.
const LOCAL_CHANGE_GROUPS: [&str; 4] = ["rpmostree", "packages", "overrides", "modules"];

/// The update an update check cached on `commit` (its detached metadata,
/// `.commitmeta`), as bootc shows it; `None` when there is none.
pub fn cached_update(
    repo: &ostree::Repo,
    commit: &str,
    image: &ImageReference,
) -> Result<Option<ImageStatus>> {
    let Some(meta) = repo
        .read_commit_detached_metadata(commit, gio::Cancellable::NONE)
        .map_err(|e| anyhow!("reading the detached metadata of {commit}: {e}"))?
    else {
        return Ok(None);
    };
    let meta = glib::VariantDict::new(Some(&meta));
    let get = |k: &str| meta.lookup::<String>(k).ok().flatten();
    // Other writers' detached metadata (signatures) is not an update.
    let Some(digest) = get(CACHED_MANIFEST_DIGEST) else {
        return Ok(None);
    };
    let json = |k: &str| -> Result<Value> {
        let text = get(k).ok_or_else(|| anyhow!("cached update {digest}: no {k}"))?;
        serde_json::from_str(&text).with_context(|| format!("cached update {digest}: {k}"))
    };
    let manifest = json(CACHED_MANIFEST)?;
    let config = json(CACHED_CONFIG)?;
    Ok(Some(image_status_of(
        image.clone(),
        digest,
        &config,
        Some(&manifest),
    )))
}

/// bootc's `usrOverlay` of an unlocked deployment (`ostree admin unlock`).
pub fn usr_overlay(d: &ostree::Deployment) -> Option<FilesystemOverlay> {
    use ostree::DeploymentUnlockedState as U;
    let (access_mode, persistence) = match d.unlocked() {
        U::Development => ("readWrite", "transient"),
        U::Hotfix => ("readWrite", "persistent"),
        U::Transient => ("readOnly", "transient"),
        _ => return None,
    };
    Some(FilesystemOverlay {
        access_mode,
        persistence,
    })
}

/// Describes one deployment.
pub fn describe(
    os: &ostree::Sysroot,
    d: &ostree::Deployment,
    index: usize,
    total: usize,
) -> BootEntry {
    let mut errors = vec![];
    let repo = os.repo();
    let incompatible = d
        .origin()
        .is_some_and(|kf| LOCAL_CHANGE_GROUPS.iter().any(|g| kf.has_group(g)));
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
        _ if incompatible => None,
        (Some(img), Some(info)) => match &info.manifest_digest {
            Some(digest) => Some(image_status_of(
                img.into(),
                digest.clone(),
                info.config.as_ref().unwrap_or(&Value::Null),
                info.manifest.as_ref(),
            )),
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
    let cached = image_status.as_ref().and_then(|i| {
        cached_update(&repo, &d.csum(), &i.image)
            .map_err(|e| errors.push(format!("{e:#}")))
            .ok()
            .flatten()
    });
    let osname = d.osname().to_string();
    BootEntry {
        image: image_status,
        cached_update: cached,
        incompatible,
        pinned: d.is_pinned(),
        soft_reboot_capable: false,
        download_only: false,
        store: Some("ostreeContainer"),
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
    let mut usr = None;
    for (i, d) in deps.iter().enumerate() {
        if d.is_staged() {
            continue;
        }
        let e = describe(os, d, i, total);
        if Some(i) == booted_idx {
            usr = usr_overlay(d);
            booted = Some(e);
        } else if rollback.is_none() {
            rollback = Some(e);
        } else {
            other.push(e);
        }
    }
    // bootc: a bootc host when the booted deployment runs an image.
    let ty = booted
        .as_ref()
        .is_some_and(|b: &BootEntry| b.image.is_some())
        .then_some("bootcHost");
    Ok(crate::command::status::assemble(HostStatus {
        staged,
        booted,
        rollback,
        other_deployments: other,
        rollback_queued: booted_idx.is_some_and(|i| i != 0),
        ty,
        usr_overlay: usr,
        read_only: root_is_read_only(sysroot),
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
            version: image_version(info.config.as_ref(), info.manifest.as_ref()),
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
        ostree_composefs_bound: ostree_repo::is_bound(&repo),
        images,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostree::prelude::*;

    /// A commit of an empty tree in a fresh archive repository.
    fn empty_commit(repo: &ostree::Repo) -> String {
        let none = gio::Cancellable::NONE;
        repo.create(ostree::RepoMode::Archive, none).unwrap();
        let info = gio::FileInfo::new();
        info.set_attribute_uint32("unix::uid", 0);
        info.set_attribute_uint32("unix::gid", 0);
        info.set_attribute_uint32("unix::mode", libc::S_IFDIR | 0o755);
        let dirmeta = ostree::create_directory_metadata(&info, None);
        repo.prepare_transaction(none).unwrap();
        let meta = repo
            .write_metadata(ostree::ObjectType::DirMeta, None, &dirmeta, none)
            .unwrap();
        let mtree = ostree::MutableTree::new();
        mtree.set_metadata_checksum(&meta.to_hex());
        let root = repo.write_mtree(&mtree, none).unwrap();
        let root = root.downcast_ref::<ostree::RepoFile>().unwrap();
        let c = repo
            .write_commit(None, None, None, None, root, none)
            .unwrap()
            .to_string();
        repo.commit_transaction(none).unwrap();
        c
    }

    #[test]
    fn cached_update_is_what_ostree_ext_cached() {
        let td = tempfile::tempdir().unwrap();
        let repo = ostree::Repo::new_for_path(td.path());
        let commit = empty_commit(&repo);
        let image = ImageReference {
            image: "quay.io/a/b:latest".into(),
            transport: "registry".into(),
        };
        let write = |pairs: &[(&str, &str)]| {
            let d = glib::VariantDict::new(None);
            for (k, v) in pairs {
                d.insert(k, *v);
            }
            repo.write_commit_detached_metadata(&commit, Some(&d.end()), gio::Cancellable::NONE)
                .unwrap();
        };
        // No detached metadata; then someone else's (a signature).
        assert!(cached_update(&repo, &commit, &image).unwrap().is_none());
        write(&[("ostree.gpgsigs", "x")]);
        assert!(cached_update(&repo, &commit, &image).unwrap().is_none());
        // ostree-ext's keys.
        write(&[
            (CACHED_MANIFEST_DIGEST, "sha256:bb"),
            (
                CACHED_MANIFEST,
                r#"{"schemaVersion":2,"annotations":{"org.opencontainers.image.version":"9"}}"#,
            ),
            (
                CACHED_CONFIG,
                r#"{"architecture":"amd64","created":"2026-01-02T04:04:05+01:00"}"#,
            ),
        ]);
        let u = cached_update(&repo, &commit, &image).unwrap().unwrap();
        assert_eq!(u.image, image);
        assert_eq!(u.image_digest, "sha256:bb");
        assert_eq!(u.version.as_deref(), Some("9"));
        assert_eq!(u.timestamp.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(u.architecture, "amd64");
        // The digest without the rest is an error, not an update.
        write(&[(CACHED_MANIFEST_DIGEST, "sha256:bb")]);
        assert!(cached_update(&repo, &commit, &image).is_err());
    }
}
