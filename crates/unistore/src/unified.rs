//! Unified storage: one physical copy of each image file, shared by the
//! composefs repository and the host containers-storage (see
//! [`crate::cstorage`]) through reflinks.
//!
//! Two orders, by what the filesystem can do (the why is in
//! [`crate::design`]):
//!
//! * with reflinks, composefs first: the plain pull, then
//!   [`import_into_store`], whose native writer ([`crate::cstor_writer`])
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

mod store_import;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail, ensure};
use cap_std_ext::cap_std::{self, fs::Dir};
use composefs_oci::{LocalFetchOpt, OciDigest, PullOptions};
use serde::{Deserialize, Serialize};

use crate::composefs_store::{self, FetchConfig, Pulled, Repo};
use crate::crashpoint;
use crate::cstor_writer;
use crate::cstorage::{self, Session};
use crate::imgref::{ImageRef, Transport};
use crate::progress::{self, Progress};
use crate::reflink::{self, Method, Policy, ReflinkProbe};
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

/// The unified mode the host is marked with; `None` when not marked.
/// Reads only.
pub fn unified_mode(sysroot: &Sysroot) -> Result<Option<UnifiedMode>> {
    match sysroot.dir().read(UNIFIED_FLAG) {
        Ok(b) => {
            let f: FlagFile =
                serde_json::from_slice(&b).with_context(|| format!("parsing {UNIFIED_FLAG}"))?;
            Ok((f.unified != UnifiedMode::Disabled).then_some(f.unified))
        }
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

/// One image unistore put in (or named in) the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnedImage {
    /// The manifest digest of the image in the composefs repository.
    pub manifest_digest: String,
    /// The store's image id (config digest hex).
    pub image_id: String,
    /// The names unistore added.
    pub names: Vec<String>,
    /// Whether unistore created the image (it was not in the store before).
    pub created: bool,
    /// Being copied: the store may hold a partial image.
    #[serde(default)]
    pub pending: bool,
}

/// Store layers known to share their files' extents with the composefs
/// objects: layer id -> the layer's `created` time in `layers.json`.
type SharedLayers = BTreeMap<String, Option<String>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    images: Vec<OwnedImage>,
    /// Layers unistore wrote from composefs or passed over: a later share
    /// pass skips them (an upgrade shares most layers with the image
    /// before).
    #[serde(default)]
    shared_layers: SharedLayers,
}

fn read_record(sysroot: &Sysroot) -> Result<Record> {
    match sysroot.dir().read(RECORD_FILE) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {RECORD_FILE}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e).with_context(|| format!("reading {RECORD_FILE}")),
    }
}

fn write_record(sysroot: &Sysroot, r: &Record) -> Result<()> {
    util::atomic_write(sysroot.dir(), RECORD_FILE, &serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {RECORD_FILE}"))
}

/// Adds or merges an entry (keyed by manifest digest): names are added,
/// `created` is kept once set. Whoever writes an image into the store
/// records it here (pending first), so that the store GC can prune it.
pub fn record_upsert(sysroot: &Sysroot, new: OwnedImage) -> Result<()> {
    let mut r = read_record(sysroot)?;
    match r
        .images
        .iter_mut()
        .find(|e| e.manifest_digest == new.manifest_digest)
    {
        Some(e) => {
            e.created |= new.created;
            e.image_id = new.image_id;
            e.pending = new.pending;
            for n in new.names {
                if !e.names.contains(&n) {
                    e.names.push(n);
                }
            }
        }
        None => r.images.push(new),
    }
    write_record(sysroot, &r)
}

/// Whether store layer `l` is recorded in `known` as sharing its files'
/// extents: same id and same creation time. The times are compared as
/// instants, not strings: podman rewrites `layers.json` with Go's format,
/// which trims trailing zeros of the fraction the writer put there.
fn known_shared(known: &SharedLayers, l: &cstorage::StoreLayer) -> bool {
    match (known.get(&l.id), &l.created) {
        (Some(Some(a)), Some(b)) => {
            match (
                chrono::DateTime::parse_from_rfc3339(a),
                chrono::DateTime::parse_from_rfc3339(b),
            ) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            }
        }
        (Some(None), None) => true,
        _ => false,
    }
}

