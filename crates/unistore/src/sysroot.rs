//! The physical root of a host and the bootc-compatible layout beneath it.
//!
//! A [`Sysroot`] is a directory opened once; everything below is reached
//! relative to it. On a booted host it is `/sysroot`; at install time it is
//! the target mount. The library never decides which: the caller does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cap_std_ext::cap_std::{self, fs::Dir};

/// `composefs/`: the composefs object repository.
pub const COMPOSEFS_DIR: &str = "composefs";
/// `state/deploy/`: one directory per deployment.
pub const STATE_DEPLOY_DIR: &str = "state/deploy";
/// The shared `/var` every deployment links to.
pub const SHARED_VAR_DIR: &str = "state/os/default/var";
/// `boot/`: kernels, initrds and the loader entries.
pub const BOOT_DIR: &str = "boot";
/// Loader entries of the current boot menu.
pub const ENTRIES_DIR: &str = "boot/loader/entries";
/// Loader entries of the next boot, swapped in at finalize.
pub const STAGED_ENTRIES_DIR: &str = "boot/loader/entries.staged";
/// GRUB's directory: bootc (on a machine without UEFI, whose loader it
/// takes for GRUB) fails every command without it, even with the entries
/// under `boot/loader/entries`.
pub const GRUB2_DIR: &str = "boot/grub2";
/// Prefix of per-deployment kernel directories under `boot/`.
pub const KERNEL_DIR_PREFIX: &str = "bootc_composefs-";
/// Tag prefix every deployment's manifest carries in the repository.
pub const BOOTC_TAG_PREFIX: &str = "localhost/bootc-";
/// `composefs/bootc/`: bootc's state next to the repository.
pub const BOOTC_STATE_DIR: &str = "composefs/bootc";
/// The host-owned containers-storage (overlay driver) podman is pointed at.
pub const HOST_STORAGE_DIR: &str = "composefs/bootc/storage";
/// Compatibility link `ostree/bootc -> ../composefs/bootc`.
pub const OSTREE_BOOTC_LINK: &str = "ostree/bootc";
/// The unified-storage flag, written last by `set-unified full`.
pub const UNIFIED_FLAG: &str = "composefs/bootc.json";

/// What "booted" means for this root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootedMode {
    /// The root is not the running system (an install target, a disk image):
    /// the primary boot entry is taken as booted, as if the host had just
    /// booted it.
    Offline,
    /// The running system, which booted the deployment with this id (the
    /// caller read it from the kernel command line).
    Running { booted_id: String },
}

/// The physical root of a host.
#[derive(Debug)]
pub struct Sysroot {
    dir: Dir,
    path: PathBuf,
    mode: BootedMode,
    run: PathBuf,
    ostree_root: Option<PathBuf>,
    esp: Option<(Dir, PathBuf)>,
}

/// Where loader entries and kernels live on an ESP read by systemd-boot
/// (bootc's composefs backend with `--bootloader systemd`): entries in
/// `loader/entries/`, kernels in `EFI/Linux/bootc_composefs-<id>/`, paths
/// in entries absolute from the ESP's root.
pub const ESP_ENTRIES_DIR: &str = "loader/entries";
/// The next boot's entries on an ESP.
pub const ESP_STAGED_ENTRIES_DIR: &str = "loader/entries.staged";
/// The directory of kernel directories on an ESP.
pub const ESP_KERNELS_DIR: &str = "EFI/Linux";

