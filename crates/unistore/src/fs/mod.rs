//! Filesystem mechanics every store and backend uses:
//!
//! * [`reflink`]: whether extents can be shared (`FICLONE` probe), the
//!   clone-or-copy policy of unified storage, deduplication of copies;
//! * [`extents`]: extent maps (`FS_IOC_FIEMAP`), shared or not;
//! * [`xfs_prealloc`]: XFS speculative preallocation given back after a
//!   large write.

pub mod extents;
pub mod reflink;
pub mod xfs_prealloc;
