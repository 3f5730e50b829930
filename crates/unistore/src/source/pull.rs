//! Pulling an image from its source into the composefs repository: the
//! transports composefs-oci reads as they are (`oci:` layouts, registries
//! through the image proxy, containers-storage natively), Docker schema 2
//! images through their OCI conversion, the signature policy, registry
//! layers through [`super::layer_fetch`], a stall guard, then the boot EROFS
//! image and the `localhost/bootc-<digest>` tag.

use std::sync::Arc;

use anyhow::{Context, Result};
use composefs::fsverity::FsVerityHashValue;
use composefs_oci::OciDigest;
use composefs_oci::PullOptions;

use super::fetch_config::{DEFAULT_STALL_TIMEOUT, FetchConfig};
use super::imgref::ImageRef;
use crate::progress::Progress;
use crate::stores::composefs_repo::{ObjectId, Repo, bootc_tag};

/// What a pull brought in.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// `sha256:...` of the config.
    pub config_digest: String,
    /// Hex id of the boot EROFS image (the deployment id); empty when
    /// [`FetchConfig::no_boot_image`].
    pub boot_image_id: String,
    /// Bytes and objects stored, as composefs-oci counted them.
    pub stats: composefs_oci::ImportStats,
    /// An image the registry serves in Docker's format: the registry's
    /// manifest digest and bytes (`manifest_digest` is that of its OCI
    /// conversion, see [`crate::source::docker_schema2`]).
    pub registry: Option<RegistryManifest>,
    /// Issue 22: composefs-oci's EROFS images of this ostree-encapsulated
    /// image were replaced by its commit's: garbage for the repository GC.
    pub superseded: bool,
}

impl Pulled {
    /// The digest that names the image for people and upgrade checks: the
    /// registry's, else the manifest's.
    pub fn identity_digest(&self) -> &str {
        self.registry
            .as_ref()
            .map_or(&self.manifest_digest, |r| &r.digest)
    }
}

/// The manifest a registry serves for an image, when it is not what the
/// composefs repository holds (a Docker manifest).
#[derive(Debug, Clone)]
pub struct RegistryManifest {
    /// `sha256:` of `bytes`: the image's identity for people and upgrades.
    pub digest: String,
    /// The manifest, byte for byte.
    pub bytes: Vec<u8>,
}

/// A progress sink that notes when anything last happened.
struct Watched {
    inner: Progress,
    last: std::sync::atomic::AtomicU64,
    start: std::time::Instant,
}

impl composefs::progress::ProgressReporter for Watched {
    fn report(&self, event: crate::progress::ProgressEvent) {
        self.last.store(
            self.start.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.report(event);
    }
}

impl Watched {
    fn new(inner: Progress) -> Arc<Self> {
        Arc::new(Self {
            inner,
            last: std::sync::atomic::AtomicU64::new(0),
            start: std::time::Instant::now(),
        })
    }

    /// How long since anything was reported.
    fn idle(&self) -> std::time::Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.start
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }
}

