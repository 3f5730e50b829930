//! The ostree host backend: deployments made and kept by libostree.
//!
//! An ostree host is what `bootc install --backend ostree` leaves (REFERENCE
//! section 4): `ostree/repo` (bare), the stateroot `ostree/deploy/<name>/`
//! with its deployments `deploy/<commit>.<serial>/` and their `.origin`,
//! and the BLS entries and kernels libostree writes under `boot/`. Images
//! reach the repository through a staging composefs repository
//! ([`staging`]): pulled there, written as one commit
//! ([`crate::stores::ostree_repo::commit`]), then the staging repository is
//! removed. libostree deploys (the `/etc` three-way merge, boot entries,
//! the boot-version swap) and cleans up; nothing of that is redone here.
//!
//! A deployment is named `<commit>.<serial>` in reports.

pub mod fsck;
pub mod fsck_stores;
pub mod gc;
pub mod install;
pub mod lifecycle;
pub mod migrate;
pub mod mount;
pub mod staging;
pub mod status;
pub mod unified;

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use ostree::{gio, glib};

use crate::command::finalize::FinalizeOutcome;
use crate::command::fsck::{FsckOpts, FullReport, ImagesReport};
use crate::command::gc::{GcOpts, GcReport};
use crate::command::rollback::RollbackReport;
use crate::command::status::Host;
use crate::command::upgrade::{UpgradeOpts, UpgradeOutcome};
use crate::command::{BoxFuture, HostBackend};
use crate::progress::Progress;
use crate::source::imgref::ImageRef;
use crate::sysroot::{BootedMode, Sysroot};

/// bootc's stateroot.
pub const DEFAULT_STATEROOT: &str = "default";
/// Origin prefix of registry images.
pub const ORIGIN_REGISTRY_PREFIX: &str = "ostree-unverified-registry:";
/// Origin prefix of images from other transports.
pub const ORIGIN_IMAGE_PREFIX: &str = "ostree-unverified-image:";

/// An ostree host.
#[derive(Debug, Default)]
pub struct OstreeBackend;

impl HostBackend for OstreeBackend {
    fn name(&self) -> &'static str {
        "ostree"
    }
    fn install<'a>(
        &'a self,
        root: &'a Path,
        opts: &'a crate::command::install::InstallOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<crate::command::install::InstallResult>> {
        Box::pin(install::install(root, opts, progress))
    }
    fn status(&self, sysroot: &Sysroot) -> Result<Host> {
        status::status(sysroot)
    }
    fn upgrade<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: &'a UpgradeOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<UpgradeOutcome>> {
        Box::pin(lifecycle::upgrade(sysroot, opts, progress))
    }
    fn finalize(&self, sysroot: &Sysroot) -> Result<FinalizeOutcome> {
        lifecycle::finalize(sysroot)
    }
    fn rollback(&self, sysroot: &Sysroot) -> Result<RollbackReport> {
        lifecycle::rollback(sysroot)
    }
    fn gc(&self, sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport> {
        gc::run(sysroot, opts)
    }
    fn mount(&self, sysroot: &Sysroot, id: Option<&str>, mountpoint: &Path) -> Result<String> {
        mount::mount_deployment(sysroot, id, mountpoint)
    }
    fn fsck<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: FsckOpts,
    ) -> BoxFuture<'a, Result<FullReport>> {
        Box::pin(async move { fsck::fsck_all(sysroot, opts) })
    }
    fn fsck_images(&self, sysroot: &Sysroot, opts: FsckOpts) -> Result<ImagesReport> {
        fsck::fsck_images(sysroot, opts)
    }
    fn set_unified<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: &'a crate::command::set_unified::SetUnifiedOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<crate::command::set_unified::SetUnifiedOutcome>> {
        Box::pin(unified::set_unified(sysroot, opts, progress))
    }
    fn image_list(&self, sysroot: &Sysroot) -> Result<crate::command::image_list::ImageList> {
        status::image_list(sysroot)
    }
}

/// The `container-image-reference` value bootc writes for `image`.
pub fn origin_value(image: &ImageRef) -> String {
    match image.transport {
        crate::source::imgref::Transport::Registry => {
            format!("{ORIGIN_REGISTRY_PREFIX}{}", image.name)
        }
        _ => format!("{ORIGIN_IMAGE_PREFIX}{image}"),
    }
}

/// The origin keyfile of a deployment following `image`.
pub fn origin_keyfile(image: &ImageRef) -> glib::KeyFile {
    let kf = glib::KeyFile::new();
    kf.set_string("origin", "container-image-reference", &origin_value(image));
    kf
}

/// The image a deployment follows, from its origin.
pub fn deployment_image(d: &ostree::Deployment) -> Result<ImageRef> {
    let kf = d
        .origin()
        .ok_or_else(|| anyhow!("deployment {} has no origin", name(d)))?;
    let v = kf
        .string("origin", "container-image-reference")
        .map_err(|_| {
            anyhow!(
                "the origin of {} has no [origin] container-image-reference",
                name(d)
            )
        })?;
    ImageRef::from_origin(&v).map_err(|e| anyhow!("the origin of {}: {e}", name(d)))
}

/// `<commit>.<serial>`: how reports name a deployment.
pub fn name(d: &ostree::Deployment) -> String {
    format!("{}.{}", d.csum(), d.deployserial())
}

