//! `install to-filesystem`: a native composefs host on a mounted filesystem.
//!
//! Order (the loader entry is the "done" marker, written last):
//! 1. refuse a root that already holds a deployment; read the host's install
//!    config; when `--unified` or the host config asks for unified storage,
//!    probe reflinks and refuse `enabled` without them (nothing written yet);
//! 2. fetch ([`fetch`]): plain (into `composefs/`) or unified (through the
//!    host containers-storage); generate the boot EROFS image, tag the
//!    manifest;
//! 3. when only the image's install config asks for unified storage, bring
//!    the image into the store from composefs (or fail for `enabled`
//!    without reflinks, removing what was written);
//! 4. `state/deploy/<id>/` (tmp + rename);
//! 5. `boot/bootc_composefs-<id>/{vmlinuz,initrd}` (tmp + rename);
//! 6. the unified flag `composefs/bootc.json`, when unified;
//! 7. `boot/grub2/` (empty: bootc wants it where the loader is GRUB), then
//!    `boot/loader/entries/<entry>.conf` (tmp + rename + fsync).
//!
//! With the repository come `composefs/bootc/` and bootc's compatibility
//! link `ostree/bootc -> ../composefs/bootc`.
//!
//! On failure everything this run created is removed, so the root is as it
//! was, or holds nothing a later run would take for a deployment.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::command::install::Created;
use crate::command::install::InstallOpts;
use crate::command::install::InstallResult;
use crate::command::install::UnifiedSummary;
use crate::command::install::check_empty;
use crate::command::install::read_host_config;
use crate::deployment::create::{self, DeployRequest};
use crate::fs::reflink;
use crate::install_config::{InstallConfig, UnifiedMode};
use crate::progress::{self, Progress};
use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::ImageRef;
use crate::source::pull;
use crate::source::pull::Pulled;
use crate::stores::composefs_repo::{self, Repo};
use crate::stores::containers_storage;
use crate::sysroot::{BOOT_DIR, COMPOSEFS_DIR, GRUB2_DIR, Sysroot};
use crate::unified;
use crate::util;

/// Installs `opts.source` onto the filesystem mounted at `root`.
pub async fn install_to_filesystem(
    root: &Path,
    opts: &InstallOpts,
    progress: Progress,
) -> Result<InstallResult> {
    let sysroot = match &opts.esp {
        Some(esp) => Sysroot::open(root)?.with_esp(esp)?,
        None => Sysroot::open(root)?,
    };
    check_empty(&sysroot)?;
    crate::command::install::check_verity(&sysroot, opts)?;
    crate::source::sigpolicy::check(&opts.fetch)?;
    let host_config = read_host_config(&opts.host_config_files)?;
    // Known before fetching: the flag, then the host's config. Checked
    // before anything is written.
    let early = match (opts.unified, host_config.unified) {
        (Some(m), _) => Some((m, "cli")),
        (None, Some(m)) => Some((m, "host-config")),
        (None, None) => None,
    };
    if let Some((mode, _)) = early
        && mode != UnifiedMode::Disabled
    {
        let probe = reflink::probe(sysroot.path())?;
        mode.require_reflinks(&probe, sysroot.path())?;
    }
    let mut created = Created::new(&sysroot);
    for p in [
        COMPOSEFS_DIR,
        "state",
        BOOT_DIR,
        "boot/loader",
        GRUB2_DIR,
        "ostree",
    ] {
        created.track(p)?;
    }
    if sysroot.esp_path().is_some() {
        for p in ["EFI", "loader"] {
            created.track_boot(p)?;
        }
    }
    let result = install_inner(&sysroot, opts, &host_config, early, progress, &mut created).await?;
    created.armed = false;
    Ok(result)
}

/// The fetch step: plain (into the composefs repository only) when `mode`
/// is `None` or `disabled`, else unified (podman into the host
/// containers-storage, then composefs from there by reflinks).
pub async fn fetch(
    sysroot: &Sysroot,
    repo: &Arc<Repo>,
    source: &ImageRef,
    fetch: &FetchConfig,
    mode: Option<UnifiedMode>,
    progress: Progress,
) -> Result<Pulled> {
    match mode {
        Some(m @ (UnifiedMode::Enabled | UnifiedMode::EnabledWithCopy)) => {
            unified::fetch_unified(sysroot, repo, source, fetch, m, progress).await
        }
        _ => pull::pull(repo, source, fetch, progress).await,
    }
}

/// The image's install config, then the host's on top.
fn effective_config(
    repo: &Repo,
    tree: &create::ImageTree,
    host: &InstallConfig,
) -> Result<InstallConfig> {
    let mut cfg = InstallConfig::from_image(&tree.fs, repo, &tree.img.architecture())?;
    if host.unified.is_some() {
        cfg.unified = host.unified;
    }
    Ok(cfg)
}

