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
//! 7. `boot/loader/entries/<entry>.conf` (tmp + rename + fsync).
//!
//! On failure everything this run created is removed, so the root is as it
//! was, or holds nothing a later run would take for a deployment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::deploy::{self, DeployRequest};
use crate::deployment;
use crate::imgref::ImageRef;
use crate::install_config::{InstallConfig, UnifiedMode};
use crate::progress::{self, Progress};
use crate::reflink;
use crate::stores::composefs_repo::{self, FetchConfig, Pulled, Repo};
use crate::sysroot::{BOOT_DIR, COMPOSEFS_DIR, ENTRIES_DIR, STATE_DEPLOY_DIR, Sysroot};
use crate::unified;
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
    pub fetch: composefs_repo::FetchConfig,
    /// `--unified`: wins over every install config file.
    pub unified: Option<UnifiedMode>,
    /// The host's own install config files (`/etc/bootc/install/*.toml`,
    /// then `/run/bootc/install/*.toml`), merged after the image's, in this
    /// order. The CLI finds them; the library only reads what it is given.
    pub host_config_files: Vec<PathBuf>,
    /// The ostree stateroot (`--stateroot`; ostree hosts only).
    pub stateroot: Option<String>,
    /// What the boot entry's `root=` names (bootc's `--root-mount-spec`),
    /// e.g. `UUID=<uuid of the target filesystem>`; `None` or empty: no
    /// `root=`. The CLI finds the target's filesystem; the library only
    /// writes what it is given.
    pub root_mount_spec: Option<String>,
}

impl InstallOpts {
    /// The `root=` kernel argument, if any (the initramfs mounts the
    /// physical root from it); it comes before the host's and the command
    /// line's extra arguments.
    pub fn root_karg(&self) -> Option<String> {
        self.root_mount_spec
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| format!("root={s}"))
    }
}

/// How the installed host stores its images, when unified.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnifiedSummary {
    /// The mode the host is marked with.
    pub mode: UnifiedMode,
    /// Whether the target filesystem has reflinks.
    pub reflinks: bool,
    /// Where the decision came from: `cli`, `host-config`, `image-config`.
    pub decided_by: String,
    /// What was done, for people.
    pub message: String,
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
    /// Unified storage, when enabled.
    pub unified: Option<UnifiedSummary>,
    /// How the deployment's files (`/etc`, `/var`, kernel and initrd) got
    /// their content from the composefs objects: reflinked or copied.
    pub deployment_files: reflink::Tally,
}

/// Paths the install may create, removed again on failure.
pub(crate) struct Created<'a> {
    sysroot: &'a Sysroot,
    paths: Vec<String>,
    pub(crate) armed: bool,
}

impl<'a> Created<'a> {
    pub(crate) fn new(sysroot: &'a Sysroot) -> Self {
        Self {
            sysroot,
            paths: vec![],
            armed: true,
        }
    }
    /// Remember `rel` for removal if it does not exist yet.
    pub(crate) fn track(&mut self, rel: &str) -> Result<()> {
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

/// Refuses a root that already holds a deployment (a boot entry). State
/// directories without any boot entry are what an interrupted install
/// left (it writes the entry last): garbage, removed, so that running the
/// install again completes (found by the crash walk).
pub(crate) fn check_empty(sysroot: &Sysroot) -> Result<()> {
    let entries = util::list_names(sysroot.dir(), ENTRIES_DIR)?;
    if let Some(e) = entries.iter().find(|n| n.ends_with(".conf")) {
        bail!(
            "{} already holds a deployment (boot entry {ENTRIES_DIR}/{e})",
            sysroot.path().display()
        );
    }
    for id in deployment::list_state_dirs(sysroot)? {
        tracing::info!("removing {STATE_DEPLOY_DIR}/{id}, left by an interrupted install");
        util::remove_all(sysroot.dir(), format!("{STATE_DEPLOY_DIR}/{id}"))?;
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
    crate::sigpolicy::check(&opts.fetch)?;
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
    for p in [COMPOSEFS_DIR, "state", BOOT_DIR, "boot/loader", "ostree"] {
        created.track(p)?;
    }
    let result = install_inner(&sysroot, opts, &host_config, early, progress, &mut created).await?;
    created.armed = false;
    Ok(result)
}

/// The architecture name install configs use for this machine.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// Merges the host's install config files, in order.
pub(crate) fn read_host_config(files: &[PathBuf]) -> Result<InstallConfig> {
    let mut cfg = InstallConfig::default();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading install config {}", f.display()))?;
        cfg.merge_text(&f.display().to_string(), &text, host_arch())?;
    }
    Ok(cfg)
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
        _ => composefs_repo::pull(repo, source, fetch, progress).await,
    }
}

/// The image's install config, then the host's on top.
fn effective_config(
    repo: &Repo,
    tree: &deploy::ImageTree,
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
    let Pulled {
        manifest_digest,
        boot_image_id: id,
        stats,
        registry,
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
    let tree = deploy::ImageTree::read(&repo, &manifest_digest)?;
    let image_config = effective_config(&repo, &tree, host_config)?;
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
    let mut extra_kargs: Vec<String> = opts.root_karg().into_iter().collect();
    extra_kargs.extend(host_config.kargs.iter().cloned());
    extra_kargs.extend(opts.kargs.iter().cloned());

    progress::step(&progress, format!("Deploying {id}"));
    let origin_image = opts.target.clone().unwrap_or_else(|| opts.source.clone());
    let deployed = deploy::deploy_image(
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
        &mut |p| created.track(p),
    )?;
    // The summary of the result says how the deployment's files were
    // written (`deployment_files`).
    let entry = deployed.entry;
    drop(repo);
    crate::crashpoint::hit("install:after-deploy");
    if let Some(u) = &unified_summary {
        unified::write_flag(sysroot, u.mode)?;
        crate::crashpoint::hit("install:after-flag");
    }
    crate::xfs_prealloc::trim_quietly(sysroot);
    let dir = sysroot.dir();
    // The writers' lock file exists from the start, so that a failed later
    // operation leaves the root exactly as it was.
    drop(crate::lock::lock(sysroot)?);
    dir.create_dir_all(ENTRIES_DIR)?;
    util::atomic_write(
        dir,
        format!("{ENTRIES_DIR}/{}", entry.file_name),
        entry.render().as_bytes(),
    )
    .context("writing the boot entry")?;
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
