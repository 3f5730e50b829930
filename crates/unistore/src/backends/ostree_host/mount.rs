//! `internals mount` on an ostree host: the deployment as
//! `ostree-prepare-root` makes it the root: its checkout bound read-only
//! (a bare repo's objects are hardlinked there), with the stateroot's `var/`
//! bound over `/var` and its merged `/etc` writable beneath.

use std::path::Path;

use anyhow::{Result, anyhow};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::name;
use crate::sysroot::Sysroot;

/// Mounts deployment `id` (`<commit>.<serial>`; default: the booted one) at
/// `mountpoint`. Returns the name mounted.
pub fn mount_deployment(sysroot: &Sysroot, id: Option<&str>, mountpoint: &Path) -> Result<String> {
    let os = super::load(sysroot)?;
    let (deps, booted) = super::deployments(sysroot, &os);
    let d = match id {
        Some(id) => deps
            .iter()
            .find(|d| name(d) == id || d.csum().as_str() == id)
            .ok_or_else(|| anyhow!("no deployment {id}"))?,
        None => booted
            .map(|i| &deps[i])
            .ok_or_else(|| anyhow!("no booted deployment to mount"))?,
    };
    let dir = sysroot.join(os.deployment_dirpath(d).as_str());
    let var = sysroot.join(format!("ostree/deploy/{}/var", d.osname()));
    let undo = |e: String| -> anyhow::Error {
        let _ = rustix::mount::unmount(mountpoint, UnmountFlags::DETACH);
        anyhow!(e)
    };
    rustix::mount::mount_bind(&dir, mountpoint)
        .map_err(|e| anyhow!("binding {}: {e}", dir.display()))?;
    let _ = rustix::mount::mount_change(mountpoint, MountPropagationFlags::PRIVATE);
    // Read-only over everything but /etc, as the booted system sees it:
    // remount the root bind read-only, then bind /etc and /var writable.
    rustix::mount::mount_remount(mountpoint, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(|e| undo(format!("making the root read-only: {e}")))?;
    let etc = dir.join("etc");
    rustix::mount::mount_bind(&etc, mountpoint.join("etc"))
        .map_err(|e| undo(format!("binding /etc: {e}")))?;
    rustix::mount::mount_bind(&var, mountpoint.join("var"))
        .map_err(|e| undo(format!("binding {} over /var: {e}", var.display())))?;
    Ok(name(d))
}