/// Records `layers` as sharing their files' extents with the objects, and
/// forgets recorded layers the store no longer has.
fn record_shared_layers(
    sysroot: &Sysroot,
    store: &Path,
    layers: &[(String, Option<String>)],
) -> Result<()> {
    let mut r = read_record(sysroot)?;
    let present: BTreeSet<String> = cstorage::read_layers(store)?
        .into_iter()
        .map(|l| l.id)
        .collect();
    r.shared_layers.extend(layers.iter().cloned());
    r.shared_layers.retain(|id, _| present.contains(id));
    write_record(sysroot, &r)
}

/// The images unistore recorded as put in the store.
pub fn owned_images(sysroot: &Sysroot) -> Result<Vec<OwnedImage>> {
    Ok(read_record(sysroot)?.images)
}

/// Whether the store holds the image (by its config digest) with all its
/// layers. Reads only.
pub fn image_in_store(sysroot: &Sysroot, config_digest: &str) -> Result<bool> {
    if !cstorage::store_exists(sysroot)? {
        return Ok(false);
    }
    Ok(cstorage::find_complete_image(&cstorage::store_path(sysroot), config_digest)?.is_some())
}

/// The image in the store with id `config_digest`, if complete. Reads only.
pub fn store_image(sysroot: &Sysroot, config_digest: &str) -> Result<Option<cstorage::StoreImage>> {
    if !cstorage::store_exists(sysroot)? {
        return Ok(None);
    }
    cstorage::find_complete_image(&cstorage::store_path(sysroot), config_digest)
}

/// How store files ended up relative to the composefs objects.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ShareStats {
    /// Files of the image stored as composefs objects (larger than the
    /// inline limit) that were checked.
    pub files: u64,
    /// Made to share extents by this pass.
    pub reflinked: u64,
    /// Already sharing extents.
    pub already_shared: u64,
    /// Left as separate copies (no reflinks, `enabled-with-copy`).
    pub copied: u64,
    /// Could not be checked (missing in the store, different content).
    pub failed: u64,
    /// Bytes of the files in `reflinked` and `already_shared`.
    pub shared_bytes: u64,
    /// Store layers all of whose files now share their objects' extents:
    /// (layer id, its `created` time).
    #[serde(skip)]
    pub shared_layers: Vec<(String, Option<String>)>,
}

impl ShareStats {
    fn merge(&mut self, o: &ShareStats) {
        self.files += o.files;
        self.reflinked += o.reflinked;
        self.already_shared += o.already_shared;
        self.copied += o.copied;
        self.failed += o.failed;
        self.shared_bytes += o.shared_bytes;
        self.shared_layers.extend(o.shared_layers.iter().cloned());
    }
}

/// A regular file of a layer whose content composefs keeps as an object
/// (larger than the inline limit): where the store has it, and the object.
#[derive(Debug, Clone)]
pub(crate) struct ObjectFile {
    /// The path relative to the layer root (the store layer's `diff/`).
    pub(crate) rel: std::path::PathBuf,
    /// The object holding its content.
    pub(crate) object: composefs_store::ObjectId,
    /// Its size.
    pub(crate) size: u64,
}

/// Calls `each` with every regular file of the layer `diff_id` (its
/// splitstream checked against `verity`) whose content is an object, in
/// the order of the layer tar. The pairing of store files with objects
/// that [`share_pass`] and fsck's sharing check both use. Blocking.
pub(crate) fn for_each_object_file(
    repo: &Repo,
    diff_id: &str,
    verity: &composefs_store::ObjectId,
    mut each: impl FnMut(ObjectFile) -> Result<()>,
) -> Result<()> {
    use composefs::tree::{LeafContent, RegularFile};
    use composefs_oci::tar::{TarItem, get_entry};

    let digest: OciDigest = diff_id.parse().context("bad diff id")?;
    let mut stream = repo.open_stream(
        &composefs_oci::layer_content_id(&digest),
        Some(verity),
        Some(composefs_oci::LAYER_CONTENT_TYPE),
    )?;
    while let Some(entry) = get_entry(&mut stream)? {
        let TarItem::Leaf(LeafContent::Regular(RegularFile::External(obj, size))) = entry.item
        else {
            continue;
        };
        let rel = entry.path.strip_prefix("/").unwrap_or(&entry.path);
        each(ObjectFile {
            rel: rel.to_path_buf(),
            object: obj,
            size,
        })?;
    }
    Ok(())
}

