//! The shape of `rollback` on every kind of host.

use serde::Serialize;

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The deployment that boots next.
    pub next_boot: String,
    /// The deployment that becomes the rollback.
    pub rollback: String,
    /// A staged deployment that was discarded.
    pub discarded_staged: Option<String>,
    /// Whether the booted deployment is now the rollback, i.e. a rollback
    /// is queued for the next boot (always false on an offline root, where
    /// the primary entry is "booted").
    pub rollback_queued: bool,
}
