//! Host backends behind one trait: what kind of host a root is.
//!
//! A native composefs host keeps its deployments in the composefs
//! repository; an ostree host (not supported yet) in `ostree/repo`. Commands
//! ask the backend, never `match` on the kind themselves.

use anyhow::{Result, bail};

use crate::status::{self, Host};
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};

/// A kind of image-based host.
pub trait HostBackend {
    /// A short name for messages (`composefs`, `ostree`).
    fn name(&self) -> &'static str;
    /// The status of the host, read-only.
    fn status(&self, sysroot: &Sysroot) -> Result<Host>;
}

/// A native composefs host.
#[derive(Debug, Default)]
pub struct ComposefsBackend;

impl HostBackend for ComposefsBackend {
    fn name(&self) -> &'static str {
        "composefs"
    }
    fn status(&self, sysroot: &Sysroot) -> Result<Host> {
        status::composefs_status(sysroot)
    }
}

/// Finds the backend of an installed root.
pub fn detect(sysroot: &Sysroot) -> Result<Box<dyn HostBackend>> {
    if sysroot
        .dir()
        .try_exists(format!("{COMPOSEFS_DIR}/meta.json"))?
    {
        return Ok(Box::new(ComposefsBackend));
    }
    if sysroot.dir().try_exists("ostree/repo")? {
        bail!(
            "{} is an ostree host; unistore does not manage ostree hosts yet",
            sysroot.path().display()
        );
    }
    bail!(
        "{} holds no installed host (no composefs/meta.json)",
        sysroot.path().display()
    )
}