impl Sysroot {
    /// Opens `path` as an offline root (see [`BootedMode::Offline`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_mode(path, BootedMode::Offline)
    }

    /// Opens `path` with an explicit notion of which deployment is booted.
    pub fn open_with_mode(path: impl AsRef<Path>, mode: BootedMode) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path)
            .with_context(|| format!("root {} does not exist", path.display()))?;
        if !meta.is_dir() {
            bail!("root {} is not a directory", path.display());
        }
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("resolving root {}", path.display()))?;
        let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority())
            .with_context(|| format!("opening root {}", path.display()))?;
        // Offline roots keep their runtime state (the staged-deployment
        // marker) under `<root>/run`; the running system's caller passes
        // `/run` with [`Sysroot::with_run_dir`].
        let run = path.join("run");
        Ok(Self {
            dir,
            path,
            mode,
            run,
            ostree_root: None,
            esp: None,
        })
    }

    /// The root libostree is to open on a booted ostree host: `/` (the
    /// booted deployment, whose `/ostree` leads to the physical root's and
    /// whose `/boot` is the physical `/boot`), where libostree recognizes
    /// the booted deployment and can stage. The caller passes it.
    pub fn with_ostree_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.ostree_root = Some(root.into());
        self
    }

    /// The root libostree opens: [`Self::with_ostree_root`]'s, else this
    /// root.
    pub fn ostree_path(&self) -> &Path {
        self.ostree_root.as_deref().unwrap_or(&self.path)
    }

    /// Boots through systemd-boot from the ESP at `esp` (mounted; at install
    /// time a directory staged for the ESP): loader entries and kernels live
    /// there ([`ESP_ENTRIES_DIR`], [`ESP_KERNELS_DIR`]), not under `boot/`.
    /// The caller finds the ESP (a running host's `/boot`, an install
    /// target's `boot/efi`).
    pub fn with_esp(mut self, esp: impl AsRef<Path>) -> Result<Self> {
        let esp = esp.as_ref();
        let dir = Dir::open_ambient_dir(esp, cap_std::ambient_authority())
            .with_context(|| format!("opening the ESP {}", esp.display()))?;
        self.esp = Some((dir, esp.to_path_buf()));
        Ok(self)
    }

    /// The ESP's path, when the host boots through systemd-boot from one.
    pub fn esp_path(&self) -> Option<&Path> {
        self.esp.as_ref().map(|(_, p)| p.as_path())
    }

    /// The directory the boot loader's paths below are relative to: the
    /// ESP, else this root (whose `boot/` holds them).
    pub fn boot_root(&self) -> &Dir {
        self.esp.as_ref().map_or(&self.dir, |(d, _)| d)
    }

    /// [`Self::boot_root`]'s path.
    pub fn boot_root_path(&self) -> &Path {
        self.esp.as_ref().map_or(&self.path, |(_, p)| p.as_path())
    }

    /// The current loader entries, relative to [`Self::boot_root`].
    pub fn entries_dir(&self) -> &'static str {
        if self.esp.is_some() {
            ESP_ENTRIES_DIR
        } else {
            ENTRIES_DIR
        }
    }

    /// The staged loader entries, relative to [`Self::boot_root`].
    pub fn staged_entries_dir(&self) -> &'static str {
        if self.esp.is_some() {
            ESP_STAGED_ENTRIES_DIR
        } else {
            STAGED_ENTRIES_DIR
        }
    }

    /// The directory holding kernel directories, relative to
    /// [`Self::boot_root`].
    pub fn kernels_dir(&self) -> &'static str {
        if self.esp.is_some() {
            ESP_KERNELS_DIR
        } else {
            BOOT_DIR
        }
    }

    /// Uses `run` as the runtime directory (`/run` on the running system).
    pub fn with_run_dir(mut self, run: impl Into<PathBuf>) -> Self {
        self.run = run.into();
        self
    }

    /// The runtime directory (`/run` on the running system).
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// The root directory handle.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The root's absolute path (needed by peers such as skopeo and mount).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Absolute path of something below the root.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Which deployment counts as booted.
    pub fn booted_mode(&self) -> &BootedMode {
        &self.mode
    }

    /// Whether `boot/` sits on its own filesystem (a separate /boot
    /// partition): loader entries then name files relative to it.
    pub fn boot_is_separate_mount(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata(&self.path)?;
        match std::fs::metadata(self.path.join(BOOT_DIR)) {
            Ok(boot) => Ok(boot.dev() != root.dev()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The path prefix loader entries use to name files in
    /// [`Self::kernels_dir`].
    pub fn boot_path_prefix(&self) -> Result<&'static str> {
        Ok(if self.esp.is_some() {
            "/EFI/Linux"
        } else if self.boot_is_separate_mount()? {
            ""
        } else {
            "/boot"
        })
    }
}