async fn install_inner(
    sysroot: &Sysroot,
    opts: &InstallOpts,
    host_config: &InstallConfig,
    early: Option<(UnifiedMode, &'static str)>,
    progress: Progress,
    created: &mut Created<'_>,
) -> Result<InstallResult> {
    progress::step(&progress, format!("Pulling {}", opts.source));
    let (repo, _) = composefs_repo::init(sysroot)?;
    containers_storage::ensure_bootc_link(sysroot)?;
    let Pulled {
        manifest_digest,
        boot_image_id: id,
        stats,
        registry,
        superseded,
        ..
    } = fetch(
        sysroot,
        &repo,
        &opts.source,
        &opts.fetch,
        early.map(|(m, _)| m),
        progress.clone(),
    )
    .await?;
    crate::crashpoint::hit("install:after-pull");

    // The image's own install config is known only now.
    let tree = create::ImageTree::read(&repo, &manifest_digest)?;
    let image_config = effective_config(&repo, &tree, host_config)?;
    // Refused before anything else is written: an image that cannot boot
    // through the loader asked for.
    let loader = match (sysroot.esp_path(), opts.bootloader) {
        (Some(_), crate::command::install::Bootloader::Systemd) => {
            Some(crate::boot::systemd_boot::image_loader(&tree.fs, &repo)?)
        }
        _ => None,
    };
    let (mode, decided_by) = match early {
        Some((m, by)) => (m, by),
        None => (image_config.unified.unwrap_or_default(), "image-config"),
    };
    let mut unified_summary = None;
    if let Some(policy) = mode.policy() {
        let probe = unified::probe_reflinks(sysroot)?;
        let message = if early.is_none() {
            // Fetched plainly: bring the image into the store from composefs.
            mode.require_reflinks(&probe, sysroot.path())?;
            let origin = opts.target.clone().unwrap_or_else(|| opts.source.clone());
            let r = unified::import_into_store(
                sysroot,
                &repo,
                &manifest_digest,
                Some(&origin),
                unified::NameRule::Take,
                policy,
                &probe,
                &progress,
                registry.as_ref(),
            )
            .await?;
            let m = unified::import_message(mode, &probe, &r);
            progress::step(&progress, m.clone());
            m
        } else if probe.supported {
            format!(
                "unified ({mode}): files shared by reflinks between containers-storage and composefs"
            )
        } else if registry.is_some() {
            // An image in Docker's format went composefs first (see
            // `unified::fetch_unified`): the store got copies.
            format!(
                "unified ({mode}): no reflinks on {}: the image's files were copied into containers-storage (an image in Docker's format is pulled into composefs first)",
                probe.describe()
            )
        } else {
            format!(
                "unified ({mode}): no reflinks on {}: fell back to copies ({} files hardlinked, {} copied)",
                probe.describe(),
                stats.objects_hardlinked,
                stats.objects_copied
            )
        };
        unified_summary = Some(UnifiedSummary {
            mode,
            reflinks: probe.supported,
            decided_by: decided_by.to_string(),
            message,
        });
    }
    let mut extra_kargs: Vec<String> = opts.root_karg();
    extra_kargs.extend(host_config.kargs.iter().cloned());
    extra_kargs.extend(opts.kargs.iter().cloned());

    progress::step(&progress, format!("Deploying {id}"));
    let origin_image = opts.target.clone().unwrap_or_else(|| opts.source.clone());
    let deployed = create::deploy_image(
        sysroot,
        &repo,
        &DeployRequest {
            manifest_digest: &manifest_digest,
            tree: &tree,
            registry: registry.as_ref(),
            id: &id,
            origin_image: &origin_image,
            kargs: None,
            extra_kargs: &extra_kargs,
            reusable_kernels: &[],
        },
        &mut |p, on_boot| {
            if on_boot {
                created.track_boot(p)
            } else {
                created.track(p)
            }
        },
    )?;
    // The summary of the result says how the deployment's files were
    // written (`deployment_files`).
    let entry = deployed.entry;
    drop(repo);
    // What the pull superseded: composefs-oci writes the config and
    // manifest splitstreams, then writes them again with the boot image's
    // reference (the first versions are garbage), and an
    // ostree-encapsulated image's own EROFS images (issue 22). An upgrade's
    // GC collects them; an install collects them here, so that a fresh host
    // has nothing to collect (`gc --assert-no-op`). The image is tagged.
    let _ = superseded;
    composefs_repo::open(sysroot)?
        .gc(&[])
        .context("collecting what the pull superseded")?;
    crate::crashpoint::hit("install:after-deploy");
    if let Some(u) = &unified_summary {
        unified::write_flag(sysroot, u.mode)?;
        crate::crashpoint::hit("install:after-flag");
    }
    crate::fs::xfs_prealloc::trim_quietly(sysroot);
    let dir = sysroot.dir();
    // The writers' lock file exists from the start, so that a failed later
    // operation leaves the root exactly as it was.
    drop(crate::lock::lock(sysroot)?);
    if let Some(loader) = &loader {
        crate::boot::systemd_boot::install(sysroot.boot_root(), loader)
            .context("installing systemd-boot onto the ESP")?;
        crate::crashpoint::hit("install:after-loader");
    }
    if sysroot.esp_path().is_none() && !dir.try_exists(GRUB2_DIR)? {
        use std::os::unix::fs::PermissionsExt;
        dir.create_dir_all(GRUB2_DIR)?;
        dir.set_permissions(
            GRUB2_DIR,
            cap_std_ext::cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(0o755)),
        )?;
    }
    let (boot, entries_dir) = (sysroot.boot_root(), sysroot.entries_dir());
    boot.create_dir_all(entries_dir)?;
    util::atomic_write(
        boot,
        format!("{entries_dir}/{}", entry.file_name),
        entry.render().as_bytes(),
    )
    .context("writing the boot entry")?;
    util::fsync_dir(boot, Some(Path::new(entries_dir)))?;
    Ok(InstallResult {
        deployment_id: id,
        manifest_digest: registry.map_or(manifest_digest, |r| r.digest),
        entry_file: entry.file_name,
        kernel_version: deployed.kernel_version,
        bytes_stored: stats.new_bytes() + stats.bytes_inlined,
        unified: unified_summary,
        deployment_files: deployed.files,
    })
}
