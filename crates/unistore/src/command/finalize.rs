//! The shape of `internals finalize-staged` on every kind of host.

use serde::Serialize;

/// What finalize did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum FinalizeOutcome {
    /// No staged deployment.
    NothingStaged,
    /// The staged deployment is locked against finalization.
    Locked { deployment_id: String },
    /// The staged deployment boots next.
    Finalized {
        deployment_id: String,
        etc_local_changes_kept: usize,
    },
}
