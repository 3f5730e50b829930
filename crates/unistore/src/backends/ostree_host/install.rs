//! `install to-filesystem --backend ostree`: an ostree host as bootc's
//! default backend installs it.
//!
//! Order (libostree's boot-version swap in `simple_write_deployment` is the
//! "done" marker, written last):
//! 1. refuse a root that holds a deployment, or an `ostree/repo` that is
//!    not bare; with unified storage `enabled`, a filesystem without
//!    reflinks;
//! 2. pull into the staging composefs repository (unified: into the host's
//!    composefs repository `composefs/` and the host containers-storage
//!    `ostree/bootc/storage`, [`crate::unified::fetch_unified`]); check the
//!    image has a kernel;
//! 3. libostree: `ensure_initialized`, the stateroot (`init_osname`);
//! 4. the image as one commit and its ref;
//! 5. libostree `deploy_tree_with_options` (a checkout, `/etc` from
//!    `usr/etc`), the image's `/var` seeded into the stateroot's `var/`;
//! 6. libostree `simple_write_deployment`: kernel, BLS entry, boot swap;
//! 7. the staging repository removed; unified: the binding recorded in
//!    `ostree/repo/config`, then the flag `composefs/bootc.json`, last.
//!
//! On failure everything this run created is removed.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ostree::gio;

use super::staging::Source;
use super::{DEFAULT_STATEROOT, staging};
use crate::boot::bls;
use crate::command::install::{Created, InstallOpts, InstallResult, check_empty, read_host_config};
use crate::install_config::{self, UnifiedMode};
use crate::progress::{self, Progress};
use crate::stores::ostree_repo;
use crate::sysroot::{BOOT_DIR, Sysroot};
use crate::{crashpoint, util};

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
    if let Some(esp) = &opts.esp {
        anyhow::bail!(
            "the ostree backend cannot boot from the ESP {}: libostree 2022.7 keeps its entries under /boot/loader, a symlink it swaps (loader -> loader.N), which an ESP (vfat) cannot hold, and it installs no systemd-boot; use --backend composefs",
            esp.display()
        );
    }
    let sysroot = Sysroot::open(root)?;
    let stateroot = opts.stateroot.as_deref().unwrap_or(DEFAULT_STATEROOT);
    check_stateroot(stateroot)?;
    check_empty(&sysroot)?;
    crate::source::sigpolicy::check(&opts.fetch)?;
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
    let (unified, decided_by) = match (opts.unified, host_config.unified) {
        (Some(m), _) => (m, "cli"),
        (None, Some(m)) => (m, "host-config"),
        (None, None) => (UnifiedMode::Disabled, "default"),
    };
    let probe = if unified == UnifiedMode::Disabled {
        None
    } else {
        // Refused before anything is written.
        let probe = crate::unified::probe_reflinks(&sysroot)?;
        unified.require_reflinks(&probe, root)?;
        Some((probe, decided_by))
    };
    let mut created = Created::new(&sysroot);
    for p in [
        "ostree",
        BOOT_DIR,
        "boot/loader",
        crate::sysroot::COMPOSEFS_DIR,
    ] {
        created.track(p)?;
    }
    let r = install_inner(
        &sysroot,
        opts,
        stateroot,
        &host_config,
        unified,
        probe,
        progress,
    )
    .await;
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
    unified: UnifiedMode,
    probe: Option<(crate::fs::reflink::ReflinkProbe, &str)>,
    progress: Progress,
) -> Result<InstallResult> {
    progress::step(&progress, format!("Pulling {}", opts.source));
    let source = match unified {
        UnifiedMode::Disabled => Source::Staging,
        m => Source::Host(Some(m)),
    };
    let mut staged =
        staging::pull(sysroot, &opts.source, &opts.fetch, source, progress.clone()).await?;
    // Neither `--unified` nor the host decided: the image's own install
    // config may ask for unified storage.
    let (unified, probe) = match probe {
        Some(p) => (unified, Some(p)),
        None => match image_unified(&staged)? {
            Some(m) => {
                let p = adopt_staging(sysroot, &mut staged, &opts.source, m, &progress).await?;
                (m, Some((p, "image-config")))
            }
            None => (unified, None),
        },
    };
    let kernel = bls::find_kernel(&staged.fs)?;
    let mut kargs = install_config::image_kargs(&staged.fs, &staged.repo, &staged.architecture)
        .context("reading the image's kernel arguments")?;
    kargs.extend(opts.root_karg());
    // The root filesystem is mounted read-write (as bootc's install does):
    // the deployment's /etc and the stateroot's /var live on it.
    if !kargs.iter().any(|k| k == "rw" || k == "ro") {
        kargs.push("rw".into());
    }
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
    if unified != UnifiedMode::Disabled {
        ostree_repo::bind(&repo)?;
    }

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
    let unified_summary = match probe {
        Some((probe, decided_by)) => {
            crashpoint::hit("ostree-install:before-flag");
            crate::unified::write_flag(sysroot, unified)?;
            Some(crate::command::install::UnifiedSummary {
                mode: unified,
                reflinks: probe.supported,
                decided_by: decided_by.to_string(),
                message: if probe.supported {
                    format!(
                        "Unified storage ({unified}): composefs, ostree and containers-storage share each file's extents on {}",
                        probe.describe()
                    )
                } else {
                    format!(
                        "Unified storage ({unified}): no reflinks on {}: the ostree repository and containers-storage hold copies of the composefs objects",
                        probe.describe()
                    )
                },
            })
        }
        None => None,
    };
    crate::fs::xfs_prealloc::trim_quietly(sysroot);
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
        unified: unified_summary,
        deployment_files: files,
    })
}

