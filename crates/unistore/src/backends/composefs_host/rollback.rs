//! `rollback`: make the rollback deployment the next boot; run again, undo.
//!
//! The first two entries trade places (any further entries keep theirs),
//! written as a new loader directory exchanged atomically with the old one.
//! A staged deployment is discarded first (its marker removed, so it is no
//! longer staged; GC removes what is left of it).

use anyhow::{Result, bail};

use crate::boot::bls;
use crate::boot::migrate;
use crate::command::rollback::RollbackReport;
use crate::deployment::host_state::HostState;
use crate::deployment::staged;
use crate::sysroot::Sysroot;
use crate::{crashpoint, lock, util};

/// Runs the rollback.
pub fn rollback(sysroot: &Sysroot) -> Result<RollbackReport> {
    let _lock = lock::lock(sysroot)?;
    migrate::migrate(sysroot)?;
    let host = HostState::read(sysroot)?;
    if host.entries.len() < 2 {
        bail!(
            "no rollback deployment: the boot menu has {} entr{}",
            host.entries.len(),
            if host.entries.len() == 1 { "y" } else { "ies" }
        );
    }
    let discarded_staged = host.marker.as_ref().map(|m| m.depl_id.clone());
    if discarded_staged.is_some() {
        staged::remove(sysroot)?;
        util::remove_all(sysroot.boot_root(), sysroot.staged_entries_dir())?;
    }
    let mut entries = host.entries.clone();
    entries.swap(0, 1);
    crashpoint::hit("rollback:before-swap");
    bls::replace_entries_dir(sysroot, sysroot.entries_dir(), &entries)?;
    crashpoint::hit("rollback:after-swap");
    let id = |i: usize| entries[i].deployment_id().unwrap_or_default().to_string();
    let after = HostState::read(sysroot)?;
    Ok(RollbackReport {
        next_boot: id(0),
        rollback: id(1),
        discarded_staged,
        rollback_queued: after.booted.is_some_and(|i| i != 0),
    })
}
