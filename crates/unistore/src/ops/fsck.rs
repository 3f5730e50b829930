//! `internals fsck [images]`: checks the host's storage and, with
//! `--repair`, fixes what can be fixed from another copy on the host.
//!
//! Host images are the manifests tagged `localhost/bootc-*` in the composefs
//! repository and the manifests named by live boot entries (entry ->
//! `composefs=<id>` -> `state/deploy/<id>/<id>.origin` -> manifest digest).
//! For each:
//!
//! * in the composefs repository: the manifest and config (their sha256),
//!   every layer's splitstream and the objects it references, the EROFS
//!   images (the boot image of each deployment is the deployment id and is
//!   linked to the image); with `verify_content`, every object's fs-verity
//!   digest is recomputed and each layer reassembled to check its diff-id;
//! * live: named by a live boot entry (a tag no entry uses is a note: the
//!   GC removes it), and tagged (a live image without its tag is no GC root);
//! * on a unified host (`composefs/bootc.json`), in the host
//!   containers-storage with the same image id (config digest), the same
//!   chain of layers (diff-ids) whole, and the config and manifest; with
//!   `verify_content`, each layer reassembled from its tar-split and `diff`
//!   gives its diff-id.
//!
//! Without `repair` nothing on disk changes: no lock files are created, the
//! store's locks are taken shared and only when they exist, the sysroot lock
//! is not taken, and reflink support is read from the filesystem instead of
//! probed.
//!
//! With `repair` (under the sysroot lock): an object missing or damaged in
//! the repository is restored from a store file with the same content
//! (fs-verity digest recomputed before it is put in place), a live image's
//! missing tag is added back, and an image missing or damaged in the store
//! of a unified host is rewritten from the repository by the native writer
//! ([`crate::cstor_writer`]). Each repaired image is checked again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use composefs::fsverity::{FsVerityHashValue, FsVerityHasher};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::composefs_store::{self, ObjectId, Repo};
use crate::cstor_format::{self as cfmt, IMAGES_JSON, IMAGES_LOCK, LAYERS_JSON, LAYERS_LOCK};
use crate::cstor_writer::{self, WriteOptions};
use crate::deployment;
use crate::host::HostState;
use crate::sysroot::{BOOTC_TAG_PREFIX, COMPOSEFS_DIR, HOST_STORAGE_DIR, Sysroot, UNIFIED_FLAG};
use crate::tar_walk::{self, Body, Entry, LayerVisitor};
use crate::unified::{self, UnifiedMode};

/// Options of a check.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOpts {
    /// Fix what can be fixed.
    pub repair: bool,
    /// Re-hash the content of every object, layer and EROFS image.
    pub verify_content: bool,
}

/// How the composefs repository and the containers-storage are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// Not unified: the store (if any) is podman's business.
    Disabled,
    /// ostree hosts only: bound to composefs, not yet unified.
    BoundOnly,
    /// Unified: every host image is in both.
    Unified,
}

/// One host image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
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
}

/// What every check reports in the same shape: failures, and remarks that
/// are not failures.
pub trait Verdict {
    /// Problems left (each a failure).
    fn issues(&self) -> &[String];
    /// Remarks that are not failures.
    fn notes(&self) -> &[String] {
        &[]
    }
    /// No failure left.
    fn ok(&self) -> bool {
        self.issues().is_empty()
    }
}

/// Whether every check of a list passed.
pub fn all_ok<'a, T: Verdict + 'a>(checks: impl IntoIterator<Item = &'a T>) -> bool {
    checks.into_iter().all(Verdict::ok)
}

macro_rules! verdict {
    ($t:ty) => {
        impl Verdict for $t {
            fn issues(&self) -> &[String] {
                &self.issues
            }
        }
    };
    ($t:ty, notes) => {
        impl Verdict for $t {
            fn issues(&self) -> &[String] {
                &self.issues
            }
            fn notes(&self) -> &[String] {
                &self.notes
            }
        }
    };
}
verdict!(ImageReport, notes);
verdict!(RepoReport);
verdict!(EntryReport);
verdict!(DeploymentReport, notes);