/// Makes every store file of the image share the extents of its composefs
/// object, in the store layers `want` picks (the share after a pull skips
/// layers recorded as shared, fsck's repair takes only layers with unshared
/// files). Blocking.
pub(crate) fn share_pass(
    repo: &Repo,
    store: &Path,
    manifest_digest: &str,
    image_id: &str,
    policy: Policy,
    want: &dyn Fn(&cstorage::StoreLayer) -> bool,
) -> Result<ShareStats> {
    let img = composefs_store::open_image(repo, manifest_digest)?;
    let simg = cstorage::find_complete_image(store, image_id)?
        .ok_or_else(|| anyhow!("image {image_id} is not complete in the store"))?;
    let chain = cstorage::layer_chain(&simg, &cstorage::read_layers(store)?)?;
    let diff_ids = img.layer_diff_ids();
    ensure!(
        chain.len() == diff_ids.len(),
        "image {image_id} has {} layers in the store and {} in composefs",
        chain.len(),
        diff_ids.len()
    );
    let mut stats = ShareStats::default();
    for (layer, diff_id) in chain.iter().zip(diff_ids) {
        if let Some(d) = &layer.diff_digest {
            ensure!(
                d == diff_id,
                "store layer {} has diff {d}, composefs expects {diff_id}",
                layer.id
            );
        }
        if !want(layer) {
            continue;
        }
        let before = (stats.copied, stats.failed);
        let verity = img
            .layer_verity(diff_id)
            .ok_or_else(|| anyhow!("no layer {diff_id} in the composefs image"))?;
        let diff_path = store.join("overlay").join(&layer.id).join("diff");
        let diff = Dir::open_ambient_dir(&diff_path, cap_std::ambient_authority())
            .with_context(|| format!("opening {}", diff_path.display()))?;
        for_each_object_file(repo, diff_id, verity, |file| {
            stats.files += 1;
            let f = match diff.open(&file.rel) {
                Ok(f) => f.into_std(),
                Err(e) => {
                    tracing::warn!("{}: {e}", diff_path.join(&file.rel).display());
                    stats.failed += 1;
                    return Ok(());
                }
            };
            let o = File::from(repo.open_object(&file.object)?);
            match reflink::share_identical(&o, &f, policy) {
                Ok(Method::Reflinked) => {
                    stats.reflinked += 1;
                    stats.shared_bytes += file.size;
                }
                Ok(Method::AlreadyShared) => {
                    stats.already_shared += 1;
                    stats.shared_bytes += file.size;
                }
                Ok(Method::Copied) => stats.copied += 1,
                Err(e) if policy == Policy::ReflinkOnly => {
                    return Err(e).with_context(|| {
                        format!(
                            "sharing {} with its composefs object",
                            diff_path.join(&file.rel).display()
                        )
                    });
                }
                Err(e) => {
                    tracing::warn!("sharing {}: {e:#}", diff_path.join(&file.rel).display());
                    stats.failed += 1;
                }
            }
            Ok(())
        })?;
        if (stats.copied, stats.failed) == before {
            stats
                .shared_layers
                .push((layer.id.clone(), layer.created.clone()));
        }
    }
    Ok(stats)
}

/// Runs [`share_pass`] over the store layers of the image named in
/// `layers` and records those that now share all their files (fsck's
/// repair of files that hold their own copy). Blocking.
pub(crate) fn reshare_layers(
    sysroot: &Sysroot,
    repo: &Repo,
    manifest_digest: &str,
    image_id: &str,
    policy: Policy,
    layers: &BTreeSet<String>,
) -> Result<ShareStats> {
    let store = cstorage::store_path(sysroot);
    let stats = share_pass(repo, &store, manifest_digest, image_id, policy, &|l| {
        layers.contains(&l.id)
    })?;
    record_shared_layers(sysroot, &store, &stats.shared_layers)?;
    Ok(stats)
}

async fn share_pass_async(
    repo: &Arc<Repo>,
    store: &Path,
    manifest_digest: &str,
    image_id: &str,
    policy: Policy,
    skip: SharedLayers,
) -> Result<ShareStats> {
    let (repo, store, m, i) = (
        repo.clone(),
        store.to_path_buf(),
        manifest_digest.to_string(),
        image_id.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        share_pass(&repo, &store, &m, &i, policy, &|l| !known_shared(&skip, l))
    })
    .await?
}

/// The layers [`import_store_layers`] and [`EarlyImport`] imported, by
/// diff id.
#[derive(Debug, Default)]
struct StoreImport {
    layers: BTreeMap<String, store_import::LayerImport>,
}

