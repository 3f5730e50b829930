//! The shape of `status` on every kind of host: bootc's `BootcHost`
//! (`{apiVersion, kind, metadata, spec, status}`), field for field as
//! bootc 1.16.9 prints it (`spec.rs`: `Host`, `HostStatus`, `BootEntry`,
//! `ImageStatus`, `BootEntryComposefs`), plus unistore's own fields, which
//! are named as such.

use serde::Serialize;
use serde_json::Value;

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
    /// Left out when empty, as bootc does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_deployments: Vec<BootEntry>,
    pub rollback_queued: bool,
    /// `bootcHost` on an ostree host that booted an image; bootc leaves it
    /// `null` on composefs hosts.
    #[serde(rename = "type")]
    pub ty: Option<&'static str>,
    /// The overlay on the booted `/usr` (`ostree admin unlock`), if any.
    pub usr_overlay: Option<FilesystemOverlay>,
    /// The physical root cannot be changed (a read-only medium).
    pub read_only: bool,
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
    /// `ostreeContainer` on ostree deployments, `null` on composefs ones.
    pub store: Option<&'static str>,
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
    pub boot_type: BootType,
    /// `grub`, `grub-cc`, `systemd` or `none`: `grub` for GRUB's layout
    /// (entries under `boot/loader/entries`), `systemd` for entries on an
    /// ESP.
    pub bootloader: &'static str,
    pub boot_digest: Option<String>,
    pub missing_verity_allowed: bool,
    /// unistore's: the deployment is sealed: its entry requires fs-verity
    /// (`composefs=<id>`) and the repository has it (`meta.json` secure),
    /// so composefs-setup-root mounts it with overlayfs `verity=require`.
    pub verity_enforced: bool,
}

/// A deployment's boot type: bootc prints `Bls` or `Uki` (its `BootType`
/// has no serde renaming); origins and people read `bls` / `uki`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum BootType {
    Bls,
    Uki,
}

impl BootType {
    /// From the origin's `[boot] boot_type`.
    pub fn from_origin(s: &str) -> Option<Self> {
        match s {
            "bls" => Some(Self::Bls),
            "uki" => Some(Self::Uki),
            _ => None,
        }
    }
}

impl std::fmt::Display for BootType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bls => "bls",
            Self::Uki => "uki",
        })
    }
}

/// The overlay on `/usr`: `{accessMode, persistence}`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemOverlay {
    /// `readOnly` or `readWrite`.
    pub access_mode: &'static str,
    /// `transient` or `persistent`.
    pub persistence: &'static str,
}

impl std::fmt::Display for FilesystemOverlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match self.access_mode {
            "readOnly" => "read-only",
            _ => "read/write",
        };
        write!(f, "{}, {access}", self.persistence)
    }
}

/// `org.opencontainers.image.version`: the label, then the legacy label
/// `version`, then the manifest's annotation.
pub const VERSION_KEY: &str = "org.opencontainers.image.version";
const LEGACY_VERSION_LABEL: &str = "version";
/// `org.opencontainers.image.created`, as a label.
const CREATED_KEY: &str = "org.opencontainers.image.created";

/// An image's version from its config and manifest (JSON): the config
/// label `org.opencontainers.image.version`, then the legacy label
/// `version`, then the manifest annotation `org.opencontainers.image.version`.
pub fn image_version(config: Option<&Value>, manifest: Option<&Value>) -> Option<String> {
    let labels = config.and_then(|c| c.pointer("/config/Labels"));
    [VERSION_KEY, LEGACY_VERSION_LABEL]
        .iter()
        .find_map(|k| labels?.get(*k)?.as_str())
        .or_else(|| manifest?.get("annotations")?.get(VERSION_KEY)?.as_str())
        .map(str::to_string)
}