/// The host containers-storage.
#[derive(Debug, Clone, Serialize)]
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

/// A referenced object that is missing or whose content is wrong.
#[derive(Debug, Clone)]
struct BadObject {
    id: ObjectId,
    /// Where the layer puts it (relative path).
    path: Vec<u8>,
    diff_id: String,
    size: u64,
    missing: bool,
}

impl BadObject {
    fn describe(&self) -> String {
        format!(
            "object objects/{} (/{} in layer {}) is {}",
            self.id.to_object_pathname(),
            String::from_utf8_lossy(&self.path),
            short(&self.diff_id),
            if self.missing {
                "missing"
            } else {
                "damaged (its content does not match its digest)"
            }
        )
    }
}

fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

/// What the repository says about one image.
#[derive(Debug, Default)]
struct CfsCheck {
    problems: Vec<String>,
    config_digest: Option<String>,
    config_json: Option<Vec<u8>>,
    diff_ids: Vec<String>,
    bad_objects: Vec<BadObject>,
}

impl CfsCheck {
    fn ok(&self) -> bool {
        self.problems.is_empty() && self.bad_objects.is_empty()
    }
}

/// Checks a layer's splitstream and the objects it references.
struct LayerCheck {
    /// `composefs/objects`.
    objects: PathBuf,
    diff_id: String,
    verify: bool,
    sha: Sha256,
    hash_complete: bool,
    bad: Vec<BadObject>,
    buf: Vec<u8>,
}

impl LayerVisitor for LayerCheck {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.sha.update(bytes);
        Ok(())
    }

    fn entry(&mut self, e: &Entry, body: Body<'_>) -> Result<()> {
        match body {
            Body::Empty => {}
            Body::Inline(b) => self.sha.update(b),
            Body::External(id) => {
                let bad = |missing| BadObject {
                    id: id.clone(),
                    path: e.rel_path().unwrap_or_default(),
                    diff_id: self.diff_id.clone(),
                    size: e.size,
                    missing,
                };
                let path = self.objects.join(id.to_object_pathname());
                let mut f = match cfmt::open_noatime(&path) {
                    Ok(f) => f,
                    Err(_) => {
                        self.bad.push(bad(true));
                        self.hash_complete = false;
                        return Ok(());
                    }
                };
                if self.verify {
                    let mut h = FsVerityHasher::<ObjectId, 12>::new();
                    let mut n = 0u64;
                    loop {
                        let got = f.read(&mut self.buf)?;
                        if got == 0 {
                            break;
                        }
                        h.write_all(&self.buf[..got])?;
                        self.sha.update(&self.buf[..got]);
                        n += got as u64;
                    }
                    if h.digest() != *id || n != e.size {
                        self.bad.push(bad(false));
                    }
                }
            }
        }
        Ok(())
    }
}

/// fs-verity digest of a whole file.
fn verity_of(f: &mut File) -> Result<(ObjectId, u64)> {
    let mut h = FsVerityHasher::<ObjectId, 12>::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.write_all(&buf[..got])?;
        n += got as u64;
    }
    Ok((h.digest(), n))
}

