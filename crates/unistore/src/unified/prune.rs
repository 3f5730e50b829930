//! The store's GC: only images unistore put there, only when no boot
//! entry needs them any more, and a read-only preview of it.

use super::*;

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
pub(super) enum PruneStep<'a> {
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
pub(super) fn plan_prune<'a>(
    record: &'a Record,
    images: &'a [containers_storage::StoreImage],
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
pub(super) fn freed_layers(
    images: &[containers_storage::StoreImage],
    layers: &[containers_storage::StoreLayer],
    removed: &[String],
) -> (Vec<String>, u64) {
    let chain = |i: &containers_storage::StoreImage| -> BTreeSet<String> {
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
    if record.images.is_empty() || !containers_storage::store_exists(sysroot)? {
        return Ok(report);
    }
    let live: BTreeSet<&str> = live_manifest_digests.iter().map(String::as_str).collect();
    let store = containers_storage::store_path(sysroot);
    let images = containers_storage::read_images(&store)?;
    for step in plan_prune(&record, &images, &live) {
        match step {
            PruneStep::Remove { entry, .. } => report.removed.push(entry.image_id.clone()),
            PruneStep::Untag { entry, names } => report
                .untagged
                .extend(names.iter().map(|n| format!("{} {n}", entry.image_id))),
        }
    }
    if !report.removed.is_empty() {
        let layers = containers_storage::read_layers(&store)?;
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
    if record.images.is_empty() || !containers_storage::store_exists(sysroot)? {
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
    let images = containers_storage::read_images(session.store())?;
    let layers = containers_storage::read_layers(session.store())?;
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
