//! `fsck images`: each host image in the composefs repository and, on a
//! unified host, in the host containers-storage; repairs between them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use composefs::fsverity::FsVerityHashValue;
use serde::Serialize;
use serde_json::Value;

use crate::deployment;
use crate::host::HostState;
use crate::stores::composefs_repo::{self, Repo};
use crate::stores::containers_storage::writer::{self, WriteOptions};
use crate::sysroot::{BOOTC_TAG_PREFIX, COMPOSEFS_DIR, HOST_STORAGE_DIR, Sysroot, UNIFIED_FLAG};
use crate::unified::{self, UnifiedMode};

use super::memo::LayerMemo;
use super::repo::{check_composefs, restore_object};
use super::sharing::{SharingCheck, check_sharing, human_bytes};
use super::store::{
    StoreView, check_store_image, find_in_store, id_of, read_store, reflinks_supported,
};
use super::{FsckOpts, all_ok, short};

/// How the composefs repository and the containers-storage are bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// Not unified: the store (if any) is podman's business.
    #[default]
    Disabled,
    /// ostree hosts only: bound to composefs, not yet unified.
    BoundOnly,
    /// Unified: every host image is in both.
    Unified,
}

/// One host image.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// ostree hosts: whole in the ostree repository (its commit and every
    /// object it reaches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_ostree: Option<bool>,
    /// The reference its deployments follow, else its tag.
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: Option<String>,
    /// Its `localhost/bootc-*` tags.
    pub tags: Vec<String>,
    /// Live deployments using it.
    pub deployments: Vec<String>,
    /// Whole in the composefs repository.
    pub in_composefs: bool,
    /// Whole in the host containers-storage.
    pub in_containers_storage: bool,
    /// Named by a live boot entry.
    pub is_live: bool,
    /// Something was repaired.
    pub repaired: bool,
    /// Problems left (each a failure).
    pub issues: Vec<String>,
    /// Remarks that are not failures.
    pub notes: Vec<String>,
    /// What the repair did.
    pub repairs: Vec<String>,
    /// Whether its store files were compared with the composefs objects
    /// (a unified host with reflinks, the image whole in both).
    pub sharing_checked: bool,
    /// Store files that share their composefs object's extents.
    pub shared_files: u64,
    /// Store files that hold their own copy of an object's content.
    pub unshared_files: u64,
    /// Their bytes (the space a repair gives back).
    pub unshared_bytes: u64,
    /// ostree hosts bound to composefs: content objects that hold their
    /// own copy instead of sharing their composefs object's extents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ostree_unshared_files: Option<u64>,
    /// Their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ostree_unshared_bytes: Option<u64>,
}

/// The host containers-storage.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreReport {
    pub path: PathBuf,
    pub exists: bool,
    /// Problems of the store as a whole (unreadable JSON).
    pub issues: Vec<String>,
}

