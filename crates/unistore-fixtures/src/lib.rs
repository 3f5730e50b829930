//! Test fixtures for unistore.
//!
//! Two families of helpers live here:
//!
//! * [`image`]: generates small, deterministic, bootable-looking multi-layer OCI images
//!   into an OCI layout directory, packs an existing root filesystem (e.g. a debootstrap
//!   tree) into an image, and computes the *expected* merged tree of an image by really
//!   applying its layers (whiteouts included), so tests can compare a mounted tree to it.
//! * [`mod@env`]: real test environments that clean up on drop: loop-mounted XFS/ext4
//!   filesystems, a loopback `docker-registry`, a podman configuration that can run
//!   containers on this kind of host, and a FIEMAP-based reflink check.
//!
//! Most of [`mod@env`] needs root and the host tools (`mkfs.xfs`, `losetup`, `docker-registry`,
//! `skopeo`, `podman`); nothing in it silently skips.

pub mod env;
pub mod image;
pub mod rng;
pub mod xattrs;
