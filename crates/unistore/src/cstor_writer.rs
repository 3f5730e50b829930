//! A native writer from the composefs repository into a containers-storage
//! overlay store: no podman, no skopeo, no tar in between, and no copy of
//! file contents where the filesystem can share extents.
//!
//! For each layer of the image (base first) missing from the store, the
//! layer's splitstream is replayed ([`crate::tar_walk`]) into
//! `overlay/<id>/diff` the way the overlay driver unpacks a layer tar:
//!
//! * regular files get their content by `FICLONE` from the composefs object
//!   (a byte copy only where the filesystem cannot reflink, and only if the
//!   caller allows it); small files stored inline are written;
//! * owners, modes (setuid/setgid/sticky), xattrs and mtimes as in the tar;
//!   directories get their mtimes last; parents the tar does not list are
//!   created 0755 root, and the `diff` root is 0555 (inherited by children),
//!   as podman 4.3 does;
//! * whiteouts `.wh.<name>` become 0/0 character devices named `<name>`
//!   (mode 0, the whiteout's owner), opaque markers `.wh..wh..opq` the xattr
//!   `trusted.overlay.opaque=y` on their directory;
//! * the raw tar headers and padding go to `overlay-layers/<id>.tar-split.gz`
//!   ([`crate::cstor_format::TarSplitWriter`]), so that exporting the layer
//!   gives back the original tar byte for byte; its sha256 is checked
//!   against the diff-id before anything is published.
//!
//! A layer is built in `overlay/.unistore-tmp-<id>` and renamed into place
//! with its `link` (a fresh short name, `overlay/l/<name> -> ../<id>/diff`),
//! `lower` (the parent's link, then the parent's `lower`), `work/`,
//! `merged/` (and `empty/` for a base layer); then its tar-split is renamed
//! into place, the filesystem synced, and only then `layers.json` gains the
//! layer, all under the store's `layers.lock`. The image (id = config
//! digest, its manifest, config and an empty signature list as big data)
//! is then added to `images.json` under `images.lock`. A crash leaves only
//! `.unistore-tmp-*` leftovers or a directory `layers.json` does not list,
//! both removed by the next run (under the lock, so never podman's work).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use composefs::fsverity::FsVerityHashValue;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use serde_json::{Value, json};

use crate::composefs_store::{ObjectId, Repo};
use crate::cstor_format::{
    self as fmt, IMAGES_DIR, IMAGES_JSON, IMAGES_LOCK, LAYERS_DIR, LAYERS_JSON, LAYERS_LOCK,
    LINK_DIR, OVERLAY_DIR, StoreLock, TarSplitWriter,
};
use crate::tar_walk::{self, Body, Entry, Kind, LayerVisitor};

/// Prefix of unistore's temporary names in the store.
const TMP_PREFIX: &str = ".unistore-tmp-";
/// In a layer directory this writer published but has not recorded yet.
const UNRECORDED_MARKER: &str = ".unistore-unrecorded";

/// What to write and how.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Names the image gets (`registry/repo:tag`); taken away from any other
    /// image of the store, as containers/storage does.
    pub names: Vec<String>,
    /// Copy file contents where the filesystem cannot reflink (otherwise
    /// that is an error).
    pub allow_copy: bool,
    /// Reuse a layer the store has only after reassembling it and checking
    /// its diff-id (reads every file); otherwise its structure decides.
    pub verify_reused: bool,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteStats {
    /// The image id (config digest hex).
    pub image_id: String,
    /// Layers written (ids), base first.
    pub layers_written: Vec<String>,
    /// Layers the store already had, intact.
    pub layers_reused: usize,
    /// Regular files whose content was reflinked from composefs objects.
    pub files_reflinked: u64,
    pub bytes_reflinked: u64,
    /// Regular files whose content had to be copied.
    pub files_copied: u64,
    pub bytes_copied: u64,
    /// Bytes of small files written from the splitstream.
    pub bytes_inline: u64,
}

/// The parts of an image of the composefs repository a store needs.
struct Source {
    manifest_digest: String,
    manifest_json: Vec<u8>,
    config_digest: String,
    config_json: Vec<u8>,
    created: Option<String>,
    /// (diff-id, splitstream verity, compressed digest, compressed size,
    /// compression) per layer, base first.
    layers: Vec<SourceLayer>,
}

struct SourceLayer {
    diff_id: String,
    verity: ObjectId,
    compressed_digest: String,
    compressed_size: u64,
    compression: u64,
}

fn load_source(repo: &Repo, manifest_digest: &str) -> Result<Source> {
    let img = crate::composefs_store::open_image(repo, manifest_digest)?;
    let manifest_json = img.read_manifest_json(repo)?;
    let config_json = img.read_config_json(repo)?;
    let config_digest = img.config_digest().to_string();
    let actual = fmt::sha256_digest(&config_json);
    ensure!(
        actual == config_digest,
        "the config of {manifest_digest} in the composefs repository is damaged (its digest is {actual}, not {config_digest})"
    );
    let diff_ids: Vec<String> = img.layer_diff_ids().iter().map(|s| s.to_string()).collect();
    let descs = img.layer_descriptors();
    ensure!(
        descs.len() == diff_ids.len(),
        "image {manifest_digest}: {} layers in the manifest, {} diff ids in the config",
        descs.len(),
        diff_ids.len()
    );
    let mut layers = vec![];
    for (diff_id, desc) in diff_ids.iter().zip(descs) {
        let verity = img
            .layer_verity(diff_id)
            .ok_or_else(|| anyhow!("layer {diff_id} is not in the composefs repository"))?
            .clone();
        let media = desc.media_type().to_string();
        let (compressed_digest, compressed_size, compression) =
            if media.ends_with("+gzip") || media.ends_with(".gzip") {
                (
                    desc.digest().to_string(),
                    desc.size(),
                    fmt::compression::GZIP,
                )
            } else if media.ends_with("+zstd") || media.ends_with(".zstd") {
                (
                    desc.digest().to_string(),
                    desc.size(),
                    fmt::compression::ZSTD,
                )
            } else {
                // Uncompressed: filled in from the tar once written.
                (String::new(), 0, fmt::compression::UNCOMPRESSED)
            };
        layers.push(SourceLayer {
            diff_id: diff_id.clone(),
            verity,
            compressed_digest,
            compressed_size,
            compression,
        });
    }
    let created = serde_json::from_slice::<Value>(&config_json)
        .ok()
        .and_then(|v| {
            v.get("created")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        });
    Ok(Source {
        manifest_digest: manifest_digest.to_string(),
        manifest_json,
        config_digest,
        config_json,
        created,
        layers,
    })
}

