//! Host backends behind one trait: what kind of host a root is.
//!
//! A native composefs host keeps its deployments in the composefs
//! repository ([`ComposefsBackend`]); an ostree host in `ostree/repo`, its
//! deployments made by libostree ([`OstreeBackend`]).
//! Commands ask the backend, never `match` on the kind themselves: install
//! gets one from [`for_kind`], every later command from [`detect`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use anyhow::{Result, bail};

pub mod composefs_host;
pub mod ostree_host;

pub use composefs_host::ComposefsBackend;
pub use ostree_host::OstreeBackend;

use crate::ops::finalize::FinalizeOutcome;
use crate::ops::fsck::{FsckOpts, FullReport, ImagesReport};
use crate::ops::gc::{GcOpts, GcReport};
use crate::ops::install::{InstallOpts, InstallResult};
use crate::ops::rollback::RollbackReport;
use crate::ops::set_unified::{SetUnifiedOpts, SetUnifiedOutcome};
use crate::ops::upgrade::{UpgradeOpts, UpgradeOutcome};
use crate::progress::Progress;
use crate::status::Host;
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};

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
    fn image_list(&self, sysroot: &Sysroot) -> Result<crate::ops::image_list::ImageList>;
}

/// The kinds of host `install --backend` can make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// A native composefs host (the default).
    #[default]
    Composefs,
    /// An ostree host, bootc's default backend.
    Ostree,
}

impl std::str::FromStr for BackendKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "composefs" => Ok(Self::Composefs),
            "ostree" => Ok(Self::Ostree),
            _ => bail!("unknown backend {s:?}: use composefs or ostree"),
        }
    }
}

/// The backend that installs hosts of `kind`.
pub fn for_kind(kind: BackendKind) -> Box<dyn HostBackend> {
    match kind {
        BackendKind::Composefs => Box::new(ComposefsBackend),
        BackendKind::Ostree => Box::new(OstreeBackend),
    }
}

/// Finds the backend of an installed root.
pub fn detect(sysroot: &Sysroot) -> Result<Box<dyn HostBackend>> {
    if crate::backends::ostree_host::is_ostree_root(sysroot)? {
        return Ok(Box::new(OstreeBackend));
    }
    if sysroot
        .dir()
        .try_exists(format!("{COMPOSEFS_DIR}/meta.json"))?
    {
        return Ok(Box::new(ComposefsBackend));
    }
    if sysroot.dir().try_exists("ostree/repo")? {
        bail!(
            "{} has an ostree repository but no ostree/deploy: not an installed ostree host",
            sysroot.path().display()
        );
    }
    bail!(
        "{} holds no installed host (no composefs/meta.json)",
        sysroot.path().display()
    )
}
