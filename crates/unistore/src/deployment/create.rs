//! Turning a pulled image into a deployment: its state directory, its
//! kernel directory (reusing an identical pair of another deployment) and
//! the loader entry that will name it. Shared by install, upgrade and switch;
//! where the entry is written (entries/ or entries.staged/) is the caller's.

use anyhow::{Context, Result};
use composefs_boot::os_release::OsReleaseInfo;

use crate::boot::bls::{self, BlsEntry};
use crate::deployment::origin::Origin;
use crate::deployment::{self, NewDeployment};
use crate::fs::reflink::Tally;
use crate::install_config;
use crate::source::imgref::ImageRef;
use crate::stores::composefs_repo::{self, Repo};
use crate::sysroot::Sysroot;

/// An image of the repository with its merged tree, read once for every
/// step of a deployment that needs it (its kernel arguments, its install
/// config, the deployment itself): at 100,000 files each read costs about
/// a tenth of a second.
pub struct ImageTree {
    /// The image.
    pub img: composefs_oci::oci_image::OciImage<composefs_repo::ObjectId>,
    /// Its merged tree.
    pub fs: composefs::tree::FileSystem<composefs_repo::ObjectId>,
}

impl ImageTree {
    /// Reads image `manifest_digest`'s tree.
    pub fn read(repo: &Repo, manifest_digest: &str) -> Result<Self> {
        let img = composefs_repo::open_image(repo, manifest_digest)?;
        let fs = img
            .read_filesystem(repo, false)
            .context("reading the image's filesystem")?;
        Ok(Self { img, fs })
    }

    /// The kernel arguments the image asks for.
    pub fn kargs(&self, repo: &Repo) -> Result<Vec<String>> {
        install_config::image_kargs(&self.fs, repo, &self.img.architecture())
    }
}

/// What to deploy.
pub struct DeployRequest<'a> {
    /// The image, already in the repository.
    pub manifest_digest: &'a str,
    /// Its tree, read by the caller.
    pub tree: &'a ImageTree,
    /// The registry's manifest when it differs from the repository's (an
    /// image in Docker's format): its digest goes to the origin, its bytes
    /// into the state directory (for the host store's later writes).
    pub registry: Option<&'a crate::source::pull::RegistryManifest>,
    /// Its boot EROFS id: the deployment id.
    pub id: &'a str,
    /// The reference the deployment follows.
    pub origin_image: &'a ImageRef,
    /// Kernel arguments after `composefs=` and `rw`. `None`: those the
    /// image asks for (install config, then `kargs.d`).
    pub kargs: Option<Vec<String>>,
    /// Extra kernel arguments appended in all cases.
    pub extra_kargs: &'a [String],
    /// Kernel directories of live deployments that may be reused when their
    /// origin records the same boot digest: `(kernel dir, boot digest)`.
    pub reusable_kernels: &'a [(String, String)],
}

/// A deployment ready to be named by an entry.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The primary entry naming it (the caller picks the directory).
    pub entry: BlsEntry,
    /// Kernel version.
    pub kernel_version: String,
    /// The kernel directory under `boot/` the entry uses.
    pub kernel_dir: String,
    /// Whether the kernel directory was shared with another deployment.
    pub kernel_reused: bool,
    /// How the files this deployment wrote (`/etc`, a first `/var`, the
    /// kernel and initrd) got their content: reflinks of composefs objects
    /// or copies.
    pub files: Tally,
}

/// The kernel arguments the image `manifest_digest` asks for.
pub fn image_kargs(repo: &Repo, manifest_digest: &str) -> Result<Vec<String>> {
    ImageTree::read(repo, manifest_digest)?.kargs(repo)
}

/// Creates the state directory (unless it exists) and the kernel directory.
/// `track` is called with each path about to be created (and whether it is
/// relative to the boot root, the ESP, rather than the sysroot), so an
/// install can remove them if a later step fails.
pub fn deploy_image(
    sysroot: &Sysroot,
    repo: &Repo,
    req: &DeployRequest<'_>,
    track: &mut dyn FnMut(&str, bool) -> Result<()>,
) -> Result<Deployed> {
    let id = req.id;
    let (img, fs) = (&req.tree.img, &req.tree.fs);
    let kernel = bls::find_kernel(fs)?;
    let os_release = composefs_repo::read_image_file(fs, repo, "/usr/lib/os-release")?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let osr = OsReleaseInfo::parse(&os_release);
    let os_id = osr.get_value(&["ID"]).unwrap_or_else(|| "linux".into());
    let version = img
        .label("org.opencontainers.image.version")
        .map(str::to_string)
        .or_else(|| osr.get_value(&["VERSION_ID"]))
        .unwrap_or_else(|| "0".into());
    let title = osr
        .get_pretty_name()
        .unwrap_or_else(|| format!("{os_id} {version}"));
    let kargs = match &req.kargs {
        Some(k) => k.clone(),
        None => req.tree.kargs(repo)?,
    };
    let boot_digest = bls::boot_digest(&kernel, repo)?;

    let origin = Origin {
        image: req.origin_image.clone(),
        boot_type: "bls".into(),
        boot_digest: Some(boot_digest.clone()),
        manifest_digest: Some(req.manifest_digest.to_string()),
        registry_digest: req.registry.map(|r| r.digest.clone()),
    };
    let mut files = Tally::default();
    let state = deployment::state_dir(id);
    if !sysroot.dir().try_exists(&state)? {
        track(&state, false)?;
        files = deployment::create(
            sysroot,
            &NewDeployment {
                id,
                origin: &origin,
                fs,
                repo,
                registry_manifest: req.registry.map(|r| r.bytes.as_slice()),
            },
        )?;
    }

    let kernels = sysroot.kernels_dir();
    sysroot.boot_root().create_dir_all(kernels)?;
    let boot = sysroot.boot_root().open_dir(kernels)?;
    let reused = req
        .reusable_kernels
        .iter()
        .find(|(kd, d)| *d == boot_digest && boot.try_exists(kd).unwrap_or(false))
        .map(|(kd, _)| kd.clone());
    let (kdir, kernel_reused) = match reused {
        Some(kd) => (kd, true),
        None => {
            let kd = bls::kernel_dir_name(id);
            track(&format!("{kernels}/{kd}"), true)?;
            bls::write_kernel_dir(&boot, &kd, &kernel, repo, &mut files)?;
            (kd, false)
        }
    };

    let prefix = sysroot.boot_path_prefix()?;
    let insecure = if repo.is_insecure() { "?" } else { "" };
    let mut options = vec![format!("composefs={insecure}{id}"), "rw".to_string()];
    options.extend(kargs);
    options.extend(req.extra_kargs.iter().cloned());
    let entry = BlsEntry {
        file_name: bls::entry_file_name(&os_id, &version, true),
        title,
        version,
        sort_key: Some(bls::sort_key(&os_id, true)),
        linux: format!("{prefix}/{kdir}/vmlinuz"),
        initrd: format!("{prefix}/{kdir}/initrd"),
        options,
    };
    Ok(Deployed {
        entry,
        kernel_version: kernel.kver,
        kernel_dir: kdir,
        kernel_reused,
        files,
    })
}
