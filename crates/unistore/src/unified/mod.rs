//! Unified storage: one physical copy of each image file, shared by the
//! composefs repository and the host containers-storage (see
//! [`crate::stores::containers_storage`]) through reflinks.
//!
//! Two orders, by what the filesystem can do (the why is in
//! [`crate::design`]):
//!
//! * with reflinks, composefs first: the plain pull, then
//!   [`import_into_store`], whose native writer ([`crate::stores::containers_storage::writer`])
//!   writes the store's layers with every file a reflink of its composefs
//!   object. `set-unified full` and an install whose image asks for unified
//!   storage use [`import_into_store`] alone;
//! * without reflinks (`enabled-with-copy`), the store first: podman pulls
//!   (stage 1, per-layer progress from a transient `podman system service`),
//!   and each layer is imported from the store into composefs by hardlinks
//!   as soon as podman has committed it, while podman still pulls the next
//!   ones (`EarlyImport`), on every CPU (`store_import`).
//!
//! An image the store already had (podman pulled it itself) is only named,
//! and a pass over its layers makes every store file share its object's
//! extents (`FIDEDUPERANGE`).
//!
//! The host is marked unified by `composefs/bootc.json`
//! (`{"unified": "enabled" | "enabled-with-copy"}`), written with
//! write-temp + fsync + rename only after every image is in the store.
//! `composefs/bootc/unistore-images.json` records which images unistore put
//! in the store and which names it gave them: [`prune_store`] never removes
//! anything else.

mod prune;
pub mod record;
mod share;
mod store_first;
mod store_import;

pub use prune::*;
pub use record::*;
pub use share::*;
use store_first::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail, ensure};
use cap_std_ext::cap_std::{self, fs::Dir};
use composefs_oci::{LocalFetchOpt, OciDigest, PullOptions};
use serde::{Deserialize, Serialize};

use crate::crashpoint;
use crate::fs::reflink::{self, Method, Policy, ReflinkProbe};
use crate::progress::{self, Progress};
use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::{ImageRef, Transport};
use crate::source::pull;
use crate::source::pull::Pulled;
use crate::stores::composefs_repo::{self, Repo};
use crate::stores::containers_storage::writer;
use crate::stores::containers_storage::{self, Session};
use crate::sysroot::{COMPOSEFS_DIR, Sysroot, UNIFIED_FLAG};
use crate::util;

pub use crate::install_config::UnifiedMode;

/// The record of images unistore put in the store.
pub const RECORD_FILE: &str = "composefs/bootc/unistore-images.json";