/// Reassembles layer `id` of the store from its tar-split and `diff` (every
/// file's CRC checked) and compares the result with `diff_id`.
pub fn verify_layer(store: &Path, id: &str, diff_id: &str) -> Result<()> {
    let diff = store.join(OVERLAY_DIR).join(id).join("diff");
    let entries = fmt::read_tar_split(&store.join(fmt::tar_split_path(id)))?;
    let (digest, _) = fmt::assemble_layer(&diff, &entries, &mut fmt::Sink)?;
    ensure!(
        digest == diff_id,
        "layer {id} exports with digest {digest}, not {diff_id}"
    );
    Ok(())
}

/// Why the store's record of layer `id` (expected to hold `diff_id`) is not
/// usable, or `None` when it is whole: listed complete, diff directory,
/// tar-split and link in place.
pub fn layer_problem(store: &Path, entry: &Value, diff_id: &str) -> Option<String> {
    let id = entry.get("id").and_then(Value::as_str).unwrap_or_default();
    if entry
        .get("flags")
        .and_then(|f| f.get("incomplete"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Some(format!("layer {id} is marked incomplete"));
    }
    let recorded = entry.get("diff-digest").and_then(Value::as_str);
    if recorded != Some(diff_id) {
        return Some(format!(
            "layer {id} records diff digest {}, expected {diff_id}",
            recorded.unwrap_or("(none)")
        ));
    }
    let dir = store.join(OVERLAY_DIR).join(id);
    if !dir.join("diff").is_dir() {
        return Some(format!("layer {id}: {}/diff is missing", dir.display()));
    }
    let split = store.join(fmt::tar_split_path(id));
    if !split.is_file() {
        return Some(format!("layer {id}: {} is missing", split.display()));
    }
    // Every file the layer exports is there, with its size (contents are
    // not read: see `verify_layer`).
    if let Err(e) =
        fmt::read_tar_split(&split).and_then(|e| fmt::check_layer_files(&dir.join("diff"), &e))
    {
        return Some(format!("layer {id}: {e:#}"));
    }
    match std::fs::read_to_string(dir.join("link")) {
        Ok(link) => {
            let l = store.join(LINK_DIR).join(link.trim());
            if !l.join(".").is_dir() {
                return Some(format!(
                    "layer {id}: its short link {} is missing or broken",
                    l.display()
                ));
            }
        }
        Err(_) => {
            return Some(format!("layer {id}: {}/link is missing", dir.display()));
        }
    }
    None
}

fn entry_id(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// Writes the image `manifest_digest` of the composefs repository into the
/// store at `store` (created if needed), reusing the layers it already has
/// intact. Refuses to touch a store whose JSON it cannot read.
pub fn write_image(
    repo: &Repo,
    manifest_digest: &str,
    store: &Path,
    opts: &WriteOptions,
) -> Result<WriteStats> {
    let src = load_source(repo, manifest_digest)?;
    let diff_ids: Vec<&str> = src.layers.iter().map(|l| l.diff_id.as_str()).collect();
    let ids = fmt::chain_ids(&diff_ids)?;
    let mut stats = WriteStats {
        image_id: src
            .config_digest
            .strip_prefix("sha256:")
            .unwrap_or(&src.config_digest)
            .to_string(),
        ..Default::default()
    };

    fmt::ensure_dir(store, 0o700)?;
    for d in [OVERLAY_DIR, LAYERS_DIR, IMAGES_DIR] {
        fmt::ensure_dir(&store.join(d), 0o700)?;
    }
    fmt::ensure_dir(&store.join(LINK_DIR), 0o755)?;

    // Layers, under layers.lock.
    {
        let lock = StoreLock::exclusive(&store.join(LAYERS_LOCK))?;
        let json_path = store.join(LAYERS_JSON);
        let mut layers = fmt::read_json_array(&json_path)
            .context("refusing to write into the store")?
            .unwrap_or_default();
        remove_leftovers(store, &layers)?;
        for (i, (layer, id)) in src.layers.iter().zip(&ids).enumerate() {
            let existing = layers.iter().position(|l| entry_id(l) == id);
            if let Some(idx) = existing
                && layer_problem(store, &layers[idx], &layer.diff_id).is_none()
                && (!opts.verify_reused || verify_layer(store, id, &layer.diff_id).is_ok())
            {
                stats.layers_reused += 1;
                continue;
            }
            let parent = (i > 0).then(|| ids[i - 1].as_str());
            let record = build_layer(repo, store, id, parent, layer, opts, &mut stats)
                .with_context(|| format!("writing layer {} ({})", id, layer.diff_id))?;
            match existing {
                Some(idx) => layers[idx] = record,
                None => layers.push(record),
            }
            fmt::write_json_array(&json_path, &layers)?;
            lock.record_write()?;
            // Recorded: no longer a leftover.
            let _ = std::fs::remove_file(store.join(OVERLAY_DIR).join(id).join(UNRECORDED_MARKER));
            stats.layers_written.push(id.clone());
            crate::crashpoint::hit("cstor-writer:after-layer");
        }
    }

    // The image, under images.lock.
    {
        let lock = StoreLock::exclusive(&store.join(IMAGES_LOCK))?;
        let json_path = store.join(IMAGES_JSON);
        let mut images = fmt::read_json_array(&json_path)
            .context("refusing to write into the store")?
            .unwrap_or_default();
        write_big_data(store, &stats.image_id, &src)?;
        let top = ids.last().cloned();
        upsert_image(&mut images, &stats.image_id, &src, top, &opts.names);
        fmt::write_json_array(&json_path, &images)?;
        lock.record_write()?;
    }
    Ok(stats)
}

/// The big-data items of an image: (key, content).
fn big_data_items(src: &Source) -> Vec<(String, Vec<u8>)> {
    let hex = src
        .manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or(&src.manifest_digest);
    vec![
        (src.config_digest.clone(), src.config_json.clone()),
        (
            format!("manifest-{}", src.manifest_digest),
            src.manifest_json.clone(),
        ),
        ("manifest".to_string(), src.manifest_json.clone()),
        (format!("signature-{hex}"), vec![]),
    ]
}

fn write_big_data(store: &Path, image_id: &str, src: &Source) -> Result<()> {
    let dir = store.join(IMAGES_DIR).join(image_id);
    fmt::ensure_dir(&dir, 0o700)?;
    for (key, content) in big_data_items(src) {
        fmt::atomic_replace(&dir.join(fmt::big_data_file_name(&key)), &content)?;
    }
    Ok(())
}

/// Gives `names` to the image `image_id` of `images` (appended to its
/// names, first in its names-history) and takes them away from every other
/// image: names are unique in a store, as containers/storage keeps them.
/// Returns the image's names and names-history.
fn merge_names(
    images: &mut [Value],
    image_id: &str,
    names: &[String],
) -> (Vec<String>, Vec<String>) {
    for img in images.iter_mut() {
        if entry_id(img) == image_id {
            continue;
        }
        if let Some(Value::Array(n)) = img.get_mut("names") {
            n.retain(|v| !names.iter().any(|x| v.as_str() == Some(x)));
        }
    }
    let strings = |key: &str| -> Vec<String> {
        images
            .iter()
            .find(|i| entry_id(i) == image_id)
            .and_then(|i| i.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut all_names = strings("names");
    let mut history = strings("names-history");
    for n in names {
        if !all_names.contains(n) {
            all_names.push(n.clone());
        }
    }
    for n in names.iter().rev() {
        history.retain(|h| h != n);
        history.insert(0, n.clone());
    }
    (all_names, history)
}

/// Adds `names` to the image `image_id` already in the store (taking them
/// from other images), under `images.lock`. Nothing else of the image
/// changes. Fails when the store has no such image.
pub fn add_names(store: &Path, image_id: &str, names: &[String]) -> Result<()> {
    let lock = StoreLock::exclusive(&store.join(IMAGES_LOCK))?;
    let json_path = store.join(IMAGES_JSON);
    let mut images = fmt::read_json_array(&json_path)
        .context("refusing to write into the store")?
        .unwrap_or_default();
    let (all_names, history) = merge_names(&mut images, image_id, names);
    let entry = images
        .iter_mut()
        .find(|i| entry_id(i) == image_id)
        .ok_or_else(|| anyhow!("image {image_id} is not in the store"))?;
    entry["names"] = json!(all_names);
    entry["names-history"] = json!(history);
    fmt::write_json_array(&json_path, &images)?;
    lock.record_write()
}

fn upsert_image(
    images: &mut Vec<Value>,
    image_id: &str,
    src: &Source,
    top: Option<String>,
    names: &[String],
) {
    let existing = images.iter().position(|i| entry_id(i) == image_id);
    let (all_names, history) = merge_names(images, image_id, names);
    let items = big_data_items(src);
    let mut sizes = serde_json::Map::new();
    let mut digests = serde_json::Map::new();
    for (k, c) in &items {
        sizes.insert(k.clone(), json!(c.len()));
        digests.insert(k.clone(), json!(fmt::sha256_digest(c)));
    }
    let metadata = json!({ "signatures-sizes": { src.manifest_digest.clone(): [] } }).to_string();
    let mut entry = json!({
        "id": image_id,
        "digest": src.manifest_digest,
        "names": all_names,
        "names-history": history,
        "layer": top,
        "metadata": metadata,
        "big-data-names": items.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "big-data-sizes": sizes,
        "big-data-digests": digests,
    });
    if top.is_none() {
        entry.as_object_mut().expect("object").remove("layer");
    }
    if let Some(c) = &src.created {
        entry["created"] = json!(c);
    }
    if all_names_empty(&entry) {
        let o = entry.as_object_mut().expect("object");
        o.remove("names");
        o.remove("names-history");
    }
    match existing {
        Some(i) => images[i] = entry,
        None => images.push(entry),
    }
}

fn all_names_empty(entry: &Value) -> bool {
    entry["names"].as_array().is_none_or(Vec::is_empty)
}

/// Removes what an interrupted run of this writer left (called under the
/// layers lock): temporaries, and layer directories `layers.json` does not
/// list with their short links.
fn remove_leftovers(store: &Path, layers: &[Value]) -> Result<()> {
    let listed: BTreeSet<&str> = layers.iter().map(entry_id).collect();
    for dir in [OVERLAY_DIR, LAYERS_DIR] {
        for e in std::fs::read_dir(store.join(dir))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                remove_any(&e.path())?;
            }
        }
    }
    // A directory without a record is a layer this writer published but
    // did not record before it was interrupted (containers/storage records
    // a layer, as incomplete, before it creates the directory).
    for e in std::fs::read_dir(store.join(OVERLAY_DIR))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_id = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_id && !listed.contains(name.as_str()) && e.path().join("diff").exists() {
            let marker = e.path().join(UNRECORDED_MARKER);
            if marker.exists() {
                tracing::info!("removing unrecorded layer directory {}", e.path().display());
                remove_links_to(store, &name)?;
                remove_any(&e.path())?;
                let _ = std::fs::remove_file(store.join(fmt::tar_split_path(&name)));
            }
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The short link names pointing at layer `id`'s diff.
fn links_to(store: &Path, id: &str) -> Result<Vec<String>> {
    let want = format!("../{id}/diff");
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(store.join(LINK_DIR)) else {
        return Ok(out);
    };
    for e in rd {
        let e = e?;
        if let Ok(t) = std::fs::read_link(e.path())
            && t.as_os_str() == OsStr::new(&want)
        {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

fn remove_links_to(store: &Path, id: &str) -> Result<()> {
    for l in links_to(store, id)? {
        remove_any(&store.join(LINK_DIR).join(l))?;
    }
    Ok(())
}

/// Builds layer `id` into the store and returns its `layers.json` record.
fn build_layer(
    repo: &Repo,
    store: &Path,
    id: &str,
    parent: Option<&str>,
    layer: &SourceLayer,
    opts: &WriteOptions,
    stats: &mut WriteStats,
) -> Result<Value> {
    let overlay = store.join(OVERLAY_DIR);
    let staging = overlay.join(format!("{TMP_PREFIX}{id}"));
    remove_any(&staging)?;
    fmt::ensure_dir(&staging, 0o700)?;
    let result = (|| -> Result<Value> {
        // The diff root: 0555 for a base layer, the parent's mode otherwise.
        let root_mode = match parent {
            Some(p) => std::fs::metadata(overlay.join(p).join("diff"))
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o555),
            None => 0o555,
        };
        let diff = staging.join("diff");
        rustix::fs::mkdir(&diff, Mode::from_raw_mode(0o700))?;
        let root = rustix::fs::open(
            &diff,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&root, Mode::from_raw_mode(root_mode))?;
        for d in ["work", "merged"] {
            fmt::ensure_dir(&staging.join(d), 0o700)?;
        }
        if parent.is_none() {
            fmt::ensure_dir(&staging.join("empty"), 0o700)?;
        }

        let split_tmp = store
            .join(LAYERS_DIR)
            .join(format!("{TMP_PREFIX}{id}.tar-split.gz"));
        let split_file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&split_tmp)
            .with_context(|| format!("creating {}", split_tmp.display()))?;
        rustix::fs::fchmod(&split_file, Mode::from_raw_mode(0o600))?;
        let mut w = DiffWriter {
            repo,
            root,
            root_path: diff.clone(),
            split: TarSplitWriter::new(BufWriter::new(split_file)),
            seg: Vec::new(),
            sha: crate::hash_thread::Sha256Thread::new(),
            size: 0,
            dirs: Vec::new(),
            uids: BTreeSet::new(),
            gids: BTreeSet::new(),
            allow_copy: opts.allow_copy,
            stats,
            cache: None,
            buf: vec![0u8; 1 << 20],
        };
        // Start reading the layer's objects while the walk works on the
        // first ones: on a cold cache the reads, not the hashing, dominate.
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(|| prefetch_objects(repo, &layer.diff_id, &layer.verity));
            tar_walk::walk_layer(repo, &layer.diff_id, Some(&layer.verity), &mut w)
        })?;
        let (digest, diff_size, uids, gids) = w.finish()?;
        ensure!(
            digest == layer.diff_id,
            "the layer rebuilt from the composefs repository has digest {digest}, not {}: the repository's copy is damaged",
            layer.diff_id
        );

        // Link, lower.
        let link = {
            // A layer rebuilt in place keeps its short name: children name
            // it in their `lower` files.
            let old = std::fs::read_to_string(overlay.join(id).join("link"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            match old.or_else(|| links_to(store, id).ok().and_then(|l| l.into_iter().next())) {
                Some(l) => l,
                None => fmt::new_link_name()?,
            }
        };
        fmt::atomic_replace(&staging.join("link"), link.as_bytes())?;
        rustix::fs::chmod(staging.join("link"), Mode::from_raw_mode(0o644))?;
        if let Some(p) = parent {
            let plink = std::fs::read_to_string(overlay.join(p).join("link"))
                .with_context(|| format!("reading the link of parent layer {p}"))?;
            let mut lower = format!("l/{}", plink.trim());
            if let Ok(pl) = std::fs::read_to_string(overlay.join(p).join("lower"))
                && !pl.trim().is_empty()
            {
                lower.push(':');
                lower.push_str(pl.trim());
            }
            fmt::atomic_replace(&staging.join("lower"), lower.as_bytes())?;
            rustix::fs::chmod(staging.join("lower"), Mode::from_raw_mode(0o644))?;
        }
        // Marks a directory this writer made until `layers.json` lists it.
        std::fs::write(staging.join(UNRECORDED_MARKER), b"")?;

        // Publish: data first, then names, then the record.
        rustix::fs::syncfs(File::open(store)?)?;
        let final_dir = overlay.join(id);
        if final_dir.exists() {
            let old = overlay.join(format!("{TMP_PREFIX}old-{id}"));
            std::fs::rename(&final_dir, &old)?;
            remove_any(&old)?;
        }
        std::fs::rename(&staging, &final_dir)
            .with_context(|| format!("renaming the new layer to {}", final_dir.display()))?;
        let link_path = store.join(LINK_DIR).join(&link);
        if std::fs::symlink_metadata(&link_path).is_err() {
            std::os::unix::fs::symlink(format!("../{id}/diff"), &link_path)
                .with_context(|| format!("creating {}", link_path.display()))?;
        }
        std::fs::rename(&split_tmp, store.join(fmt::tar_split_path(id)))?;

        let (cdigest, csize) = if layer.compression == fmt::compression::UNCOMPRESSED {
            (layer.diff_id.clone(), diff_size)
        } else {
            (layer.compressed_digest.clone(), layer.compressed_size)
        };
        let mut rec = json!({ "id": id });
        if let Some(p) = parent {
            rec["parent"] = json!(p);
        }
        rec["created"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        rec["compressed-diff-digest"] = json!(cdigest);
        rec["compressed-size"] = json!(csize);
        rec["diff-digest"] = json!(layer.diff_id);
        rec["diff-size"] = json!(diff_size);
        rec["compression"] = json!(layer.compression);
        rec["uidset"] = json!(uids);
        rec["gidset"] = json!(gids);
        Ok(rec)
    })();
    if result.is_err() {
        let _ = remove_any(&staging);
        let _ = remove_any(
            &store
                .join(LAYERS_DIR)
                .join(format!("{TMP_PREFIX}{id}.tar-split.gz")),
        );
    }
    result
}

/// Asks the kernel to read ahead every object the layer references, in
/// order (best effort).
fn prefetch_objects(repo: &Repo, diff_id: &str, verity: &ObjectId) {
    let Ok(stream_id) = tar_walk::layer_stream_id(diff_id) else {
        return;
    };
    let Ok(mut reader) = repo.open_stream(&stream_id, Some(verity), None) else {
        return;
    };
    let mut ids = vec![];
    if reader.get_object_refs(|id| ids.push(id.clone())).is_err() {
        return;
    }
    for id in ids {
        if let Ok(fd) = repo.open_object(&id) {
            let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::WillNeed);
        }
    }
}

/// Unpacks a layer into a `diff` directory and writes its tar-split.
struct DiffWriter<'a> {
    repo: &'a Repo,
    root: OwnedFd,
    root_path: PathBuf,
    split: TarSplitWriter<BufWriter<File>>,
    /// Raw bytes of the segment being collected.
    seg: Vec<u8>,
    sha: crate::hash_thread::Sha256Thread,
    size: u64,
    /// Directories whose mtimes are set at the end.
    dirs: Vec<(Vec<u8>, i64, u32)>,
    uids: BTreeSet<u64>,
    gids: BTreeSet<u64>,
    allow_copy: bool,
    stats: &'a mut WriteStats,
    /// The last parent directory opened.
    cache: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn ts(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl DiffWriter<'_> {
    fn finish(mut self) -> Result<(String, u64, Vec<u64>, Vec<u64>)> {
        // Directory mtimes last (children changed them), deepest first.
        for (rel, sec, nsec) in std::mem::take(&mut self.dirs).iter().rev() {
            let t = ts(*sec, *nsec);
            if rel.is_empty() {
                rustix::fs::futimens(&self.root, &t)?;
            } else {
                let (p, n) = split_parent(rel);
                let pfd = self.dir(p, false)?;
                rustix::fs::utimensat(&pfd, os(n), &t, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        if !self.seg.is_empty() {
            self.split.segment(&self.seg)?;
        }
        // containers/storage ends every tar-split with an empty segment.
        self.split.segment(&[])?;
        let mut out = self.split.finish()?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let digest = format!("sha256:{}", hex::encode(self.sha.finalize()));
        Ok((
            digest,
            self.size,
            self.uids.into_iter().collect(),
            self.gids.into_iter().collect(),
        ))
    }

    /// Opens directory `rel` of the diff (empty: the root), creating missing
    /// ones (0755 root) when `create`. Never follows a symlink.
    fn dir(&mut self, rel: &[u8], create: bool) -> Result<OwnedFd> {
        if let Some((k, fd)) = &self.cache
            && k == rel
        {
            return Ok(fd.try_clone()?);
        }
        let mut cur = self.root.try_clone()?;
        if !rel.is_empty() {
            for comp in rel.split(|b| *b == b'/') {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                cur = match rustix::fs::openat(&cur, os(comp), flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) if create => {
                        rustix::fs::mkdirat(&cur, os(comp), Mode::from_raw_mode(0o755))?;
                        let fd = rustix::fs::openat(&cur, os(comp), flags, Mode::empty())?;
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                        fd
                    }
                    Err(Errno::NOTDIR | Errno::LOOP) => bail!(
                        "/{} is not a directory in the layer",
                        String::from_utf8_lossy(rel)
                    ),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("opening /{} in the layer", String::from_utf8_lossy(rel))
                        });
                    }
                };
            }
        }
        self.cache = Some((rel.to_vec(), cur.try_clone()?));
        Ok(cur)
    }

    /// Removes whatever is at `name` in `parent` (a directory recursively),
    /// unless it is a directory and `keep_dir`. Returns whether a directory
    /// was kept.
    fn clear(&mut self, parent: &OwnedFd, rel: &[u8], name: &[u8], keep_dir: bool) -> Result<bool> {
        match rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if is_dir && keep_dir {
                    return Ok(true);
                }
                if is_dir {
                    self.cache = None;
                    std::fs::remove_dir_all(self.root_path.join(os(rel)))?;
                } else {
                    rustix::fs::unlinkat(parent, os(name), AtFlags::empty())?;
                }
                Ok(false)
            }
        }
    }

    fn set_xattrs_fd(&self, fd: &OwnedFd, e: &Entry) -> Result<()> {
        for (k, v) in &e.xattrs {
            rustix::fs::fsetxattr(fd, os(k), v, XattrFlags::empty()).with_context(|| {
                format!(
                    "setting xattr {} on {}",
                    String::from_utf8_lossy(k),
                    e.display()
                )
            })?;
        }
        Ok(())
    }

    fn set_xattrs_path(&self, rel: &[u8], e: &Entry) -> Result<()> {
        let p = self.root_path.join(os(rel));
        for (k, v) in &e.xattrs {
            rustix::fs::lsetxattr(&p, os(k), v, XattrFlags::empty()).with_context(|| {
                format!(
                    "setting xattr {} on {}",
                    String::from_utf8_lossy(k),
                    e.display()
                )
            })?;
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of a non-directory created at `name`.
    fn finish_at(
        &self,
        parent: &OwnedFd,
        rel: &[u8],
        name: &[u8],
        e: &Entry,
        chmod: bool,
    ) -> Result<()> {
        rustix::fs::chownat(
            parent,
            os(name),
            Some(Uid::from_raw(e.uid as u32)),
            Some(Gid::from_raw(e.gid as u32)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if chmod {
            rustix::fs::chmodat(
                parent,
                os(name),
                Mode::from_raw_mode(e.mode),
                AtFlags::empty(),
            )?;
        }
        self.set_xattrs_path(rel, e)?;
        rustix::fs::utimensat(
            parent,
            os(name),
            &ts(e.mtime_sec, e.mtime_nsec),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Writes a regular file's content; returns its CRC-64.
    fn write_content(&mut self, file: &File, e: &Entry, body: Body<'_>) -> Result<Option<u64>> {
        match body {
            Body::Empty => Ok(None),
            Body::Inline(bytes) => {
                (&*file).write_all(bytes)?;
                self.sha.update(bytes);
                self.stats.bytes_inline += bytes.len() as u64;
                Ok(Some(fmt::crc64(bytes)))
            }
            Body::External(id) => {
                let src = File::from(self.repo.open_object(id).with_context(|| {
                    format!("opening object {} ({})", id.to_hex(), e.display())
                })?);
                let reflinked = match rustix::fs::ioctl_ficlone(file, &src) {
                    Ok(()) => true,
                    Err(err)
                        if crate::cstor_writer::reflink_unsupported(err) && self.allow_copy =>
                    {
                        false
                    }
                    Err(err) => {
                        return Err(std::io::Error::from(err)).with_context(|| {
                            format!("reflinking {} from object {}", e.display(), id.to_hex())
                        });
                    }
                };
                let mut crc = fmt::crc64_digest();
                let mut total = 0u64;
                let mut r = &src;
                loop {
                    let n = r.read(&mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    let chunk = &self.buf[..n];
                    crc.update(chunk);
                    self.sha.update(chunk);
                    if !reflinked {
                        (&*file).write_all(chunk)?;
                    }
                    total += n as u64;
                }
                ensure!(
                    total == e.size,
                    "object {} ({}) has {total} bytes, the layer says {}",
                    id.to_hex(),
                    e.display(),
                    e.size
                );
                if reflinked {
                    self.stats.files_reflinked += 1;
                    self.stats.bytes_reflinked += total;
                } else {
                    self.stats.files_copied += 1;
                    self.stats.bytes_copied += total;
                }
                Ok(Some(crc.finalize()))
            }
        }
    }

    fn unpack(&mut self, e: &Entry, body: Body<'_>) -> Result<Option<u64>> {
        if e.kind == Kind::GlobalHeader {
            return Ok(None);
        }
        let rel = e.rel_path()?;
        let (prel, name) = split_parent(&rel);
        if rel.is_empty() {
            // The layer root itself.
            if e.kind == Kind::Directory {
                let root = self.root.try_clone()?;
                rustix::fs::fchown(
                    &root,
                    Some(Uid::from_raw(e.uid as u32)),
                    Some(Gid::from_raw(e.gid as u32)),
                )?;
                rustix::fs::fchmod(&root, Mode::from_raw_mode(e.mode))?;
                self.set_xattrs_fd(&root, e)?;
                self.dirs.push((vec![], e.mtime_sec, e.mtime_nsec));
            }
            return Ok(None);
        }
        let parent = self.dir(prel, true)?;
        // Whiteouts, as the overlay driver stores them.
        if let Some(target) = name.strip_prefix(b".wh.") {
            if target == b".wh..opq" {
                rustix::fs::fsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .with_context(|| format!("marking {} opaque", e.display()))?;
            } else {
                let mut trel = prel.to_vec();
                if !trel.is_empty() {
                    trel.push(b'/');
                }
                trel.extend_from_slice(target);
                self.clear(&parent, &trel, target, false)?;
                rustix::fs::mknodat(
                    &parent,
                    os(target),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .with_context(|| format!("creating the whiteout for {}", e.display()))?;
                rustix::fs::chownat(
                    &parent,
                    os(target),
                    Some(Uid::from_raw(e.uid as u32)),
                    Some(Gid::from_raw(e.gid as u32)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            return Ok(None);
        }
        let mut crc = None;
        match e.kind {
            Kind::GlobalHeader => {}
            Kind::Directory => {
                if !self.clear(&parent, &rel, name, true)? {
                    rustix::fs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o700))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                rustix::fs::fchown(
                    &fd,
                    Some(Uid::from_raw(e.uid as u32)),
                    Some(Gid::from_raw(e.gid as u32)),
                )?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode))?;
                self.set_xattrs_fd(&fd, e)?;
                self.dirs.push((rel.clone(), e.mtime_sec, e.mtime_nsec));
            }
            Kind::Regular => {
                self.clear(&parent, &rel, name, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::CLOEXEC
                        | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )
                .with_context(|| format!("creating {}", e.display()))?;
                let file = File::from(fd);
                crc = self.write_content(&file, e, body)?;
                // chown before chmod: chown clears setuid/setgid.
                rustix::fs::fchown(
                    &file,
                    Some(Uid::from_raw(e.uid as u32)),
                    Some(Gid::from_raw(e.gid as u32)),
                )?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(e.mode))?;
                let fd: OwnedFd = file.into();
                self.set_xattrs_fd(&fd, e)?;
                rustix::fs::futimens(&fd, &ts(e.mtime_sec, e.mtime_nsec))?;
            }
            Kind::Symlink => {
                self.clear(&parent, &rel, name, false)?;
                let target = e.link_target.as_deref().unwrap_or_default();
                rustix::fs::symlinkat(os(target), &parent, os(name))
                    .with_context(|| format!("creating symlink {}", e.display()))?;
                self.finish_at(&parent, &rel, name, e, false)?;
            }
            Kind::Hardlink => {
                let trel = e.rel_link_target()?;
                let (tp, tn) = split_parent(&trel);
                let tparent = self.dir(tp, false).with_context(|| {
                    format!(
                        "hard link {} -> /{}",
                        e.display(),
                        String::from_utf8_lossy(&trel)
                    )
                })?;
                self.clear(&parent, &rel, name, false)?;
                rustix::fs::linkat(&tparent, os(tn), &parent, os(name), AtFlags::empty())
                    .with_context(|| {
                        format!(
                            "hard link {} -> /{}",
                            e.display(),
                            String::from_utf8_lossy(&trel)
                        )
                    })?;
                let st = rustix::fs::statat(&parent, os(name), AtFlags::SYMLINK_NOFOLLOW)?;
                let is_symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
                self.finish_at(&parent, &rel, name, e, !is_symlink)?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                self.clear(&parent, &rel, name, false)?;
                let ft = match e.kind {
                    Kind::CharDevice => FileType::CharacterDevice,
                    Kind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                rustix::fs::mknodat(
                    &parent,
                    os(name),
                    ft,
                    Mode::from_raw_mode(e.mode),
                    rustix::fs::makedev(e.dev_major, e.dev_minor),
                )
                .with_context(|| format!("creating {}", e.display()))?;
                self.finish_at(&parent, &rel, name, e, true)?;
            }
        }
        Ok(crc)
    }
}

impl LayerVisitor for DiffWriter<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.seg.extend_from_slice(bytes);
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, e: &Entry, body: Body<'_>) -> Result<()> {
        // The headers collected so far (with the previous padding) are one
        // segment, then the entry.
        let seg = std::mem::take(&mut self.seg);
        self.split.segment(&seg)?;
        self.uids.insert(e.uid);
        self.gids.insert(e.gid);
        let crc = self.unpack(e, body)?;
        self.size += e.size;
        self.split.file(&e.name, e.size, crc)?;
        Ok(())
    }
}

/// Whether a `FICLONE` error means the filesystem (pair) cannot share
/// extents, as opposed to a real failure.
pub fn reflink_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::sync::Arc;

    use composefs::repository::RepositoryConfig;
    use unistore_fixtures::env::PodmanStore;
    use unistore_fixtures::image::{TestImageOpts, build_test_image};

    /// A composefs repository holding the test image; returns it with the
    /// image's description.
    fn repo_with_image(dir: &Path) -> (Arc<Repo>, unistore_fixtures::image::BuiltImage, PathBuf) {
        let oci = dir.join("oci");
        let built = build_test_image(&oci, "t", &TestImageOpts::default()).unwrap();
        let (repo, _) = Repo::init_path(
            rustix::fs::CWD,
            dir.join("repo"),
            RepositoryConfig::new(composefs::fsverity::Algorithm::SHA512).set_insecure(),
        )
        .unwrap();
        let repo = Arc::new(repo);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(composefs_oci::pull(
            &repo,
            &format!("oci:{}:t", oci.display()),
            None,
            Default::default(),
        ))
        .unwrap();
        (repo, built, oci)
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Node {
        kind: String,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        content: Option<String>,
        target: Option<PathBuf>,
        xattrs: BTreeMap<String, Vec<u8>>,
        mtime: Option<(i64, i64)>,
    }

    /// Every path of a `diff` tree. The mtimes of directories created on
    /// the fly (now, not from the tar) and of whiteouts are left out.
    fn scan(root: &Path) -> BTreeMap<PathBuf, Node> {
        let recent = chrono::Utc::now().timestamp() - 86400;
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            if ft.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
            let mut xattrs = BTreeMap::new();
            let mut names = vec![0u8; 65536];
            let n = rustix::fs::llistxattr(&p, &mut names).unwrap();
            for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
                let k = String::from_utf8_lossy(k).into_owned();
                let mut v = vec![0u8; 65536];
                let vn = rustix::fs::lgetxattr(&p, k.as_str(), &mut v).unwrap();
                xattrs.insert(k, v[..vn].to_vec());
            }
            let whiteout = ft.is_char_device() && m.rdev() == 0;
            let mtime = (!whiteout && m.mtime() < recent).then(|| (m.mtime(), m.mtime_nsec()));
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                Node {
                    kind: format!("{ft:?}"),
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    rdev: m.rdev(),
                    content: ft
                        .is_file()
                        .then(|| fmt::sha256_digest(&std::fs::read(&p).unwrap())),
                    target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                    xattrs,
                    mtime,
                },
            );
        }
        out
    }

    fn layers_by_id(store: &Path) -> BTreeMap<String, Value> {
        fmt::read_json_array(&store.join(LAYERS_JSON))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|l| (entry_id(&l).to_string(), l))
            .collect()
    }

    /// The writer's store matches, layer by layer, what podman writes from
    /// the same image: the same ids, trees, tar-split records and JSON
    /// records; each layer exports back to its diff-id; skopeo reads it.
    #[test]
    fn writes_what_podman_writes() {
        unistore_fixtures::env::require_root();
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let (repo, built, oci) = repo_with_image(td.path());
        let store = td.path().join("store");
        let name = "localhost/unistore-test:w".to_string();
        let stats = write_image(
            &repo,
            &built.manifest_digest,
            &store,
            &WriteOptions {
                names: vec![name.clone()],
                allow_copy: true,
                verify_reused: false,
            },
        )
        .unwrap();
        assert_eq!(
            stats.image_id,
            built.config_digest.trim_start_matches("sha256:")
        );
        assert_eq!(stats.layers_written.len(), built.diff_ids.len());
        assert!(stats.files_reflinked + stats.files_copied >= 4, "{stats:?}");

        // The reference: podman (skopeo into containers-storage).
        let podman = PodmanStore::new().unwrap();
        podman.import_oci(&oci, "t", &name).unwrap();
        let theirs = podman.root();
        let ids = fmt::chain_ids(&built.diff_ids).unwrap();
        let (ours_l, theirs_l) = (layers_by_id(&store), layers_by_id(&theirs));
        for (id, diff_id) in ids.iter().zip(&built.diff_ids) {
            let (o, t) = (&ours_l[id], &theirs_l[id]);
            for k in [
                "parent",
                "diff-digest",
                "diff-size",
                "compressed-diff-digest",
                "compressed-size",
                "compression",
                "uidset",
                "gidset",
            ] {
                assert_eq!(o.get(k), t.get(k), "layer {id}: {k}");
            }
            let diff = store.join(OVERLAY_DIR).join(id).join("diff");
            let (o_tree, t_tree) = (
                scan(&diff),
                scan(&theirs.join(OVERLAY_DIR).join(id).join("diff")),
            );
            assert_eq!(
                o_tree.keys().collect::<Vec<_>>(),
                t_tree.keys().collect::<Vec<_>>(),
                "layer {id}"
            );
            for (p, n) in &o_tree {
                assert_eq!(n, &t_tree[p], "layer {id}: /{}", p.display());
            }
            let o_split = fmt::read_tar_split(&store.join(fmt::tar_split_path(id))).unwrap();
            let t_split = fmt::read_tar_split(&theirs.join(fmt::tar_split_path(id))).unwrap();
            assert_eq!(o_split, t_split, "tar-split of layer {id}");
            let (digest, _) = fmt::assemble_layer(&diff, &o_split, &mut fmt::Sink).unwrap();
            assert_eq!(&digest, diff_id);
            assert!(layer_problem(&store, o, diff_id).is_none());
            // The overlay directory: link, lower, work, merged (empty).
            let dir = store.join(OVERLAY_DIR).join(id);
            let link = std::fs::read_to_string(dir.join("link")).unwrap();
            assert_eq!(link.len(), 26);
            assert_eq!(
                std::fs::read_link(store.join(LINK_DIR).join(&link)).unwrap(),
                PathBuf::from(format!("../{id}/diff"))
            );
            assert!(!dir.join(UNRECORDED_MARKER).exists());
            let tdir = theirs.join(OVERLAY_DIR).join(id);
            for f in ["work", "merged", "empty", "lower"] {
                assert_eq!(dir.join(f).exists(), tdir.join(f).exists(), "{f} of {id}");
            }
        }
        let img =
            |s: &Path| fmt::read_json_array(&s.join(IMAGES_JSON)).unwrap().unwrap()[0].clone();
        let (oi, ti) = (img(&store), img(&theirs));
        for k in [
            "id",
            "digest",
            "names",
            "layer",
            "big-data-names",
            "big-data-sizes",
            "big-data-digests",
            "metadata",
            "created",
        ] {
            assert_eq!(oi.get(k), ti.get(k), "image {k}");
        }
        let names = |s: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(s.join(IMAGES_DIR).join(&stats.image_id))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&store), names(&theirs));

        // skopeo exports each layer with its diff-id, from our store.
        let out = td.path().join("out");
        let runroot = td.path().join("runroot");
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!(
                "containers-storage:[overlay@{}+{}]{name}",
                store.display(),
                runroot.display()
            ))
            .arg(format!("dir:{}", out.display()))
            .status()
            .unwrap();
        assert!(st.success());
        for d in &built.diff_ids {
            let blob = out.join(d.trim_start_matches("sha256:"));
            assert_eq!(&fmt::sha256_digest(&std::fs::read(&blob).unwrap()), d);
        }
        unistore_fixtures::env::unmount_all_under(&runroot);

        // A second write reuses every layer.
        let again = write_image(
            &repo,
            &built.manifest_digest,
            &store,
            &WriteOptions {
                names: vec![name],
                allow_copy: true,
                verify_reused: true,
            },
        )
        .unwrap();
        assert!(again.layers_written.is_empty());
        assert_eq!(again.layers_reused, built.diff_ids.len());
    }

    /// An unreadable `layers.json` stops the writer before it changes
    /// anything; a missing diff directory is rebuilt in place.
    #[test]
    fn refuses_unreadable_json_and_rebuilds_a_missing_diff() {
        unistore_fixtures::env::require_root();
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let (repo, built, _) = repo_with_image(td.path());
        let store = td.path().join("store");
        let opts = WriteOptions {
            names: vec!["localhost/x:y".into()],
            allow_copy: true,
            verify_reused: false,
        };
        write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
        let ids = fmt::chain_ids(&built.diff_ids).unwrap();

        let json = store.join(LAYERS_JSON);
        let good = std::fs::read(&json).unwrap();
        std::fs::write(&json, &good[..good.len() / 2]).unwrap();
        std::fs::remove_dir_all(store.join(OVERLAY_DIR).join(&ids[1]).join("diff")).unwrap();
        let before = std::process::Command::new("find")
            .arg(&store)
            .args(["-printf", "%p %m %s %T@\\n"])
            .output()
            .unwrap()
            .stdout;
        let err = write_image(&repo, &built.manifest_digest, &store, &opts).unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
        let after = std::process::Command::new("find")
            .arg(&store)
            .args(["-printf", "%p %m %s %T@\\n"])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(
            String::from_utf8_lossy(&before),
            String::from_utf8_lossy(&after)
        );

        std::fs::write(&json, &good).unwrap();
        let layers = layers_by_id(&store);
        assert!(layer_problem(&store, &layers[&ids[1]], &built.diff_ids[1]).is_some());
        let link_before =
            std::fs::read_to_string(store.join(OVERLAY_DIR).join(&ids[1]).join("link")).unwrap();
        let stats = write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
        assert_eq!(stats.layers_written, vec![ids[1].clone()]);
        let layers = layers_by_id(&store);
        assert!(layer_problem(&store, &layers[&ids[1]], &built.diff_ids[1]).is_none());
        // Children still find it by its short name.
        let link_after =
            std::fs::read_to_string(store.join(OVERLAY_DIR).join(&ids[1]).join("link")).unwrap();
        assert_eq!(link_before, link_after);
        assert_eq!(layers.len(), ids.len());
    }
}
