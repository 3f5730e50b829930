//! Making store files share the extents of their composefs objects: the
//! walk that pairs each store file with its object, and the share pass
//! (`FIDEDUPERANGE`, the kernel compares the bytes first).

use super::*;

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
    pub(super) fn merge(&mut self, o: &ShareStats) {
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
    pub(crate) object: composefs_repo::ObjectId,
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
    verity: &composefs_repo::ObjectId,
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
    want: &dyn Fn(&containers_storage::StoreLayer) -> bool,
) -> Result<ShareStats> {
    let img = composefs_repo::open_image(repo, manifest_digest)?;
    let simg = containers_storage::find_complete_image(store, image_id)?
        .ok_or_else(|| anyhow!("image {image_id} is not complete in the store"))?;
    let chain = containers_storage::layer_chain(&simg, &containers_storage::read_layers(store)?)?;
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
    let store = containers_storage::store_path(sysroot);
    let stats = share_pass(repo, &store, manifest_digest, image_id, policy, &|l| {
        layers.contains(&l.id)
    })?;
    record_shared_layers(sysroot, &store, &stats.shared_layers)?;
    Ok(stats)
}

pub(super) async fn share_pass_async(
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
