//! `install to-filesystem --backend ostree`: an ostree host as bootc's
//! default backend installs it.
//!
//! Order (libostree's boot-version swap in `simple_write_deployment` is the
//! "done" marker, written last):
//! 1. refuse a root that holds a deployment, or an `ostree/repo` that is
//!    not bare; refuse unified storage (not on ostree hosts yet);
//! 2. pull into the staging composefs repository; check the image has a
//!    kernel;
//! 3. libostree: `ensure_initialized`, the stateroot (`init_osname`);
//! 4. the image as one commit and its ref;
//! 5. libostree `deploy_tree_with_options` (a checkout, `/etc` from
//!    `usr/etc`), the image's `/var` seeded into the stateroot's `var/`;
//! 6. libostree `simple_write_deployment`: kernel, BLS entry, boot swap;
//! 7. the staging repository removed.
//!
//! On failure everything this run created is removed.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ostree::gio;

use super::{DEFAULT_STATEROOT, staging};
use crate::install_config::{self, UnifiedMode};
use crate::ops::install::{Created, InstallOpts, InstallResult, check_empty, read_host_config};
use crate::progress::{self, Progress};
use crate::stores::ostree_repo;
use crate::sysroot::{BOOT_DIR, Sysroot};
use crate::{bootloader, crashpoint, util};