/// Opens and loads the libostree sysroot of an installed ostree host.
pub fn load(sysroot: &Sysroot) -> Result<ostree::Sysroot> {
    let os = ostree::Sysroot::new(Some(&gio::File::for_path(sysroot.ostree_path())));
    os.load(gio::Cancellable::NONE).map_err(|e| {
        anyhow!(
            "loading the ostree sysroot {}: {e}",
            sysroot.ostree_path().display()
        )
    })?;
    crate::stores::ostree_repo::check_mode(
        &os.repo(),
        &sysroot.join(crate::stores::ostree_repo::REPO_DIR),
    )?;
    Ok(os)
}

/// Takes libostree's sysroot lock, or fails at once when another writer
/// holds it. Released when the returned guard drops.
pub fn lock(os: &ostree::Sysroot) -> Result<SysrootLock<'_>> {
    match os.try_lock() {
        Ok(true) => Ok(SysrootLock(os)),
        Ok(false) => bail!(
            "another process is changing this host (the ostree sysroot lock is held); try again when it is done"
        ),
        Err(e) => Err(anyhow!("taking the ostree sysroot lock: {e}")),
    }
}

/// [`lock`], then the migration of a host an older version wrote
/// ([`migrate`]): what every writing command of an ostree host starts with.
pub fn lock_and_migrate<'a>(sysroot: &Sysroot, os: &'a ostree::Sysroot) -> Result<SysrootLock<'a>> {
    let l = lock(os)?;
    let m = migrate::migrate(sysroot, os)?;
    if m != migrate::Migrated::default() {
        tracing::info!(
            "migrated the ostree layout: {} image refs renamed, {} layer commits written",
            m.renamed.len(),
            m.layers
        );
    }
    Ok(l)
}

/// libostree's sysroot lock, held.
pub struct SysrootLock<'a>(&'a ostree::Sysroot);

impl Drop for SysrootLock<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// The deployments in boot order, and the index of the booted one: the
/// primary on an offline root, else the one the `ostree=` karg names.
pub fn deployments(
    sysroot: &Sysroot,
    os: &ostree::Sysroot,
) -> (Vec<ostree::Deployment>, Option<usize>) {
    let deps = os.deployments();
    let booted = match sysroot.booted_mode() {
        BootedMode::Offline => (!deps.is_empty()).then_some(0),
        BootedMode::Running { booted_id } => booted_index(sysroot, &deps, booted_id),
    };
    (deps, booted)
}

/// Finds the deployment the `ostree=` karg value `karg` (for example
/// `/ostree/boot.1/default/<bootcsum>/0`) leads to: a symlink chain ending
/// in `ostree/deploy/<stateroot>/deploy/<commit>.<serial>`.
fn booted_index(sysroot: &Sysroot, deps: &[ostree::Deployment], karg: &str) -> Option<usize> {
    let target = std::fs::canonicalize(sysroot.join(karg.trim_start_matches('/'))).ok()?;
    let leaf = target.file_name()?.to_str()?.to_string();
    deps.iter().position(|d| name(d) == leaf)
}

/// Whether `root` looks like an ostree host.
pub fn is_ostree_root(sysroot: &Sysroot) -> Result<bool> {
    Ok(sysroot
        .dir()
        .try_exists(crate::stores::ostree_repo::REPO_DIR)?
        && sysroot.dir().try_exists("ostree/deploy")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the running system the booted deployment is where the `ostree=`
    /// karg leads: `ostree/boot.N -> boot.N.M`, then
    /// `<stateroot>/<bootcsum>/<serial> -> deploy/<commit>.<serial>`.
    #[test]
    fn the_ostree_karg_leads_to_the_booted_deployment() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        for c in [&a, &b] {
            std::fs::create_dir_all(root.join(format!("ostree/deploy/default/deploy/{c}.0")))
                .unwrap();
        }
        std::fs::create_dir_all(root.join("ostree/boot.1.1/default/cafe")).unwrap();
        std::os::unix::fs::symlink("boot.1.1", root.join("ostree/boot.1")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../../deploy/default/deploy/{b}.0"),
            root.join("ostree/boot.1.1/default/cafe/0"),
        )
        .unwrap();
        let deps = [
            ostree::Deployment::new(0, "default", &a, 0, None, -1),
            ostree::Deployment::new(1, "default", &b, 0, None, -1),
        ];
        let sysroot = Sysroot::open(root).unwrap();
        assert_eq!(
            booted_index(&sysroot, &deps, "/ostree/boot.1/default/cafe/0"),
            Some(1)
        );
        assert_eq!(
            booted_index(&sysroot, &deps, "/ostree/boot.1/default/nowhere/0"),
            None
        );
    }

    #[test]
    fn origins_follow_bootc() {
        let r = ImageRef::parse("docker://127.0.0.1:5000/os:v1").unwrap();
        assert_eq!(
            origin_value(&r),
            "ostree-unverified-registry:127.0.0.1:5000/os:v1"
        );
        let o = ImageRef::parse("oci:/srv/os:v1").unwrap();
        assert_eq!(origin_value(&o), "ostree-unverified-image:oci:/srv/os:v1");
        for v in [origin_value(&r), origin_value(&o)] {
            let back = ImageRef::from_origin(&v).unwrap();
            assert_eq!(origin_value(&back), v);
        }
    }
}
