//! Loop-mounted XFS/ext4 filesystems for tests that need reflinks, or their absence.

use super::cmd::run;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Filesystem type of a [`LoopFs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// XFS with reflinks (`mkfs.xfs -m reflink=1`); needs at least 300 MiB.
    Xfs,
    /// ext4: no reflinks (the copy-fallback case).
    Ext4,
    /// btrfs (reflinks; inline extents for small files); needs at least
    /// about 120 MiB.
    Btrfs,
}

/// A sparse image file under `/var/tmp`, formatted, attached to a free loop device and
/// mounted at a fresh directory. Dropping it unmounts, detaches and removes everything.
#[derive(Debug)]
pub struct LoopFs {
    kind: FsKind,
    workdir: Option<tempfile::TempDir>,
    mountpoint: PathBuf,
    device: Option<String>,
    mounted: bool,
    /// `-o` of every mount (e.g. `subvol=root`).
    mount_opts: Option<String>,
}

impl LoopFs {
    /// A btrfs whose subvolume `subvol` (created at its top level) is what
    /// is mounted, as Fedora lays out its root (`-o subvol=root`).
    pub fn new_btrfs_subvol(size_mib: u64, subvol: &str) -> Result<LoopFs> {
        let mut fs = Self::new(FsKind::Btrfs, size_mib)?;
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(fs.mountpoint.join(subvol)))?;
        fs.detach()?;
        fs.mount_opts = Some(format!("subvol={subvol}"));
        fs.attach()?;
        Ok(fs)
    }

    /// Create and mount a `size_mib` MiB filesystem of `kind`. Needs root.
    pub fn new(kind: FsKind, size_mib: u64) -> Result<LoopFs> {
        let workdir = tempfile::Builder::new()
            .prefix("unistore-loopfs-")
            .tempdir_in("/var/tmp")
            .context("creating work dir under /var/tmp")?;
        let image = workdir.path().join("disk.img");
        let mountpoint = workdir.path().join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(size_mib * 1024 * 1024)?;
        drop(f);
        let mut fs = LoopFs {
            kind,
            workdir: Some(workdir),
            mountpoint,
            device: None,
            mounted: false,
            mount_opts: None,
        };
        match kind {
            FsKind::Xfs => run(Command::new("mkfs.xfs")
                .args(["-q", "-f", "-m", "reflink=1"])
                .arg(&image))?,
            FsKind::Ext4 => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?,
            FsKind::Btrfs => run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image))?,
        };
        fs.attach()?;
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem type.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The loop device, e.g. `/dev/loop3`.
    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("")
    }

    /// The image file (a whole-disk filesystem, no partition table), e.g.
    /// for a VM's virtual disk.
    pub fn image(&self) -> PathBuf {
        self.workdir
            .as_ref()
            .map(|w| w.path().join("disk.img"))
            .unwrap_or_default()
    }

    /// Unmounts and detaches the loop device, so that something else (a VM)
    /// may use the image; [`LoopFs::attach`] mounts it again.
    pub fn detach(&mut self) -> Result<()> {
        if self.mounted {
            run(Command::new("umount").arg(&self.mountpoint))?;
            self.mounted = false;
        }
        if let Some(dev) = self.device.take() {
            run(Command::new("losetup").arg("-d").arg(&dev))?;
        }
        Ok(())
    }

    /// Attaches the image to a fresh loop device (no stale block cache of an
    /// earlier one) and mounts it at the same mount point.
    pub fn attach(&mut self) -> Result<()> {
        if self.mounted {
            return Ok(());
        }
        let dev = run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(self.image()))?;
        let dev = dev.trim().to_string();
        anyhow::ensure!(dev.starts_with("/dev/"), "losetup printed {dev:?}");
        self.device = Some(dev.clone());
        let mut mount = Command::new("mount");
        if let Some(o) = &self.mount_opts {
            mount.args(["-o", o]);
        }
        run(mount.arg(&dev).arg(&self.mountpoint))?;
        self.mounted = true;
        Ok(())
    }

    /// Bytes available to unprivileged users (statvfs `f_bavail * f_frsize`).
    pub fn free_bytes(&self) -> u64 {
        rustix::fs::statvfs(&self.mountpoint)
            .map(|s| s.f_bavail * s.f_frsize)
            .unwrap_or(0)
    }

    fn umount(&mut self) -> Result<()> {
        if self.mounted {
            // A process that just exited may still hold it for a moment.
            let mut tries = 0;
            while let Err(e) = run(Command::new("umount").arg("-R").arg(&self.mountpoint)) {
                tries += 1;
                if tries == 150 {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            self.mounted = false;
        }
        Ok(())
    }

    fn mount(&mut self) -> Result<()> {
        let t = match self.kind {
            FsKind::Xfs => "xfs",
            FsKind::Ext4 => "ext4",
            FsKind::Btrfs => "btrfs",
        };
        let opts: Vec<&str> = match &self.mount_opts {
            Some(o) => vec!["-o", o],
            None => vec![],
        };
        // A loop device just attached may not read its image yet.
        let mut tries = 0;
        while let Err(e) = run(Command::new("mount")
            .args(["-t", t])
            .args(&opts)
            .arg(self.device())
            .arg(&self.mountpoint))
        {
            tries += 1;
            if tries == 30 {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.mounted = true;
        Ok(())
    }

    /// Unmounts and mounts again: after a shutdown (a simulated power
    /// cut), the mount replays the log as after a real one.
    pub fn remount(&mut self) -> Result<()> {
        self.umount()?;
        self.mount()
    }

    /// Saves the filesystem as it is now to `to` (a sparse copy of the
    /// image, taken unmounted so it is consistent).
    pub fn save(&mut self, to: &Path) -> Result<()> {
        self.umount()?;
        run(Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(self.image())
            .arg(to))?;
        self.mount()
    }

    /// Puts back a filesystem saved by [`Self::save`]: the loop device is
    /// detached (no stale cached blocks), the image replaced, attached
    /// again and mounted.
    pub fn restore(&mut self, from: &Path) -> Result<()> {
        self.umount()?;
        if let Some(dev) = self.device.take() {
            run(Command::new("losetup").arg("-d").arg(&dev))?;
        }
        let image = self.image();
        run(Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(from)
            .arg(&image))?;
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
        self.device = Some(dev.trim().to_string());
        self.mount()
    }

    /// Flush this filesystem (syncfs), so space accounting is up to date.
    pub fn sync(&self) {
        if let Ok(d) = std::fs::File::open(&self.mountpoint) {
            let _ = rustix::fs::syncfs(&d);
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg("-R")
                .arg(&self.mountpoint)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "unistore-fixtures: umount {:?} failed, detaching lazily",
                    self.mountpoint
                );
                let _ = Command::new("umount")
                    .args(["-R", "-l"])
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        if let Some(dev) = &self.device
            && let Err(e) = run(Command::new("losetup").arg("-d").arg(dev))
        {
            eprintln!("unistore-fixtures: {e:#}");
        }
        if let Some(w) = self.workdir.take()
            && let Err(e) = w.close()
        {
            eprintln!("unistore-fixtures: removing loopfs work dir: {e}");
        }
    }
}
