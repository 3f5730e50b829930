//! The shape of `image list` on every kind of host.

use crate::unified::UnifiedMode;
use serde::Serialize;

/// One host image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostImage {
    /// Manifest digest (as in the composefs repository and the origin).
    pub manifest_digest: String,
    /// Config digest, when the manifest is readable.
    pub config_digest: Option<String>,
    /// The reference a deployment follows, if a deployment uses it.
    pub image: Option<String>,
    /// booted, staged, rollback, other; empty for a tagged-only image.
    pub roles: Vec<String>,
    /// `org.opencontainers.image.version`.
    pub version: Option<String>,
    /// Present in the composefs repository.
    pub in_composefs: bool,
    /// Present (complete) in the host containers-storage.
    pub in_containers_storage: bool,
    /// Its names in containers-storage.
    pub store_names: Vec<String>,
    /// Whether unistore put it in containers-storage.
    pub owned_by_unistore: bool,
    /// ostree hosts: its commit is in the ostree repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_ostree: Option<bool>,
}

/// The list.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageList {
    /// The unified flag of the host.
    pub unified: Option<UnifiedMode>,
    /// ostree hosts: the repository is bound to composefs
    /// (`set-unified composefs`), as `status` says.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ostree_composefs_bound: bool,
    /// The images, live ones first.
    pub images: Vec<HostImage>,
    /// Live deployments whose image could not be told.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}
