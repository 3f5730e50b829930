//! Migrating roots written by older versions, idempotently and safely
//! against interruption at any step.
//!
//! Older installs named kernel directories `boot/<name>` without the
//! `bootc_composefs-` prefix. Steps, each one a no-op when already done:
//! 1. give every such directory an entry names its prefixed name too: a
//!    `.tmp-` directory of hard links to its files, renamed into place
//!    (skipped when the prefixed one exists already); the old one stays;
//! 2. rewrite the entries that name an unprefixed directory into a new
//!    loader directory and exchange it with the old one;
//! 3. remove the unprefixed directories no entry names any more.
//!
//! At every step each entry names a kernel that exists: interrupted after
//! (1), the entries still name the old directories (the crash walk found
//! that renaming them first left a boot menu naming kernels that were
//! gone); after (2), the old directories are garbage that the next run's
//! step (3) removes. Reads never migrate: only writing operations call
//! [`migrate`].

use anyhow::Result;
use serde::Serialize;

use crate::boot::bls::{self, BlsEntry};
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
    if sysroot.esp_path().is_some() {
        // Old names only ever existed under `boot/` (GRUB layout).
        return Ok(report);
    }
    let dir = sysroot.dir();
    for rel in [ENTRIES_DIR, STAGED_ENTRIES_DIR] {
        let entries = bls::read_entries(sysroot, rel)?;
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
                let tmp = format!("{BOOT_DIR}/.tmp-{KERNEL_DIR_PREFIX}{kd}");
                crate::util::remove_all(dir, &tmp)?;
                dir.create_dir(&tmp)?;
                for name in crate::util::list_names(dir, &old)? {
                    dir.hard_link(format!("{old}/{name}"), dir, format!("{tmp}/{name}"))?;
                }
                crate::util::fsync_dir(dir, Some(std::path::Path::new(&tmp)))?;
                dir.rename(&tmp, dir, &new)?;
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
        bls::replace_entries_dir(sysroot, rel, &fixed)?;
        crashpoint::hit("migrate:after-entries");
        report.rewritten.push(rel.to_string());
    }
    // 3. Old directories no entry names, whose prefixed copy exists.
    let mut named = std::collections::BTreeSet::new();
    for rel in [ENTRIES_DIR, STAGED_ENTRIES_DIR] {
        for e in bls::read_entries(sysroot, rel)? {
            if let Some(kd) = e.kernel_dir() {
                named.insert(kd.to_string());
            }
        }
    }
    for name in crate::util::list_names(dir, BOOT_DIR)? {
        if crate::deployment::is_deployment_id(&name)
            && !named.contains(&name)
            && dir.try_exists(format!("{BOOT_DIR}/{KERNEL_DIR_PREFIX}{name}"))?
        {
            crate::util::remove_all(dir, format!("{BOOT_DIR}/{name}"))?;
        }
    }
    Ok(report)
}
