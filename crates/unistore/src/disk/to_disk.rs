//! `install to-disk`: a whole disk (or a disk image file) made bootable:
//! bootc's partition table, the root filesystem, the host on it, and the ESP
//! with systemd-boot, the entries and the kernels.
//!
//! Order:
//! 1. refuse, with the disk untouched: a target of the wrong kind, a mounted
//!    disk (or a file attached to a loop device), existing partitions or a
//!    filesystem without `--wipe`, an ostree backend, a disk too small for
//!    the image (its layers' size from the manifest), an unknown filesystem;
//! 2. a disk image file is built as a new file beside the target and renamed
//!    over it at the very end (the "done" marker): a failure anywhere leaves
//!    the target as it was;
//! 3. the GPT ([`super::gpt`]), the root filesystem on the root partition
//!    (label `root`, a fresh UUID) reached through its partition device or a
//!    loop device at its offset (kernels that show no partitions on loop
//!    devices), mounted in a scratch directory;
//! 4. `install to-filesystem` onto it with the ESP staged as a directory
//!    ([`crate::boot::systemd_boot`], entries and kernels under `EFI/Linux`),
//!    `root=UUID=<uuid>`; the deployment's `/etc/fstab` mounts the ESP at
//!    `/boot`, where the running host's commands find it;
//! 5. the ESP formatted and filled without mounting it ([`super::esp`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{esp, gpt, run};
use crate::command::install::{InstallOpts, InstallResult};
use crate::progress::{self, Progress};

/// Root filesystems `to-disk` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFs {
    /// XFS with reflinks.
    Xfs,
    /// ext4 with the `verity` feature (no reflinks).
    Ext4,
    /// btrfs, top level.
    Btrfs,
}

impl std::str::FromStr for RootFs {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "xfs" => Ok(Self::Xfs),
            "ext4" => Ok(Self::Ext4),
            "btrfs" => Ok(Self::Btrfs),
            _ => bail!("unknown root filesystem {s:?} (xfs, ext4 or btrfs)"),
        }
    }
}

impl RootFs {
    /// The smallest root partition mkfs accepts, with room to spare.
    fn min_bytes(self) -> u64 {
        match self {
            Self::Xfs => 320 << 20,
            Self::Ext4 => 64 << 20,
            Self::Btrfs => 128 << 20,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Xfs => "xfs",
            Self::Ext4 => "ext4",
            Self::Btrfs => "btrfs",
        }
    }
}

/// Options of `install to-disk`.
#[derive(Debug, Clone)]
pub struct ToDiskOpts {
    /// The block device, or the disk image file (`via_loopback`).
    pub device: PathBuf,
    /// Overwrite existing partitions or filesystems.
    pub wipe: bool,
    /// The root filesystem; `None`: the image's install config says.
    pub filesystem: Option<RootFs>,
    /// The root partition's size; `None`: the rest of the disk.
    pub root_size: Option<u64>,
    /// `device` is a regular file.
    pub via_loopback: bool,
    /// The install's options (`esp` and `root_mount_spec` are set here).
    pub install: InstallOpts,
    /// Devices the caller found mounted (`/proc/self/mountinfo`'s sources).
    pub mounted_sources: Vec<PathBuf>,
    /// A scratch directory on the host (mount points, the staged ESP).
    pub work_dir: PathBuf,
}

/// What `to-disk` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToDiskResult {
    /// The disk.
    pub device: PathBuf,
    /// The root filesystem.
    pub filesystem: RootFs,
    /// Its UUID (`root=UUID=`).
    pub root_uuid: String,
    /// The ESP's volume UUID.
    pub esp_uuid: String,
    /// The partitions written.
    pub partitions: Vec<PartitionSummary>,
    /// The host installed on the root filesystem.
    pub install: InstallResult,
}

/// One partition of the result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionSummary {
    /// Its GPT name.
    pub name: String,
    /// Its type GUID.
    pub type_guid: String,
    /// Byte offset.
    pub offset: u64,
    /// Size in bytes.
    pub bytes: u64,
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Random bytes for UUIDs and the FAT volume id.
fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b)
}

