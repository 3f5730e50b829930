//! `status`: the host in bootc's `BootcHost` shape. Reads only.

use anyhow::Result;
use serde::Serialize;

use crate::bootloader::BlsEntry;
use crate::deployment;
use crate::imgref::ImageRef;
use crate::stores::composefs_repo::{self, Repo};
use crate::sysroot::{BootedMode, Sysroot};

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

impl From<&ImageRef> for ImageReference {
    fn from(r: &ImageRef) -> Self {
        Self {
            image: r.name.clone(),
            transport: r.transport.status_name().to_string(),
        }
    }
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

/// Describes the deployment an entry names.
pub fn describe_entry(sysroot: &Sysroot, repo: Option<&Repo>, entry: &BlsEntry) -> BootEntry {
    let mut errors = vec![];
    let id = entry.deployment_id().unwrap_or_default().to_string();
    if id.is_empty() {
        errors.push(format!(
            "{} names no composefs= deployment",
            entry.file_name
        ));
    }
    let origin = match deployment::read_origin(sysroot, &id) {
        Ok(o) => Some(o),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let mut image = None;
    if let (Some(origin), Some(repo)) = (&origin, repo) {
        match deployment::manifest_digest(sysroot, repo, &id, origin)
            .and_then(|d| Ok((composefs_repo::open_image(repo, &d)?, d)))
        {
            Ok((img, digest)) => {
                let version = img
                    .label("org.opencontainers.image.version")
                    .map(str::to_string);
                image = Some(ImageStatus {
                    image: (&origin.image).into(),
                    version,
                    timestamp: img.created().map(str::to_string),
                    image_digest: origin.registry_digest.clone().unwrap_or(digest),
                    architecture: img.architecture(),
                });
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    BootEntry {
        image,
        cached_update: None,
        incompatible: false,
        pinned: false,
        soft_reboot_capable: false,
        download_only: false,
        store: None,
        ostree: None,
        composefs: Some(ComposefsStatus {
            verity: id,
            boot_type: origin
                .as_ref()
                .map(|o| o.boot_type.clone())
                .unwrap_or_else(|| "bls".into()),
            bootloader: "grub".into(),
            boot_digest: origin.as_ref().and_then(|o| o.boot_digest.clone()),
            missing_verity_allowed: entry.missing_verity_allowed(),
        }),
        entry_file: entry.file_name.clone(),
        errors,
    }
}

/// `status.storage` from the unified flag (`composefs/bootc.json`); `None`
/// when the host is not marked. Reads one file, creates nothing.
pub fn storage_status(sysroot: &Sysroot) -> Result<Option<StorageStatus>> {
    Ok(
        crate::unified::unified_mode(sysroot)?.map(|m| StorageStatus {
            unified: m.to_string(),
            ostree_composefs_bound: false,
        }),
    )
}

/// The status of a native composefs host.
pub fn composefs_status(sysroot: &Sysroot) -> Result<Host> {
    let repo = composefs_repo::open(sysroot).ok();
    let host = crate::host::HostState::read(sysroot)?;
    let entries = &host.entries;
    let booted_idx = host.booted;
    let staged = host
        .staged_entry()
        .map(|e| describe_entry(sysroot, repo.as_deref(), e));
    let mut booted = None;
    let mut rollback = None;
    let mut other = vec![];
    for (i, e) in entries.iter().enumerate() {
        let d = describe_entry(sysroot, repo.as_deref(), e);
        if Some(i) == booted_idx {
            booted = Some(d);
        } else if rollback.is_none() {
            rollback = Some(d);
        } else {
            other.push(d);
        }
    }
    Ok(assemble(HostStatus {
        staged,
        booted,
        rollback,
        other_deployments: other,
        rollback_queued: booted_idx.is_some_and(|i| i != 0),
        ty: Some("bootcHost"),
        storage: storage_status(sysroot)?,
        booted_is_primary_entry: *sysroot.booted_mode() == BootedMode::Offline,
    }))
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
