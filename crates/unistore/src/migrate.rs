//! Migrating roots written by older versions, idempotently and safely
//! against interruption at any step.
//!
//! Older installs named kernel directories `boot/<name>` without the
//! `bootc_composefs-` prefix. Steps, each one a no-op when already done:
//! 1. rename every such directory an entry names to the prefixed name
//!    (skipped when the prefixed one exists already);
//! 2. rewrite the entries that name an unprefixed directory into a new
//!    loader directory and exchange it with the old one.
//!
//! Interrupted after (1), the entries name a directory that is gone, the
//! prefixed one exists, and the next run does (2). Reads never migrate:
//! only writing operations call [`migrate`].

use anyhow::Result;
use serde::Serialize;

use crate::bootloader::{self, BlsEntry};
use crate::crashpoint;
use crate::sysroot::{BOOT_DIR, ENTRIES_DIR, KERNEL_DIR_PREFIX, STAGED_ENTRIES_DIR, Sysroot};

/// What a migration changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MigrateReport {
    /// Kernel directories renamed.
    pub renamed: Vec<String>,
    /// Loader directories rewritten.
    pub rewritten: Vec<String>,
}

fn fix_entry(e: &BlsEntry) -> Option<BlsEntry> {
    let kd = e.kernel_dir()?;
    if kd.starts_with(KERNEL_DIR_PREFIX) {
        return None;
    }
    let new = format!("{KERNEL_DIR_PREFIX}{kd}");
    let mut out = e.clone();
    let swap = |p: &str| {
        let suffix = format!("/{kd}/");
        match p.rfind(&suffix) {
            Some(i) => format!("{}/{new}/{}", &p[..i], &p[i + suffix.len()..]),
            None => p.to_string(),
        }
    };
    out.linux = swap(&e.linux);
    out.initrd = swap(&e.initrd);
    Some(out)
}

/// Migrates the root. The caller holds the sysroot lock.
pub fn migrate(sysroot: &Sysroot) -> Result<MigrateReport> {
    let mut report = MigrateReport::default();
    let dir = sysroot.dir();
    for rel in [ENTRIES_DIR, STAGED_ENTRIES_DIR] {
        let entries = bootloader::read_entries(sysroot, rel)?;
        if !entries.iter().any(|e| fix_entry(e).is_some()) {
            continue;
        }
        // 1. Rename kernel directories.
        for e in &entries {
            let Some(kd) = e.kernel_dir() else { continue };
            if kd.starts_with(KERNEL_DIR_PREFIX) {
                continue;
            }
            let old = format!("{BOOT_DIR}/{kd}");
            let new = format!("{BOOT_DIR}/{KERNEL_DIR_PREFIX}{kd}");
            if dir.try_exists(&old)? && !dir.try_exists(&new)? {
                dir.rename(&old, dir, &new)?;
                crate::util::fsync_dir(dir, Some(std::path::Path::new(BOOT_DIR)))?;
                report.renamed.push(kd.to_string());
            }
        }
        crashpoint::hit("migrate:after-rename");
        // 2. Rewrite the entries.
        let fixed: Vec<BlsEntry> = entries
            .iter()
            .map(|e| fix_entry(e).unwrap_or_else(|| e.clone()))
            .collect();
        // Keep positions: entries are sorted primary first already.
        bootloader::replace_entries_dir(sysroot, rel, &fixed)?;
        crashpoint::hit("migrate:after-entries");
        report.rewritten.push(rel.to_string());
    }
    Ok(report)
}
