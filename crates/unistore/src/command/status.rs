//! The shape of `status` on every kind of host: bootc's `BootcHost`
//! (`{apiVersion, kind, metadata, spec, status}`).

use serde::Serialize;

use crate::source::imgref::ImageRef;

/// `{apiVersion, kind, metadata, spec, status}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Metadata,
    pub spec: HostSpec,
    pub status: HostStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    pub image: Option<ImageReference>,
    pub boot_order: &'static str,
}

/// `{image, transport}` as bootc shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageReference {
    pub image: String,
    pub transport: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub staged: Option<BootEntry>,
    pub booted: Option<BootEntry>,
    pub rollback: Option<BootEntry>,
    pub other_deployments: Vec<BootEntry>,
    pub rollback_queued: bool,
    #[serde(rename = "type")]
    pub ty: Option<&'static str>,
    /// Unified storage state of the host.
    pub storage: Option<StorageStatus>,
    /// unistore: true when the root is not the running system and "booted"
    /// is the primary boot entry.
    pub booted_is_primary_entry: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    pub unified: String,
    pub ostree_composefs_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootEntry {
    pub image: Option<ImageStatus>,
    pub cached_update: Option<ImageStatus>,
    pub incompatible: bool,
    pub pinned: bool,
    pub soft_reboot_capable: bool,
    pub download_only: bool,
    pub store: Option<String>,
    pub ostree: Option<serde_json::Value>,
    pub composefs: Option<ComposefsStatus>,
    /// unistore: the loader entry file that names this deployment.
    pub entry_file: String,
    /// unistore: problems found while reading this deployment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    pub image: ImageReference,
    pub version: Option<String>,
    pub timestamp: Option<String>,
    pub image_digest: String,
    pub architecture: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComposefsStatus {
    pub verity: String,
    pub boot_type: String,
    pub bootloader: String,
    pub boot_digest: Option<String>,
    pub missing_verity_allowed: bool,
}

/// The `BootcHost` around `status`: the spec follows the booted image, and
/// a queued rollback (the primary entry is not what is booted) shows in the
/// boot order. Every backend builds its status through this.
pub fn assemble(status: HostStatus) -> Host {
    let spec_image = status
        .booted
        .as_ref()
        .and_then(|b| b.image.as_ref())
        .map(|i| i.image.clone());
    Host {
        api_version: "org.containers.bootc/v1",
        kind: "BootcHost",
        metadata: Metadata {
            name: "host".into(),
        },
        spec: HostSpec {
            image: spec_image,
            boot_order: if status.rollback_queued {
                "rollback"
            } else {
                "default"
            },
        },
        status,
    }
}

impl From<&ImageRef> for ImageReference {
    fn from(r: &ImageRef) -> Self {
        Self {
            image: r.name.clone(),
            transport: r.transport.status_name().to_string(),
        }
    }
}
