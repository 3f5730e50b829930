//! The shape of `image set-unified` on every kind of host.

use serde::Serialize;

use crate::source::fetch_config;
use crate::source::imgref::ImageRef;
use crate::unified::ImportReport;
use crate::unified::UnifiedMode;

/// Which binding to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Images in containers-storage too, sharing extents with composefs.
    Full,
    /// The composefs↔ostree binding (ostree hosts only).
    Composefs,
}

/// Options of `set-unified`.
#[derive(Debug, Clone)]
pub struct SetUnifiedOpts {
    /// What to set.
    pub target: Target,
    /// `enabled` (reflinks required) or `enabled-with-copy`.
    pub mode: UnifiedMode,
    /// How to reach registries (ostree hosts pull live images that are not
    /// in composefs yet).
    pub fetch: fetch_config::FetchConfig,
}

/// One live image and its role.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveImage {
    /// Manifest digest in composefs.
    pub manifest_digest: String,
    /// The reference the deployment follows.
    pub image: String,
    /// booted, rollback, staged, other.
    pub role: String,
    /// The deployment that uses it (the first found).
    pub deployment_id: String,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum SetUnifiedOutcome {
    /// Nothing to do, and why.
    NoOp { message: String },
    /// ostree hosts: the binding to composefs recorded.
    Bound { message: String },
    /// Marked already, every image in the store: nothing done.
    AlreadyUnified {
        mode: UnifiedMode,
        images: Vec<LiveImage>,
    },
    /// Images imported and the flag written.
    Unified {
        mode: UnifiedMode,
        reflinks: bool,
        filesystem: String,
        images: Vec<ImportReport>,
        messages: Vec<String>,
    },
}

/// Live images with the reference each deployment follows.
pub type LiveImages = Vec<(LiveImage, ImageRef)>;
