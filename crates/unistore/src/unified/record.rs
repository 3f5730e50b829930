//! The record of what unistore put in the host store
//! (`composefs/bootc/unistore-images.json`): images, the names unistore
//! gave them, and the store layers known to share their files' extents
//! with the composefs objects.

use super::*;

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
pub(super) type SharedLayers = BTreeMap<String, Option<String>>;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub(super) images: Vec<OwnedImage>,
    /// Layers unistore wrote from composefs or passed over: a later share
    /// pass skips them (an upgrade shares most layers with the image
    /// before).
    #[serde(default)]
    pub(super) shared_layers: SharedLayers,
}

/// Parses the record's bytes.
pub fn parse_record(bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).with_context(|| format!("parsing {RECORD_FILE}"))
}

impl Record {
    /// The images recorded.
    pub fn images(&self) -> &[OwnedImage] {
        &self.images
    }
}

pub(super) fn read_record(sysroot: &Sysroot) -> Result<Record> {
    match sysroot.dir().read(RECORD_FILE) {
        Ok(b) => parse_record(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e).with_context(|| format!("reading {RECORD_FILE}")),
    }
}

pub(super) fn write_record(sysroot: &Sysroot, r: &Record) -> Result<()> {
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

/// Forgets the entry of `manifest_digest` (the store keeps the image).
pub(super) fn record_remove(sysroot: &Sysroot, manifest_digest: &str) -> Result<()> {
    let mut r = read_record(sysroot)?;
    r.images.retain(|e| e.manifest_digest != manifest_digest);
    write_record(sysroot, &r)
}

/// Whether store layer `l` is recorded in `known` as sharing its files'
/// extents: same id and same creation time. The times are compared as
/// instants, not strings: podman rewrites `layers.json` with Go's format,
/// which trims trailing zeros of the fraction the writer put there.
pub(super) fn known_shared(known: &SharedLayers, l: &containers_storage::StoreLayer) -> bool {
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
pub(super) fn record_shared_layers(
    sysroot: &Sysroot,
    store: &Path,
    layers: &[(String, Option<String>)],
) -> Result<()> {
    let present = layer_ids(&containers_storage::read_layers(store)?);
    let mut r = read_record(sysroot)?;
    merge_shared(&mut r, Some(&present), layers);
    write_record(sysroot, &r)
}

/// The ids of `layers`.
pub(super) fn layer_ids(layers: &[containers_storage::StoreLayer]) -> BTreeSet<String> {
    layers.iter().map(|l| l.id.clone()).collect()
}

/// Adds `layers` to the shared layers of `r` and, given the store's layer
/// ids, forgets recorded layers the store no longer has.
fn merge_shared(
    r: &mut Record,
    present: Option<&BTreeSet<String>>,
    layers: &[(String, Option<String>)],
) {
    r.shared_layers.extend(layers.iter().cloned());
    if let Some(present) = present {
        r.shared_layers.retain(|id, _| present.contains(id));
    }
}

/// The end of an import into the store, in one write of the record: the
/// image's entry is no longer pending, and `layers` are recorded as sharing
/// their files' extents (see [`record_shared_layers`]).
pub(super) fn record_import_done(
    sysroot: &Sysroot,
    manifest_digest: &str,
    present: Option<&BTreeSet<String>>,
    layers: &[(String, Option<String>)],
) -> Result<()> {
    let mut r = read_record(sysroot)?;
    if let Some(e) = r
        .images
        .iter_mut()
        .find(|e| e.manifest_digest == manifest_digest)
    {
        e.pending = false;
    }
    merge_shared(&mut r, present, layers);
    write_record(sysroot, &r)
}

/// The images unistore recorded as put in the store.
pub fn owned_images(sysroot: &Sysroot) -> Result<Vec<OwnedImage>> {
    Ok(read_record(sysroot)?.images)
}