/// The report of `fsck images`, shaped as the unified-storage design has it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesReport {
    pub unified_storage_enabled: bool,
    /// `enabled` / `enabled-with-copy` on a unified host.
    pub unified_mode: Option<UnifiedMode>,
    pub binding: Binding,
    pub reflinks_supported: bool,
    pub containers_storage: StoreReport,
    pub images: Vec<ImageReport>,
    /// Problems tied to no single image (unreadable origins).
    pub issues: Vec<String>,
    pub ok: bool,
}

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
                issues.push(format!("live deployment {}: {e:#}", short(&id)));
                continue;
            }
        };
        let digest = match deployment::manifest_digest(sysroot, repo, &id, &origin) {
            Ok(d) => d,
            Err(e) => {
                issues.push(format!("live deployment {}: {e:#}", short(&id)));
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

/// Writes an image into the store with the native writer, recorded in
/// unistore's ownership record the way a unified pull records it (the
/// names unistore adds; `created` when the store had no image with that
/// id), so that the store GC prunes it once no deployment uses it. The
/// record is written before the image (as pending: a crash cannot leave an
/// image unistore wrote but does not own) and completed after it.
pub(crate) fn write_into_store(
    sysroot: &Sysroot,
    repo: &Repo,
    manifest_digest: &str,
    config_digest: &str,
    store: Option<&StoreView>,
    wo: &WriteOptions,
) -> Result<writer::WriteStats> {
    let image_id = config_digest.trim_start_matches("sha256:");
    let prior: Option<Vec<&str>> = store
        .and_then(|s| s.images.iter().find(|i| id_of(i) == image_id))
        .map(|i| {
            i.get("names")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default()
        });
    let added: Vec<String> = wo
        .names
        .iter()
        .filter(|n| prior.as_ref().is_none_or(|p| !p.contains(&n.as_str())))
        .cloned()
        .collect();
    let entry = |pending| unified::OwnedImage {
        manifest_digest: manifest_digest.to_string(),
        image_id: image_id.to_string(),
        names: added.clone(),
        created: prior.is_none(),
        pending,
    };
    crate::stores::containers_storage::ensure_store(sysroot)?;
    unified::record_upsert(sysroot, entry(true))?;
    crate::crashpoint::hit("fsck-repair:after-record-pending");
    let stats = writer::write_image(
        repo,
        manifest_digest,
        &crate::stores::containers_storage::store_path(sysroot),
        wo,
    )?;
    crate::crashpoint::hit("fsck-repair:after-store-write");
    unified::record_upsert(sysroot, entry(false))?;
    Ok(stats)
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

/// Compares the image's store files with their composefs objects and, with
/// `repair`, makes those that hold their own copy share the objects'
/// extents again (`FIDEDUPERANGE`: the kernel compares the bytes first).
/// Unshared files are a note, not a failure: they waste space, nothing is
/// broken.
pub(crate) fn check_image_sharing(
    sysroot: &Sysroot,
    repo: &Repo,
    store: &std::path::Path,
    mode: Option<UnifiedMode>,
    opts: FsckOpts,
    memo: &LayerMemo,
    r: &mut ImageReport,
) {
    let objects = sysroot.join(COMPOSEFS_DIR).join("objects");
    let check = || check_sharing(repo, &objects, store, &r.manifest_digest, memo);
    let mut c = match check() {
        Ok(c) => c,
        Err(e) => {
            r.notes.push(format!(
                "containers-storage: whether its files share the composefs objects' extents could not be checked: {e:#}"
            ));
            return;
        }
    };
    let image_id = r
        .config_digest
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_string();
    if opts.repair
        && c.unshared > 0
        && let Some(policy) = mode.and_then(UnifiedMode::policy)
    {
        let before = (c.unshared, c.unshared_bytes);
        match unified::reshare_layers(
            sysroot,
            repo,
            &r.manifest_digest,
            &image_id,
            policy,
            &c.unshared_layers,
        ) {
            Ok(st) => {
                memo.clear();
                match check() {
                    Ok(after) => c = after,
                    Err(e) => r.issues.push(format!(
                        "containers-storage: its files could not be checked again after sharing: {e:#}"
                    )),
                }
                let fixed = before.0.saturating_sub(c.unshared);
                r.repairs.push(format!(
                    "containers-storage: {fixed} file(s) ({}) share the composefs objects' extents again ({} deduplicated)",
                    human_bytes(before.1.saturating_sub(c.unshared_bytes)),
                    st.reflinked
                ));
            }
            Err(e) => r.issues.push(format!(
                "containers-storage: could not make its files share the composefs objects' extents: {e:#}"
            )),
        }
    }
    note_sharing(&c, opts, r);
}

fn note_sharing(c: &SharingCheck, opts: FsckOpts, r: &mut ImageReport) {
    r.sharing_checked = true;
    r.shared_files = c.shared;
    r.unshared_files = c.unshared;
    r.unshared_bytes = c.unshared_bytes;
    if c.unshared > 0 {
        r.notes.push(format!(
            "containers-storage: {} file(s) ({}) hold their own copy instead of sharing the composefs objects' extents{}",
            c.unshared,
            human_bytes(c.unshared_bytes),
            if opts.repair {
                ""
            } else {
                " (`--repair` shares them)"
            }
        ));
    }
    if c.unchecked > 0 {
        r.notes.push(format!(
            "containers-storage: {} file(s) could not be compared with their composefs objects (missing, of another size or unreadable; `--verify-content` checks the layers)",
            c.unchecked
        ));
    }
}

/// The image `manifest_digest` in the composefs repository of a host that
/// keeps it beside other stores (an ostree host): checked, and with
/// `opts.repair` each missing or damaged object restored from the first of
/// `sources(object)` (files that may hold its content, such as ostree
/// objects) or the store that holds it; the digest decides
/// ([`restore_object`]). Problems left go to `r.issues`. Returns whether
/// the image is whole.
pub(crate) fn check_composefs_image(
    sysroot: &Sysroot,
    repo: &Repo,
    manifest_digest: &str,
    opts: FsckOpts,
    sources: impl Fn(&composefs_repo::ObjectId) -> Vec<PathBuf>,
    r: &mut ImageReport,
) -> bool {
    let objects = sysroot.join(COMPOSEFS_DIR).join("objects");
    // No boot EROFS images: the host boots from its other store.
    let memo = LayerMemo::default();
    let check = || {
        memo.clear();
        check_composefs(
            repo,
            &objects,
            manifest_digest,
            &[],
            opts.verify_content,
            &memo,
        )
    };
    let mut c = check();
    if opts.repair && !c.bad_objects.is_empty() {
        let store = read_store(&sysroot.join(HOST_STORAGE_DIR)).ok().flatten();
        for bad in &c.bad_objects {
            let mut candidates = sources(&bad.id);
            candidates.extend(store.as_ref().and_then(|s| find_in_store(s, bad)));
            let done = candidates.iter().find_map(|src| {
                restore_object(sysroot, repo, &bad.id, src)
                    .ok()
                    .map(|rl| (src, rl))
            });
            match done {
                Some((src, reflinked)) => {
                    crate::crashpoint::hit("fsck-repair:after-object-restore");
                    r.repaired = true;
                    r.repairs.push(format!(
                        "composefs: restored object objects/{} (/{}) from {} ({})",
                        bad.id.to_object_pathname(),
                        String::from_utf8_lossy(&bad.path),
                        src.display(),
                        if reflinked { "reflinked" } else { "copied" }
                    ));
                }
                None => r.issues.push(format!(
                    "composefs: could not restore object objects/{}: no other store holds its content",
                    bad.id.to_object_pathname()
                )),
            }
        }
        c = check();
    }
    for p in &c.problems {
        r.issues.push(format!("composefs: {p}"));
    }
    for b in &c.bad_objects {
        r.issues.push(format!(
            "composefs: {}{}",
            b.describe(),
            if opts.repair {
                ""
            } else {
                " (`--repair` restores it from ostree or the store)"
            }
        ));
    }
    c.ok()
}
