//! Reflinks: whether a filesystem can share data extents between files, and
//! the clone-or-copy policy of unified storage.
//!
//! * [`probe`]: `FICLONE` between two `O_TMPFILE` files in a directory of the
//!   target filesystem. Nothing is left behind: the files have no name.
//!   `EOPNOTSUPP`, `EXDEV`, `EINVAL` (and `ENOTTY`) mean "no reflinks".
//! * [`Policy`]: what unified storage does when a file cannot be shared:
//!   fail ([`Policy::ReflinkOnly`], mode `enabled`) or keep a copy
//!   ([`Policy::ReflinkOrCopy`], mode `enabled-with-copy`).
//! * [`clone_or_copy`]: a new file with the content of another, by reflink
//!   where possible (the kernel and initrd under `boot/`, a deployment's
//!   `/etc` and `/var` from composefs objects); [`Tally`] counts what was
//!   shared and what was copied.
//! * [`share_identical`]: make two files with the same content share their
//!   extents (`FIDEDUPERANGE`: the kernel compares the bytes first, so a
//!   mistake can never change a file's content).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::io::Errno;

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReflinkProbe {
    /// Whether `FICLONE` works on this filesystem.
    pub supported: bool,
    /// The filesystem type (`xfs`, `ext4`, ... or the hex magic).
    pub fs_type: String,
    /// Why not, when not supported (the errno `FICLONE` returned).
    pub reason: Option<String>,
}

impl ReflinkProbe {
    /// `"xfs"` / `"ext4 (FICLONE: Operation not supported)"`, for messages.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} (FICLONE: {r})", self.fs_type),
            None => self.fs_type.clone(),
        }
    }
}

/// Whether an errno from `FICLONE`/`FIDEDUPERANGE` means "this filesystem
/// (pair) cannot share extents" rather than a real failure.
pub fn is_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY
    )
}

/// A readable name of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as u64 {
        0x5846_5342 => "xfs".into(),
        0xEF53 => "ext4".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0xE0F5_E1E2 => "erofs".into(),
        0x6969 => "nfs".into(),
        other => format!("fs type {other:#x}"),
    }
}

/// Probes reflink support on the filesystem holding the directory `dir`.
pub fn probe(dir: &Path) -> Result<ReflinkProbe> {
    use rustix::fs::{Mode, OFlags};
    let fs_type = fs_type(dir);
    let open_tmp = || {
        rustix::fs::open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from(0o600),
        )
        .with_context(|| format!("creating an O_TMPFILE file in {}", dir.display()))
    };
    let src = File::from(open_tmp()?);
    let dst = File::from(open_tmp()?);
    // One whole block: some filesystems refuse to clone a partial block.
    rustix::io::write(&src, &[0x5au8; 4096]).context("writing the probe file")?;
    match rustix::fs::ioctl_ficlone(&dst, &src) {
        Ok(()) => Ok(ReflinkProbe {
            supported: true,
            fs_type,
            reason: None,
        }),
        Err(e) if is_unsupported(e) => Ok(ReflinkProbe {
            supported: false,
            fs_type,
            reason: Some(std::io::Error::from(e).to_string()),
        }),
        Err(e) => Err(e).with_context(|| format!("probing reflinks in {}", dir.display())),
    }
}

/// What to do when two stores cannot share a file's extents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Reflinks only: anything else is an error (mode `enabled`).
    ReflinkOnly,
    /// Reflinks where possible, else keep separate copies
    /// (mode `enabled-with-copy`).
    ReflinkOrCopy,
}

/// How a file ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Its extents are now shared with the source.
    Reflinked,
    /// Its extents already were shared with the source.
    AlreadyShared,
    /// It holds its own copy of the bytes.
    Copied,
}

/// Writes the content of `src` into the empty file `dst`: by `FICLONE`
/// where the filesystem can, else (if `policy` allows) by copying.
pub fn clone_or_copy(src: &File, dst: &File, policy: Policy) -> Result<Method> {
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => Ok(Method::Reflinked),
        Err(e) if is_unsupported(e) && policy == Policy::ReflinkOrCopy => {
            let mut s = src.try_clone()?;
            s.seek(SeekFrom::Start(0))?;
            let mut d = dst.try_clone()?;
            d.set_len(0)?;
            d.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut s, &mut d).context("copying")?;
            Ok(Method::Copied)
        }
        Err(e) => Err(std::io::Error::from(e)).context("FICLONE"),
    }
}

/// Files and bytes [`clone_or_copy`] (and friends) shared by reflink or
/// wrote as copies, summed over many files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Files whose extents are shared with their source.
    pub reflinked_files: u64,
    /// Their bytes: no new data written.
    pub reflinked_bytes: u64,
    /// Files written as copies (no reflinks, or content with no file to
    /// clone from, such as inline contents).
    pub copied_files: u64,
    /// Their bytes: new data written.
    pub copied_bytes: u64,
}

impl Tally {
    /// Counts one file of `bytes` bytes that ended up as `method` says.
    pub fn record(&mut self, method: Method, bytes: u64) {
        match method {
            Method::Reflinked | Method::AlreadyShared => {
                self.reflinked_files += 1;
                self.reflinked_bytes += bytes;
            }
            Method::Copied => {
                self.copied_files += 1;
                self.copied_bytes += bytes;
            }
        }
    }

    /// Adds the counts of `other`.
    pub fn merge(&mut self, other: &Tally) {
        self.reflinked_files += other.reflinked_files;
        self.reflinked_bytes += other.reflinked_bytes;
        self.copied_files += other.copied_files;
        self.copied_bytes += other.copied_bytes;
    }