impl StoreImport {
    /// The totals over the layers in `diff_ids` (others may have been
    /// imported early from a pull that did not end up in the image).
    fn totals<'a>(
        &self,
        diff_ids: impl IntoIterator<Item = &'a String>,
    ) -> (BTreeSet<String>, composefs_oci::ImportStats) {
        let (mut done, mut stats) = (BTreeSet::new(), Default::default());
        for d in diff_ids {
            if let Some(l) = self.layers.get(d)
                && done.insert(d.clone())
            {
                composefs_oci::ImportStats::merge(&mut stats, &l.stats);
            }
        }
        (done, stats)
    }
}

/// Imports the store layer `layer_id` as the splitstream of `diff_id`
/// unless the repository has it (then `None`). Blocking.
fn import_store_layer(
    repo: &Arc<Repo>,
    store: &Path,
    layer_id: &str,
    diff_id: &str,
    opts: store_import::ImportOpts,
    progress: &Progress,
) -> Result<Option<store_import::LayerImport>> {
    use composefs::progress::ProgressUnit;
    use progress::{ComponentId, ProgressEvent};

    let digest: OciDigest = diff_id.parse().context("bad diff id")?;
    if repo
        .has_stream(&composefs_oci::layer_content_id(&digest))?
        .is_some()
    {
        return Ok(None);
    }
    let storage = composefs_storage::Storage::open(store)
        .map_err(|e| anyhow!("opening the store {}: {e}", store.display()))?;
    let id = ComponentId::from(diff_id.to_string());
    progress.report(ProgressEvent::Started {
        id: id.clone(),
        total: None,
        unit: ProgressUnit::Bytes,
    });
    let t = std::time::Instant::now();
    let (_, r) = store_import::import_layer(repo, &storage, layer_id, &digest, opts)?;
    tracing::debug!(
        "imported store layer {layer_id} ({} objects) in {:?}",
        r.stats.total_objects(),
        t.elapsed()
    );
    progress.report(ProgressEvent::Done {
        id,
        transferred: r.stats.new_bytes(),
    });
    Ok(Some(r))
}

/// Imports into the repository, from the store, every layer of the store
/// image `image_id` whose splitstream the repository lacks, several files
/// at a time (see [`store_import`]), adding them to `out`. Layers without a
/// diff digest in the store are left to composefs-oci. Returns the image's
/// diff ids as the store has them. Blocking.
fn import_store_layers(
    repo: &Arc<Repo>,
    store: &Path,
    image_id: &str,
    opts: store_import::ImportOpts,
    progress: &Progress,
    out: &mut StoreImport,
) -> Result<Vec<String>> {
    let simg = cstorage::find_complete_image(store, image_id)?
        .ok_or_else(|| anyhow!("image {image_id} is not complete in the store"))?;
    let chain = cstorage::layer_chain(&simg, &cstorage::read_layers(store)?)?;
    let mut diff_ids = vec![];
    for layer in &chain {
        let Some(diff) = &layer.diff_digest else {
            continue;
        };
        diff_ids.push(diff.clone());
        if out.layers.contains_key(diff) {
            continue;
        }
        if let Some(r) = import_store_layer(repo, store, &layer.id, diff, opts, progress)? {
            out.layers.insert(diff.clone(), r);
        }
    }
    Ok(diff_ids)
}

/// A progress sink that forwards everything and remembers the components
/// that started (podman's layers, as `sha256:<short blob digest>`).
struct Announced {
    inner: Progress,
    ids: std::sync::Mutex<BTreeSet<String>>,
}

impl progress::ProgressReporter for Announced {
    fn report(&self, e: progress::ProgressEvent) {
        if let progress::ProgressEvent::Started { id, .. } = &e
            && let Ok(mut ids) = self.ids.lock()
        {
            ids.insert(id.as_str().to_string());
        }
        self.inner.report(e);
    }
}

/// The import of the layers a podman pull commits, while it pulls: podman
/// commits an image's layers in order, each complete (no `incomplete` flag
/// in `layers.json`, its diff digest recorded) before the next one starts,
/// and never changes a committed layer. Each such layer that the pull
/// brought (new since the pull began, pulled from a blob podman announced)
/// is imported into composefs at once, while podman writes the next ones.
/// Best effort: whatever is not imported by the end of the pull (a failure
/// is only logged) is imported after it by [`import_store_layers`].
struct EarlyImport {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<StoreImport>,
}

