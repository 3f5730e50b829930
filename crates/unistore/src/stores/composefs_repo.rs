//! The composefs repository under `composefs/` (composefs-rs format, SHA-512).
//!
//! A thin layer over `composefs` / `composefs-oci`: repository init and open,
//! pulls, the `localhost/bootc-<manifest digest>` tags, and the boot EROFS
//! image whose digest is a deployment's id.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use composefs::fsverity::{Algorithm, FsVerityHashValue, Sha512HashValue};
use composefs::repository::{Repository, RepositoryConfig};
use composefs_oci::oci_image::OciImage;
use composefs_oci::{OciDigest, PullOptions};

use crate::imgref::ImageRef;
use crate::progress::Progress;
use crate::reflink;
use crate::sysroot::{BOOTC_TAG_PREFIX, COMPOSEFS_DIR, Sysroot};

/// Object ids of the host repository: fs-verity SHA-512 digests.
pub type ObjectId = Sha512HashValue;
/// The host repository.
pub type Repo = Repository<ObjectId>;

/// Whether the filesystem holding `sysroot` can enable fs-verity.
pub fn probe_fsverity(sysroot: &Sysroot) -> bool {
    let Ok(mut f) = tempfile::tempfile_in(sysroot.path()) else {
        return false;
    };
    if f.write_all(&[0u8; 4096]).is_err() || f.flush().is_err() {
        return false;
    }
    // fs-verity needs a read-only fd.
    let Ok(ro) = reopen_readonly(&f) else {
        return false;
    };
    drop(f);
    composefs::fsverity::enable_verity_raw::<ObjectId>(&ro).is_ok()
}

fn reopen_readonly(f: &std::fs::File) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    Ok(std::fs::File::open(format!(
        "/proc/self/fd/{}",
        f.as_raw_fd()
    ))?)
}

/// Creates the repository (SHA-512; insecure where fs-verity is missing) or
/// opens it if it exists with the same settings. Returns whether it was new.
pub fn init(sysroot: &Sysroot) -> Result<(Arc<Repo>, bool)> {
    init_at(sysroot, COMPOSEFS_DIR)
}

/// [`init`] for a repository at `rel` below the root (a staging repository).
pub fn init_at(sysroot: &Sysroot, rel: &str) -> Result<(Arc<Repo>, bool)> {
    let mut config = RepositoryConfig::new(Algorithm::SHA512);
    if !probe_fsverity(sysroot) {
        tracing::info!("no fs-verity on target: repository in insecure mode");
        config = config.set_insecure();
    }
    let (mut repo, created) = Repo::init_path(sysroot.dir(), rel, config)
        .context("initializing the composefs repository")?;
    repo.set_write_concurrency(write_concurrency());
    Ok((Arc::new(repo), created))
}

/// Opens the existing repository.
pub fn open(sysroot: &Sysroot) -> Result<Arc<Repo>> {
    let mut repo = Repo::open_path(sysroot.dir(), COMPOSEFS_DIR).map_err(|e| {
        anyhow!(
            "opening the composefs repository {}: {e}",
            sysroot.join(COMPOSEFS_DIR).display()
        )
    })?;
    repo.set_write_concurrency(write_concurrency());
    Ok(Arc::new(repo))
}

/// How many object files a pull writes at once: twice the CPUs. composefs
/// defaults to one per CPU, and each object's writer waits on its channel
/// and the page cache about as much as it computes: the sample's plain
/// install from its layout took 1.80–1.84 s with 2 writers, 1.61–1.64 s
/// with 4, no better with 6 to 16 (2 CPUs); from the registry, 7 runs of
/// `scripts/bench --only ab` alternating with and without: 0.93× (6 of 7
/// pairs faster).
fn write_concurrency() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The tag every deployment's manifest carries (a GC root).
pub fn bootc_tag(manifest_digest: &str) -> String {
    format!("{BOOTC_TAG_PREFIX}{manifest_digest}")
}

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
    /// conversion, see [`crate::docker_schema2`]).
    pub registry: Option<RegistryManifest>,
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

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct FetchConfig {
    /// A containers `registries.conf` to use instead of the system one (for
    /// example one that marks a loopback registry insecure). The CLI takes
    /// it from `CONTAINERS_REGISTRIES_CONF`, which Debian 12's skopeo does
    /// not read by itself.
    pub registries_conf: Option<std::path::PathBuf>,
    /// The registry credentials (`auth.json`) to use; `None`: the
    /// containers tools' default locations. The CLI picks it (`--authfile`,
    /// `REGISTRY_AUTH_FILE`, bootc's `/run|/etc|/usr/lib/ostree/auth.json`)
    /// and every peer that reaches a registry gets the same: the image
    /// proxy, skopeo and podman (the host store's pulls).
    pub authfile: Option<std::path::PathBuf>,
    /// A `containers-policy.json` for the peers to apply instead of the
    /// host's (`--signature-policy`).
    pub signature_policy: Option<std::path::PathBuf>,
    /// Refuse a policy that accepts anything, and images the policy
    /// rejects, before writing (`--enforce-container-sigpolicy`).
    pub enforce_sigpolicy: bool,
    /// Skip the boot EROFS image (ostree hosts boot from their ostree
    /// deployments; the composefs repository only backs their objects).
    pub no_boot_image: bool,
    /// Give up a pull that has received nothing for this long (a registry
    /// that stops sending in the middle of a blob); `None`:
    /// [`DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Option<std::time::Duration>,
}