fn check_composefs(
    repo: &Repo,
    objects: &Path,
    manifest_digest: &str,
    deployments: &[String],
    verify: bool,
) -> CfsCheck {
    let mut c = CfsCheck::default();
    let img = match composefs_store::open_image(repo, manifest_digest) {
        Ok(i) => i,
        Err(e) => {
            c.problems.push(format!(
                "the manifest is missing or damaged in the composefs repository: {e:#}"
            ));
            return c;
        }
    };
    let config_digest = img.config_digest().to_string();
    c.config_digest = Some(config_digest.clone());
    match img.read_config_json(repo) {
        Ok(json) => {
            let actual = cfmt::sha256_digest(&json);
            if actual != config_digest {
                c.problems.push(format!(
                    "the config {config_digest} is damaged in the composefs repository (its digest is {actual})"
                ));
            } else {
                c.config_json = Some(json);
            }
        }
        Err(e) => c.problems.push(format!(
            "the config {config_digest} cannot be read from the composefs repository: {e:#}"
        )),
    }
    c.diff_ids = img.layer_diff_ids().iter().map(|s| s.to_string()).collect();
    if c.diff_ids.is_empty() {
        c.problems.push("the config lists no layers".into());
    }
    for diff_id in c.diff_ids.clone() {
        let Some(verity) = img.layer_verity(&diff_id).cloned() else {
            c.problems.push(format!(
                "layer {diff_id} is not linked from the config in the composefs repository"
            ));
            continue;
        };
        let mut lc = LayerCheck {
            objects: objects.to_path_buf(),
            diff_id: diff_id.clone(),
            verify,
            sha: Sha256::new(),
            hash_complete: true,
            bad: vec![],
            buf: vec![0u8; 1 << 20],
        };
        match tar_walk::walk_layer(repo, &diff_id, Some(&verity), &mut lc) {
            Ok(()) => {
                if verify && lc.hash_complete && lc.bad.is_empty() {
                    let actual = format!("sha256:{}", hex::encode(lc.sha.finalize()));
                    if actual != diff_id {
                        c.problems.push(format!(
                            "layer {diff_id} reassembled from the composefs repository has digest {actual}"
                        ));
                    }
                }
                c.bad_objects.extend(lc.bad);
            }
            Err(e) => c.problems.push(format!(
                "layer {diff_id} cannot be read from the composefs repository: {e:#}"
            )),
        }
    }
    // EROFS images linked to the image, and each deployment's boot image.
    let mut erofs: BTreeSet<String> = img
        .all_erofs_images()
        .into_iter()
        .map(|l| l.id.to_hex())
        .collect();
    for d in deployments {
        match ObjectId::from_hex(d) {
            Ok(id) if img.has_erofs_id(&id) => {}
            Ok(_) => c.problems.push(format!(
                "the boot image of deployment {} is not linked to the image (the repository GC would remove it)",
                short(d)
            )),
            Err(_) => c.problems.push(format!("deployment id {d} is not a digest")),
        }
        erofs.insert(d.clone());
    }
    for id in erofs {
        match repo.open_image(&id) {
            Ok(_) => {
                let image_path = objects.join("../images").join(&id);
                if verify {
                    match cfmt::open_noatime(&image_path)
                        .map_err(anyhow::Error::from)
                        .and_then(|mut f| verity_of(&mut f))
                    {
                        Ok((actual, _)) if actual.to_hex() == id => {}
                        Ok(_) => c.problems.push(format!(
                            "EROFS image {} is damaged (its content does not match its digest)",
                            short(&id)
                        )),
                        Err(e) => c
                            .problems
                            .push(format!("EROFS image {} cannot be read: {e:#}", short(&id))),
                    }
                }
            }
            Err(e) => c.problems.push(format!(
                "EROFS image {} is missing from the composefs repository: {e:#}",
                short(&id)
            )),
        }
    }
    c
}

/// The store's JSON, read once per check.
struct StoreView {
    path: PathBuf,
    layers: Vec<Value>,
    images: Vec<Value>,
}

/// Reads the store's JSON under shared locks (taken only if the lock files
/// exist). `Ok(None)` when there is no store.
fn read_store(path: &Path) -> Result<Option<StoreView>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let layers = {
        let _l = cfmt::StoreLock::shared_if_exists(&path.join(LAYERS_LOCK))?;
        cfmt::read_json_array(&path.join(LAYERS_JSON))?.unwrap_or_default()
    };
    let images = {
        let _l = cfmt::StoreLock::shared_if_exists(&path.join(IMAGES_LOCK))?;
        cfmt::read_json_array(&path.join(IMAGES_JSON))?.unwrap_or_default()
    };
    Ok(Some(StoreView {
        path: path.to_path_buf(),
        layers,
        images,
    }))
}