impl EarlyImport {
    fn start(
        repo: &Arc<Repo>,
        store: &Path,
        opts: store_import::ImportOpts,
        announced: Arc<Announced>,
    ) -> Result<Self> {
        let before: BTreeSet<String> = cstorage::read_layers(store)?
            .into_iter()
            .map(|l| l.id)
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (repo, store, stop2) = (repo.clone(), store.to_path_buf(), stop.clone());
        let task = tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let mut out = StoreImport::default();
            let mut tried = BTreeSet::new();
            while !stop2.load(Ordering::Relaxed) {
                let ids = announced.ids.lock().map(|i| i.clone()).unwrap_or_default();
                let ready: Vec<cstorage::StoreLayer> = cstorage::read_layers(&store)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|l| {
                        !before.contains(&l.id)
                            && !tried.contains(&l.id)
                            && !l.incomplete()
                            && l.diff_digest.is_some()
                            && l.compressed_digest
                                .as_ref()
                                .is_some_and(|c| ids.iter().any(|i| c.starts_with(i.as_str())))
                    })
                    .collect();
                for l in ready {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    tried.insert(l.id.clone());
                    let diff = l.diff_digest.clone().unwrap_or_default();
                    let (repo, store, p) = (repo.clone(), store.clone(), announced.inner.clone());
                    let r = tokio::task::spawn_blocking(move || {
                        import_store_layer(&repo, &store, &l.id, &diff, opts, &p).map(|r| (diff, r))
                    })
                    .await;
                    match r {
                        Ok(Ok((diff, Some(r)))) => {
                            out.layers.insert(diff, r);
                        }
                        Ok(Ok((_, None))) => {}
                        Ok(Err(e)) => tracing::debug!("early import of a store layer: {e:#}"),
                        Err(e) => tracing::debug!("early import of a store layer: {e}"),
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            out
        });
        Ok(Self { stop, task })
    }

    /// Stops looking for layers; waits for the layer being imported.
    async fn finish(self) -> StoreImport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
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
/// `mode` must not be `disabled` (that is [`composefs_store::pull`]).
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
    let Some(policy) = Policy::for_mode(mode) else {
        bail!("fetch_unified called with unified storage disabled");
    };
    let probe = probe_reflinks(sysroot)?;
    reflink::require_for_mode(mode, &probe, sysroot.path())?;
    if probe.supported {
        // composefs first, then the store by reflinks from its objects.
        let pulled = composefs_store::pull(repo, imgref, fetch, progress.clone()).await?;
        crashpoint::hit("unified:after-composefs-pull");
        let r = import_into_store(
            sysroot,
            repo,
            &pulled.manifest_digest,
            Some(imgref),
            NameRule::Take,
            policy,
            &probe,
            &progress,
        )
        .await?;
        progress::step(&progress, import_message(mode, &probe, &r));
        return Ok(pulled);
    }
    fetch_store_first(sysroot, repo, imgref, fetch, mode, &probe, progress).await
}

