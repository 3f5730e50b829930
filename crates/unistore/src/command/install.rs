//! The shape of `install to-filesystem` on every kind of host: its options
//! and result, and the steps both backends' installs share (refusing a root
//! that holds a deployment, removing what a failed install created, the
//! host's install config).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::deployment;
use crate::fs::reflink;
use crate::install_config::{InstallConfig, UnifiedMode};
use crate::source::fetch_config;
use crate::source::imgref::ImageRef;
use crate::sysroot::{STATE_DEPLOY_DIR, Sysroot};
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
    pub fetch: fetch_config::FetchConfig,
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
    /// Mount options the initramfs needs for the root (`rootflags=`), e.g.
    /// `subvol=root` for a root on a btrfs subvolume (bootc adds it); the
    /// CLI finds them with the filesystem.
    pub root_flags: Option<String>,
    /// The mounted ESP (or, at `install to-disk`, the directory staged for
    /// it): loader entries and kernels go there, for systemd-boot, instead
    /// of under `boot/` (composefs backend only).
    pub esp: Option<PathBuf>,
    /// Which boot loader to install onto the ESP.
    pub bootloader: Bootloader,
    /// Install without fs-verity where bootc requires it (ext4, btrfs):
    /// bootc's `--allow-missing-verity`.
    pub allow_missing_verity: bool,
    /// Whether the running kernel has fs-verity at all (the CLI reads
    /// `/sys/fs/<fs>/features/verity`); `None`: unknown.
    pub kernel_verity: Option<bool>,
}

/// The boot loader an install puts on the ESP (bootc's `--bootloader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootloader {
    /// systemd-boot, from the image (`usr/lib/systemd/boot/efi`).
    #[default]
    Systemd,
    /// No loader: only entries and kernels (something else boots them).
    None,
}

impl std::str::FromStr for Bootloader {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "systemd" => Ok(Self::Systemd),
            "none" => Ok(Self::None),
            "grub" => bail!(
                "--bootloader grub: Debian 12's GRUB cannot read BLS entries (no blscfg); use systemd or none"
            ),
            _ => bail!("unknown boot loader {s:?} (systemd or none)"),
        }
    }
}

impl InstallOpts {
    /// The `root=` kernel argument, if any (the initramfs mounts the
    /// physical root from it), then `rootflags=`; they come before the
    /// host's and the command line's extra arguments.
    pub fn root_karg(&self) -> Vec<String> {
        let root = self
            .root_mount_spec
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| format!("root={s}"));
        let flags = self
            .root_flags
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| format!("rootflags={s}"));
        root.into_iter().chain(flags).collect()
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
    boot_paths: Vec<String>,
    pub(crate) armed: bool,
}

impl<'a> Created<'a> {
    pub(crate) fn new(sysroot: &'a Sysroot) -> Self {
        Self {
            sysroot,
            paths: vec![],
            boot_paths: vec![],
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
    /// Remember `rel` (relative to the boot root: the ESP, when there is
    /// one) for removal if it does not exist yet.
    pub(crate) fn track_boot(&mut self, rel: &str) -> Result<()> {
        if !self.sysroot.boot_root().try_exists(rel)? {
            self.boot_paths.push(rel.to_string());
        }
        Ok(())
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in self.boot_paths.iter().rev() {
            if let Err(e) = util::remove_all(self.sysroot.boot_root(), p) {
                tracing::warn!("cleaning up {p} on the ESP: {e:#}");
            }
        }
        for p in self.paths.iter().rev() {
            if let Err(e) = util::remove_all(self.sysroot.dir(), p) {
                // libostree marks each deployment directory immutable
                // (FS_IMMUTABLE_FL): what this install created, it may
                // unmark to remove (else a failed ostree install left
                // `ostree/deploy/...` without `ostree/repo`, and no retry
                // could work).
                let _ = std::process::Command::new("chattr")
                    .args(["-R", "-f", "-i"])
                    .arg(self.sysroot.join(p))
                    .status();
                if let Err(e2) = util::remove_all(self.sysroot.dir(), p) {
                    tracing::warn!("cleaning up {p}: {e:#}; again after chattr -i: {e2:#}");
                }
            }
        }
    }
}

/// Refuses a root that already holds a deployment (a boot entry). State
/// directories without any boot entry are what an interrupted install
/// left (it writes the entry last): garbage, removed, so that running the
/// install again completes (found by the crash walk).
pub(crate) fn check_empty(sysroot: &Sysroot) -> Result<()> {
    let entries = util::list_names(sysroot.boot_root(), sysroot.entries_dir())?;
    if let Some(e) = entries.iter().find(|n| n.ends_with(".conf")) {
        bail!(
            "{} already holds a deployment (boot entry {}/{}/{e})",
            sysroot.path().display(),
            sysroot.boot_root_path().display(),
            sysroot.entries_dir()
        );
    }
    for id in deployment::list_state_dirs(sysroot)? {
        tracing::info!("removing {STATE_DEPLOY_DIR}/{id}, left by an interrupted install");
        util::remove_all(sysroot.dir(), format!("{STATE_DEPLOY_DIR}/{id}"))?;
    }
    Ok(())
}

/// The filesystems on which bootc requires fs-verity (magic numbers of
/// `statfs`): ext4 and btrfs. XFS has no released fs-verity: optional.
fn verity_required_on(sysroot: &Sysroot) -> Option<&'static str> {
    let st = rustix::fs::fstatfs(sysroot.dir()).ok()?;
    match st.f_type as u64 {
        0xEF53 => Some("ext4"),
        0x9123_683E => Some("btrfs"),
        _ => None,
    }
}

/// bootc's fs-verity rule for a composefs host, before anything is
/// written: on ext4 and btrfs the repository must get fs-verity (a sealed
/// host, entries `composefs=<id>`), unless `--allow-missing-verity`. Where
/// the running kernel has no fs-verity at all the rule cannot be met by any
/// filesystem: one warning line says so and the install goes on without it
/// (entries `composefs=?<id>`, as with the flag). Where the kernel has it
/// but this filesystem cannot (ext4 made without `-O verity`), it is an
/// error naming the fix.
pub(crate) fn check_verity(sysroot: &Sysroot, opts: &InstallOpts) -> Result<()> {
    let Some(fs) = verity_required_on(sysroot) else {
        return Ok(());
    };
    if crate::stores::composefs_repo::probe_fsverity(sysroot) || opts.allow_missing_verity {
        return Ok(());
    }
    if opts.kernel_verity == Some(false) {
        tracing::warn!(
            "fs-verity is required on {fs} (bootc's rule) but this kernel has no fs-verity: installing without it (entries say composefs=?<id>); pass --allow-missing-verity to say so, or install from a kernel with fs-verity for a sealed host"
        );
        return Ok(());
    }
    let fix = if fs == "ext4" {
        "make it with `mkfs.ext4 -O verity` or enable it with `tune2fs -O verity`"
    } else {
        "btrfs has it from Linux 5.15"
    };
    bail!(
        "fs-verity is required on {fs} (bootc's rule) but {} cannot enable it ({fix}); pass --allow-missing-verity to install without it",
        sysroot.path().display()
    )
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
