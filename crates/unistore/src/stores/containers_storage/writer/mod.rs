//! A native writer from the composefs repository into a containers-storage
//! overlay store: no podman, no skopeo, no tar in between, and no copy of
//! file contents where the filesystem can share extents.
//!
//! For each layer of the image (base first) missing from the store, the
//! layer's splitstream is replayed ([`crate::stores::tar_walk`]) into
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
//!   ([`crate::stores::containers_storage::format::TarSplitWriter`]), so that exporting the layer
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
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};
use rustix::io::Errno;
use serde_json::{Value, json};

use crate::stores::composefs_repo::{ObjectId, Repo};
use crate::stores::containers_storage::format::{
    self as fmt, IMAGES_DIR, IMAGES_JSON, IMAGES_LOCK, LAYERS_DIR, LAYERS_JSON, LAYERS_LOCK,
    LINK_DIR, OVERLAY_DIR, StoreLock,
};

use layer::build_layer;

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
    /// Part of that structure: every file the layer's tar-split names is in
    /// its `diff` with its size (a stat per file, nothing read). fsck's
    /// repairs ask for it; pulls trust the store's record of a complete
    /// layer, as podman does, so that an upgrade does not stat every file
    /// of every layer it keeps.
    pub check_reused_files: bool,
    /// The manifest the store records, when not the repository's: the
    /// registry's (digest, bytes) of an image in Docker's format, which the
    /// repository holds as its OCI conversion (same config and layers), so
    /// the store holds what `podman pull` would.
    pub manifest: Option<(String, Vec<u8>)>,
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
    let img = crate::stores::composefs_repo::open_image(repo, manifest_digest)?;
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
    // Issue 25: owners and modes too (an export does not read them).
    let wrong = metadata::mismatches(&diff, &entries)?;
    ensure!(
        wrong.is_empty(),
        "layer {id}: {} file(s) with another owner or mode than the layer gives them: {}",
        wrong.len(),
        wrong.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
    );
    Ok(())
}

/// Why the store's record of layer `id` (expected to hold `diff_id`) is not
/// usable, or `None` when it is whole: listed complete, diff directory,
/// tar-split and link in place.
pub fn layer_problem(store: &Path, entry: &Value, diff_id: &str, files: bool) -> Option<String> {
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
    if files
        && let Err(e) =
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
    write_image_with(repo, manifest_digest, store, opts, &Default::default())
}

/// [`write_image`], the layers it writes given the xattrs `extra` names
/// beyond their tar's ([`extra_xattrs`]: an ostree-encapsulated image's,
/// issue 22).
pub fn write_image_with(
    repo: &Repo,
    manifest_digest: &str,
    store: &Path,
    opts: &WriteOptions,
    extra: &extra_xattrs::ExtraXattrs,
) -> Result<WriteStats> {
    let mut src = load_source(repo, manifest_digest)?;
    if let Some((digest, bytes)) = &opts.manifest {
        src.manifest_digest = digest.clone();
        src.manifest_json = bytes.clone();
    }
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
                && layer_problem(store, &layers[idx], &layer.diff_id, opts.check_reused_files)
                    .is_none()
                && (!opts.verify_reused || verify_layer(store, id, &layer.diff_id).is_ok())
            {
                stats.layers_reused += 1;
                continue;
            }
            let parent = (i > 0).then(|| ids[i - 1].as_str());
            let extra = extra.get(&layer.diff_id).map_or(&[][..], Vec::as_slice);
            let record = build_layer(repo, store, id, parent, layer, opts, extra, &mut stats)
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
        crate::crashpoint::hit("cstor-writer:after-images-json");
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

/// Whether a `FICLONE` error means the filesystem (pair) cannot share
/// extents, as opposed to a real failure.
pub fn reflink_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY
    )
}

pub mod extra_xattrs;
pub mod hash_thread;
mod layer;
mod metadata;
mod split_thread;
#[cfg(test)]
mod tests;