/// The unified pull without reflinks: podman (or skopeo) into the store,
/// then composefs from the store, hardlinking its files where possible.
async fn fetch_store_first(
    sysroot: &Sysroot,
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    mode: UnifiedMode,
    probe: &ReflinkProbe,
    progress: Progress,
) -> Result<Pulled> {
    if imgref.transport == Transport::Oci {
        crate::oci_layout::verify(imgref).await?;
    }
    let session = Session::new(sysroot, fetch.registries_conf.as_deref())?;
    let store = session.store().to_path_buf();
    let before = cstorage::read_images(&store)?;

    let opts = store_import::ImportOpts {
        zerocopy: false,
        share: None,
        threads: store_import::default_threads(),
    };
    progress::step(
        &progress,
        format!("Pulling {imgref} into containers-storage"),
    );
    let t = std::time::Instant::now();
    let mut imported = StoreImport::default();
    let (image_id, temp_name) = match imgref.transport {
        Transport::Registry => {
            let announced = Arc::new(Announced {
                inner: progress.clone(),
                ids: Default::default(),
            });
            let early = EarlyImport::start(repo, &store, opts, announced.clone())?;
            let p: Progress = announced;
            let pulled = session.podman_pull(&imgref.name, &p).await;
            tracing::debug!("podman pull returned after {:?}", t.elapsed());
            imported = early.finish().await;
            (pulled?, None)
        }
        _ => {
            let tmp = format!("localhost/bootc-import:{}", std::process::id());
            session
                .skopeo_copy_in(&imgref.to_string(), &tmp, false, &progress)
                .await?;
            let id = cstorage::read_images(&store)?
                .into_iter()
                .find(|i| i.names.contains(&tmp))
                .map(|i| i.id)
                .ok_or_else(|| anyhow!("{imgref} is not in containers-storage after copying it"))?;
            (id, Some(tmp))
        }
    };
    crashpoint::hit("unified:after-store-pull");

    progress::step(
        &progress,
        "Importing from containers-storage into composefs (no copy of file data)",
    );
    tracing::debug!(
        "pulled into the store in {:?}, {} layers imported meanwhile",
        t.elapsed(),
        imported.layers.len()
    );
    let local_fetch = LocalFetchOpt::IfPossible;
    // The other layers now, on every CPU; composefs-oci then finds them all
    // in the repository and writes the manifest, config and EROFS images.
    let t = std::time::Instant::now();
    let (imported, diff_ids) = {
        let (repo, store, id, p) = (
            repo.clone(),
            store.clone(),
            image_id.clone(),
            progress.clone(),
        );
        tokio::task::spawn_blocking(move || {
            import_store_layers(&repo, &store, &id, opts, &p, &mut imported).map(|d| (imported, d))
        })
        .await?
        .with_context(|| format!("importing {imgref} from containers-storage into composefs"))?
    };
    let (done, pre_stats) = imported.totals(&diff_ids);
    tracing::debug!("layers imported from the store in {:?}", t.elapsed());
    let spec = format!("containers-storage:{image_id}");
    let result = composefs_oci::pull(
        repo,
        &spec,
        None,
        PullOptions {
            local_fetch,
            storage_root: Some(&store),
            bootable: true,
            progress: Some(progress.clone()),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("importing {imgref} from containers-storage into composefs"))?;
    let mut pulled = composefs_store::finish_pull(repo, result)?;
    // composefs-oci counted the layers imported above as already present.
    let n = done.len() as u64;
    pulled.stats.layers_already_present = pulled.stats.layers_already_present.saturating_sub(n);
    pulled.stats.layers = pulled.stats.layers.saturating_sub(n);
    pulled.stats.merge(&pre_stats);
    tracing::debug!("imported into composefs in {:?}", t.elapsed());
    let stored = cstorage::find_complete_image(&store, &image_id)?
        .ok_or_else(|| anyhow!("image {image_id} vanished from containers-storage"))?;
    if let Some(d) = &stored.digest
        && *d != pulled.manifest_digest
        && !stored.digests.contains(&pulled.manifest_digest)
    {
        tracing::warn!(
            "containers-storage knows {imgref} as manifest {d}, composefs imported {}",
            pulled.manifest_digest
        );
    }

    // Names and the record of what unistore put in the store.
    let ours = store_name(&pulled.manifest_digest);
    session.tag(&image_id, &ours)?;
    if let Some(t) = &temp_name {
        session.untag(&image_id, t)?;
    }
    let prior = before.iter().find(|i| i.id == image_id);
    let after = cstorage::find_complete_image(&store, &image_id)?.unwrap_or(stored);
    let names: Vec<String> = after
        .names
        .iter()
        .filter(|n| prior.is_none_or(|p| !p.names.contains(n)))
        .cloned()
        .collect();
    record_upsert(
        sysroot,
        OwnedImage {
            manifest_digest: pulled.manifest_digest.clone(),
            image_id: image_id.clone(),
            names,
            created: prior.is_none(),
            pending: false,
        },
    )?;

    let st = &pulled.stats;
    progress::step(
        &progress,
        format!(
            "Unified storage ({mode}): no reflinks on {}: fell back to copies: {} files hardlinked, {} copied into composefs ({} hardlinked, {} copied)",
            probe.describe(),
            st.objects_hardlinked,
            st.objects_copied,
            human_bytes(st.bytes_hardlinked),
            human_bytes(st.bytes_copied)
        ),
    );
    Ok(pulled)
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
/// ([`crate::cstor_writer`]) replays its layers into the store, each
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
) -> Result<ImportReport> {
    let img = composefs_store::open_image(repo, manifest_digest)?;
    let image_id = img
        .config_digest()
        .to_string()
        .trim_start_matches("sha256:")
        .to_string();
    drop(img);
    cstorage::ensure_store(sysroot)?;
    let store = cstorage::store_path(sysroot);
    let images = cstorage::read_images(&store)?;
    let mut wanted = vec![store_name(manifest_digest)];
    if let Some(n) = origin.and_then(normalized_registry_name)
        && (rule == NameRule::Take || !images.iter().any(|i| i.names.contains(&n)))
    {
        wanted.push(n);
    }
    let present = cstorage::find_complete_image(&store, &image_id)?;
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
            cstor_writer::add_names(&store, &image_id, &add)?;
        }
        None
    } else {
        progress::step(
            progress,
            format!("Writing {manifest_digest} into containers-storage from composefs"),
        );
        let opts = cstor_writer::WriteOptions {
            names: wanted.clone(),
            allow_copy: policy == Policy::ReflinkOrCopy,
            verify_reused: false,
        };
        let (r, m, st) = (repo.clone(), manifest_digest.to_string(), store.clone());
        let w = tokio::task::spawn_blocking(move || cstor_writer::write_image(&r, &m, &st, &opts))
            .await?
            .with_context(|| format!("writing {manifest_digest} into containers-storage"))?;
        crashpoint::hit("unified:after-store-write");
        Some(w)
    };
    // Layers the store already had (podman's own pulls) may not share the
    // objects' extents yet: a pass makes them, skipping the layers just
    // written and those recorded as shared before (an upgrade reuses most).
    let share = if probe.supported {
        let layers = cstorage::read_layers(&store)?;
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
        let in_chain = cstorage::find_complete_image(&store, &image_id)?
            .map(|i| cstorage::layer_chain(&i, &layers))
            .transpose()?
            .unwrap_or_default();
        if in_chain.iter().any(|l| !known_shared(&skip, l)) {
            progress::step(progress, "Sharing extents with the composefs objects");
            let s =
                share_pass_async(repo, &store, manifest_digest, &image_id, policy, skip).await?;
            share.merge(&s);
        }
        record_shared_layers(sysroot, &store, &share.shared_layers)?;
        Some(share)
    } else {
        None
    };
    crashpoint::hit("unified:after-share");
    record_upsert(
        sysroot,
        OwnedImage {
            manifest_digest: manifest_digest.to_string(),
            image_id: image_id.clone(),
            names: vec![],
            created: false,
            pending: false,
        },
    )?;
    let names = cstorage::find_complete_image(&store, &image_id)?
        .map(|i| i.names)
        .unwrap_or_default();
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

