//! Physical extent maps (FIEMAP), to tell reflinked copies from byte copies.

use anyhow::{Context, Result};
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
/// The last extent of the file.
pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Location unknown (e.g. delayed allocation).
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
/// Data inline in metadata: no physical location of its own.
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
/// The extent is shared with another file (reflink) or snapshot.
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

const BATCH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct RawFiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [RawExtent; BATCH],
}

/// One extent of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the device.
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

impl Extent {
    /// Whether the kernel reports this extent as shared.
    pub fn is_shared(&self) -> bool {
        self.flags & FIEMAP_EXTENT_SHARED != 0
    }
}

/// The extent map of `path` (synced first), in logical order.
pub fn file_extents(path: &Path) -> Result<Vec<Extent>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {path:?}"))?;
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut fm = Box::new(RawFiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: BATCH as u32,
            fm_reserved: 0,
            fm_extents: [RawExtent::default(); BATCH],
        });
        // SAFETY: `fm` is a properly laid out `struct fiemap` followed by room for
        // `fm_extent_count` extents, and outlives the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut *fm as *mut RawFiemap) };
        if r < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("FIEMAP on {path:?}"));
        }
        let n = fm.fm_mapped_extents as usize;
        let mut last = n == 0;
        for e in &fm.fm_extents[..n] {
            out.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
            start = e.fe_logical + e.fe_length;
        }
        if last {
            return Ok(out);
        }
    }
}

/// Physical byte ranges covered by `extents`, sorted and coalesced.
fn physical_ranges(extents: &[Extent]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = extents
        .iter()
        .map(|e| (e.physical, e.physical + e.length))
        .collect();
    r.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Whether `a` and `b` share all their data extents: both have data, every extent of both
/// is flagged shared, has a known location, and both cover the same physical ranges.
///
/// A `cp --reflink=always` copy gives `true`, a `cp --reflink=never` copy `false`; empty
/// files (no extents) give `false`.
pub fn shared_extents(a: &Path, b: &Path) -> Result<bool> {
    let (ea, eb) = (file_extents(a)?, file_extents(b)?);
    Ok(extents_shared(&ea, &eb))
}

fn extents_shared(ea: &[Extent], eb: &[Extent]) -> bool {
    let usable = |v: &[Extent]| {
        !v.is_empty()
            && v.iter().all(|e| {
                e.is_shared() && e.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DATA_INLINE) == 0
            })
    };
    usable(ea) && usable(eb) && physical_ranges(ea) == physical_ranges(eb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(physical: u64, length: u64, flags: u32) -> Extent {
        Extent {
            logical: 0,
            physical,
            length,
            flags,
        }
    }

    #[test]
    fn struct_layout_matches_kernel() {
        assert_eq!(std::mem::size_of::<RawExtent>(), 56);
        assert_eq!(std::mem::offset_of!(RawFiemap, fm_extents), 32);
    }

    #[test]
    fn sharing_logic() {
        let s = FIEMAP_EXTENT_SHARED;
        // Same ranges, split differently.
        assert!(extents_shared(
            &[ext(0, 8192, s)],
            &[ext(0, 4096, s), ext(4096, 4096, s | FIEMAP_EXTENT_LAST)]
        ));
        assert!(!extents_shared(&[ext(0, 4096, s)], &[ext(8192, 4096, s)]));
        assert!(!extents_shared(&[ext(0, 4096, 0)], &[ext(0, 4096, 0)]));
        assert!(!extents_shared(&[], &[]));
        assert!(!extents_shared(
            &[ext(0, 4096, s | FIEMAP_EXTENT_UNKNOWN)],
            &[ext(0, 4096, s | FIEMAP_EXTENT_UNKNOWN)]
        ));
    }

    #[test]
    fn maps_a_regular_file() {
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
        assert!(file_extents(&td.path().join("missing")).is_err());
    }
}