impl FetchConfig {
    /// `skopeo` with this configuration's global options
    /// (`--registries-conf`, `--policy`).
    pub fn skopeo(&self) -> std::process::Command {
        let mut c = std::process::Command::new("skopeo");
        if let Some(conf) = &self.registries_conf {
            c.arg("--registries-conf").arg(conf);
        }
        if let Some(p) = &self.signature_policy {
            c.arg("--policy").arg(p);
        }
        c
    }

    fn proxy_config(&self) -> Option<containers_image_proxy::ImageProxyConfig> {
        if self.registries_conf.is_none()
            && self.authfile.is_none()
            && self.signature_policy.is_none()
        {
            return None;
        }
        let mut config = containers_image_proxy::ImageProxyConfig::default();
        if self.registries_conf.is_some() || self.signature_policy.is_some() {
            config.skopeo_cmd = Some(self.skopeo());
        }
        config.authfile = self.authfile.clone();
        Some(config)
    }
}

/// What a registry (or layout) says an image is now, without fetching layers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteImage {
    /// The manifest digest.
    pub manifest_digest: String,
    /// `org.opencontainers.image.version` of its config.
    pub version: Option<String>,
}

/// Fetches only the manifest of `imgref`, and its config when `version`
/// is asked for (`upgrade --check` shows it; an upgrade takes it from the
/// image it pulls, and saves the round trip).
pub async fn inspect_remote(
    imgref: &ImageRef,
    fetch: &FetchConfig,
    version: bool,
) -> Result<RemoteImage> {
    let config = fetch.proxy_config().unwrap_or_default();
    let proxy = containers_image_proxy::ImageProxy::new_with_config(config)
        .await
        .context("starting skopeo")?;
    let spec = imgref.to_string();
    let img = proxy
        .open_image(&spec)
        .await
        .with_context(|| format!("opening {spec}"))?;
    let (digest, _) = proxy
        .fetch_manifest_raw_oci(&img)
        .await
        .with_context(|| format!("fetching the manifest of {spec}"))?;
    let version = if version {
        let config = proxy
            .fetch_config(&img)
            .await
            .with_context(|| format!("fetching the config of {spec}"))?;
        config
            .labels_of_config()
            .and_then(|l| l.get("org.opencontainers.image.version").cloned())
    } else {
        None
    };
    let _ = proxy.close_image(&img).await;
    let _ = proxy.finalize().await;
    Ok(RemoteImage {
        manifest_digest: digest,
        version,
    })
}

