//! The native composefs host: deployments are boot EROFS images in the
//! composefs repository, with `state/deploy/<id>/` and BLS entries of
//! bootc's composefs layout. One module per command; the shapes they share
//! with the ostree host are in [`crate::command`].

use std::path::Path;

use anyhow::Result;

pub mod finalize;
pub mod fsck;
pub mod gc;
pub mod image_list;
pub mod install;
pub mod mount;
pub mod rollback;
pub mod set_unified;
pub mod status;
pub mod upgrade;

use crate::command::finalize::FinalizeOutcome;
use crate::command::fsck::{FsckOpts, FullReport, ImagesReport};
use crate::command::gc::{GcOpts, GcReport};
use crate::command::image_list::ImageList;
use crate::command::install::{InstallOpts, InstallResult};
use crate::command::rollback::RollbackReport;
use crate::command::set_unified::{SetUnifiedOpts, SetUnifiedOutcome};
use crate::command::status::Host;
use crate::command::upgrade::{UpgradeOpts, UpgradeOutcome};
use crate::command::{BoxFuture, HostBackend};
use crate::progress::Progress;
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
        Box::pin(install::install_to_filesystem(root, opts, progress))
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
        mount::mount_deployment(sysroot, id, mountpoint)
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
        opts: &'a SetUnifiedOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<SetUnifiedOutcome>> {
        Box::pin(set_unified::set_unified(sysroot, opts, progress))
    }
    fn image_list(&self, sysroot: &Sysroot) -> Result<ImageList> {
        image_list::list_images(sysroot)
    }
}