fn id_of(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// Problems of the image in the store; `None` when the store lacks it.
fn check_store_image(
    store: &StoreView,
    config_digest: &str,
    config_json: Option<&[u8]>,
    diff_ids: &[String],
    verify: bool,
) -> Option<Vec<String>> {
    let image_id = config_digest.trim_start_matches("sha256:");
    let img = store.images.iter().find(|i| id_of(i) == image_id)?;
    let mut problems = vec![];
    let ids = match cfmt::chain_ids(diff_ids) {
        Ok(i) => i,
        Err(e) => return Some(vec![format!("{e:#}")]),
    };
    let top = img.get("layer").and_then(Value::as_str);
    if top != ids.last().map(String::as_str) {
        problems.push(format!(
            "its top layer is {}, expected {} (a different chain of diff-ids)",
            top.unwrap_or("(none)"),
            ids.last().map(String::as_str).unwrap_or("(none)")
        ));
    }
    for (id, diff_id) in ids.iter().zip(diff_ids) {
        match store.layers.iter().find(|l| id_of(l) == id) {
            None => problems.push(format!(
                "layer {} ({}) is missing",
                short(id),
                short(diff_id)
            )),
            Some(l) => {
                if let Some(p) = cstor_writer::layer_problem(&store.path, l, diff_id) {
                    problems.push(p);
                } else if verify
                    && let Err(e) = cstor_writer::verify_layer(&store.path, id, diff_id)
                {
                    problems.push(format!("{e:#}"));
                }
            }
        }
    }
    // The config, as podman reads it.
    let dir = store.path.join(cfmt::IMAGES_DIR).join(image_id);
    match std::fs::read(dir.join(cfmt::big_data_file_name(config_digest))) {
        Ok(b) => {
            if cfmt::sha256_digest(&b) != config_digest
                || config_json.is_some_and(|c| c != b.as_slice())
            {
                problems.push("its config in the store is damaged".into());
            }
        }
        Err(_) => problems.push("its config is missing from the store".into()),
    }
    if !dir.join("manifest").is_file() {
        problems.push("its manifest is missing from the store".into());
    }
    Some(problems)
}

/// Whether the filesystem holding `path` can share extents, read from the
/// filesystem (no probe file is written): XFS says so in its geometry,
/// btrfs always can, others (ext4, tmpfs) cannot.
pub fn reflinks_supported(path: &Path) -> bool {
    const XFS_MAGIC: u64 = 0x5846_5342;
    const BTRFS_MAGIC: u64 = 0x9123_683E;
    const XFS_FSOP_GEOM_FLAGS_REFLINK: u32 = 1 << 20;
    let Ok(st) = rustix::fs::statfs(path) else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as u64 {
        BTRFS_MAGIC => true,
        XFS_MAGIC => {
            let Ok(f) = File::open(path) else {
                return false;
            };
            // XFS_IOC_FSGEOMETRY = _IOR('X', 126, struct xfs_fsop_geom),
            // 256 bytes; `flags` at offset 92.
            type Geom = [u8; 256];
            const OP: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<Geom>(b'X', 126);
            // SAFETY: the kernel fills a struct xfs_fsop_geom of that size.
            let geom =
                unsafe { rustix::ioctl::ioctl(&f, rustix::ioctl::Getter::<OP, Geom>::new()) };
            match geom {
                Ok(g) => {
                    let flags = u32::from_ne_bytes(g[92..96].try_into().expect("4 bytes"));
                    flags & XFS_FSOP_GEOM_FLAGS_REFLINK != 0
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
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

/// Where a store holds a file with the content of `bad`, if anywhere:
/// the same path in a layer with the same diff-id first, then the same
/// path in any layer; the content's fs-verity digest decides.
fn find_in_store(store: &StoreView, bad: &BadObject) -> Option<PathBuf> {
    let rel = tar_walk::as_os_str(&bad.path);
    let mut candidates: Vec<&Value> = store
        .layers
        .iter()
        .filter(|l| l.get("diff-digest").and_then(Value::as_str) == Some(&bad.diff_id))
        .collect();
    candidates.extend(
        store
            .layers
            .iter()
            .filter(|l| l.get("diff-digest").and_then(Value::as_str) != Some(&bad.diff_id)),
    );
    for l in candidates {
        let p = store
            .path
            .join("overlay")
            .join(id_of(l))
            .join("diff")
            .join(rel);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_file() || m.len() != bad.size {
            continue;
        }
        let Ok(mut f) = cfmt::open_noatime(&p) else {
            continue;
        };
        if let Ok((d, _)) = verity_of(&mut f)
            && d == bad.id
        {
            return Some(p);
        }
    }
    None
}

/// Puts the content of `src` (reflinked where possible) in place of object
/// `id`, after checking its digest; replaces a damaged file atomically.
/// Returns whether the content was reflinked.
fn restore_object(sysroot: &Sysroot, repo: &Repo, id: &ObjectId, src: &Path) -> Result<bool> {
    let objdir = sysroot
        .join(COMPOSEFS_DIR)
        .join("objects")
        .join(id.to_object_dir());
    cfmt::ensure_dir(&objdir, 0o755)?;
    let pathname = id.to_object_pathname();
    let base = pathname.rsplit('/').next().unwrap_or(&pathname);
    let dest = objdir.join(base);
    let tmp = objdir.join(format!(".unistore-restore-{base}"));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> Result<bool> {
        let s = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut d = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let reflinked = match rustix::fs::ioctl_ficlone(&d, &s) {
            Ok(()) => true,
            Err(e) if cstor_writer::reflink_unsupported(e) => {
                std::io::copy(&mut &s, &mut d)?;
                false
            }
            Err(e) => return Err(std::io::Error::from(e)).context("FICLONE"),
        };
        rustix::fs::fchmod(&d, rustix::fs::Mode::from_raw_mode(0o644))?;
        d.sync_all()?;
        let mut check = File::open(&tmp)?;
        let (actual, _) = verity_of(&mut check)?;
        if actual != *id {
            bail!("{} does not hold the object's content", src.display());
        }
        if !repo.is_insecure() {
            composefs::fsverity::enable_verity_raw::<ObjectId>(&check)
                .map_err(|e| anyhow::anyhow!("enabling fs-verity: {e:?}"))?;
        }
        drop(check);
        std::fs::rename(&tmp, &dest)?;
        File::open(&objdir)?.sync_all()?;
        Ok(reflinked)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    let repo = composefs_store::open(sysroot)?;
    let objects = sysroot.join(COMPOSEFS_DIR).join("objects");
    let (images, issues) = host_images(sysroot, &repo)?;
    report.issues = issues;
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
        };
        let mut cfs = check_composefs(
            &repo,
            &objects,
            &img.manifest_digest,
            &img.deployments,
            opts.verify_content,
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
                        Ok(reflinked) => r.repairs.push(format!(
                            "restored object objects/{} (/{}) from {} ({})",
                            bad.id.to_object_pathname(),
                            String::from_utf8_lossy(&bad.path),
                            src.display(),
                            if reflinked { "reflinked" } else { "copied" }
                        )),
                        Err(e) => r.issues.push(format!(
                            "could not restore object objects/{}: {e:#}",
                            bad.id.to_object_pathname()
                        )),
                    }
                }
            }
            // The GC root of a live image.
            if r.is_live && img.tags.is_empty() {
                let tag = composefs_store::bootc_tag(&img.manifest_digest);
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
                cfs = check_composefs(
                    &repo,
                    &objects,
                    &img.manifest_digest,
                    &img.deployments,
                    true,
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
                )
            })
        };
        let mut store_problems = check_store(store.as_ref());
        let store_whole = matches!(&store_problems, Some(p) if p.is_empty());
        if opts.repair && unified_on && store_readable && cfs.ok() && !store_whole {
            let names = store_names(sysroot, img, store.as_ref());
            let wo = WriteOptions {
                names,
                allow_copy: mode != Some(UnifiedMode::Enabled),
                verify_reused: opts.verify_content,
            };
            let written = crate::cstorage::ensure_store(sysroot).and_then(|()| {
                cstor_writer::write_image(&repo, &img.manifest_digest, &store_path, &wo)
            });
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
                composefs_store::bootc_tag(&img.manifest_digest)
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
        r.repaired = !r.repairs.is_empty();
        report.images.push(r);
    }
    report.containers_storage.exists = store_path.is_dir();
    report.ok = report.issues.is_empty()
        && report.containers_storage.issues.is_empty()
        && all_ok(&report.images);
    Ok(report)
}

/// The composefs repository as a whole.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoReport {
    /// Whether object contents were re-hashed.
    pub content_verified: bool,
    pub objects_checked: u64,
    pub objects_corrupted: u64,
    pub streams_checked: u64,
    pub streams_corrupted: u64,
    pub images_checked: u64,
    pub missing_objects: u64,
    pub issues: Vec<String>,
}

/// One boot entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryReport {
    /// `boot/loader/entries[.staged]/<file>`.
    pub file: String,
    pub deployment: Option<String>,
    pub issues: Vec<String>,
}