/// How long a pull may receive nothing before it is given up.
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

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
/// conversion ([`crate::docker_schema2`]).
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
    let docker =
        tokio::task::spawn_blocking(move || crate::docker_schema2::docker_manifest(&image, &f))
            .await
            .context("reading the manifest")??;
    // Debian 12's image proxy does not apply the signature policy: when it
    // is enforced, registry images come through `skopeo copy`, which does.
    let enforce = fetch.enforce_sigpolicy && imgref.transport == crate::imgref::Transport::Registry;
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
        crate::docker_schema2::to_layout(&image, docker.as_ref(), &f, &dir)
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
    if imgref.transport == crate::imgref::Transport::Oci {
        let r = repo.clone();
        crate::oci_layout::verify(imgref, move |diff_id| {
            crate::tar_walk::layer_stream_id(diff_id)
                .ok()
                .and_then(|id| r.has_stream(&id).ok().flatten())
                .is_some()
        })
        .await?;
    }
    let local_fetch = if imgref.transport == crate::imgref::Transport::ContainersStorage {
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
    let registry = imgref.transport == crate::imgref::Transport::Registry;
    let pull = async {
        if registry {
            // The layers on threads of their own ([`crate::stores::layer_fetch`]); the
            // pull then only stores the config and manifest.
            crate::stores::layer_fetch::prefetch(
                repo,
                &spec,
                fetch.proxy_config(),
                watched.clone(),
            )
            .await
            .with_context(|| format!("pulling {spec}"))?;
        }
        composefs_oci::pull(repo, &spec, None, opts)
            .await
            .with_context(|| format!("pulling {spec}"))
    };
    with_stall_guard(&spec, &watched, timeout, pull).await
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
    })
}

/// Opens an image by manifest digest.
pub fn open_image(repo: &Repo, manifest_digest: &str) -> Result<OciImage<ObjectId>> {
    let digest: OciDigest = manifest_digest
        .parse()
        .with_context(|| format!("bad manifest digest {manifest_digest}"))?;
    OciImage::open(repo, &digest, None)
        .with_context(|| format!("image {manifest_digest} is not in the composefs repository"))
}

/// Finds the manifest of a tagged image whose config has `config_digest`.
pub fn manifest_for_config(repo: &Repo, config_digest: &str) -> Result<Option<String>> {
    for (_, manifest) in composefs_oci::oci_image::list_refs(repo)? {
        if let Ok(img) = OciImage::open(repo, &manifest, None)
            && img.config_digest().to_string() == config_digest
        {
            return Ok(Some(manifest.to_string()));
        }
    }
    Ok(None)
}

/// A reader over the content of a file of an image tree (streamed from the
/// object store, never loaded whole).
pub fn open_file_content(
    f: &composefs::tree::RegularFile<ObjectId>,
    repo: &Repo,
) -> Result<Box<dyn std::io::Read>> {
    use composefs::tree::RegularFile;
    use std::io::Read;
    Ok(match f {
        RegularFile::Inline(data) => Box::new(std::io::Cursor::new(data.to_vec())),
        RegularFile::External(id, _) | RegularFile::ExternalNoVerity(id, _) => {
            Box::new(std::fs::File::from(repo.open_object(id)?))
        }
        RegularFile::Sparse(size) => Box::new(std::io::repeat(0).take(*size)),
    })
}

/// Writes the content of a file of an image tree into `dst`, a new empty
/// file: an object by reflink where `dst`'s filesystem can share its extents
/// (else a copy, see [`reflink::clone_or_copy`]), inline content by writing
/// it, a sparse file by its length. Counts what it did in `tally`.
pub fn write_file_content(
    f: &composefs::tree::RegularFile<ObjectId>,
    repo: &Repo,
    dst: &std::fs::File,
    tally: &mut reflink::Tally,
) -> Result<()> {
    use composefs::tree::RegularFile;
    match f {
        RegularFile::Inline(data) => {
            (&*dst).write_all(data)?;
            tally.record(reflink::Method::Copied, data.len() as u64);
        }
        RegularFile::External(id, size) | RegularFile::ExternalNoVerity(id, size) => {
            let obj = std::fs::File::from(repo.open_object(id)?);
            let method = reflink::clone_or_copy(&obj, dst, reflink::Policy::ReflinkOrCopy)
                .with_context(|| format!("writing the content of object {}", id.to_hex()))?;
            tally.record(method, *size);
        }
        RegularFile::Sparse(size) => dst.set_len(*size)?,
    }
    Ok(())
}

/// Reads a small regular file of an image tree by absolute path; `None`
/// when it is absent or not a regular file.
pub fn read_image_file(
    fs: &composefs::tree::FileSystem<ObjectId>,
    repo: &Repo,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let p = std::path::Path::new(path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Ok(None);
    };
    let Ok(Some(dir)) = fs.root.get_directory_opt(parent.as_os_str()) else {
        return Ok(None);
    };
    match dir.get_file_opt(name, &fs.leaves) {
        Ok(Some(f)) => Ok(Some(composefs::fs::read_file(f, repo)?.into_vec())),
        _ => Ok(None),
    }
}
