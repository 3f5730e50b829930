//! The shape of every host command, shared by both backends: the
//! [`HostBackend`] trait, and per command its options, outcomes and
//! reports (one module each). The implementations live with their backend
//! ([`crate::backends::composefs_host`], [`crate::backends::ostree_host`]).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use anyhow::Result;

pub mod finalize;
pub mod fsck;
pub mod gc;
pub mod image_list;
pub mod install;
pub mod rollback;
pub mod set_unified;
pub mod status;
pub mod upgrade;

use crate::progress::Progress;
use crate::sysroot::Sysroot;
use finalize::FinalizeOutcome;
use fsck::{FsckOpts, FullReport, ImagesReport};
use gc::{GcOpts, GcReport};
use image_list::ImageList;
use install::{InstallOpts, InstallResult};
use rollback::RollbackReport;
use set_unified::{SetUnifiedOpts, SetUnifiedOutcome};
use status::Host;
use upgrade::{UpgradeOpts, UpgradeOutcome};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A kind of image-based host: every host operation after install.
pub trait HostBackend {
    /// A short name for messages (`composefs`, `ostree`).
    fn name(&self) -> &'static str;
    /// Install a host of this kind onto the filesystem mounted at `root`.
    fn install<'a>(
        &'a self,
        root: &'a Path,
        opts: &'a InstallOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<InstallResult>>;
    /// The status of the host, read-only.
    fn status(&self, sysroot: &Sysroot) -> Result<Host>;
    /// Stage the newest (or another) image for the next boot.
    fn upgrade<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: &'a UpgradeOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<UpgradeOutcome>>;
    /// Make the staged deployment the next boot.
    fn finalize(&self, sysroot: &Sysroot) -> Result<FinalizeOutcome>;
    /// Make the rollback deployment the next boot.
    fn rollback(&self, sysroot: &Sysroot) -> Result<RollbackReport>;
    /// Remove what no boot entry needs.
    fn gc(&self, sysroot: &Sysroot, opts: GcOpts) -> Result<GcReport>;
    /// Mount a deployment read-only as the initramfs would.
    fn mount(&self, sysroot: &Sysroot, id: Option<&str>, mountpoint: &Path) -> Result<String>;
    /// Check everything the host stores (read-only unless `opts.repair`).
    fn fsck<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: FsckOpts,
    ) -> BoxFuture<'a, Result<FullReport>>;
    /// Check only the host images (read-only unless `opts.repair`).
    fn fsck_images(&self, sysroot: &Sysroot, opts: FsckOpts) -> Result<ImagesReport>;
    /// Binds the host to composefs, or brings its images into every store.
    fn set_unified<'a>(
        &'a self,
        sysroot: &'a Sysroot,
        opts: &'a SetUnifiedOpts,
        progress: Progress,
    ) -> BoxFuture<'a, Result<SetUnifiedOutcome>>;
    /// The host's images and where each is stored. Reads only.
    fn image_list(&self, sysroot: &Sysroot) -> Result<ImageList>;
}
