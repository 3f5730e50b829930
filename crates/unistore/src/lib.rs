//! unistore: the engine.
//!
//! Plumbing only: nothing in this crate prints to stdout or opens a global
//! path such as `/sysroot`, `/run` or `/proc`. Every operation takes a
//! [`sysroot::Sysroot`], a physical root opened once, so every test can run on
//! a temporary root. Long work reports through a [`progress::Progress`] sink
//! that the CLI renders.
//!
//! See [`design`] for the decisions behind the on-disk layout.

pub mod backends;
pub mod bootloader;
pub mod crashpoint;
pub mod deploy;
pub mod deployment;
pub mod design;
pub mod docker_schema2;
pub mod etc;
pub mod etc_merge;
pub mod extents;
pub mod hash_thread;
pub mod host;
pub mod imgref;
pub mod install_config;
pub mod lock;
pub mod migrate;
pub mod oci_layout;
pub mod ops;
pub mod origin;
pub mod progress;
pub mod reflink;
pub mod sigpolicy;
pub mod staged;
pub mod status;
pub mod stores;
pub mod sysroot;
pub mod tar_walk;
pub mod unified;
pub mod util;
pub mod xfs_prealloc;

pub use sysroot::Sysroot;