    /// `"25.1 MiB reflinked (40 files), 0.2 MiB copied (600 files)"`.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        format!(
            "{:.1} MiB reflinked ({} files), {:.1} MiB copied ({} files)",
            mib(self.reflinked_bytes),
            self.reflinked_files,
            mib(self.copied_bytes),
            self.copied_files
        )
    }
}

/// `FIDEDUPERANGE` = `_IOWR(0x94, 54, struct file_dedupe_range)`.
const FIDEDUPERANGE: libc::c_ulong = 0xC018_9436;
const FILE_DEDUPE_RANGE_DIFFERS: i32 = 1;

#[repr(C)]
struct DedupeRange {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
    info: [DedupeRangeInfo; 1],
}

#[repr(C)]
#[derive(Default)]
struct DedupeRangeInfo {
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

/// The result of [`dedupe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// The whole range is now shared.
    Shared,
    /// The contents differ: nothing was changed.
    Differs,
}

/// Shares the extents of `dst` with those of `src` over `len` bytes, after
/// the kernel has checked they hold the same bytes.
pub fn dedupe(src: &File, dst: &File, len: u64) -> std::result::Result<Dedupe, Errno> {
    let mut off = 0u64;
    while off < len {
        let mut r = DedupeRange {
            src_offset: off,
            src_length: len - off,
            dest_count: 1,
            reserved1: 0,
            reserved2: 0,
            info: [DedupeRangeInfo {
                dest_fd: dst.as_fd().as_raw_fd() as i64,
                dest_offset: off,
                ..Default::default()
            }],
        };
        // SAFETY: `r` is a valid `struct file_dedupe_range` with room for
        // `dest_count` infos, and lives across the call.
        let rc = unsafe { libc::ioctl(src.as_raw_fd(), FIDEDUPERANGE, &mut r as *mut DedupeRange) };
        if rc < 0 {
            return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
        }
        let info = &r.info[0];
        if info.status < 0 {
            return Err(Errno::from_raw_os_error(-info.status));
        }
        if info.status == FILE_DEDUPE_RANGE_DIFFERS {
            return Ok(Dedupe::Differs);
        }
        if info.bytes_deduped == 0 {
            break;
        }
        off += info.bytes_deduped;
    }
    Ok(Dedupe::Shared)
}

/// Whether `a` and `b` already start on the same shared extent (a cheap
/// check before [`dedupe`]; see [`crate::fs::extents`]).
pub fn already_shared(a: &File, b: &File) -> bool {
    crate::fs::extents::first_extents_shared(a, b)
}

/// Makes `dst` share the extents of `src`, which must hold the same bytes.
/// Under [`Policy::ReflinkOrCopy`] a filesystem without reflinks leaves
/// `dst` as it is (a copy); under [`Policy::ReflinkOnly`] that is an error.
/// Different contents are always an error and change nothing.
pub fn share_identical(src: &File, dst: &File, policy: Policy) -> Result<Method> {
    let len = src.metadata()?.len();
    let dlen = dst.metadata()?.len();
    if len != dlen {
        bail!("sizes differ ({len} and {dlen} bytes)");
    }
    if len == 0 {
        return Ok(Method::AlreadyShared);
    }
    if already_shared(src, dst) {
        return Ok(Method::AlreadyShared);
    }
    match dedupe(src, dst, len) {
        Ok(Dedupe::Shared) => Ok(Method::Reflinked),
        Ok(Dedupe::Differs) => bail!("contents differ"),
        Err(e) if is_unsupported(e) && policy == Policy::ReflinkOrCopy => Ok(Method::Copied),
        Err(e) => Err(std::io::Error::from(e)).context("FIDEDUPERANGE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install_config::UnifiedMode;
    use std::io::Write;

    #[test]
    fn struct_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<DedupeRange>(), 24 + 32);
        assert_eq!(std::mem::size_of::<DedupeRangeInfo>(), 32);
    }

    #[test]
    fn probe_and_policies_on_a_local_dir() {
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let p = probe(td.path()).unwrap();
        assert!(!p.fs_type.is_empty());
        // Nothing is left behind.
        assert_eq!(std::fs::read_dir(td.path()).unwrap().count(), 0);
        if !p.supported {
            let err = UnifiedMode::Enabled
                .require_reflinks(&p, td.path())
                .unwrap_err();
            assert!(err.to_string().contains("reflinks"), "{err}");
        }
        UnifiedMode::EnabledWithCopy
            .require_reflinks(&p, td.path())
            .unwrap();

        let mut a = File::create(td.path().join("a")).unwrap();
        a.write_all(&vec![7u8; 100_000]).unwrap();
        let a = File::open(td.path().join("a")).unwrap();
        let b = File::create(td.path().join("b")).unwrap();
        let m = clone_or_copy(&a, &b, Policy::ReflinkOrCopy).unwrap();
        assert_eq!(
            std::fs::read(td.path().join("b")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(m == Method::Reflinked, p.supported);

        // An identical copy can be shared (or kept, without reflinks).
        std::fs::write(td.path().join("c"), vec![7u8; 100_000]).unwrap();
        let c = File::open(td.path().join("c")).unwrap();
        let m = share_identical(&a, &c, Policy::ReflinkOrCopy).unwrap();
        assert!(matches!(
            m,
            Method::Reflinked | Method::Copied | Method::AlreadyShared
        ));
        // Different content is refused and left alone.
        std::fs::write(td.path().join("d"), vec![8u8; 100_000]).unwrap();
        let d = File::open(td.path().join("d")).unwrap();
        if p.supported {
            assert!(share_identical(&a, &d, Policy::ReflinkOrCopy).is_err());
        }
        assert_eq!(
            std::fs::read(td.path().join("d")).unwrap(),
            vec![8u8; 100_000]
        );
    }
}
