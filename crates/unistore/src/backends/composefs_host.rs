//! The native composefs host: deployments are boot EROFS images in the
//! composefs repository, with `state/deploy/<id>/` and BLS entries of
//! bootc's composefs layout. The operations themselves live in
//! [`crate::ops`], one module per command.

use std::path::Path;

use anyhow::Result;

use super::{BoxFuture, HostBackend};
use crate::ops::finalize::{self, FinalizeOutcome};
use crate::ops::fsck::{self, FsckOpts, FullReport, ImagesReport};
use crate::ops::gc::{self, GcOpts, GcReport};
use crate::ops::install::{InstallOpts, InstallResult};
use crate::ops::rollback::{self, RollbackReport};
use crate::ops::upgrade::{self, UpgradeOpts, UpgradeOutcome};
use crate::progress::Progress;
use crate::status::{self, Host};
use crate::sysroot::Sysroot;

/// A native composefs host.
#[derive(Debug, Default)]
pub struct ComposefsBackend;

impl HostBackend for ComposefsBackend {
    fn name(&self) -> &'static str {
        "composefs"
    }
    fn install<'a>(
        &'a self,
        root: &'a Path,
        opts: &'a InstallOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<InstallResult>> {
        Box::pin(crate::ops::install::install_to_filesystem(
            root, opts, progress,
        ))
    }
    fn status(&self, sysroot: &Sysroot) -> Result<Host> {
        status::composefs_status(sysroot)
    }
    fn upgrade<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: &'a UpgradeOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<UpgradeOutcome>> {
        Box::pin(upgrade::upgrade(sysroot, opts, progress))
    }
    fn finalize(&self, sysroot: &Sysroot) -> Result<FinalizeOutcome> {
        finalize::finalize(sysroot)
    }
    fn rollback(&self, sysroot: &Sysroot) -> Result<RollbackReport> {
        rollback::rollback(sysroot)
    }
    fn gc(&self, sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport> {
        gc::run(sysroot, opts)
    }
    fn mount(&self, sysroot: &Sysroot, id: Option<&str>, mountpoint: &Path) -> Result<String> {
        crate::ops::mount::mount_deployment(sysroot, id, mountpoint)
    }
    fn fsck<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: FsckOpts,
    ) -> BoxFuture<'a, Result<FullReport>> {
        Box::pin(fsck::fsck_all(sysroot, opts))
    }
    fn fsck_images(&self, sysroot: &Sysroot, opts: FsckOpts) -> Result<ImagesReport> {
        fsck::fsck_images(sysroot, opts)
    }
    fn set_unified<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: &'a crate::ops::set_unified::SetUnifiedOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<crate::ops::set_unified::SetUnifiedOutcome>> {
        Box::pin(crate::ops::set_unified::set_unified(
            sysroot, opts, progress,
        ))
    }
    fn image_list(&self, sysroot: &Sysroot) -> Result<crate::ops::image_list::ImageList> {
        crate::ops::image_list::list_images(sysroot)
    }
}
