//! Checking images in the stores, the parts both backends' fsck share:
//! an image whole in the composefs repository ([`check_composefs_image`]),
//! its files sharing extents with the host containers-storage
//! ([`check_image_sharing`]), and rewriting a store image from the
//! repository ([`write_into_store`]).
//!
//! * [`repo`]: objects, layer splitstreams and EROFS images of the
//!   composefs repository, re-hashed on demand; restoring an object;
//! * [`store`]: an image in the host containers-storage (read without
//!   locks or writes), finding an object's content there;
//! * [`sharing`]: whether store files share their objects' extents;
//! * [`memo`]: what was found of each layer, so a layer shared by several
//!   images is checked once.
//!
//! Each backend's fsck (`backends::*::fsck`) decides which images to check
//! and reports in the shapes of [`crate::command::fsck`].

pub mod memo;
pub mod repo;
pub mod sharing;
pub mod store;

pub use memo::LayerMemo;
pub use store::read_store;
pub use store::reflinks_supported;

use anyhow::Result;
use composefs::fsverity::FsVerityHashValue;
use serde_json::Value;

use crate::command::fsck::{FsckOpts, ImageReport};
use crate::stores::composefs_repo::Repo;
use crate::stores::containers_storage::writer::{self, WriteOptions};
use crate::sysroot::Sysroot;
use crate::unified;

use crate::stores::composefs_repo;
use crate::sysroot::COMPOSEFS_DIR;
use crate::sysroot::HOST_STORAGE_DIR;
use crate::unified::UnifiedMode;
use crate::verify::repo::check_composefs;
use crate::verify::repo::restore_object;
use crate::verify::store::find_in_store;
use sharing::{SharingCheck, check_sharing, human_bytes};
use std::path::PathBuf;
use store::{StoreView, id_of};

/// Writes an image into the store with the native writer, recorded in
/// unistore's ownership record the way a unified pull records it (the
/// names unistore adds; `created` when the store had no image with that
/// id), so that the store GC prunes it once no deployment uses it. The
/// record is written before the image (as pending: a crash cannot leave an
/// image unistore wrote but does not own) and completed after it.
pub fn write_into_store(
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
    let stats = writer::write_image_with(
        repo,
        manifest_digest,
        &crate::stores::containers_storage::store_path(sysroot),
        wo,
        // Issue 22: an ostree-encapsulated image's xattrs (not in its tars).
        &crate::source::ostree_encap::store_xattrs::store_xattrs(repo, manifest_digest)?,
    )?;
    crate::crashpoint::hit("fsck-repair:after-store-write");
    unified::record_upsert(sysroot, entry(false))?;
    Ok(stats)
}

/// Compares the image's store files with their composefs objects and, with
/// `repair`, makes those that hold their own copy share the objects'
/// extents again (`FIDEDUPERANGE`: the kernel compares the bytes first).
/// Unshared files are a note, not a failure: they waste space, nothing is
/// broken.
pub fn check_image_sharing(
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

pub fn note_sharing(c: &SharingCheck, opts: FsckOpts, r: &mut ImageReport) {
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
pub fn check_composefs_image(
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
