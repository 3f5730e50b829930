//! The three stores a host keeps its images in, each a sibling here:
//!
//! * [`composefs_repo`]: the composefs repository under `composefs/`
//!   (composefs-rs format, SHA-512), which composefs hosts boot from;
//! * [`containers_storage`]: the host containers-storage (podman's overlay
//!   store) under `composefs/bootc/storage` (`ostree/bootc/storage`): what
//!   is read of it, podman and skopeo sessions, its formats and unistore's
//!   own writer;
//! * [`ostree_repo`]: the ostree bare repository under `ostree/repo`, which
//!   ostree hosts boot from: images as one commit each, content objects
//!   reflinked from composefs objects.
//!
//! Unified storage ([`crate::unified`]) shares each file's extents between
//! them; the host backends ([`crate::backends`]) decide which a host boots.

pub mod composefs_gc_view;
pub mod composefs_repo;
pub mod containers_storage;
pub mod ostree_repo;
pub mod tar_walk;
