//! The FAT ESP, made and filled without mounting it.
//!
//! A kernel without vfat (this project's build machines) cannot mount an
//! ESP, and `bootctl` 252 only writes onto a mounted one. So the install
//! writes the ESP's files into a plain directory (the loader, the entries,
//! the kernels: [`crate::boot::systemd_boot`], the composefs backend's
//! deployment), and this module formats the partition with `mkfs.fat` at its
//! offset in the disk and copies the directory in with mtools' `mcopy`. The
//! same works on a real block device, so there is one way, everywhere.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::run;

/// The ESP's filesystem label (bootc's).
pub const LABEL: &str = "EFI-SYSTEM";

/// The UUID the kernel and fstab use for a FAT volume id: `ABCD-1234`.
pub fn volume_uuid(volume_id: u32) -> String {
    format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xffff)
}

/// Formats FAT32 (label [`LABEL`], volume id `volume_id`) on the `bytes`
/// starting at byte `offset` of `target` (a disk file or device; offset 0
/// and the whole of it for a partition device).
pub fn format(target: &Path, offset: u64, bytes: u64, volume_id: u32) -> Result<()> {
    let mut cmd = Command::new("mkfs.fat");
    // -I: a whole disk with partitions is what an offset into it formats.
    cmd.args([
        "-I",
        "-F",
        "32",
        "-n",
        LABEL,
        "-i",
        &format!("{volume_id:08X}"),
    ]);
    if offset > 0 {
        cmd.arg(format!("--offset={}", offset / 512));
    }
    cmd.arg(target).arg((bytes / 1024).to_string());
    run(&mut cmd, "mkfs.fat (package dosfstools)").map(drop)
}

/// Copies the content of `staged` (a directory laid out as the ESP) into the
/// FAT filesystem at byte `offset` of `target`.
pub fn copy_in(target: &Path, offset: u64, staged: &Path) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(staged)
        .with_context(|| format!("reading {}", staged.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    if names.is_empty() {
        return Ok(());
    }
    let image = format!("{}@@{offset}", target.display());
    run(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-Q", "-i", &image])
            .args(&names)
            .arg("::/"),
        "mcopy (package mtools)",
    )
    .map(drop)
}

/// Lists a directory of the FAT filesystem at `offset` of `target` (as
/// `mdir -b`: one path per line), for checks.
pub fn list(target: &Path, offset: u64, dir: &str) -> Result<Vec<String>> {
    let image = format!("{}@@{offset}", target.display());
    let out = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args([
            "-b",
            "-i",
            &image,
            &format!("::/{}", dir.trim_start_matches('/')),
        ])
        .output()
        .context("running mdir (package mtools)")?;
    if !out.status.success() {
        bail!("mdir: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches("::").to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_uuid_is_fats_shape() {
        assert_eq!(volume_uuid(0x1234_abcd), "1234-ABCD");
        assert_eq!(volume_uuid(0x1), "0000-0001");
    }
}
