//! Physical extent maps (`FS_IOC_FIEMAP`): which blocks of the device hold
//! a file's data, and whether the kernel flags them shared (reflinked).
//!
//! One implementation for the engine (a cheap "already shared?" check before
//! `FIDEDUPERANGE`, see [`crate::fs::reflink`]) and for the tests (the fixtures
//! re-export [`file_extents`] and [`shared_extents`] to prove that files are
//! reflinked copies, not byte copies).

use std::fs::File;
use std::os::fd::AsRawFd;

/// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Flush dirty data before mapping (delayed allocation has no location).
const FIEMAP_FLAG_SYNC: u32 = 0x1;
/// The last extent of the file.
pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Location unknown (e.g. delayed allocation).
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
/// Delayed allocation: no location yet.
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
/// Data inline in metadata: no physical location of its own.
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
/// The extent is shared with another file (reflink) or snapshot.
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Extents asked for per `FIEMAP` call.
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
struct RawFiemap<const N: usize> {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [RawExtent; N],
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

    /// Whether the extent has a physical location of its own (not delayed,
    /// unknown or inline in metadata).
    pub fn is_located(&self) -> bool {
        self.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE)
            == 0
    }
}

/// Whether dirty data is flushed before mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// `FIEMAP_FLAG_SYNC`: every extent gets its location (slower).
    Sync,
    /// Map what is on disk now; extents still in the page cache show as
    /// delayed or unknown.
    NoSync,
}

/// One `FIEMAP` call: up to `N` extents from `start`.
fn fiemap<const N: usize>(f: &File, start: u64, flush: Flush) -> std::io::Result<Vec<Extent>> {
    let mut fm = Box::new(RawFiemap::<N> {
        fm_start: start,
        fm_length: u64::MAX - start,
        fm_flags: if flush == Flush::Sync {
            FIEMAP_FLAG_SYNC
        } else {
            0
        },
        fm_mapped_extents: 0,
        fm_extent_count: N as u32,
        fm_reserved: 0,
        fm_extents: [RawExtent::default(); N],
    });
    // SAFETY: `fm` is a properly laid out `struct fiemap` followed by room for
    // `fm_extent_count` extents, and outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut *fm as *mut RawFiemap<N>) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (fm.fm_mapped_extents as usize).min(N);
    Ok(fm.fm_extents[..n]
        .iter()
        .map(|e| Extent {
            logical: e.fe_logical,
            physical: e.fe_physical,
            length: e.fe_length,
            flags: e.fe_flags,
        })
        .collect())
}

/// The whole extent map of `f` (dirty data flushed first), in logical order.
pub fn file_extents(f: &File) -> std::io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let batch = fiemap::<BATCH>(f, start, Flush::Sync)?;
        let mut last = batch.is_empty();
        for e in batch {
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
            start = e.logical + e.length;
            out.push(e);
        }
        if last {
            return Ok(out);
        }
    }
}

/// Bytes of `f` on disk that no other file shares: its allocated blocks
/// minus its extents the kernel reports as shared (what deleting it frees,
/// give or take the other owners of those extents).
pub fn unshared_bytes(f: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let allocated = f.metadata()?.blocks() * 512;
    let shared: u64 = file_extents(f)?
        .iter()
        .filter(|e| e.is_shared())
        .map(|e| e.length)
        .sum();
    Ok(allocated.saturating_sub(shared))
}

/// The first extent of `f`, without flushing; `None` when there is none or
/// the call fails. A cheap check, see [`first_extents_shared`].
pub fn first_extent(f: &File) -> Option<Extent> {
    fiemap::<1>(f, 0, Flush::NoSync).ok()?.into_iter().next()
}

/// Whether `a` and `b` start on the same extent and the kernel flags it
/// shared (a cheap test before deduplicating them: `false` when unsure).
pub fn first_extents_shared(a: &File, b: &File) -> bool {
    match (first_extent(a), first_extent(b)) {
        (Some(ea), Some(eb)) => {
            ea.is_located()
                && eb.is_located()
                && ea.physical == eb.physical
                && ea.is_shared()
                && eb.is_shared()
        }
        _ => false,
    }
}

/// Whether `a` and `b` share their data extents, as cheaply as the answer
/// allows: when both first extents have a location (the usual case), they
/// decide without flushing anything (the same extent, flagged shared, or
/// not); otherwise (no extent at the start, delayed or inline data) the
/// whole maps are compared ([`shared_extents`], which flushes dirty data
/// first: writeback, no change to any file). Reads no data, so no atime
/// changes.
pub fn files_share_extents(a: &File, b: &File) -> std::io::Result<bool> {
    if let (Some(ea), Some(eb)) = (first_extent(a), first_extent(b))
        && ea.is_located()
        && eb.is_located()
    {
        return Ok(ea.physical == eb.physical && ea.is_shared() && eb.is_shared());
    }
    shared_extents(a, b)
}

/// Whether the filesystem keeps `f`'s data inline in its metadata (btrfs
/// does for small files): such data has no extent a reflink could share.
pub fn is_inline(f: &File) -> bool {
    file_extents(f).is_ok_and(|e| e.iter().any(|e| e.flags & FIEMAP_EXTENT_DATA_INLINE != 0))
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

/// Whether two extent maps share all their data: both have data, every
/// extent of both is flagged shared and has a location of its own, and both
/// cover the same physical ranges.
pub fn extents_shared(ea: &[Extent], eb: &[Extent]) -> bool {
    let usable = |v: &[Extent]| {
        !v.is_empty()
            && v.iter().all(|e| {
                e.is_shared() && e.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DATA_INLINE) == 0
            })
    };
    usable(ea) && usable(eb) && physical_ranges(ea) == physical_ranges(eb)
}

/// Whether `a` and `b` share all their data extents ([`extents_shared`] of
/// their maps). A `cp --reflink=always` copy gives `true`, a
/// `cp --reflink=never` copy `false`; empty files (no extents) give `false`.
pub fn shared_extents(a: &File, b: &File) -> std::io::Result<bool> {
    Ok(extents_shared(&file_extents(a)?, &file_extents(b)?))
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
        assert_eq!(std::mem::offset_of!(RawFiemap<1>, fm_extents), 32);
        assert_eq!(std::mem::size_of::<RawFiemap<1>>(), 32 + 56);
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
        let fa = File::open(&f).unwrap();
        let e = file_extents(&fa).unwrap();
        assert!(!e.is_empty());
        assert_eq!(e.iter().map(|e| e.length).sum::<u64>(), 1 << 20);
        assert_eq!(first_extent(&fa).map(|x| x.physical), Some(e[0].physical));
        // A file is not "shared" with a plain copy of itself.
        let g = td.path().join("g");
        std::fs::write(&g, vec![1u8; 1 << 20]).unwrap();
        let fg = File::open(&g).unwrap();
        assert!(!shared_extents(&fa, &fg).unwrap());
        assert!(!first_extents_shared(&fa, &fg));
        assert!(!files_share_extents(&fa, &fg).unwrap());
        // An empty file has no extent.
        let h = td.path().join("h");
        std::fs::write(&h, b"").unwrap();
        assert!(file_extents(&File::open(&h).unwrap()).unwrap().is_empty());
        assert!(first_extent(&File::open(&h).unwrap()).is_none());
    }
}