/// One deployment state directory.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentReport {
    pub id: String,
    pub is_live: bool,
    pub manifest_digest: Option<String>,
    pub issues: Vec<String>,
    pub notes: Vec<String>,
}

/// The report of `internals fsck`: everything.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FullReport {
    pub repository: RepoReport,
    pub boot_entries: Vec<EntryReport>,
    pub deployments: Vec<DeploymentReport>,
    pub images: ImagesReport,
    pub ok: bool,
}

/// Checks the repository's objects and streams (`verify_content`: re-hash
/// every object; else structure only).
async fn check_repository(sysroot: &Sysroot, verify: bool) -> Result<RepoReport> {
    let mut r = RepoReport {
        content_verified: verify,
        ..Default::default()
    };
    if !sysroot.dir().try_exists(COMPOSEFS_DIR)? {
        r.issues.push(format!(
            "there is no composefs repository ({COMPOSEFS_DIR})"
        ));
        return Ok(r);
    }
    let repo = composefs_store::open(sysroot)?;
    let f = if verify {
        repo.fsck().await?
    } else {
        repo.fsck_metadata_only().await?
    };
    r.objects_checked = f.objects_checked();
    r.objects_corrupted = f.objects_corrupted();
    r.streams_checked = f.streams_checked();
    r.streams_corrupted = f.streams_corrupted();
    r.images_checked = f.images_checked();
    r.missing_objects = f.missing_objects();
    r.issues = f
        .errors()
        .iter()
        .map(|e| e.to_string().trim_start_matches("fsck: ").to_string())
        .collect();
    Ok(r)
}