/// What [`prune_store`] did (or, from [`preview_prune_store`], would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Image ids removed from the store.
    pub removed: Vec<String>,
    /// `id name` pairs untagged (images kept: others named or use them).
    pub untagged: Vec<String>,
    /// Layer ids that went with the removed images (no kept image uses them).
    pub layers_removed: Vec<String>,
    /// Uncompressed bytes of those layers (`diff-size`; on a reflinked
    /// host the extents they share with composefs objects stay allocated).
    pub layer_bytes: u64,
    /// Problems (the image stays recorded and is tried again next time).
    pub errors: Vec<String>,
}

impl PruneReport {
    /// Whether nothing was removed or untagged.
    pub fn is_no_op(&self) -> bool {
        self.removed.is_empty() && self.untagged.is_empty()
    }
}

/// What the store GC does with one recorded image that no live deployment
/// uses and that is in the store.
enum PruneStep<'a> {
    /// unistore created it and nobody else named it: take its names back
    /// (`names`: all of them), then remove it.
    Remove {
        entry: &'a OwnedImage,
        names: &'a [String],
    },
    /// Others named or use it: take back only unistore's names.
    Untag {
        entry: &'a OwnedImage,
        names: Vec<&'a String>,
    },
}

/// Decides the store GC from the record and the store's images. Reads
/// nothing itself, so [`prune_store`] and [`preview_prune_store`] decide
/// alike.
fn plan_prune<'a>(
    record: &'a Record,
    images: &'a [cstorage::StoreImage],
    live: &BTreeSet<&str>,
) -> Vec<PruneStep<'a>> {
    let live_ids: BTreeSet<&str> = record
        .images
        .iter()
        .filter(|e| live.contains(e.manifest_digest.as_str()))
        .map(|e| e.image_id.as_str())
        .collect();
    let mut steps = vec![];
    for e in record
        .images
        .iter()
        .filter(|e| !live.contains(e.manifest_digest.as_str()))
    {
        let Some(si) = images.iter().find(|i| i.id == e.image_id) else {
            continue;
        };
        let others = si.names.iter().any(|n| !e.names.contains(n));
        if e.created && !others && !live_ids.contains(e.image_id.as_str()) {
            steps.push(PruneStep::Remove {
                entry: e,
                names: &si.names,
            });
        } else {
            steps.push(PruneStep::Untag {
                entry: e,
                names: si.names.iter().filter(|n| e.names.contains(n)).collect(),
            });
        }
    }
    steps
}

