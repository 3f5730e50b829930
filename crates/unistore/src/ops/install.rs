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

use crate::composefs_store::{self, Pulled};
use crate::deploy::{self, DeployRequest};
use crate::deployment;
use crate::imgref::ImageRef;
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

    progress::step(&progress, format!("Deploying {id}"));
    let origin_image = opts.target.clone().unwrap_or_else(|| opts.source.clone());
    let deployed = deploy::deploy_image(
        sysroot,
        &repo,
        &DeployRequest {
            manifest_digest: &manifest_digest,
            id: &id,
            origin_image: &origin_image,
            kargs: None,
            extra_kargs: &opts.kargs,
            reusable_kernels: &[],
        },
        &mut |p| created.track(p),
    )?;
    let entry = deployed.entry;
    drop(repo);
    let dir = sysroot.dir();
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
        kernel_version: deployed.kernel_version,
        bytes_stored: stats.new_bytes() + stats.bytes_inlined,
    })
}