/// An RFC 3339 time as bootc prints it (chrono's `DateTime<Utc>`: in UTC,
/// `Z`, fractions only when there are any); `None` when it does not parse,
/// as bootc.
pub fn normalize_timestamp(t: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

/// An ostree deployment's image timestamp, as bootc reads it from the
/// config: the label `org.opencontainers.image.created`, then `created`.
pub fn config_timestamp(config: &Value) -> Option<String> {
    config
        .pointer("/config/Labels")
        .and_then(|l| l.get(CREATED_KEY)?.as_str())
        .or_else(|| config.get("created")?.as_str())
        .and_then(normalize_timestamp)
}

/// bootc's `ImageStatus` of an image known by its config and manifest
/// (JSON), as bootc builds it for ostree deployments and their cached
/// updates.
pub fn image_status_of(
    image: ImageReference,
    digest: String,
    config: &Value,
    manifest: Option<&Value>,
) -> ImageStatus {
    ImageStatus {
        image,
        version: image_version(Some(config), manifest),
        timestamp: config_timestamp(config),
        image_digest: digest,
        architecture: config
            .get("architecture")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }
}

/// bootc's `readOnly`: the physical root cannot be changed. An offline
/// root says so by its read-only mount (`fstatvfs` on the open root,
/// nothing else is opened). A running host's `/sysroot` is mounted
/// read-only by design and remounted on demand (bootc looks at the block
/// device behind it, which the library does not open): `false` there.
pub fn root_is_read_only(sysroot: &crate::sysroot::Sysroot) -> bool {
    *sysroot.booted_mode() == crate::sysroot::BootedMode::Offline
        && rustix::fs::fstatvfs(sysroot.dir())
            .is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// The `BootcHost` around `status`: the spec follows the staged image,
/// else the booted one, as bootc's; a queued rollback (the primary entry
/// is not what is booted) shows in the boot order. Every backend builds
/// its status through this.
pub fn assemble(status: HostStatus) -> Host {
    let spec_image = status
        .staged
        .as_ref()
        .or(status.booted.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_is_the_label_then_the_legacy_label_then_the_annotation() {
        let cfg = |labels: Value| json!({"architecture": "amd64", "config": {"Labels": labels}});
        let manifest = json!({"annotations": {VERSION_KEY: "3"}});
        let both = cfg(json!({VERSION_KEY: "1", "version": "2"}));
        let legacy = cfg(json!({"version": "2"}));
        let none = cfg(json!({}));
        for (config, manifest, want) in [
            (Some(&both), Some(&manifest), Some("1")),
            (Some(&legacy), Some(&manifest), Some("2")),
            (Some(&none), Some(&manifest), Some("3")),
            (None, Some(&manifest), Some("3")),
            (Some(&none), Some(&json!({})), None),
            (None, None, None),
        ] {
            assert_eq!(image_version(config, manifest).as_deref(), want);
        }
    }

    #[test]
    fn timestamps_print_as_bootc_prints_them() {
        for (given, printed) in [
            ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
            ("2024-01-01T02:00:00+02:00", "2024-01-01T00:00:00Z"),
            ("2024-01-01T00:00:00.000000000Z", "2024-01-01T00:00:00Z"),
            ("2024-01-01T00:00:00.5Z", "2024-01-01T00:00:00.500Z"),
            (
                "2024-01-01T00:00:00.123456789Z",
                "2024-01-01T00:00:00.123456789Z",
            ),
        ] {
            assert_eq!(normalize_timestamp(given).as_deref(), Some(printed));
        }
        assert_eq!(normalize_timestamp("yesterday"), None);
        // The label `org.opencontainers.image.created` first, as bootc's
        // ostree status reads it.
        let c = json!({"created": "2024-01-01T00:00:00Z",
                       "config": {"Labels": {CREATED_KEY: "2025-02-02T00:00:00Z"}}});
        assert_eq!(
            config_timestamp(&c).as_deref(),
            Some("2025-02-02T00:00:00Z")
        );
        let c = json!({"created": "2024-01-01T00:00:00Z"});
        assert_eq!(
            config_timestamp(&c).as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(config_timestamp(&json!({})), None);
    }

    #[test]
    fn image_status_and_spellings_are_bootcs() {
        let img = ImageReference {
            image: "quay.io/a/b:1".into(),
            transport: "registry".into(),
        };
        let s = image_status_of(
            img,
            "sha256:aa".into(),
            &json!({"architecture": "arm64", "created": "2024-01-01T00:00:00Z"}),
            Some(&json!({"annotations": {VERSION_KEY: "7"}})),
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({
                "image": {"image": "quay.io/a/b:1", "transport": "registry"},
                "version": "7",
                "timestamp": "2024-01-01T00:00:00Z",
                "imageDigest": "sha256:aa",
                "architecture": "arm64",
            })
        );
        assert_eq!(serde_json::to_value(BootType::Bls).unwrap(), "Bls");
        assert_eq!(serde_json::to_value(BootType::Uki).unwrap(), "Uki");
        assert_eq!(BootType::from_origin("bls"), Some(BootType::Bls));
        assert_eq!(BootType::from_origin("uki"), Some(BootType::Uki));
        assert_eq!(BootType::from_origin("Bls"), None);
        assert_eq!(BootType::Bls.to_string(), "bls");
        let o = FilesystemOverlay {
            access_mode: "readWrite",
            persistence: "transient",
        };
        assert_eq!(
            serde_json::to_value(o).unwrap(),
            json!({"accessMode": "readWrite", "persistence": "transient"})
        );
        assert_eq!(o.to_string(), "transient, read/write");
    }
}