fn check_entries(sysroot: &Sysroot, host: &HostState) -> Result<Vec<EntryReport>> {
    let prefix = sysroot.boot_path_prefix()?;
    let boot = sysroot.join(crate::sysroot::BOOT_DIR);
    let mut out = vec![];
    let all = host
        .entries
        .iter()
        .map(|e| (crate::sysroot::ENTRIES_DIR, e))
        .chain(
            host.staged_entries
                .iter()
                .map(|e| (crate::sysroot::STAGED_ENTRIES_DIR, e)),
        );
    for (dir, e) in all {
        let mut issues = vec![];
        for (what, p) in [("kernel", &e.linux), ("initrd", &e.initrd)] {
            let rel = p.strip_prefix(prefix).unwrap_or(p).trim_start_matches('/');
            if !boot.join(rel).is_file() {
                issues.push(format!("its {what} {p} does not exist"));
            }
        }
        match e.deployment_id() {
            None => issues.push("it names no deployment (no composefs= option)".into()),
            Some(id) => {
                if !sysroot.dir().try_exists(deployment::state_dir(id))? {
                    issues.push(format!(
                        "its deployment's state directory {} does not exist",
                        deployment::state_dir(id)
                    ));
                }
                if !sysroot
                    .dir()
                    .try_exists(format!("{COMPOSEFS_DIR}/images/{id}"))?
                {
                    issues.push(format!(
                        "its boot image {COMPOSEFS_DIR}/images/{} does not exist",
                        short(id)
                    ));
                }
            }
        }
        out.push(EntryReport {
            file: format!("{dir}/{}", e.file_name),
            deployment: e.deployment_id().map(str::to_string),
            issues,
        });
    }
    if let Some(m) = &host.marker
        && host.staged_entry().is_none()
    {
        out.push(EntryReport {
            file: crate::sysroot::STAGED_ENTRIES_DIR.to_string(),
            deployment: Some(m.depl_id.clone()),
            issues: vec![format!(
                "the staged-deployment marker names {} but no staged entry does",
                short(&m.depl_id)
            )],
        });
    }
    Ok(out)
}

