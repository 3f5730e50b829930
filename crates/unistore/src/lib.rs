//! unistore: the engine.
//!
//! Plumbing only: nothing in this crate prints to stdout or opens a global
//! path such as `/sysroot`, `/run` or `/proc`. Every operation takes a
//! [`sysroot::Sysroot`], a physical root opened once, so every test can run on
//! a temporary root. Long work reports through a [`progress::Progress`] sink
//! that the CLI renders.
//!
//! The rooms: [`command`] (the shape of every command and the backend
//! trait), [`backends`] (each kind of host with its commands), [`deployment`]
//! and [`boot`] (what a host boots), [`source`] (getting an image),
//! [`stores`] (keeping it), [`unified`] (one copy across the stores),
//! [`verify`] (checking it), [`fs`] (reflinks and extents). See [`design`]
//! for the map and the decisions behind the on-disk layout.

pub mod backends;
pub mod boot;
pub mod command;
pub mod crashpoint;
pub mod deployment;
pub mod design;
pub mod disk;
pub mod fs;
pub mod install_config;
pub mod lock;
pub mod progress;
pub mod source;
pub mod stores;
pub mod sysroot;
pub mod unified;
pub mod util;
pub mod verify;

pub use sysroot::Sysroot;