fn new_uuid() -> Result<String> {
    let mut b = random::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The disk's size, after checking it is the kind asked for and unused.
fn check_target(o: &ToDiskOpts) -> Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let dev = &o.device;
    let meta = std::fs::metadata(dev).with_context(|| {
        if o.via_loopback {
            format!(
                "{}: no such file (create it first, e.g. truncate -s 10G {})",
                dev.display(),
                dev.display()
            )
        } else {
            format!("{}: no such device", dev.display())
        }
    })?;
    let size = if o.via_loopback {
        if !meta.is_file() {
            bail!("--via-loopback: {} is not a regular file", dev.display());
        }
        let attached = run(Command::new("losetup").arg("-j").arg(dev), "losetup -j")?;
        if !attached.is_empty() {
            let loops: Vec<&str> = attached
                .lines()
                .filter_map(|l| l.split(':').next())
                .collect();
            bail!(
                "{} is in use by loop device {} (detach it first: losetup -d)",
                dev.display(),
                loops.join(", ")
            );
        }
        meta.len()
    } else {
        if !meta.file_type().is_block_device() {
            bail!(
                "{} is not a block device (for a disk image file, pass --via-loopback)",
                dev.display()
            );
        }
        let canon = std::fs::canonicalize(dev)?;
        let name = canon.to_string_lossy().to_string();
        if o.mounted_sources.iter().any(|m| {
            let m = m.to_string_lossy();
            m == name
                || m.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.trim_start_matches('p').parse::<u32>().is_ok())
        }) {
            bail!("Device {} is mounted", dev.display());
        }
        run(
            Command::new("blockdev").arg("--getsize64").arg(dev),
            "blockdev --getsize64",
        )?
        .parse()
        .context("reading the device's size")?
    };
    if !o.wipe {
        let out = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(dev)
            .output()
            .context("running blkid")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
        };
        if field("PTTYPE").is_some() {
            bail!(
                "Detected existing partitions on {}; use e.g. `wipefs` or --wipe if you intend to overwrite",
                dev.display()
            );
        }
        if let Some(t) = field("TYPE") {
            bail!(
                "Detected an existing {t} filesystem on {}; use e.g. `wipefs` or --wipe if you intend to overwrite",
                dev.display()
            );
        }
    }
    Ok(size)
}

/// Refuses a disk too small for the image (its compressed layers, as the
/// manifest says, taken three times for the unpacked files and the
/// deployment, plus 512 MiB) before anything is written.
fn check_size(o: &ToDiskOpts, disk: u64, fs: RootFs, layer_bytes: u64) -> Result<()> {
    let root_min = (3 * layer_bytes + (512 << 20)).max(fs.min_bytes());
    let fixed = gpt::BIOS_BOOT_SIZE + gpt::ESP_SIZE + gpt::OVERHEAD;
    let root = match o.root_size {
        Some(r) if r < root_min => bail!(
            "--root-size {} is too small for the image: its root needs at least {} (3× its {} of compressed layers + 512 MiB)",
            gib(r),
            gib(root_min),
            gib(layer_bytes)
        ),
        Some(r) => r,
        None => root_min,
    };
    let need = fixed + root;
    if disk < need {
        bail!(
            "{} is {}, too small for the image: it needs at least {} (1 MiB BIOS boot + 1 GiB ESP + a root of {}: 3× its {} of compressed layers + 512 MiB)",
            o.device.display(),
            gib(disk),
            gib(need),
            gib(root),
            gib(layer_bytes)
        );
    }
    Ok(())
}

/// Everything set up on the way, undone in reverse on failure.
#[derive(Default)]
struct Cleanup {
    mounted: Option<PathBuf>,
    loopdev: Option<PathBuf>,
    dirs: Vec<PathBuf>,
    new_file: Option<PathBuf>,
}

