//! The shape of `upgrade` and `switch` on every kind of host.

use serde::Serialize;

use super::gc::GcReport;
use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::ImageRef;
use crate::source::remote::RemoteImage;

/// Options of an upgrade or switch.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOpts {
    /// `switch`: follow this reference instead of the booted one's.
    pub target: Option<ImageRef>,
    /// Only report what would change; fetch no layers, write nothing.
    pub check: bool,
    /// How to reach registries.
    pub fetch: FetchConfig,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum UpgradeOutcome {
    /// The source has the image already booted (or staged).
    NoChange {
        image: String,
        manifest_digest: String,
        staged: bool,
    },
    /// `--check`: an update exists.
    UpdateAvailable {
        image: String,
        booted_digest: Option<String>,
        remote: RemoteImage,
    },
    /// `switch` to another reference of the image already booted (or
    /// staged): that deployment's origin now follows the new reference; no
    /// new deployment.
    OriginUpdated {
        image: String,
        previous_image: String,
        manifest_digest: String,
        deployment_id: String,
    },
    /// ostree host on a root that is not the running system: libostree
    /// stages only on a booted host, so the new deployment was written as
    /// the next boot at once (the one before it is the rollback).
    Deployed {
        image: String,
        deployment_id: String,
        manifest_digest: String,
        version: Option<String>,
        gc: Option<Box<GcReport>>,
        /// The ostree commit written (ostree hosts).
        #[serde(skip_serializing_if = "Option::is_none")]
        commit: Option<Box<crate::stores::ostree_repo::commit::Imported>>,
    },
    /// A deployment was staged for the next boot.
    Staged {
        image: String,
        deployment_id: String,
        manifest_digest: String,
        version: Option<String>,
        kernel_reused: bool,
        gc: Option<Box<GcReport>>,
        /// The ostree commit written (ostree hosts).
        #[serde(skip_serializing_if = "Option::is_none")]
        commit: Option<Box<crate::stores::ostree_repo::commit::Imported>>,
    },
}
