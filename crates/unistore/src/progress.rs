//! Progress: the library reports, the CLI renders.
//!
//! We use composefs' own [`ProgressReporter`] so one sink receives both our
//! step messages and composefs-oci's per-layer byte counts.

use std::sync::Arc;

pub use composefs::progress::{ComponentId, NullReporter, ProgressEvent, ProgressReporter};

/// A shared progress sink.
pub type Progress = Arc<dyn ProgressReporter>;

/// A sink that drops everything.
pub fn null() -> Progress {
    Arc::new(NullReporter)
}

/// Reports a one-line step message.
pub fn step(p: &Progress, msg: impl Into<String>) {
    p.report(ProgressEvent::Message(msg.into()));
}
