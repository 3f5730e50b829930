//! `fsck images`: each host image in the composefs repository and, on a
//! unified host, in the host containers-storage; repairs between them.

use std::collections::BTreeMap;

use anyhow::Result;
use composefs::fsverity::FsVerityHashValue;
use serde_json::Value;

use crate::deployment;
use crate::deployment::host_state::HostState;
use crate::stores::composefs_repo::{self, Repo};
use crate::stores::containers_storage::writer::WriteOptions;
use crate::sysroot::{BOOTC_TAG_PREFIX, COMPOSEFS_DIR, HOST_STORAGE_DIR, Sysroot, UNIFIED_FLAG};
use crate::unified::{self, UnifiedMode};

use crate::command::fsck::Binding;
use crate::command::fsck::ImageReport;
use crate::command::fsck::ImagesReport;
use crate::command::fsck::StoreReport;
use crate::command::fsck::{FsckOpts, all_ok};
use crate::util::short_digest;
use crate::verify::check_image_sharing;
use crate::verify::memo::LayerMemo;
use crate::verify::repo::{check_composefs, restore_object};
use crate::verify::store::{
    StoreView, check_store_image, find_in_store, read_store, reflinks_supported,
};
use crate::verify::write_into_store;

/// One host image before it is checked.
#[derive(Debug, Default)]
struct HostImage {
    manifest_digest: String,
    tags: Vec<String>,
    deployments: Vec<String>,
    /// The reference its deployments follow.
    reference: Option<String>,
}

/// The host images: tagged or named by a live entry. Problems reading
/// origins are returned apart.
fn host_images(sysroot: &Sysroot, repo: &Repo) -> Result<(Vec<HostImage>, Vec<String>)> {
    let mut by_digest: BTreeMap<String, HostImage> = BTreeMap::new();
    let mut issues = vec![];
    for (tag, digest) in composefs_oci::oci_image::list_refs(repo)? {
        if tag.starts_with(BOOTC_TAG_PREFIX) {
            let d = digest.to_string();
            let e = by_digest.entry(d.clone()).or_default();
            e.manifest_digest = d;
            e.tags.push(tag);
        }
    }
    let host = HostState::read(sysroot)?;
    for id in host.live_ids() {
        let origin = match deployment::read_origin(sysroot, &id) {
            Ok(o) => o,
            Err(e) => {
                issues.push(format!("live deployment {}: {e:#}", short_digest(&id)));
                continue;
            }
        };
        let digest = match deployment::manifest_digest(sysroot, repo, &id, &origin) {
            Ok(d) => d,
            Err(e) => {
                issues.push(format!("live deployment {}: {e:#}", short_digest(&id)));
                continue;
            }
        };
        let e = by_digest.entry(digest.clone()).or_default();
        e.manifest_digest = digest;
        e.deployments.push(id.clone());
        e.reference.get_or_insert_with(|| origin.image.to_string());
    }
    Ok((by_digest.into_values().collect(), issues))
}

