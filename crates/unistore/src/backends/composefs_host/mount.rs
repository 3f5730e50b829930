//! `internals mount`: mount a deployment the way the initramfs would.
//!
//! The boot EROFS image over the repository's objects (overlayfs with a
//! data-only lower layer), read-only, then the deployment's `/etc` bound
//! over its `/etc`.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use composefs::mount::MountOptions;

use super::status;
use crate::deployment;
use crate::stores::composefs_repo;
use crate::sysroot::Sysroot;

/// Mounts deployment `id` (default: the booted one) at `mountpoint`.
/// Returns the id mounted.
pub fn mount_deployment(sysroot: &Sysroot, id: Option<&str>, mountpoint: &Path) -> Result<String> {
    let id = match id {
        Some(id) => id.to_string(),
        None => status::composefs_status(sysroot)?
            .status
            .booted
            .and_then(|b| b.composefs.map(|c| c.verity))
            .ok_or_else(|| anyhow!("no booted deployment to mount"))?,
    };
    let state = deployment::state_dir(&id);
    if !sysroot.dir().try_exists(&state)? {
        return Err(anyhow!(
            "deployment {id} does not exist ({state} is missing)"
        ));
    }
    let repo = composefs_repo::open(sysroot)?;
    repo.mount_at(&id, mountpoint, &MountOptions::default())
        .with_context(|| format!("mounting deployment {id}"))?;
    let etc_src = sysroot.join(format!("{state}/etc"));
    let etc_dst = mountpoint.join("etc");
    if let Err(e) = rustix::mount::mount_bind(&etc_src, &etc_dst) {
        let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
        return Err(anyhow!("binding {} over /etc: {e}", etc_src.display()));
    }
    Ok(id)
}
