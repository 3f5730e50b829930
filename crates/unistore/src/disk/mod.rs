//! Whole disks: `install to-disk` and what it writes besides the host.
//!
//! * [`gpt`]: bootc's partition table (BIOS boot, a 1 GiB ESP, root), by
//!   `sfdisk`;
//! * [`esp`]: the FAT ESP, formatted and filled without mounting it
//!   (`mkfs.fat --offset`, mtools);
//! * [`to_disk`]: the command: checks, partitions, the root filesystem, the
//!   host (through the composefs backend's install, with the ESP), the ESP.

pub mod esp;
pub mod gpt;
pub mod to_disk;

use anyhow::{Context, Result, bail};

/// Runs a tool; its trimmed stdout, or an error with `what` and its stderr.
fn run(cmd: &mut std::process::Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
