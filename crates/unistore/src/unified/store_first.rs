//! The unified pull without reflinks: podman (or skopeo) into the store,
//! then composefs from the store, layer by layer as podman commits them,
//! hardlinking the store's files where possible ([`super::store_import`]).

use super::*;
use crate::source::pull;

/// The layers [`import_store_layers`] and [`EarlyImport`] imported, by
/// diff id.
#[derive(Debug, Default)]
pub(super) struct StoreImport {
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
pub(super) fn import_store_layer(
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
pub(super) fn import_store_layers(
    repo: &Arc<Repo>,
    store: &Path,
    image_id: &str,
    opts: store_import::ImportOpts,
    progress: &Progress,
    out: &mut StoreImport,
) -> Result<Vec<String>> {
    let simg = containers_storage::find_complete_image(store, image_id)?
        .ok_or_else(|| anyhow!("image {image_id} is not complete in the store"))?;
    let chain = containers_storage::layer_chain(&simg, &containers_storage::read_layers(store)?)?;
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
pub(super) struct Announced {
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
pub(super) struct EarlyImport {
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
        let before: BTreeSet<String> = containers_storage::read_layers(store)?
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
                let ready: Vec<containers_storage::StoreLayer> =
                    containers_storage::read_layers(&store)
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

/// The unified pull without reflinks: podman (or skopeo) into the store,
/// then composefs from the store, hardlinking its files where possible.
pub(super) async fn fetch_store_first(
    sysroot: &Sysroot,
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    mode: UnifiedMode,
    probe: &ReflinkProbe,
    progress: Progress,
) -> Result<Pulled> {
    if imgref.transport == Transport::Oci {
        // podman reads every blob: all are checked.
        crate::source::oci_layout::verify(imgref, |_| false).await?;
    }
    let session = Session::new(sysroot, Some(fetch))?;
    let store = session.store().to_path_buf();
    let before = containers_storage::read_images(&store)?;

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
            let id = containers_storage::read_images(&store)?
                .into_iter()
                .find(|i| i.names.contains(&tmp))
                .map(|i| i.id)
                .ok_or_else(|| anyhow!("{imgref} is not in containers-storage after copying it"))?;
            (id, Some(tmp))
        }
    };
    // Recorded as soon as the store has it (under the digest podman stored),
    // so that a crash before the end leaves an image the store GC knows.
    let prior = before.iter().find(|i| i.id == image_id);
    let new_names = |img: &containers_storage::StoreImage| -> Vec<String> {
        img.names
            .iter()
            .filter(|n| prior.is_none_or(|p| !p.names.contains(n)))
            .cloned()
            .collect()
    };
    let store_digest = match containers_storage::find_complete_image(&store, &image_id)? {
        Some(img) if img.digest.is_some() => {
            record_upsert(
                sysroot,
                OwnedImage {
                    manifest_digest: img.digest.clone().unwrap_or_default(),
                    image_id: image_id.clone(),
                    names: new_names(&img),
                    created: prior.is_none(),
                    pending: true,
                },
            )?;
            img.digest
        }
        _ => None,
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
            bootable: !fetch.no_boot_image,
            progress: Some(progress.clone()),
            ..Default::default()
        },
    )
    .await;
    // Issue 25: layers composefs-oci cannot merge get unistore's merge.
    let result = pull::merge_under_own_rules(repo, result, store_digest.as_deref())
        .with_context(|| format!("importing {imgref} from containers-storage into composefs"))?;
    let mut pulled = pull::finish_pull(repo, result, !fetch.no_boot_image)?;
    // composefs-oci counted the layers imported above as already present.
    let n = done.len() as u64;
    pulled.stats.layers_already_present = pulled.stats.layers_already_present.saturating_sub(n);
    pulled.stats.layers = pulled.stats.layers.saturating_sub(n);
    pulled.stats.merge(&pre_stats);
    tracing::debug!("imported into composefs in {:?}", t.elapsed());
    let stored = containers_storage::find_complete_image(&store, &image_id)?
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
    let after = containers_storage::find_complete_image(&store, &image_id)?.unwrap_or(stored);
    let names = new_names(&after);
    if let Some(d) = store_digest.filter(|d| *d != pulled.manifest_digest) {
        // The entry is keyed by the digest composefs imported.
        record_remove(sysroot, &d)?;
    }
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