/// Runs `pull` (which reports to `watched`) and gives it up when nothing is
/// reported for `timeout`: a source that stops sending would otherwise keep
/// the pull waiting for ever.
async fn with_stall_guard<T>(
    what: &str,
    watched: &Watched,
    timeout: std::time::Duration,
    pull: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let mut pull = Box::pin(pull);
    let tick = std::time::Duration::from_millis(500).min(timeout);
    loop {
        tokio::select! {
            r = &mut pull => {
                if r.is_err() {
                    // A failed pull (a full disk, say) may still have work
                    // on other threads: let it end before the caller's
                    // cleanup, which it would otherwise race.
                    drop(pull);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                return r;
            }
            () = tokio::time::sleep(tick) => {
                if watched.idle() >= timeout {
                    // Give the work the dropped pull had handed to other
                    // threads a moment to end, so that the caller's cleanup
                    // runs after it and not before.
                    drop(pull);
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    anyhow::bail!(
                        "pulling {what}: nothing received for {} s (the source stopped sending); nothing was installed",
                        timeout.as_secs()
                    );
                }
            }
        }
    }
}

/// Pulls `imgref` into the repository, generates the boot EROFS image, and
/// tags the manifest `localhost/bootc-<digest>`. A registry image in
/// Docker's format is fetched as it is and imported through its OCI
/// conversion ([`crate::source::docker_schema2`]).
pub async fn pull(
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    progress: Progress,
) -> Result<Pulled> {
    let boot = !fetch.no_boot_image;
    // One pass over the layers makes both EROFS images: composefs-oci reads
    // the merged tree once for the repository image and the boot image.
    let fetched = fetch_layers(repo, imgref, fetch, progress, boot).await?;
    finish(repo, fetched, boot)
}

/// What [`pull_layers`] stored: the manifest, config and layers, not yet
/// tagged (garbage until [`finish`]) and not synced.
pub struct Fetched {
    result: composefs_oci::PullResult<ObjectId>,
    /// The registry's manifest of an image in Docker's format.
    pub registry: Option<RegistryManifest>,
}

impl Fetched {
    /// `sha256:...` of the manifest in the repository.
    pub fn manifest_digest(&self) -> String {
        self.result.manifest_digest.to_string()
    }
}

/// The first half of [`pull`]: the image's manifest, config and layers into
/// the repository. [`finish`] makes the boot image and the tag, so that the
/// caller may do other work with the layers meanwhile.
pub async fn pull_layers(
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    progress: Progress,
) -> Result<Fetched> {
    fetch_layers(repo, imgref, fetch, progress, false).await
}

/// [`pull_layers`], with the boot image made in composefs-oci's pass over
/// the merged tree when `boot_image` is true ([`finish`] then finds it).
async fn fetch_layers(
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    progress: Progress,
    boot_image: bool,
) -> Result<Fetched> {
    let (image, f) = (imgref.clone(), fetch.clone());
    let docker = tokio::task::spawn_blocking(move || {
        crate::source::docker_schema2::docker_manifest(&image, &f)
    })
    .await
    .context("reading the manifest")??;
    // Debian 12's image proxy does not apply the signature policy: when it
    // is enforced, registry images come through `skopeo copy`, which does.
    let enforce =
        fetch.enforce_sigpolicy && imgref.transport == crate::source::imgref::Transport::Registry;
    if docker.is_none() && !enforce {
        let result = pull_as_is(repo, imgref, fetch, progress, boot_image).await?;
        return Ok(Fetched {
            result,
            registry: None,
        });
    }
    crate::progress::step(
        &progress,
        if docker.is_some() {
            format!("{imgref} is in Docker's format (schema 2): fetching it as it is")
        } else {
            format!("Fetching {imgref} under the signature policy")
        },
    );
    let work = tempfile::Builder::new()
        .prefix("unistore-fetch-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (image, f, dir) = (imgref.clone(), fetch.clone(), work.path().to_path_buf());
    let converted = tokio::task::spawn_blocking(move || {
        crate::source::docker_schema2::to_layout(&image, docker.as_ref(), &f, &dir)
    })
    .await
    .context("fetching the image")??;
    let result = pull_as_is(repo, &converted.layout, fetch, progress, boot_image).await?;
    let registry = (converted.registry_digest != result.manifest_digest.to_string()).then_some(
        RegistryManifest {
            digest: converted.registry_digest,
            bytes: converted.registry_manifest,
        },
    );
    Ok(Fetched { result, registry })
}

/// The second half of [`pull`]: boot image (unless `boot_image` is false),
/// tag, sync.
pub fn finish(repo: &Arc<Repo>, fetched: Fetched, boot_image: bool) -> Result<Pulled> {
    let mut pulled = finish_pull(repo, fetched.result, boot_image)?;
    pulled.registry = fetched.registry;
    Ok(pulled)
}

/// [`pull_layers`] of an image whose manifest composefs-oci reads as it is.
async fn pull_as_is(
    repo: &Arc<Repo>,
    imgref: &ImageRef,
    fetch: &FetchConfig,
    progress: Progress,
    bootable: bool,
) -> Result<composefs_oci::PullResult<ObjectId>> {
    let mut manifest_digest = None;
    if imgref.transport == crate::source::imgref::Transport::Oci {
        let r = repo.clone();
        manifest_digest = crate::source::oci_layout::verify(imgref, move |diff_id| {
            crate::stores::composefs_repo::layer_stream_id(diff_id)
                .ok()
                .and_then(|id| r.has_stream(&id).ok().flatten())
                .is_some()
        })
        .await?;
    }
    let local_fetch = if imgref.transport == crate::source::imgref::Transport::ContainersStorage {
        // Read the store natively (reflinks where possible): Debian's skopeo
        // is too old for the proxy's containers-storage path.
        composefs_oci::LocalFetchOpt::IfPossible
    } else {
        composefs_oci::LocalFetchOpt::Disabled
    };
    // `containers-storage:[driver@root+runroot]name`: composefs-oci takes
    // the store root separately.
    let (store_root, spec) = match imgref.containers_storage_store() {
        Some((root, name)) => (Some(root), format!("containers-storage:{name}")),
        None => (None, imgref.to_string()),
    };
    let timeout = fetch.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT);
    let watched = Watched::new(progress);
    let opts = PullOptions {
        progress: Some(watched.clone()),
        // Without it, [`finish`] makes the boot image: a unified pull makes
        // it while the store is written.
        bootable,
        local_fetch,
        storage_root: store_root.as_deref(),
        img_proxy_config: fetch.proxy_config(),
        ..Default::default()
    };
    let registry = imgref.transport == crate::source::imgref::Transport::Registry;
    let pull = async {
        if registry {
            // The layers on threads of their own ([`crate::source::layer_fetch`]); the
            // pull then only stores the config and manifest.
            manifest_digest = Some(
                crate::source::layer_fetch::prefetch(repo, &spec, fetch, watched.clone())
                    .await
                    .with_context(|| format!("pulling {spec}"))?,
            );
        }
        let r = composefs_oci::pull(repo, &spec, None, opts).await;
        merge_under_own_rules(repo, r, manifest_digest.as_deref())
            .with_context(|| format!("pulling {spec}"))
    };
    with_stall_guard(&spec, &watched, timeout, pull).await
}

/// composefs-oci's pull result, or, where composefs-oci could not merge the
/// layers (a parent directory no layer declares, an entry it cannot place),
/// the images of [`crate::source::layer_merge`]'s merge: its rules make the
/// missing parents and refuse the rest with one line naming the layer and
/// the entry. `manifest_digest` is the image composefs-oci was pulling,
/// when the caller knows it.
pub fn merge_under_own_rules(
    repo: &Arc<Repo>,
    result: Result<composefs_oci::PullResult<ObjectId>>,
    manifest_digest: Option<&str>,
) -> Result<composefs_oci::PullResult<ObjectId>> {
    let err = match result {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    // composefs-oci's merge failed after it stored the manifest, config
    // and layers (its `process_entry` says "Processing tar entry").
    let merge_failed = err.chain().any(|c| c.to_string() == "Processing tar entry");
    let Some(digest) = manifest_digest.filter(|_| merge_failed) else {
        return Err(err);
    };
    let d: OciDigest = digest
        .parse()
        .with_context(|| format!("bad manifest digest {digest}"))?;
    if composefs_oci::oci_image::has_manifest(repo, &d)?.is_none() {
        return Err(err);
    }
    tracing::debug!(
        "composefs-oci could not merge {digest} ({err:#}): merging under unistore's rules"
    );
    let img = composefs_oci::oci_image::OciImage::open(repo, &d, None)?;
    let merged = crate::source::layer_merge::merged(repo, &img)?;
    crate::source::image_link::link_tree(repo, &img, merged.fs)?;
    let img = composefs_oci::oci_image::OciImage::open(repo, &d, None)?;
    Ok(composefs_oci::PullResult {
        manifest_digest: d,
        manifest_verity: img.manifest_verity().clone(),
        config_digest: img.config_digest().clone(),
        config_verity: img.config_verity().clone(),
        stats: Default::default(),
    })
}

/// Boot image, `localhost/bootc-<digest>` tag and sync after a composefs-oci
/// pull, whatever the transport.
pub fn finish_pull(
    repo: &Arc<Repo>,
    result: composefs_oci::PullResult<ObjectId>,
    boot_image: bool,
) -> Result<Pulled> {
    let manifest_digest = result.manifest_digest.to_string();
    let digest: OciDigest = result.manifest_digest.clone();
    // Issue 22: an ostree-encapsulated image's EROFS images are made from
    // its embedded commit (xattrs applied, no object store), not its tar.
    use crate::source::ostree_encap::images::{Linked, link_images};
    let mut superseded = false;
    let linked = if boot_image {
        link_images(repo, &digest)
            .context("making the EROFS images of the ostree-encapsulated image")?
    } else if crate::source::ostree_encap::detect(&composefs_oci::oci_image::OciImage::open(
        repo, &digest, None,
    )?)?
    .is_some()
    {
        Linked::AlreadyLinked
    } else {
        Linked::NotEncapsulated
    };
    match linked {
        Linked::Relinked => superseded = true,
        Linked::AlreadyLinked => {}
        // Issue 25: one merge for every store, composefs-oci's unless a
        // rule of ours changes the tree; an image the rules refuse is
        // refused here, before any store is written from it (also when no
        // boot image is made: an ostree host's pull).
        Linked::NotEncapsulated => {
            let img = composefs_oci::oci_image::OciImage::open(repo, &digest, None)?;
            let t = std::time::Instant::now();
            let merged = crate::source::layer_merge::merged(repo, &img)?;
            tracing::debug!(
                "merged the layers under unistore's rules in {:?} (deviates: {})",
                t.elapsed(),
                merged.deviates
            );
            superseded = boot_image
                && merged.deviates
                && crate::source::image_link::link_tree(repo, &img, merged.fs)
                    .context("making the EROFS images of the merged tree")?;
        }
    }
    // The verity composefs-oci returns can be stale: re-resolve through the
    // manifest digest, which is what the tag points at.
    let boot_id = if boot_image {
        composefs_oci::boot::boot_image(repo, &digest)?
            .map(Ok)
            .unwrap_or_else(|| {
                composefs_oci::generate_boot_image(
                    repo,
                    &digest,
                    &composefs::generic_tree::OciTransformOptions::default(),
                )
            })
            .context("generating the boot EROFS image")?
            .to_hex()
    } else {
        String::new()
    };
    composefs_oci::oci_image::tag_image(repo.as_ref(), &digest, &bootc_tag(&manifest_digest))
        .context("tagging the image")?;
    repo.sync().context("syncing the repository")?;
    Ok(Pulled {
        registry: None,
        manifest_digest,
        config_digest: result.config_digest.to_string(),
        boot_image_id: boot_id,
        stats: result.stats,
        superseded,
    })
}
