//! Real test environments; each cleans up after itself on drop.
//!
//! * [`LoopFs`]: a loop-mounted XFS (with reflinks) or ext4 filesystem.
//! * [`Registry`]: a loopback `docker-registry` to push images to.
//! * [`podman_env`]: the configuration podman needs to run containers here;
//!   [`PodmanStore`]: a private podman store using it.
//! * [`shared_extents`]: FIEMAP check that two files share their physical extents.
//! * [`vm`]: boot an installed disk image in QEMU, playing the boot loader.

pub mod cmd;
pub mod extents;
pub mod loopfs;
pub mod mounts;
pub mod podman;
pub mod registry;
pub mod vm;

pub use extents::{Extent, file_extents, shared_extents};
pub use loopfs::{FsKind, LoopFs};
pub use mounts::unmount_all_under;
pub use podman::{PodmanStore, podman_env};
pub use registry::{Registry, RegistryOpts, TrustedCa};

/// Whether this process runs as root (most environments here need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Fail loudly unless running as root: tests needing root must not skip silently.
///
/// # Panics
/// When not root.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (loop devices, mounts, podman); run it as root"
    );
}
