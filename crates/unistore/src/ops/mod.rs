//! One module per user operation, each taking a [`crate::Sysroot`] (or the
//! root to create one on) and an options struct.

pub mod install;
pub mod mount;
