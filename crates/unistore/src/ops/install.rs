//! `install to-filesystem`: a native composefs host on a mounted filesystem.
//!
//! Order (the loader entry is the "done" marker, written last):
//! 1. refuse a root that already holds a deployment;
//! 2. pull into `composefs/`, generate the boot EROFS image, tag the manifest;
//! 3. `state/deploy/<id>/` (tmp + rename);
//! 4. `boot/bootc_composefs-<id>/{vmlinuz,initrd}` (tmp + rename);
//! 5. `boot/loader/entries/<entry>.conf` (tmp + rename + fsync).
//!
//! On failure everything this run created is removed, so the root is as it
//! was, or holds nothing a later run would take for a deployment.

use std::path::Path;

use anyhow::{Context, Result, bail};
use composefs_boot::os_release::OsReleaseInfo;

use crate::bootloader::{self, BlsEntry};
use crate::composefs_store::{self, Pulled};
use crate::deployment::{self, NewDeployment};
use crate::imgref::ImageRef;
use crate::install_config::InstallConfig;
use crate::origin::Origin;
use crate::progress::{self, Progress};
use crate::sysroot::{BOOT_DIR, COMPOSEFS_DIR, ENTRIES_DIR, STATE_DEPLOY_DIR, Sysroot};
use crate::util;

/// Options of an install.
#[derive(Debug, Clone)]
pub struct InstallOpts {
    /// Where the image comes from.
    pub source: ImageRef,
    /// What the host follows afterwards (defaults to `source`).
    pub target: Option<ImageRef>,
    /// Extra kernel arguments, after those of the image's install config.
    pub kargs: Vec<String>,
    /// How to reach registries.
    pub fetch: composefs_store::FetchConfig,
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallResult {
    /// The deployment id (boot EROFS digest).
    pub deployment_id: String,
    /// The image's manifest digest.
    pub manifest_digest: String,
    /// The loader entry written.
    pub entry_file: String,
    /// Kernel version booted.
    pub kernel_version: String,
    /// Bytes stored in the repository by this pull.
    pub bytes_stored: u64,
}

/// Paths the install may create, removed again on failure.
struct Created<'a> {
    sysroot: &'a Sysroot,
    paths: Vec<String>,
    armed: bool,
}

impl<'a> Created<'a> {
    fn new(sysroot: &'a Sysroot) -> Self {
        Self {
            sysroot,
            paths: vec![],
            armed: true,
        }
    }
    /// Remember `rel` for removal if it does not exist yet.
    fn track(&mut self, rel: &str) -> Result<()> {
        if !self.sysroot.dir().try_exists(rel)? {
            self.paths.push(rel.to_string());
        }
        Ok(())
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in self.paths.iter().rev() {
            if let Err(e) = util::remove_all(self.sysroot.dir(), p) {
                tracing::warn!("cleaning up {p}: {e:#}");
            }
        }
    }
}

/// Refuses a root that already holds a deployment.
fn check_empty(sysroot: &Sysroot) -> Result<()> {
    let entries = util::list_names(sysroot.dir(), ENTRIES_DIR)?;
    if let Some(e) = entries.iter().find(|n| n.ends_with(".conf")) {
        bail!(
            "{} already holds a deployment (boot entry {ENTRIES_DIR}/{e})",
            sysroot.path().display()
        );
    }
    if let Some(id) = deployment::list_state_dirs(sysroot)?.first() {
        bail!(
            "{} already holds a deployment ({STATE_DEPLOY_DIR}/{id})",
            sysroot.path().display()
        );
    }
    Ok(())
}

/// Installs `opts.source` onto the filesystem mounted at `root`.
pub async fn install_to_filesystem(
    root: &Path,
    opts: &InstallOpts,
    progress: Progress,
) -> Result<InstallResult> {
    let sysroot = Sysroot::open(root)?;
    check_empty(&sysroot)?;
    let mut created = Created::new(&sysroot);
    for p in [COMPOSEFS_DIR, "state", BOOT_DIR, "boot/loader"] {
        created.track(p)?;
    }
    let result = install_inner(&sysroot, opts, progress, &mut created).await?;
    created.armed = false;
    Ok(result)
}

async fn install_inner(
    sysroot: &Sysroot,
    opts: &InstallOpts,
    progress: Progress,
    created: &mut Created<'_>,
) -> Result<InstallResult> {
    progress::step(&progress, format!("Pulling {}", opts.source));
    let (repo, _) = composefs_store::init(sysroot)?;
    let Pulled {
        manifest_digest,
        boot_image_id: id,
        stats,
        ..
    } = composefs_store::pull(&repo, &opts.source, &opts.fetch, progress.clone()).await?;

    progress::step(&progress, "Reading the image");
    let img = composefs_store::open_image(&repo, &manifest_digest)?;
    let fs = img
        .read_filesystem(&repo, false)
        .context("reading the image's filesystem")?;
    let kernel = bootloader::find_kernel(&fs)?;
    let os_release = composefs_store::read_image_file(&fs, &repo, "/usr/lib/os-release")?
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
    let config = InstallConfig::from_image(&fs, &repo, &img.architecture())?;

    progress::step(&progress, format!("Deploying {id}"));
    let origin = Origin {
        image: opts.target.clone().unwrap_or_else(|| opts.source.clone()),
        boot_type: "bls".into(),
        boot_digest: Some(bootloader::boot_digest(&kernel, &repo)?),
        manifest_digest: Some(manifest_digest.clone()),
    };
    created.track(&deployment::state_dir(&id))?;
    deployment::create(
        sysroot,
        &NewDeployment {
            id: &id,
            origin: &origin,
            fs: &fs,
            repo: &repo,
        },
    )?;

    progress::step(&progress, format!("Writing kernel {}", kernel.kver));
    let dir = sysroot.dir();
    dir.create_dir_all(BOOT_DIR)?;
    let boot = dir.open_dir(BOOT_DIR)?;
    let kdir = bootloader::kernel_dir_name(&id);
    created.track(&format!("{BOOT_DIR}/{kdir}"))?;
    bootloader::write_kernel_dir(&boot, &kdir, &kernel, &repo)?;

    let prefix = sysroot.boot_path_prefix()?;
    let insecure = if repo.is_insecure() { "?" } else { "" };
    let mut options = vec![format!("composefs={insecure}{id}"), "rw".to_string()];
    options.extend(config.kargs.iter().cloned());
    options.extend(opts.kargs.iter().cloned());
    let entry = BlsEntry {
        file_name: bootloader::entry_file_name(&os_id, &version, true),
        title,
        version: version.clone(),
        sort_key: Some(bootloader::sort_key(&os_id, true)),
        linux: format!("{prefix}/{kdir}/vmlinuz"),
        initrd: format!("{prefix}/{kdir}/initrd"),
        options,
    };
    drop(img);
    drop(repo);
    dir.create_dir_all(ENTRIES_DIR)?;
    util::atomic_write(
        dir,
        format!("{ENTRIES_DIR}/{}", entry.file_name),
        entry.render().as_bytes(),
    )
    .context("writing the boot entry")?;
    Ok(InstallResult {
        deployment_id: id,
        manifest_digest,
        entry_file: entry.file_name,
        kernel_version: kernel.kver,
        bytes_stored: stats.new_bytes() + stats.bytes_inlined,
    })
}