/// Checks a stateroot name as libostree would take it as a directory name.
fn check_stateroot(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("bad stateroot name {name:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Installs `opts.source` as an ostree host onto the filesystem at `root`.
pub async fn install(root: &Path, opts: &InstallOpts, progress: Progress) -> Result<InstallResult> {
    let sysroot = Sysroot::open(root)?;
    let stateroot = opts.stateroot.as_deref().unwrap_or(DEFAULT_STATEROOT);
    check_stateroot(stateroot)?;
    check_empty(&sysroot)?;
    crate::sigpolicy::check(&opts.fetch)?;
    if sysroot.dir().try_exists(ostree_repo::REPO_DIR)? {
        // Opening reads only; a repository in another mode is refused here,
        // before anything is written.
        ostree_repo::open(&sysroot)?;
    }
    if sysroot.dir().try_exists("ostree/deploy")? {
        // What an install killed before its boot entries leaves is taken
        // over; a host with a deployment is refused.
        let os = ostree::Sysroot::new(Some(&gio::File::for_path(sysroot.path())));
        os.load(gio::Cancellable::NONE).map_err(|e| {
            anyhow!(
                "loading the ostree sysroot already in {}: {e}",
                root.display()
            )
        })?;
        if let Some(d) = os.deployments().first() {
            bail!(
                "{} already holds a deployment (ostree deployment {})",
                root.display(),
                super::name(d)
            );
        }
    }
    let host_config = read_host_config(&opts.host_config_files)?;
    if let Some(m) = opts.unified.or(host_config.unified)
        && m != UnifiedMode::Disabled
    {
        bail!(
            "unified storage ({m}) is not available on ostree hosts yet; install with --unified disabled or the composefs backend"
        );
    }
    let mut created = Created::new(&sysroot);
    for p in ["ostree", BOOT_DIR, "boot/loader"] {
        created.track(p)?;
    }
    let r = install_inner(&sysroot, opts, stateroot, &host_config, progress).await;
    if r.is_err() {
        let _ = staging::remove(&sysroot);
    } else {
        created.armed = false;
    }
    r
}

async fn install_inner(
    sysroot: &Sysroot,
    opts: &InstallOpts,
    stateroot: &str,
    host_config: &install_config::InstallConfig,
    progress: Progress,
) -> Result<InstallResult> {
    progress::step(&progress, format!("Pulling {}", opts.source));
    let staged = staging::pull(sysroot, &opts.source, &opts.fetch, progress.clone()).await?;
    let kernel = bootloader::find_kernel(&staged.fs)?;
    let mut kargs = install_config::image_kargs(&staged.fs, &staged.repo, &staged.architecture)
        .context("reading the image's kernel arguments")?;
    kargs.extend(opts.root_karg());
    kargs.extend(host_config.kargs.iter().cloned());
    kargs.extend(opts.kargs.iter().cloned());
    crashpoint::hit("ostree-install:after-pull");

    let none = gio::Cancellable::NONE;
    let os = ostree::Sysroot::new(Some(&gio::File::for_path(sysroot.path())));
    os.ensure_initialized(none)
        .map_err(|e| anyhow!("initializing the ostree sysroot: {e}"))?;
    os.load(none)
        .map_err(|e| anyhow!("loading the ostree sysroot: {e}"))?;
    let _lock = super::lock(&os)?;
    if !sysroot
        .dir()
        .try_exists(format!("ostree/deploy/{stateroot}"))?
    {
        os.init_osname(stateroot, none)
            .map_err(|e| anyhow!("creating the stateroot {stateroot}: {e}"))?;
    }
    let repo = os.repo();
    ostree_repo::check_mode(&repo, &sysroot.join(ostree_repo::REPO_DIR))?;

    let origin_image = opts.target.clone().unwrap_or_else(|| opts.source.clone());
    let imported = staged.commit(sysroot, &repo, &origin_image, &progress)?;
    crashpoint::hit("ostree-install:after-commit");

    progress::step(&progress, format!("Deploying {}", &imported.checksum[..12]));
    let kargs_ref: Vec<&str> = kargs.iter().map(String::as_str).collect();
    let deploy_opts = ostree::SysrootDeployTreeOpts {
        override_kernel_argv: Some(&kargs_ref),
        ..Default::default()
    };
    let origin = super::origin_keyfile(&origin_image);
    let dep = os
        .deploy_tree_with_options(
            Some(stateroot),
            &imported.checksum,
            Some(&origin),
            None,
            Some(&deploy_opts),
            none,
        )
        .map_err(|e| anyhow!("deploying commit {}: {e}", imported.checksum))?;
    let var_files = seed_var(sysroot, stateroot, &staged)?;
    crashpoint::hit("ostree-install:after-deploy");
    os.simple_write_deployment(
        Some(stateroot),
        &dep,
        None,
        ostree::SysrootSimpleWriteDeploymentFlags::NONE,
        none,
    )
    .map_err(|e| anyhow!("writing the boot entries: {e}"))?;
    crashpoint::hit("ostree-install:after-write-deployment");
    let manifest_digest = staged.manifest_digest.clone();
    drop(staged);
    staging::remove(sysroot)?;
    let entry_file = util::list_names(sysroot.dir(), crate::sysroot::ENTRIES_DIR)?
        .into_iter()
        .find(|n| n.ends_with(&format!("-{stateroot}.conf")))
        .unwrap_or_default();
    let mut files = imported.content;
    files.merge(&var_files);
    Ok(InstallResult {
        deployment_id: super::name(&dep),
        manifest_digest,
        entry_file,
        kernel_version: kernel.kver,
        bytes_stored: imported.content.reflinked_bytes + imported.content.copied_bytes,
        unified: None,
        deployment_files: files,
    })
}

/// Fills the stateroot's `var/` with the image's `/var` (libostree 2022.7
/// never mounts a commit's `/var`), once, at the first deployment.
fn seed_var(
    sysroot: &Sysroot,
    stateroot: &str,
    staged: &staging::Staged,
) -> Result<crate::reflink::Tally> {
    let var = format!("ostree/deploy/{stateroot}/var");
    let dir = sysroot.dir();
    if !util::list_names(dir, &var)?.is_empty() {
        return Ok(Default::default());
    }
    let tmp = format!("ostree/deploy/{stateroot}/.var-seed");
    util::remove_all(dir, &tmp)?;
    let m = crate::etc::materialize(&staged.fs, "/var", &staged.repo, &sysroot.join(&tmp))
        .context("seeding the stateroot's /var")?;
    for name in util::list_names(dir, &tmp)? {
        dir.rename(format!("{tmp}/{name}"), dir, format!("{var}/{name}"))?;
    }
    util::remove_all(dir, &tmp)?;
    util::fsync_dir(dir, Some(Path::new(&var)))?;
    Ok(m.content)
}
