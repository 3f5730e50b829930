//! The staged-deployment marker, `<run>/composefs/staged-deployment`:
//! JSON `{depl_id, finalization_locked}`, written LAST when staging, so a
//! staged deployment exists only if the marker does.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::sysroot::Sysroot;

/// The marker's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedMarker {
    /// The staged deployment's id.
    pub depl_id: String,
    /// When true, finalize at shutdown is skipped (bootc's `--lock-finalization`).
    #[serde(default)]
    pub finalization_locked: bool,
}

fn path(sysroot: &Sysroot) -> PathBuf {
    sysroot.run_dir().join("composefs/staged-deployment")
}

/// Parses the marker's bytes.
pub fn parse(bytes: &[u8]) -> Result<StagedMarker> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Reads the marker, if any.
pub fn read(sysroot: &Sysroot) -> Result<Option<StagedMarker>> {
    let p = path(sysroot);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            parse(&b).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Writes the marker (temp + fsync + rename).
pub fn write(sysroot: &Sysroot, m: &StagedMarker) -> Result<()> {
    let p = path(sysroot);
    let dir = p.parent().expect("has parent");
    std::fs::create_dir_all(dir)?;
    let d = cap_std_ext::cap_std::fs::Dir::open_ambient_dir(
        dir,
        cap_std_ext::cap_std::ambient_authority(),
    )?;
    crate::util::atomic_write(&d, "staged-deployment", &serde_json::to_vec(m)?)
}

/// Removes the marker.
pub fn remove(sysroot: &Sysroot) -> Result<()> {
    match std::fs::remove_file(path(sysroot)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}
