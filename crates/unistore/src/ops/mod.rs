//! One module per user operation, each taking a [`crate::Sysroot`] (or the
//! root to create one on) and an options struct.

pub mod finalize;
pub mod fsck;
pub mod gc;
pub mod image_list;
pub mod install;
pub mod mount;
pub mod rollback;
pub mod set_unified;
pub mod upgrade;
