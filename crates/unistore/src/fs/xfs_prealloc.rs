//! XFS speculative preallocation, given back.
//!
//! XFS gives files being written blocks past their end (speculative
//! preallocation) and keeps them for minutes on files written the way
//! object stores write them (`O_TMPFILE`, write, link): `df` right after an
//! install then shows tens of percent more than what stays. After a
//! multi-file write, [`trim`] asks XFS to free every file's post-EOF blocks
//! now (`XFS_IOC_FREE_EOFBLOCKS` with no minimum size, synchronously: what
//! `xfs_spaceman -c 'prealloc -m 0'` does). It frees only blocks past the
//! end of files; no data is touched. On other filesystems it does nothing.

use std::os::fd::AsFd;

use anyhow::Result;

use crate::sysroot::Sysroot;

/// `struct xfs_fs_eofblocks` (linux/xfs_fs.h, version 1).
#[repr(C)]
struct EofBlocks {
    version: u32,
    flags: u32,
    uid: u32,
    gid: u32,
    prid: u32,
    pad32: u32,
    min_file_size: u64,
    pad64: [u64; 12],
}

const XFS_EOFBLOCKS_VERSION: u32 = 1;
const XFS_EOF_FLAGS_SYNC: u32 = 1 << 0;
const XFS_EOF_FLAGS_MINFILESIZE: u32 = 1 << 4;
/// `_IOR('X', 58, struct xfs_fs_eofblocks)`.
const XFS_IOC_FREE_EOFBLOCKS: u32 = 0x8000_0000 | ((128 & 0x3fff) << 16) | (0x58 << 8) | 58;

/// Frees the speculative preallocation of every file of the filesystem
/// holding `sysroot` (XFS only; a no-op elsewhere). Returns whether XFS did
/// it.
pub fn trim(sysroot: &Sysroot) -> Result<bool> {
    let mut arg = EofBlocks {
        version: XFS_EOFBLOCKS_VERSION,
        flags: XFS_EOF_FLAGS_SYNC | XFS_EOF_FLAGS_MINFILESIZE,
        uid: 0,
        gid: 0,
        prid: 0,
        pad32: 0,
        min_file_size: 0,
        pad64: [0; 12],
    };
    // The root's handle may be an O_PATH descriptor, which ioctls refuse.
    let fd = rustix::fs::openat(
        sysroot.dir().as_fd(),
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // SAFETY: the ioctl reads `arg`, a `struct xfs_fs_eofblocks` laid out
    // as the kernel defines it, from a valid directory descriptor.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            XFS_IOC_FREE_EOFBLOCKS as _,
            &mut arg as *mut EofBlocks,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not XFS (or too old an XFS), or not allowed: nothing to give back.
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::EPERM) => {
            Ok(false)
        }
        _ => Err(anyhow::Error::new(e).context("XFS_IOC_FREE_EOFBLOCKS")),
    }
}

/// [`trim`], where failing only costs space for a while: logged, not fatal.
pub fn trim_quietly(sysroot: &Sysroot) {
    if let Err(e) = trim(sysroot) {
        tracing::warn!("giving back XFS preallocation: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<EofBlocks>(), 128);
        assert_eq!(XFS_IOC_FREE_EOFBLOCKS, 0x8080_583a);
    }

    #[test]
    fn elsewhere_it_does_nothing() {
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let s = Sysroot::open(td.path()).unwrap();
        // /var/tmp is not XFS here (ext4 or the like): no error.
        let _ = trim(&s).unwrap();
    }
}