/// The names the native writer gives an image it puts in the store: the
/// ones unistore recorded for it (or its `localhost/bootc:<digest>` name),
/// and the registry name its deployments follow when no other image of the
/// store carries it.
fn store_names(sysroot: &Sysroot, img: &HostImage, store: Option<&StoreView>) -> Vec<String> {
    let mut names = vec![unified::store_name(&img.manifest_digest)];
    if let Ok(owned) = unified::owned_images(sysroot)
        && let Some(o) = owned
            .iter()
            .find(|o| o.manifest_digest == img.manifest_digest)
    {
        for n in &o.names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    if let Some(r) = &img.reference
        && let Some(n) = r.strip_prefix("docker://")
    {
        let last = n.rsplit('/').next().unwrap_or(n);
        let n = if last.contains(':') || last.contains('@') {
            n.to_string()
        } else {
            format!("{n}:latest")
        };
        let taken = store.is_some_and(|s| {
            s.images.iter().any(|i| {
                i.get("names")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(&n)))
            })
        });
        if !taken && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// Runs `fsck images`.
pub fn fsck_images(sysroot: &Sysroot, opts: FsckOpts) -> Result<ImagesReport> {
    let _lock = if opts.repair {
        Some(crate::lock::lock(sysroot)?)
    } else {
        None
    };
    let mode = unified::unified_mode(sysroot)?;
    let unified_on = mode.is_some();
    let store_path = sysroot.join(HOST_STORAGE_DIR);
    let mut report = ImagesReport {
        unified_storage_enabled: unified_on,
        unified_mode: mode,
        binding: if unified_on {
            Binding::Unified
        } else {
            Binding::Disabled
        },
        reflinks_supported: reflinks_supported(&sysroot.join(COMPOSEFS_DIR)),
        containers_storage: StoreReport {
            path: store_path.clone(),
            exists: store_path.is_dir(),
            issues: vec![],
        },
        images: vec![],
        issues: vec![],
        ok: false,
    };
    if !sysroot.dir().try_exists(COMPOSEFS_DIR)? {
        report.issues.push(format!(
            "there is no composefs repository ({COMPOSEFS_DIR})"
        ));
        return Ok(report);
    }
    let repo = composefs_repo::open(sysroot)?;
    let objects = sysroot.join(COMPOSEFS_DIR).join("objects");
    let (images, issues) = host_images(sysroot, &repo)?;
    report.issues = issues;
    let memo = LayerMemo::default();
    let mut store = match read_store(&store_path) {
        Ok(s) => s,
        Err(e) => {
            report
                .containers_storage
                .issues
                .push(format!("the containers-storage cannot be read: {e:#}"));
            None
        }
    };
    // Unreadable JSON is never rewritten: it may hold other images.
    let store_readable = report.containers_storage.issues.is_empty();
    if unified_on && !report.containers_storage.exists && !opts.repair {
        report.containers_storage.issues.push(format!(
            "the host is marked unified ({UNIFIED_FLAG}) but has no containers-storage at {}",
            store_path.display()
        ));
    }

    for img in &images {
        let mut r = ImageReport {
            name: img
                .reference
                .clone()
                .or_else(|| img.tags.first().cloned())
                .unwrap_or_else(|| img.manifest_digest.clone()),
            manifest_digest: img.manifest_digest.clone(),
            config_digest: None,
            tags: img.tags.clone(),
            deployments: img.deployments.clone(),
            in_composefs: false,
            in_containers_storage: false,
            is_live: !img.deployments.is_empty(),
            repaired: false,
            issues: vec![],
            notes: vec![],
            repairs: vec![],
            sharing_checked: false,
            shared_files: 0,
            unshared_files: 0,
            unshared_bytes: 0,
            in_ostree: None,
            ostree_unshared_files: None,
            ostree_unshared_bytes: None,
        };
        let mut cfs = check_composefs(
            &repo,
            &objects,
            &img.manifest_digest,
            &img.deployments,
            opts.verify_content,
            &memo,
        );

        if opts.repair {
            // Objects from the store.
            if !cfs.bad_objects.is_empty()
                && let Some(s) = &store
            {
                for bad in &cfs.bad_objects {
                    let Some(src) = find_in_store(s, bad) else {
                        continue;
                    };
                    match restore_object(sysroot, &repo, &bad.id, &src) {
                        Ok(reflinked) => r.repairs.push({
                            crate::crashpoint::hit("fsck-repair:after-object-restore");
                            format!(
                                "restored object objects/{} (/{}) from {} ({})",
                                bad.id.to_object_pathname(),
                                String::from_utf8_lossy(&bad.path),
                                src.display(),
                                if reflinked { "reflinked" } else { "copied" }
                            )
                        }),
                        Err(e) => r.issues.push(format!(
                            "could not restore object objects/{}: {e:#}",
                            bad.id.to_object_pathname()
                        )),
                    }
                }
            }
            // The GC root of a live image.
            if r.is_live && img.tags.is_empty() {
                let tag = composefs_repo::bootc_tag(&img.manifest_digest);
                match img
                    .manifest_digest
                    .parse()
                    .map_err(anyhow::Error::from)
                    .and_then(|d| composefs_oci::oci_image::tag_image(repo.as_ref(), &d, &tag))
                {
                    Ok(()) => {
                        r.repairs.push(format!("tagged it {tag}"));
                        r.tags.push(tag);
                    }
                    Err(e) => r.issues.push(format!("could not tag it {tag}: {e:#}")),
                }
            }
            if !r.repairs.is_empty() {
                memo.clear();
                cfs = check_composefs(
                    &repo,
                    &objects,
                    &img.manifest_digest,
                    &img.deployments,
                    true,
                    &memo,
                );
            }
        }

        // The store.
        let check_store = |store: Option<&StoreView>| {
            store.zip(cfs.config_digest.as_ref()).and_then(|(s, c)| {
                check_store_image(
                    s,
                    c,
                    cfs.config_json.as_deref(),
                    &cfs.diff_ids,
                    opts.verify_content,
                    &memo,
                )
            })
        };
        let mut store_problems = check_store(store.as_ref());
        let store_whole = matches!(&store_problems, Some(p) if p.is_empty());
        if opts.repair && unified_on && store_readable && cfs.ok() && !store_whole {
            let names = store_names(sysroot, img, store.as_ref());
            // An image in Docker's format: the registry's manifest, as its
            // deployments kept it.
            let manifest = img.deployments.iter().find_map(|id| {
                crate::deployment::read_registry_manifest(sysroot, id)
                    .ok()
                    .flatten()
            });
            let wo = WriteOptions {
                names,
                allow_copy: mode != Some(UnifiedMode::Enabled),
                verify_reused: opts.verify_content,
                check_reused_files: true,
                manifest,
            };
            let written = write_into_store(
                sysroot,
                &repo,
                &img.manifest_digest,
                cfs.config_digest.as_deref().unwrap_or_default(),
                store.as_ref(),
                &wo,
            );
            match written {
                Ok(st) => {
                    r.repairs.push(format!(
                        "written into containers-storage from the composefs repository: {} layer(s) written, {} reused; {} file(s) reflinked ({} bytes), {} copied ({} bytes)",
                        st.layers_written.len(),
                        st.layers_reused,
                        st.files_reflinked,
                        st.bytes_reflinked,
                        st.files_copied,
                        st.bytes_copied
                    ));
                    store = read_store(&store_path).ok().flatten();
                    memo.clear();
                    store_problems = check_store(store.as_ref());
                }
                Err(e) => r
                    .issues
                    .push(format!("could not write it into containers-storage: {e:#}")),
            }
        }

        // The verdict.
        r.config_digest = cfs.config_digest.clone();
        r.in_composefs = cfs.ok();
        r.issues.extend(cfs.problems.iter().cloned());
        for bad in &cfs.bad_objects {
            let mut msg = bad.describe();
            if opts.repair
                && store
                    .as_ref()
                    .is_none_or(|s| find_in_store(s, bad).is_none())
            {
                msg.push_str("; no copy of it in containers-storage");
            }
            r.issues.push(msg);
        }
        if r.is_live && r.tags.is_empty() {
            r.issues.push(format!(
                "it is live but not tagged {} (no GC root: the repository GC would remove it)",
                composefs_repo::bootc_tag(&img.manifest_digest)
            ));
        }
        if !r.is_live {
            r.notes.push(
                "no live boot entry uses it (`internals gc` removes its tag and content)".into(),
            );
        }
        r.in_containers_storage = matches!(&store_problems, Some(p) if p.is_empty());
        match (&store_problems, unified_on) {
            (Some(p), _) => {
                // Failures on a unified host; remarks where the store is
                // podman's business.
                let to = if unified_on {
                    &mut r.issues
                } else {
                    &mut r.notes
                };
                to.extend(p.iter().map(|x| format!("in containers-storage: {x}")));
            }
            (None, true) if cfs.config_digest.is_some() => {
                if store_readable {
                    r.issues
                        .push("it is missing from containers-storage".into());
                } else {
                    r.issues.push(
                        "it cannot be checked in containers-storage (see the store's issues)"
                            .into(),
                    );
                }
            }
            _ => {}
        }
        // One physical copy: store files share the objects' extents.
        if unified_on && report.reflinks_supported && r.in_containers_storage && r.in_composefs {
            check_image_sharing(sysroot, &repo, &store_path, mode, opts, &memo, &mut r);
        }
        r.repaired = !r.repairs.is_empty();
        report.images.push(r);
    }
    report.containers_storage.exists = store_path.is_dir();
    report.ok = report.issues.is_empty()
        && report.containers_storage.issues.is_empty()
        && all_ok(&report.images);
    Ok(report)
}