/// The unified mode the image's own install config asks for, if any.
fn image_unified(staged: &staging::Staged) -> Result<Option<UnifiedMode>> {
    let cfg =
        install_config::InstallConfig::from_image(&staged.fs, &staged.repo, &staged.architecture)
            .context("reading the image's install config")?;
    Ok(cfg.unified.filter(|m| *m != UnifiedMode::Disabled))
}

/// The image asked for unified storage after it was pulled into the
/// staging repository: that repository becomes the host's composefs
/// repository (a rename on the same filesystem), and the image goes into
/// the host containers-storage from it, as a unified pull would have put it.
async fn adopt_staging(
    sysroot: &Sysroot,
    staged: &mut staging::Staged,
    image: &crate::source::imgref::ImageRef,
    mode: UnifiedMode,
    progress: &Progress,
) -> Result<crate::fs::reflink::ReflinkProbe> {
    let probe = crate::unified::probe_reflinks(sysroot)?;
    mode.require_reflinks(&probe, sysroot.path())?;
    let policy = mode
        .policy()
        .ok_or_else(|| anyhow!("unified mode {mode} has no policy"))?;
    progress::step(
        progress,
        format!("The image's install config asks for unified storage ({mode})"),
    );
    let dir = sysroot.dir();
    if dir.try_exists(crate::sysroot::COMPOSEFS_DIR)? {
        bail!(
            "{} already has a composefs repository",
            sysroot.path().display()
        );
    }
    dir.rename(staging::STAGING_DIR, dir, crate::sysroot::COMPOSEFS_DIR)
        .context("making the staging repository the host's composefs repository")?;
    staged.source = Source::Host(Some(mode));
    let registry = (staged.composefs_digest != staged.manifest_digest).then(|| {
        crate::source::pull::RegistryManifest {
            digest: staged.manifest_digest.clone(),
            bytes: staged.manifest_json.clone().into_bytes(),
        }
    });
    if let Some(r) = &registry {
        composefs_oci::oci_image::tag_image(
            staged.repo.as_ref(),
            &staged.composefs_digest.parse()?,
            &crate::stores::composefs_repo::bootc_tag(&r.digest),
        )?;
    }
    crate::stores::containers_storage::ensure_ostree_layout(sysroot)?;
    let r = crate::unified::import_into_store(
        sysroot,
        &staged.repo,
        &staged.composefs_digest,
        Some(image),
        crate::unified::NameRule::Take,
        policy,
        &probe,
        progress,
        registry.as_ref(),
    )
    .await?;
    progress::step(progress, crate::unified::import_message(mode, &probe, &r));
    Ok(probe)
}

/// Fills the stateroot's `var/` with the image's `/var` (libostree 2022.7
/// never mounts a commit's `/var`), once, at the first deployment.
fn seed_var(
    sysroot: &Sysroot,
    stateroot: &str,
    staged: &staging::Staged,
) -> Result<crate::fs::reflink::Tally> {
    let var = format!("ostree/deploy/{stateroot}/var");
    let dir = sysroot.dir();
    if !util::list_names(dir, &var)?.is_empty() {
        return Ok(Default::default());
    }
    let tmp = format!("ostree/deploy/{stateroot}/.var-seed");
    util::remove_all(dir, &tmp)?;
    let m =
        crate::deployment::etc::materialize(&staged.fs, "/var", &staged.repo, &sysroot.join(&tmp))
            .context("seeding the stateroot's /var")?;
    for name in util::list_names(dir, &tmp)? {
        dir.rename(format!("{tmp}/{name}"), dir, format!("{var}/{name}"))?;
    }
    util::remove_all(dir, &tmp)?;
    util::fsync_dir(dir, Some(Path::new(&var)))?;
    Ok(m.content)
}