/// The layers only the images `removed` use, and their uncompressed size.
fn freed_layers(
    images: &[cstorage::StoreImage],
    layers: &[cstorage::StoreLayer],
    removed: &[String],
) -> (Vec<String>, u64) {
    let chain = |i: &cstorage::StoreImage| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut next = i.layer.clone();
        while let Some(id) = next {
            if !out.insert(id.clone()) {
                break;
            }
            next = layers
                .iter()
                .find(|l| l.id == id)
                .and_then(|l| l.parent.clone());
        }
        out
    };
    let kept: BTreeSet<String> = images
        .iter()
        .filter(|i| !removed.contains(&i.id))
        .flat_map(chain)
        .collect();
    let gone: BTreeSet<String> = images
        .iter()
        .filter(|i| removed.contains(&i.id))
        .flat_map(chain)
        .filter(|l| !kept.contains(l))
        .collect();
    let bytes = layers
        .iter()
        .filter(|l| gone.contains(&l.id))
        .filter_map(|l| l.diff_size)
        .sum();
    (gone.into_iter().collect(), bytes)
}

/// What [`prune_store`] would do now, without changing anything: no
/// podman, no lock file, no write (`gc --dry-run`).
pub fn preview_prune_store(
    sysroot: &Sysroot,
    live_manifest_digests: &[String],
) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let record = read_record(sysroot)?;
    if record.images.is_empty() || !cstorage::store_exists(sysroot)? {
        return Ok(report);
    }
    let live: BTreeSet<&str> = live_manifest_digests.iter().map(String::as_str).collect();
    let store = cstorage::store_path(sysroot);
    let images = cstorage::read_images(&store)?;
    for step in plan_prune(&record, &images, &live) {
        match step {
            PruneStep::Remove { entry, .. } => report.removed.push(entry.image_id.clone()),
            PruneStep::Untag { entry, names } => report
                .untagged
                .extend(names.iter().map(|n| format!("{} {n}", entry.image_id))),
        }
    }
    if !report.removed.is_empty() {
        let layers = cstorage::read_layers(&store)?;
        (report.layers_removed, report.layer_bytes) =
            freed_layers(&images, &layers, &report.removed);
    }
    Ok(report)
}

/// Removes from the host store the images unistore put there whose
/// manifest is not in `live_manifest_digests`. Images unistore did not
/// create, or that carry names unistore did not give, only lose
/// unistore's names. Nothing unrecorded is touched. Blocking (podman).
pub fn prune_store(sysroot: &Sysroot, live_manifest_digests: &[String]) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let record = read_record(sysroot)?;
    if record.images.is_empty() || !cstorage::store_exists(sysroot)? {
        return Ok(report);
    }
    let live: BTreeSet<&str> = live_manifest_digests.iter().map(String::as_str).collect();
    if record
        .images
        .iter()
        .all(|e| live.contains(e.manifest_digest.as_str()))
    {
        return Ok(report);
    }
    let session = Session::new(sysroot, None)?;
    let images = cstorage::read_images(session.store())?;
    let layers = cstorage::read_layers(session.store())?;
    let mut keep = vec![];
    for step in plan_prune(&record, &images, &live) {
        match step {
            PruneStep::Remove { entry: e, names } => {
                // podman refuses `rmi ID` for an image with several names
                // (short of --force, which would also remove containers):
                // take the names back first, then remove the nameless
                // image, which podman refuses while a container uses it.
                let untagged = names.iter().try_for_each(|n| session.untag(&e.image_id, n));
                match untagged.and_then(|()| session.remove_image(&e.image_id)) {
                    Ok(()) => report.removed.push(e.image_id.clone()),
                    Err(err) => {
                        report.errors.push(format!("{err:#}"));
                        keep.push(e.clone());
                    }
                }
            }
            PruneStep::Untag { entry: e, names } => {
                for n in names {
                    match session.untag(&e.image_id, n) {
                        Ok(()) => report.untagged.push(format!("{} {n}", e.image_id)),
                        Err(err) => report.errors.push(format!("{err:#}")),
                    }
                }
            }
        }
    }
    (report.layers_removed, report.layer_bytes) = freed_layers(&images, &layers, &report.removed);
    let mut record = record;
    record
        .images
        .retain(|e| live.contains(e.manifest_digest.as_str()));
    record.images.extend(keep);
    write_record(sysroot, &record)?;
    Ok(report)
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
        let layer = |id: &str, created: Option<&str>| cstorage::StoreLayer {
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
