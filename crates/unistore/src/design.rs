//! # Design notes
//!
//! Only rustdoc: the why behind the code, next to it.
//!
//! ## What "booted" means on a root that is not running
//!
//! `install`, tests and image builders work on roots that no kernel booted.
//! There the primary (default) boot entry is taken as booted, as if the host
//! had just booted it: `status` says so (`bootedIsPrimaryEntry`). On the
//! running system the caller reads the booted id from the kernel command
//! line and passes it in ([`crate::sysroot::BootedMode::Running`]): the
//! library itself never opens `/proc`.
//!
//! ## Which marker is written last, and why
//!
//! Entries are the truth: a deployment exists for the boot menu when a loader
//! entry names it. Every step before the entry (repository objects, tag,
//! state directory, kernel directory) is written through a temporary name
//! and renamed, and is harmless if left alone: a later run, or GC, treats a
//! state directory without an entry as an interrupted deploy. So the entry
//! file is written last, with write-to-temp, fsync and rename.
//!
//! ## Why the repository is SHA-512 and "insecure" here
//!
//! bootc's composefs repositories use `fsverity-sha512-12`. This machine's
//! kernel has no fs-verity on XFS or ext4, so the repository is created in
//! insecure mode: digests are still computed in userspace (they equal
//! `fsverity digest --hash-alg=sha512`), but the kernel does not enforce
//! them; entries carry `composefs=?<id>` to say verity may be missing.
//!
//! ## Why reflinks and not hardlinks between stores
//!
//! composefs objects are raw bytes shared by every image; ostree bare objects
//! and containers-storage files carry their own owner, mode and xattrs on the
//! inode. A hardlink would force one inode's metadata on all of them; a
//! reflink shares only the data extents, each store keeps its own inode.
