//! One writer at a time: an exclusive `flock` on `state/unistore.lock`.
//!
//! Upgrade, switch, rollback, finalize, gc and set-unified take it; a second
//! one fails at once with a clear message. `status` never takes it.

use anyhow::{Context, Result, bail};
use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::sysroot::Sysroot;

/// The lock file, relative to the root.
pub const LOCK_FILE: &str = "state/unistore.lock";

/// Held while an operation writes; released on drop.
#[derive(Debug)]
pub struct SysrootLock {
    _fd: std::os::fd::OwnedFd,
}

/// Takes the lock or fails if another process holds it.
pub fn lock(sysroot: &Sysroot) -> Result<SysrootLock> {
    sysroot.dir().create_dir_all("state")?;
    let fd = rustix::fs::openat(
        sysroot.dir(),
        LOCK_FILE,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from(0o600),
    )
    .with_context(|| format!("opening {LOCK_FILE}"))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(SysrootLock { _fd: fd }),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!(
            "another unistore operation is running on {} (it holds {LOCK_FILE}); try again when it has finished",
            sysroot.path().display()
        ),
        Err(e) => Err(e).context("locking the root"),
    }
}