fn check_deployments(sysroot: &Sysroot, host: &HostState) -> Result<Vec<DeploymentReport>> {
    let live = host.live_ids();
    let repo = composefs_store::open(sysroot).ok();
    let mut out = vec![];
    for name in crate::util::list_names(sysroot.dir(), crate::sysroot::STATE_DEPLOY_DIR)? {
        if let Some(id) = name.strip_prefix(".tmp-") {
            out.push(DeploymentReport {
                id: id.to_string(),
                is_live: false,
                manifest_digest: None,
                issues: vec![],
                notes: vec!["an interrupted deployment (`internals gc` removes it)".into()],
            });
            continue;
        }
        if !deployment::is_deployment_id(&name) {
            continue;
        }
        let mut d = DeploymentReport {
            id: name.clone(),
            is_live: live.contains(&name),
            manifest_digest: None,
            issues: vec![],
            notes: vec![],
        };
        match deployment::read_origin(sysroot, &name) {
            Err(e) => d.issues.push(format!("{e:#}")),
            Ok(origin) => match repo
                .as_ref()
                .map(|r| deployment::manifest_digest(sysroot, r, &name, &origin))
            {
                Some(Ok(m)) => d.manifest_digest = Some(m),
                Some(Err(e)) => d.issues.push(format!("{e:#}")),
                None => d
                    .issues
                    .push("no composefs repository to resolve its image".into()),
            },
        }
        if !d.is_live {
            d.notes
                .push("no boot entry uses it (`internals gc` removes it)".into());
        }
        out.push(d);
    }
    for id in &live {
        if !out.iter().any(|d| &d.id == id) {
            out.push(DeploymentReport {
                id: id.clone(),
                is_live: true,
                manifest_digest: None,
                issues: vec![format!(
                    "a boot entry uses it but {} does not exist",
                    deployment::state_dir(id)
                )],
                notes: vec![],
            });
        }
    }
    Ok(out)
}

/// Runs `internals fsck`: the repository, the boot entries, the state
/// directories and the images (repairing images only).
pub async fn fsck_all(sysroot: &Sysroot, opts: FsckOpts) -> Result<FullReport> {
    let repository = check_repository(sysroot, opts.verify_content).await?;
    let host = HostState::read(sysroot)?;
    let boot_entries = check_entries(sysroot, &host)?;
    let deployments = check_deployments(sysroot, &host)?;
    let images = fsck_images(sysroot, opts)?;
    // Repairs may have fixed what the repository check saw.
    let repository = if images.images.iter().any(|i| i.repaired) && !repository.issues.is_empty() {
        check_repository(sysroot, opts.verify_content).await?
    } else {
        repository
    };
    let ok = repository.ok() && all_ok(&boot_entries) && all_ok(&deployments) && images.ok;
    Ok(FullReport {
        repository,
        boot_entries,
        deployments,
        images,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflink_support_is_read_not_probed() {
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let before = std::fs::read_dir(td.path()).unwrap().count();
        let _ = reflinks_supported(td.path());
        assert_eq!(std::fs::read_dir(td.path()).unwrap().count(), before);
        assert!(!reflinks_supported(Path::new("/proc")));
    }
}
