//! Host backends behind one trait: what kind of host a root is.
//!
//! A native composefs host keeps its deployments in the composefs
//! repository ([`ComposefsBackend`]); an ostree host in `ostree/repo`, its
//! deployments made by libostree ([`OstreeBackend`]).
//! Commands ask the backend ([`HostBackend`], in [`crate::command`]), never
//! `match` on the kind themselves: install gets one from [`for_kind`],
//! every later command from [`detect`]. Each backend owns its commands, one
//! module each (`composefs_host::upgrade`, `ostree_host::gc`, ...).

use anyhow::{Result, bail};

pub mod composefs_host;
pub mod ostree_host;

pub use crate::command::{BoxFuture, HostBackend};
pub use composefs_host::ComposefsBackend;
pub use ostree_host::OstreeBackend;

use crate::sysroot::{COMPOSEFS_DIR, Sysroot};

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