/// The name unistore gives every image it puts in the store:
/// `localhost/bootc:<manifest digest hex>`. It keeps images that lost
/// their human name to a newer one (an upgrade of the same tag) from
/// looking dangling to `podman image prune`.
pub fn store_name(manifest_digest: &str) -> String {
    format!(
        "localhost/bootc:{}",
        manifest_digest.trim_start_matches("sha256:")
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct FlagFile {
    unified: UnifiedMode,
}

/// Parses the flag file's bytes: the mode it marks, `None` for `disabled`.
pub fn parse_flag(bytes: &[u8]) -> Result<Option<UnifiedMode>> {
    let f: FlagFile =
        serde_json::from_slice(bytes).with_context(|| format!("parsing {UNIFIED_FLAG}"))?;
    Ok((f.unified != UnifiedMode::Disabled).then_some(f.unified))
}

/// The unified mode the host is marked with; `None` when not marked.
/// Reads only.
pub fn unified_mode(sysroot: &Sysroot) -> Result<Option<UnifiedMode>> {
    match sysroot.dir().read(UNIFIED_FLAG) {
        Ok(b) => parse_flag(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {UNIFIED_FLAG}")),
    }
}

/// Marks the host unified (write-temp, fsync, rename). Call it only once
/// every live image is in the store.
pub fn write_flag(sysroot: &Sysroot, mode: UnifiedMode) -> Result<()> {
    let text = serde_json::to_vec(&FlagFile { unified: mode })?;
    util::atomic_write(sysroot.dir(), UNIFIED_FLAG, &text)
        .with_context(|| format!("writing {UNIFIED_FLAG}"))
}

/// Probes reflinks where the repository and the store live.
pub fn probe_reflinks(sysroot: &Sysroot) -> Result<ReflinkProbe> {
    let dir = if sysroot.dir().try_exists(COMPOSEFS_DIR)? {
        sysroot.join(COMPOSEFS_DIR)
    } else {
        sysroot.path().to_path_buf()
    };
    reflink::probe(&dir)
}

/// Whether the store holds the image (by its config digest) with all its
/// layers. Reads only.
pub fn image_in_store(sysroot: &Sysroot, config_digest: &str) -> Result<bool> {
    if !containers_storage::store_exists(sysroot)? {
        return Ok(false);
    }
    Ok(containers_storage::find_complete_image(
        &containers_storage::store_path(sysroot),
        config_digest,
    )?
    .is_some())
}

/// The image in the store with id `config_digest`, if complete. Reads only.
pub fn store_image(
    sysroot: &Sysroot,
    config_digest: &str,
) -> Result<Option<containers_storage::StoreImage>> {
    if !containers_storage::store_exists(sysroot)? {
        return Ok(None);
    }
    containers_storage::find_complete_image(&containers_storage::store_path(sysroot), config_digest)
}

/// A registry name as containers/image normalizes it (`:latest` when it
/// has neither tag nor digest); `None` when it is not fully qualified.
fn normalized_registry_name(imgref: &ImageRef) -> Option<String> {
    if imgref.transport != Transport::Registry {
        return None;
    }
    let name = imgref.name.as_str();
    let first = name.split('/').next()?;
    if !name.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost")
    {
        return None;
    }
    let last = name.rsplit('/').next()?;
    if last.contains(':') || last.contains('@') {
        Some(name.to_string())
    } else {
        Some(format!("{name}:latest"))
    }
}

fn share_message(mode: UnifiedMode, probe: &ReflinkProbe, s: &ShareStats) -> String {
    if probe.supported {
        format!(
            "Unified storage ({mode}): {} files ({}) share their extents between containers-storage and composefs ({} newly reflinked)",
            s.reflinked + s.already_shared,
            human_bytes(s.shared_bytes),
            s.reflinked
        )
    } else {
        format!(
            "Unified storage ({mode}): no reflinks on {}: containers-storage keeps its own copy of the image files",
            probe.describe()
        )
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Fetches `imgref` the unified way, tagged `localhost/bootc-<manifest
/// digest>` with its boot EROFS image, so that it ends up in both the
/// composefs repository and the host store with one copy of each file.
///
/// * With reflinks: into composefs first (as a plain pull, with its
///   per-layer progress), then into the store by the native writer, every
///   file a reflink of its object ([`import_into_store`]). The store image
///   carries the registry's manifest byte for byte and the registry name,
///   taken from any older image as `podman pull` would.
/// * Without reflinks (`enabled-with-copy` only): into the store first
///   (podman for registries, skopeo for other transports), then into
///   composefs from the store by hardlinks where possible (for podman, each
///   layer as soon as podman has committed it), so there is still one copy.
///
/// `mode` must not be `disabled` (that is [`pull::pull`]).
/// `enabled` fails before writing anything when the filesystem has no
/// reflinks; `enabled-with-copy` then falls back and says so through
/// `progress`. The returned manifest digest is the registry's.
pub async fn fetch_unified(
    sysroot: &Sysroot,
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    mode: UnifiedMode,
    progress: Progress,
) -> Result<Pulled> {
    let Some(policy) = mode.policy() else {
        bail!("fetch_unified called with unified storage disabled");
    };
    let probe = probe_reflinks(sysroot)?;
    mode.require_reflinks(&probe, sysroot.path())?;
    // composefs-oci (0.9.4) cannot import an image in Docker's format from
    // containers-storage: such an image goes composefs first even without
    // reflinks, and its files are copied into the store.
    // Likewise when the signature policy is enforced: podman's pull would
    // apply the host's policy, not the one given.
    let docker = !probe.supported && !fetch.enforce_sigpolicy && {
        let (image, f) = (imgref.clone(), fetch.clone());
        tokio::task::spawn_blocking(move || {
            crate::source::docker_schema2::docker_manifest(&image, &f)
        })
        .await
        .context("reading the manifest")??
        .is_some()
    };
    if docker {
        progress::step(
            &progress,
            format!(
                "{imgref} is in Docker's format: pulled into composefs first, its files then copied into containers-storage (no reflinks here)"
            ),
        );
    }
    if probe.supported || docker || fetch.enforce_sigpolicy {
        // composefs first, then the store by reflinks from its objects.
        let fetched = pull::pull_layers(repo, imgref, fetch, progress.clone()).await?;
        crashpoint::hit("unified:after-composefs-pull");
        crate::util::release_freed_memory();
        // The boot image and tag (one CPU) while the store is written from
        // the layers (the other): neither needs the other.
        let manifest_digest = fetched.manifest_digest();
        let registry = fetched.registry.clone();
        let (r2, boot) = (repo.clone(), !fetch.no_boot_image);
        let finishing = tokio::task::spawn_blocking(move || pull::finish(&r2, fetched, boot));
        let imported = import_into_store(
            sysroot,
            repo,
            &manifest_digest,
            Some(imgref),
            NameRule::Take,
            policy,
            &probe,
            &progress,
            registry.as_ref(),
        )
        .await;
        let pulled = finishing.await.context("generating the boot image")??;
        let r = imported?;
        progress::step(&progress, import_message(mode, &probe, &r));
        return Ok(pulled);
    }
    fetch_store_first(sysroot, repo, imgref, fetch, mode, &probe, progress).await
}

/// What [`import_into_store`] did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    /// The image (its manifest digest in composefs).
    pub manifest_digest: String,
    /// The store's image id.
    pub image_id: String,
    /// Names it has in the store.
    pub names: Vec<String>,
    /// Whether it was copied into the store (false: it was there).
    pub copied_into_store: bool,
    /// How its files share extents with composefs.
    pub share: Option<ShareStats>,
}

/// How an image brought into the store gets its human (registry) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Take it from whichever image has it, as `podman pull` does: the
    /// image was just pulled under that name.
    Take,
    /// Only if no other image of the store has it: the image is an
    /// existing deployment, and the name may have moved on since.
    IfFree,
}

/// Puts an image of the composefs repository into the store without the
/// network and without copying file data: the native writer
/// ([`crate::stores::containers_storage::writer`]) replays its layers into the store, each
/// regular file a reflink of its composefs object (a copy only under
/// `ReflinkOrCopy` on a filesystem without reflinks). An image already in
/// the store is not written again, only named, and its files are made to
/// share the objects' extents. `origin` (the reference the deployment
/// follows) gives the human name when it is a registry reference; `rule`
/// says whether to take it from another image.
///
/// The image is recorded as unistore's (pending) before the store is
/// touched, so a crash never leaves an image [`prune_store`] would not
/// know it may remove.
#[allow(clippy::too_many_arguments)]
pub async fn import_into_store(
    sysroot: &Sysroot,
    repo: &Arc<Repo>,
    manifest_digest: &str,
    origin: Option<&ImageRef>,
    rule: NameRule,
    policy: Policy,
    probe: &ReflinkProbe,
    progress: &Progress,
    registry: Option<&pull::RegistryManifest>,
) -> Result<ImportReport> {
    let img = composefs_repo::open_image(repo, manifest_digest)?;
    let image_id = img
        .config_digest()
        .to_string()
        .trim_start_matches("sha256:")
        .to_string();
    drop(img);
    containers_storage::ensure_store(sysroot)?;
    let store = containers_storage::store_path(sysroot);
    let images = containers_storage::read_images(&store)?;
    let mut wanted = vec![store_name(manifest_digest)];
    if let Some(n) = origin.and_then(normalized_registry_name)
        && (rule == NameRule::Take || !images.iter().any(|i| i.names.contains(&n)))
    {
        wanted.push(n);
    }
    let present = containers_storage::find_complete_image(&store, &image_id)?;
    let had: &[String] = present.as_ref().map_or(&[], |p| &p.names);
    let add: Vec<String> = wanted
        .iter()
        .filter(|n| !had.contains(n))
        .cloned()
        .collect();
    // Recorded before the store changes: a crash leaves an entry that says
    // unistore created whatever part of the image is there.
    record_upsert(
        sysroot,
        OwnedImage {
            manifest_digest: manifest_digest.to_string(),
            image_id: image_id.clone(),
            names: add.clone(),
            created: present.is_none(),
            pending: true,
        },
    )?;
    let copied = present.is_none();
    let written = if present.is_some() {
        if !add.is_empty() {
            writer::add_names(&store, &image_id, &add)?;
        }
        None
    } else {
        progress::step(
            progress,
            format!("Writing {manifest_digest} into containers-storage from composefs"),
        );
        let opts = writer::WriteOptions {
            names: wanted.clone(),
            allow_copy: policy == Policy::ReflinkOrCopy,
            verify_reused: false,
            check_reused_files: false,
            manifest: registry.map(|r| (r.digest.clone(), r.bytes.clone())),
        };
        let (r, m, st) = (repo.clone(), manifest_digest.to_string(), store.clone());
        let w = tokio::task::spawn_blocking(move || {
            // Issue 22: an ostree-encapsulated image's xattrs (not in its tars).
            let extra = crate::source::ostree_encap::store_xattrs::store_xattrs(&r, &m)?;
            writer::write_image_with(&r, &m, &st, &opts, &extra)
        })
        .await?
        .with_context(|| format!("writing {manifest_digest} into containers-storage"))?;
        crashpoint::hit("unified:after-store-write");
        Some(w)
    };
    // Layers the store already had (podman's own pulls) may not share the
    // objects' extents yet: a pass makes them, skipping the layers just
    // written and those recorded as shared before (an upgrade reuses most).
    // One read of the store's JSON for what follows (the share pass does
    // not change it).
    let layers = containers_storage::read_layers(&store)?;
    let stored = containers_storage::find_complete_image(&store, &image_id)?;
    let share = if probe.supported {
        let mut share = ShareStats::default();
        if let Some(w) = &written {
            share.files = w.files_reflinked + w.files_copied;
            share.reflinked = w.files_reflinked;
            share.copied = w.files_copied;
            share.shared_bytes = w.bytes_reflinked;
            if w.files_copied == 0 {
                share.shared_layers = layers
                    .iter()
                    .filter(|l| w.layers_written.contains(&l.id))
                    .map(|l| (l.id.clone(), l.created.clone()))
                    .collect();
            }
        }
        let mut skip = read_record(sysroot)?.shared_layers;
        skip.extend(share.shared_layers.iter().cloned());
        let in_chain = stored
            .as_ref()
            .map(|i| containers_storage::layer_chain(i, &layers))
            .transpose()?
            .unwrap_or_default();
        if in_chain.iter().any(|l| !known_shared(&skip, l)) {
            progress::step(progress, "Sharing extents with the composefs objects");
            let s =
                share_pass_async(repo, &store, manifest_digest, &image_id, policy, skip).await?;
            share.merge(&s);
        }
        Some(share)
    } else {
        None
    };
    crashpoint::hit("unified:after-share");
    record_import_done(
        sysroot,
        manifest_digest,
        Some(&layer_ids(&layers)),
        share.as_ref().map_or(&[], |s| &s.shared_layers),
    )?;
    let names = stored.map(|i| i.names).unwrap_or_default();
    Ok(ImportReport {
        manifest_digest: manifest_digest.to_string(),
        image_id,
        names,
        copied_into_store: copied,
        share,
    })
}

/// The message an import leaves for the user.
pub fn import_message(mode: UnifiedMode, probe: &ReflinkProbe, r: &ImportReport) -> String {
    match &r.share {
        Some(s) => share_message(mode, probe, s),
        None => format!(
            "Unified storage ({mode}): no reflinks on {}: containers-storage holds a copy of {}",
            probe.describe(),
            r.manifest_digest
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            store_name(d),
            "localhost/bootc:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        let r = |s: &str| normalized_registry_name(&ImageRef::parse(s).unwrap());
        assert_eq!(
            r("docker://127.0.0.1:5000/os:v1").as_deref(),
            Some("127.0.0.1:5000/os:v1")
        );
        assert_eq!(
            r("docker://quay.io/a/b").as_deref(),
            Some("quay.io/a/b:latest")
        );
        assert_eq!(r("docker://fedora"), None);
        assert_eq!(r("oci:/x:y"), None);
    }

    #[test]
    fn shared_layers_match_by_id_and_creation_instant() {
        let layer = |id: &str, created: Option<&str>| containers_storage::StoreLayer {
            id: id.into(),
            parent: None,
            diff_digest: None,
            compressed_digest: None,
            diff_size: None,
            created: created.map(str::to_string),
            flags: Default::default(),
        };
        let known: SharedLayers = [
            (
                "a".to_string(),
                Some("2026-11-23T16:00:00.120000000Z".to_string()),
            ),
            ("b".to_string(), None),
        ]
        .into();
        // Go's rewrite of the same instant (fraction's zeros trimmed).
        assert!(known_shared(
            &known,
            &layer("a", Some("2026-11-23T16:00:00.12Z"))
        ));
        assert!(known_shared(
            &known,
            &layer("a", Some("2026-11-23T17:00:00.12+01:00"))
        ));
        // Recreated (another time), or unknown.
        assert!(!known_shared(
            &known,
            &layer("a", Some("2026-11-23T16:00:00.13Z"))
        ));
        assert!(!known_shared(&known, &layer("a", None)));
        assert!(known_shared(&known, &layer("b", None)));
        assert!(!known_shared(
            &known,
            &layer("b", Some("2026-11-23T16:00:00Z"))
        ));
        assert!(!known_shared(&known, &layer("c", None)));
    }

    #[test]
    fn flag_round_trip_and_record_merge() {
        let td = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(td.path().join("composefs/bootc")).unwrap();
        let s = Sysroot::open(td.path()).unwrap();
        assert_eq!(unified_mode(&s).unwrap(), None);
        write_flag(&s, UnifiedMode::EnabledWithCopy).unwrap();
        assert_eq!(
            unified_mode(&s).unwrap(),
            Some(UnifiedMode::EnabledWithCopy)
        );
        let text = std::fs::read_to_string(td.path().join(UNIFIED_FLAG)).unwrap();
        assert_eq!(text, r#"{"unified":"enabled-with-copy"}"#);
        std::fs::write(td.path().join(UNIFIED_FLAG), "{").unwrap();
        assert!(unified_mode(&s).is_err());

        let e = |names: &[&str], created, pending| OwnedImage {
            manifest_digest: "sha256:a".into(),
            image_id: "id".into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            created,
            pending,
        };
        record_upsert(&s, e(&["x"], true, true)).unwrap();
        record_upsert(&s, e(&["y"], false, false)).unwrap();
        let r = owned_images(&s).unwrap();
        assert_eq!(r, vec![e(&["x", "y"], true, false)]);
        // Nothing recorded for other digests; nothing pruned without a store.
        assert!(prune_store(&s, &[]).unwrap().is_no_op());
    }
}