impl Cleanup {
    fn unmount(&mut self) -> Result<()> {
        if let Some(m) = self.mounted.take() {
            run(Command::new("umount").arg(&m), "umount")?;
        }
        if let Some(l) = self.loopdev.take() {
            run(Command::new("losetup").arg("-d").arg(&l), "losetup -d")?;
        }
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("cleaning up: {e:#}");
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Some(f) = &self.new_file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The root filesystem's device: the partition's own node when the kernel
/// shows it (a real disk), else a loop device at the partition's offset.
fn root_device(
    disk: &Path,
    part_no: usize,
    part: &gpt::Partition,
    via_loopback: bool,
    c: &mut Cleanup,
) -> Result<PathBuf> {
    if !via_loopback {
        let _ = Command::new("partx").arg("-u").arg(disk).status();
        let _ = Command::new("udevadm").arg("settle").status();
        let d = disk.to_string_lossy();
        let sep = if d.ends_with(|ch: char| ch.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        let node = PathBuf::from(format!("{d}{sep}{part_no}"));
        if node.exists() {
            return Ok(node);
        }
    }
    let dev = run(
        Command::new("losetup")
            .args(["-f", "--show"])
            .arg(format!("--offset={}", part.offset()))
            .arg(format!("--sizelimit={}", part.bytes()))
            .arg(disk),
        "losetup",
    )?;
    let dev = PathBuf::from(dev);
    c.loopdev = Some(dev.clone());
    Ok(dev)
}

fn mkfs(fs: RootFs, dev: &Path, uuid: &str) -> Result<()> {
    let mut cmd;
    match fs {
        RootFs::Xfs => {
            cmd = Command::new("mkfs.xfs");
            cmd.args(["-q", "-f", "-L", "root", "-m"])
                .arg(format!("uuid={uuid},reflink=1"));
        }
        RootFs::Ext4 => {
            cmd = Command::new("mkfs.ext4");
            cmd.args(["-q", "-F", "-L", "root", "-U", uuid, "-O", "verity"]);
        }
        RootFs::Btrfs => {
            cmd = Command::new("mkfs.btrfs");
            cmd.args(["-q", "-f", "-L", "root", "-U", uuid]);
        }
    }
    run(cmd.arg(dev), &format!("mkfs.{}", fs.name()))?;
    Ok(())
}

/// The new disk image built beside `device`, renamed over it at the end.
fn new_file_name(device: &Path) -> Result<PathBuf> {
    let name = device.file_name().context("the disk file has no name")?;
    Ok(device.with_file_name(format!(".{}.unistore-new", name.to_string_lossy())))
}

/// Removes what an interrupted run (killed, so no cleanup ran) left of the
/// new disk image `new`: its loop devices, unmounted first where mounted,
/// then the file. The target was never touched.
fn remove_leftover(new: &Path, mounted_sources: &[PathBuf]) -> Result<()> {
    if !new.exists() {
        return Ok(());
    }
    tracing::info!("removing {}, left by an interrupted install", new.display());
    let attached = run(Command::new("losetup").arg("-j").arg(new), "losetup -j")?;
    for dev in attached.lines().filter_map(|l| l.split(':').next()) {
        let dev = PathBuf::from(dev);
        if mounted_sources.contains(&dev) {
            run(
                Command::new("umount").arg(&dev),
                "umount (a leftover mount)",
            )?;
        }
        run(Command::new("losetup").arg("-d").arg(&dev), "losetup -d")?;
    }
    std::fs::remove_file(new).with_context(|| format!("removing {}", new.display()))?;
    Ok(())
}

/// The ESP line of the deployment's `/etc/fstab`.
fn add_esp_to_fstab(root: &Path, deployment_id: &str, esp_uuid: &str) -> Result<()> {
    let fstab = root
        .join(crate::deployment::state_dir(deployment_id))
        .join("etc/fstab");
    let mut text = std::fs::read_to_string(&fstab).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "# The ESP: systemd-boot, its entries and the kernels (unistore install to-disk)\nUUID={esp_uuid} /boot vfat umask=0077,shortname=winnt,nofail 0 2\n"
    ));
    let tmp = fstab.with_extension("unistore-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &fstab).context("writing the deployment's /etc/fstab")?;
    Ok(())
}

/// Installs onto a whole disk. See the module documentation.
pub async fn install_to_disk(mut o: ToDiskOpts, progress: Progress) -> Result<ToDiskResult> {
    // 1. Checks, nothing written.
    let disk_size = check_target(&o)?;
    crate::source::sigpolicy::check(&o.install.fetch)?;
    progress::step(&progress, format!("Inspecting {}", o.install.source));
    let remote =
        crate::source::remote::inspect_remote(&o.install.source, &o.install.fetch, false).await?;
    let fs = match o.filesystem {
        Some(f) => f,
        None => probe_root_fs(&o, &progress).await?,
    };
    check_size(&o, disk_size, fs, remote.layer_bytes)?;

    // 2. The disk to write: a new file beside a disk image.
    let mut c = Cleanup::default();
    std::fs::create_dir_all(&o.work_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("unistore-to-disk.")
        .tempdir_in(&o.work_dir)?
        .keep();
    c.dirs.push(scratch.clone());
    let disk = if o.via_loopback {
        let new = new_file_name(&o.device)?;
        remove_leftover(&new, &o.mounted_sources)?;
        let f =
            std::fs::File::create(&new).with_context(|| format!("creating {}", new.display()))?;
        c.new_file = Some(new.clone());
        f.set_len(disk_size)?;
        new
    } else {
        o.device.clone()
    };

    // 3. Partitions and the root filesystem.
    progress::step(
        &progress,
        format!(
            "Partitioning {} (GPT: BIOS-BOOT, EFI-SYSTEM, root)",
            o.device.display()
        ),
    );
    gpt::write(&disk, o.root_size)?;
    crate::crashpoint::hit("to-disk:after-partition");
    let parts = gpt::read(&disk)?;
    let (esp_part, root_part) = gpt::esp_and_root(&parts)?;
    let root_no = parts.iter().position(|p| p == root_part).unwrap_or(2) + 1;
    let root_uuid = new_uuid()?;
    let dev = root_device(&disk, root_no, root_part, o.via_loopback, &mut c)?;
    progress::step(
        &progress,
        format!(
            "Making the {} root filesystem (UUID {root_uuid})",
            fs.name()
        ),
    );
    mkfs(fs, &dev, &root_uuid)?;
    crate::crashpoint::hit("to-disk:after-mkfs");
    let mnt = scratch.join("root");
    let staged_esp = scratch.join("esp");
    std::fs::create_dir_all(&mnt)?;
    std::fs::create_dir_all(&staged_esp)?;
    run(Command::new("mount").arg(&dev).arg(&mnt), "mount")?;
    c.mounted = Some(mnt.clone());

    // 4. The host.
    o.install.root_mount_spec = Some(format!("UUID={root_uuid}"));
    o.install.root_flags = None;
    o.install.esp = Some(staged_esp.clone());
    let install = crate::backends::composefs_host::install::install_to_filesystem(
        &mnt,
        &o.install,
        progress.clone(),
    )
    .await?;
    crate::crashpoint::hit("to-disk:after-install");
    let vol_id = u32::from_le_bytes(random::<4>()?);
    let esp_uuid = esp::volume_uuid(vol_id);
    add_esp_to_fstab(&mnt, &install.deployment_id, &esp_uuid)?;
    rustix::fs::sync();
    c.unmount()?;

    // 5. The ESP.
    progress::step(
        &progress,
        format!(
            "Writing the ESP ({}, FAT32, {})",
            gib(esp_part.bytes()),
            esp::LABEL
        ),
    );
    esp::format(&disk, esp_part.offset(), esp_part.bytes(), vol_id)?;
    esp::copy_in(&disk, esp_part.offset(), &staged_esp)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)?
        .sync_all()?;
    crate::crashpoint::hit("to-disk:after-esp");
    if o.via_loopback {
        std::fs::rename(&disk, &o.device)
            .with_context(|| format!("renaming the new disk image over {}", o.device.display()))?;
        c.new_file = None;
        if let Some(parent) = o.device.parent() {
            std::fs::File::open(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })?
            .sync_all()?;
        }
    }
    let partitions = parts
        .iter()
        .map(|p| PartitionSummary {
            name: p.name.clone(),
            type_guid: p.type_guid.clone(),
            offset: p.offset(),
            bytes: p.bytes(),
        })
        .collect();
    Ok(ToDiskResult {
        device: o.device.clone(),
        filesystem: fs,
        root_uuid,
        esp_uuid,
        partitions,
        install,
    })
}

/// The root filesystem the image's install config names
/// (`[install.filesystem.root] type`), read by pulling the image into a
/// scratch repository (so the disk stays untouched when it names none).
async fn probe_root_fs(o: &ToDiskOpts, progress: &Progress) -> Result<RootFs> {
    progress::step(
        progress,
        "No --filesystem: reading the image's install config (a first pull into a scratch repository)",
    );
    std::fs::create_dir_all(&o.work_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("unistore-probe.")
        .tempdir_in(&o.work_dir)?;
    let sysroot = crate::Sysroot::open(scratch.path())?;
    let (repo, _) = crate::stores::composefs_repo::init(&sysroot)?;
    let mut fetch = o.install.fetch.clone();
    fetch.no_boot_image = true;
    let pulled =
        crate::source::pull::pull(&repo, &o.install.source, &fetch, progress.clone()).await?;
    let tree = crate::deployment::create::ImageTree::read(&repo, &pulled.manifest_digest)?;
    let cfg = crate::install_config::InstallConfig::from_image(
        &tree.fs,
        &repo,
        &tree.img.architecture(),
    )?;
    match cfg.root_fs_type {
        Some(t) => t
            .parse()
            .with_context(|| format!("the image's install config names the root filesystem {t:?}")),
        None => bail!(
            "no --filesystem given, and the image's install config names none ([install.filesystem.root] type): pass --filesystem xfs|ext4|btrfs"
        ),
    }
}
