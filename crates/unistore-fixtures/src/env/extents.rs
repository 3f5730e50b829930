//! Physical extent maps (FIEMAP), to tell reflinked copies from byte copies.
//!
//! The walk itself is the engine's ([`unistore::fs::extents`]): one
//! implementation, checked here against `cp --reflink` and `filefrag` (see
//! `tests/env_fs.rs`). These wrappers take paths, as tests have them.

use anyhow::{Context, Result};
use std::path::Path;

pub use unistore::fs::extents::{
    Extent, FIEMAP_EXTENT_DATA_INLINE, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED,
    FIEMAP_EXTENT_UNKNOWN, extents_shared,
};

/// The extent map of `path` (synced first), in logical order.
pub fn file_extents(path: &Path) -> Result<Vec<Extent>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {path:?}"))?;
    unistore::fs::extents::file_extents(&f).with_context(|| format!("FIEMAP on {path:?}"))
}

/// Whether `a` and `b` share all their data extents: both have data, every extent of both
/// is flagged shared, has a known location, and both cover the same physical ranges.
///
/// A `cp --reflink=always` copy gives `true`, a `cp --reflink=never` copy `false`; empty
/// files (no extents) give `false`.
pub fn shared_extents(a: &Path, b: &Path) -> Result<bool> {
    Ok(extents_shared(&file_extents(a)?, &file_extents(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_regular_file_by_path() {
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let f = td.path().join("f");
        std::fs::write(&f, vec![1u8; 1 << 20]).unwrap();
        let e = file_extents(&f).unwrap();
        assert!(!e.is_empty());
        assert_eq!(e.iter().map(|e| e.length).sum::<u64>(), 1 << 20);
        // A file is not "shared" with a plain copy of itself.
        let g = td.path().join("g");
        std::fs::write(&g, vec![1u8; 1 << 20]).unwrap();
        assert!(!shared_extents(&f, &g).unwrap());
        let err = file_extents(&td.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
    }
}
