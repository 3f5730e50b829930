//! The shape of `internals fsck [images]` on every kind of host: its
//! options, the [`Verdict`] every check gives, and the reports.

use crate::unified::UnifiedMode;
use serde::Serialize;
use std::path::PathBuf;

/// Options of a check.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOpts {
    /// Fix what can be fixed.
    pub repair: bool,
    /// Re-hash the content of every object, layer and EROFS image.
    pub verify_content: bool,
}

/// What every check reports in the same shape: failures, and remarks that
/// are not failures.
pub trait Verdict {
    /// Problems left (each a failure).
    fn issues(&self) -> &[String];
    /// Remarks that are not failures.
    fn notes(&self) -> &[String] {
        &[]
    }
    /// No failure left.
    fn ok(&self) -> bool {
        self.issues().is_empty()
    }
}

/// Whether every check of a list passed.
pub fn all_ok<'a, T: Verdict + 'a>(checks: impl IntoIterator<Item = &'a T>) -> bool {
    checks.into_iter().all(Verdict::ok)
}

/// The composefs repository as a whole.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoReport {
    /// Which repository: `composefs` (empty in older reports) or `ostree`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub store: String,
    /// Whether object contents were re-hashed.
    pub content_verified: bool,
    pub objects_checked: u64,
    pub objects_corrupted: u64,
    pub streams_checked: u64,
    pub streams_corrupted: u64,
    pub images_checked: u64,
    pub missing_objects: u64,
    pub issues: Vec<String>,
}

/// One boot entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryReport {
    /// `boot/loader/entries[.staged]/<file>`.
    pub file: String,
    pub deployment: Option<String>,
    pub issues: Vec<String>,
}

/// One deployment state directory.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentReport {
    pub id: String,
    pub is_live: bool,
    pub manifest_digest: Option<String>,
    pub issues: Vec<String>,
    pub notes: Vec<String>,
}

/// The report of `internals fsck`: everything.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FullReport {
    pub repository: RepoReport,
    pub boot_entries: Vec<EntryReport>,
    pub deployments: Vec<DeploymentReport>,
    pub images: ImagesReport,
    pub ok: bool,
}

/// How the composefs repository and the containers-storage are bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// Not unified: the store (if any) is podman's business.
    #[default]
    Disabled,
    /// ostree hosts only: bound to composefs, not yet unified.
    BoundOnly,
    /// Unified: every host image is in both.
    Unified,
}

/// One host image.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// ostree hosts: whole in the ostree repository (its commit and every
    /// object it reaches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_ostree: Option<bool>,
    /// The reference its deployments follow, else its tag.
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: Option<String>,
    /// Its `localhost/bootc-*` tags.
    pub tags: Vec<String>,
    /// Live deployments using it.
    pub deployments: Vec<String>,
    /// Whole in the composefs repository.
    pub in_composefs: bool,
    /// Whole in the host containers-storage.
    pub in_containers_storage: bool,
    /// Named by a live boot entry.
    pub is_live: bool,
    /// Something was repaired.
    pub repaired: bool,
    /// Problems left (each a failure).
    pub issues: Vec<String>,
    /// Remarks that are not failures.
    pub notes: Vec<String>,
    /// What the repair did.
    pub repairs: Vec<String>,
    /// Whether its store files were compared with the composefs objects
    /// (a unified host with reflinks, the image whole in both).
    pub sharing_checked: bool,
    /// Store files that share their composefs object's extents.
    pub shared_files: u64,
    /// Store files that hold their own copy of an object's content.
    pub unshared_files: u64,
    /// Their bytes (the space a repair gives back).
    pub unshared_bytes: u64,
    /// ostree hosts bound to composefs: content objects that hold their
    /// own copy instead of sharing their composefs object's extents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ostree_unshared_files: Option<u64>,
    /// Their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ostree_unshared_bytes: Option<u64>,
}

/// The host containers-storage.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreReport {
    pub path: PathBuf,
    pub exists: bool,
    /// Problems of the store as a whole (unreadable JSON).
    pub issues: Vec<String>,
}

/// The report of `fsck images`, shaped as the unified-storage design has it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesReport {
    pub unified_storage_enabled: bool,
    /// `enabled` / `enabled-with-copy` on a unified host.
    pub unified_mode: Option<UnifiedMode>,
    pub binding: Binding,
    pub reflinks_supported: bool,
    pub containers_storage: StoreReport,
    pub images: Vec<ImageReport>,
    /// Problems tied to no single image (unreadable origins).
    pub issues: Vec<String>,
    pub ok: bool,
}

macro_rules! verdict {
    ($t:ty) => {
        impl Verdict for $t {
            fn issues(&self) -> &[String] {
                &self.issues
            }
        }
    };
    ($t:ty, notes) => {
        impl Verdict for $t {
            fn issues(&self) -> &[String] {
                &self.issues
            }
            fn notes(&self) -> &[String] {
                &self.notes
            }
        }
    };
}
verdict!(ImageReport, notes);
verdict!(RepoReport);
verdict!(EntryReport);
verdict!(DeploymentReport, notes);
