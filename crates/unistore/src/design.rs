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
//!
//! ## Staging, finalize and rollback
//!
//! A staged deployment exists only if the marker
//! `<run>/composefs/staged-deployment` exists: upgrade writes the state
//! directory, the kernel directory and `entries.staged/` first and the
//! marker last; an older marker is removed before `entries.staged/` is
//! replaced, so a marker never names entries that are not there. GC treats
//! `entries.staged/` without a marker as an interrupted stage.
//!
//! Finalize plans the `/etc` merge completely before writing (a conflict
//! changes nothing), builds the merged `/etc` in a copy and exchanges it in,
//! then exchanges `entries.staged/` with `entries/` (renameat2 EXCHANGE: the
//! boot menu is either the old or the new one, never a mix). If killed after
//! the exchange, the primary entry already names the marker's deployment and
//! the next run only cleans up; if killed before it, the merge is redone on
//! the merged `/etc` and gives the same result.
//!
//! ## GC order
//!
//! Entries are the truth; everything else is derived and recoverable, so GC
//! walks from them: kernel directories no live entry names (a directory shared
//! by two deployments lives while either entry does), state directories
//! without an entry, then tags (every live manifest tagged, dead
//! `localhost/bootc-*` tags removed, other tags untouched since other
//! applications may share the repository), then the repository's own GC from
//! its tags. A kill between any two steps leaves garbage that the next run
//! removes, never a live deployment without its pieces.
