//! Images a registry serves in Docker's format (schema 2), read the way
//! podman reads them.
//!
//! composefs-oci 0.9.4 understands only OCI media types, and Debian 12's
//! skopeo (1.9.3) image proxy hands out a Docker manifest converted to OCI
//! whose config digest exists nowhere (its `GetBlob` then fails with 404).
//! So a registry image is first looked at raw (`skopeo inspect --raw`, one
//! request): an OCI manifest or index goes the usual way; a Docker manifest
//! (or the host's entry of a Docker manifest list) is copied as it is
//! (`skopeo copy docker://… dir:`, no conversion: every blob keeps its
//! digest) and given an OCI manifest that differs only in its media types
//! (config and layer bytes and digests unchanged), in a temporary OCI layout
//! that composefs-oci imports natively, checking every blob.
//!
//! The registry's manifest digest stays the image's identity for people and
//! upgrade checks ([`Converted::registry_digest`], kept in the origin);
//! the composefs repository holds the converted manifest under its own
//! digest, so every sha256 there is true.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::{ImageRef, Transport};

/// A Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list (multi-arch).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest as the registry serves it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// `sha256:` of its bytes: the registry's digest.
    pub digest: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Its `mediaType`, when it says.
    pub media_type: Option<String>,
}

/// A Docker image made importable.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The registry's manifest digest (the image's identity).
    pub registry_digest: String,
    /// The registry's manifest, byte for byte.
    pub registry_manifest: Vec<u8>,
    /// The temporary OCI layout to import (`oci:DIR:latest`).
    pub layout: ImageRef,
}

fn skopeo(fetch: &FetchConfig) -> Command {
    fetch.skopeo()
}

fn run(mut c: Command, what: &str) -> Result<Vec<u8>> {
    let out = c
        .output()
        .with_context(|| format!("running skopeo to {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        // skopeo's logrus line: `time="…" level=fatal msg="…"`.
        let msg = line
            .split_once("msg=\"")
            .map(|(_, m)| m.trim_end_matches('"').replace("\\\"", "\""))
            .unwrap_or_else(|| line.to_string());
        bail!("{what}: {msg}");
    }
    Ok(out.stdout)
}

/// The manifest `reference` (`docker://…`) names, raw.
pub fn inspect_raw(reference: &str, fetch: &FetchConfig) -> Result<RawManifest> {
    let mut c = skopeo(fetch);
    c.args(["inspect", "--raw"]);
    if let Some(a) = &fetch.authfile {
        c.arg("--authfile").arg(a);
    }
    c.arg(reference);
    let bytes = run(c, &format!("reading the manifest of {reference}"))?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("the manifest of {reference} is not JSON"))?;
    Ok(RawManifest {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        media_type: v
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_string),
        bytes,
    })
}

/// The architecture name registries use for this machine.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// The repository part of a `docker://` name (without `:tag`/`@digest`).
pub fn repository(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// Picks the host's entry of a Docker manifest list.
pub fn pick_from_list(list: &[u8]) -> Result<String> {
    let v: Value = serde_json::from_slice(list).context("the manifest list is not JSON")?;
    let arch = host_arch();
    let entries = v["manifests"]
        .as_array()
        .ok_or_else(|| anyhow!("the manifest list has no manifests"))?;
    entries
        .iter()
        .find(|m| m["platform"]["architecture"] == arch && m["platform"]["os"] == "linux")
        .and_then(|m| m["digest"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap_or("?"),
                        m["platform"]["architecture"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            anyhow!(
                "the image has no entry for linux/{arch} (it has {})",
                have.join(", ")
            )
        })
}

/// For a registry image in Docker's format, the Docker manifest for this
/// host (following a manifest list); `None` for OCI images and other
/// transports.
pub fn docker_manifest(image: &ImageRef, fetch: &FetchConfig) -> Result<Option<RawManifest>> {
    if image.transport == Transport::ContainersStorage {
        // What `podman pull` stored: the registry's manifest as it was.
        let raw = inspect_raw(&image.to_string(), fetch)?;
        return Ok((raw.media_type.as_deref() == Some(DOCKER_MANIFEST)).then_some(raw));
    }
    if image.transport != Transport::Registry {
        return Ok(None);
    }
    let raw = inspect_raw(&image.to_string(), fetch)?;
    match raw.media_type.as_deref() {
        Some(DOCKER_MANIFEST) => Ok(Some(raw)),
        Some(DOCKER_LIST) => {
            let digest = pick_from_list(&raw.bytes)?;
            let one = inspect_raw(
                &format!("docker://{}@{digest}", repository(&image.name)),
                fetch,
            )?;
            if one.digest != digest {
                bail!(
                    "the registry served a manifest whose digest is {} for {digest}",
                    one.digest
                );
            }
            match one.media_type.as_deref() {
                Some(DOCKER_MANIFEST) => Ok(Some(one)),
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// Docker media types and their OCI equivalents (same bytes).
fn oci_media_type(docker: &str) -> Result<&'static str> {
    Ok(match docker {
        DOCKER_MANIFEST => "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.container.image.v1+json" => {
            "application/vnd.oci.image.config.v1+json"
        }
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        // OCI layer types are sometimes found in Docker manifests: kept.
        "application/vnd.oci.image.layer.v1.tar+zstd" => {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        }
        "application/vnd.oci.image.layer.v1.tar+gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.oci.image.layer.v1.tar" => "application/vnd.oci.image.layer.v1.tar",
        other => bail!("unsupported media type {other:?} in a Docker manifest"),
    })
}

/// The OCI manifest of a Docker schema 2 manifest: the same descriptors
/// (digests, sizes) with OCI media types.
pub fn to_oci_manifest(docker: &[u8]) -> Result<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(docker).context("the Docker manifest is not JSON")?;
    if v["schemaVersion"] != 2 || v["mediaType"] != DOCKER_MANIFEST {
        bail!("not a Docker schema 2 manifest");
    }
    v["mediaType"] = oci_media_type(DOCKER_MANIFEST)?.into();
    let cfg = v["config"]["mediaType"]
        .as_str()
        .ok_or_else(|| anyhow!("the manifest's config has no mediaType"))?;
    v["config"]["mediaType"] = oci_media_type(cfg)?.into();
    for l in v["layers"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("the manifest has no layers"))?
    {
        let t = l["mediaType"]
            .as_str()
            .ok_or_else(|| anyhow!("a layer has no mediaType"))?;
        l["mediaType"] = oci_media_type(t)?.into();
    }
    Ok(serde_json::to_vec(&v)?)
}

/// Sets each layer's media type from its blob's first bytes (gzip, zstd or
/// a plain tar): a Docker manifest names every layer gzip, which layers
/// written out of containers-storage are not.
fn with_sniffed_compression(oci_manifest: &[u8], blobs: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut v: Value = serde_json::from_slice(oci_manifest)?;
    for l in v["layers"].as_array_mut().into_iter().flatten() {
        let d = l["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("a layer has no digest"))?;
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(blobs.join(hex_of(d)?))
            .with_context(|| format!("blob {d} was not fetched"))?
            .read(&mut magic)?;
        let t = match &magic[..n] {
            [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        l["mediaType"] = t.into();
    }
    Ok(serde_json::to_vec(&v)?)
}

/// The config and layer digests a manifest names.
pub fn blob_digests(manifest: &[u8]) -> Result<Vec<String>> {
    let v: Value = serde_json::from_slice(manifest)?;
    let mut out = vec![
        v["config"]["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("no config digest"))?
            .to_string(),
    ];
    for l in v["layers"].as_array().into_iter().flatten() {
        out.push(
            l["digest"]
                .as_str()
                .ok_or_else(|| anyhow!("a layer has no digest"))?
                .to_string(),
        );
    }
    Ok(out)
}

fn hex_of(digest: &str) -> Result<&str> {
    let h = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("unsupported digest {digest}"))?;
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("bad digest {digest}");
    }
    Ok(h)
}

/// Copies the image (as it is: `skopeo copy` to `dir:`, which applies the
/// signature policy before any blob) into `work` and makes an OCI layout of
/// it there. `manifest`: the Docker manifest to fetch (by digest); `None`:
/// the image `image` names, whatever its format (an OCI manifest is kept as
/// it is, a Docker one converted).
pub fn to_layout(
    image: &ImageRef,
    manifest: Option<&RawManifest>,
    fetch: &FetchConfig,
    work: &Path,
) -> Result<Converted> {
    let dir = work.join("dir");
    // A registry image is fetched by the digest looked at; a store's as it
    // is named (skopeo writes it out with uncompressed layers, under a new
    // manifest: the store's manifest stays the identity).
    let by_digest = image.transport == Transport::Registry;
    let source = match manifest {
        Some(m) if by_digest => format!("docker://{}@{}", repository(&image.name), m.digest),
        _ => image.to_string(),
    };
    let mut c = skopeo(fetch);
    c.args(["copy", "--quiet"]);
    if let Some(a) = &fetch.authfile {
        c.arg("--src-authfile").arg(a);
    }
    c.arg(&source).arg(format!("dir:{}", dir.display()));
    run(c, &format!("fetching {image}"))?;
    let fetched =
        std::fs::read(dir.join("manifest.json")).context("reading the fetched manifest")?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&fetched)));
    if let Some(m) = manifest
        && by_digest
        && digest != m.digest
    {
        bail!("the fetched manifest of {image} is not {}", m.digest);
    }
    let media_type = serde_json::from_slice::<Value>(&fetched)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string));
    let oci_manifest = if media_type.as_deref() == Some(DOCKER_MANIFEST) {
        with_sniffed_compression(&to_oci_manifest(&fetched)?, &dir)?
    } else {
        fetched.clone()
    };
    let layout = work.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for d in blob_digests(&fetched)? {
        let h = hex_of(&d)?;
        std::fs::hard_link(dir.join(h), blobs.join(h))
            .with_context(|| format!("blob {d} of {image} was not fetched"))?;
    }
    let mh = hex::encode(Sha256::digest(&oci_manifest));
    std::fs::write(blobs.join(&mh), &oci_manifest)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{mh}"),
            "size": oci_manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    let (registry_digest, registry_manifest) = match manifest {
        Some(m) => (m.digest.clone(), m.bytes.clone()),
        None => (digest, fetched),
    };
    Ok(Converted {
        registry_digest,
        registry_manifest,
        layout: ImageRef::parse(&format!("oci:{}:latest", layout.display()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":3,"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":5,"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}]}"#;

    #[test]
    fn conversion_changes_only_media_types() {
        let o: Value = serde_json::from_slice(&to_oci_manifest(M.as_bytes()).unwrap()).unwrap();
        let d: Value = serde_json::from_str(M).unwrap();
        assert_eq!(o["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(
            o["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(
            o["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(o["config"]["digest"], d["config"]["digest"]);
        assert_eq!(o["layers"][0]["digest"], d["layers"][0]["digest"]);
        assert_eq!(o["layers"][0]["size"], 5);
        assert!(to_oci_manifest(br#"{"schemaVersion":2,"mediaType":"x"}"#).is_err());
        let bad = M.replace("rootfs.diff.tar.gzip", "rootfs.diff.tar.lz4");
        assert!(to_oci_manifest(bad.as_bytes()).is_err());
    }

    #[test]
    fn lists_pick_the_host_platform() {
        let l = serde_json::json!({"manifests": [
            {"digest": "sha256:1", "platform": {"architecture": "arm64", "os": "linux"}},
            {"digest": "sha256:2", "platform": {"architecture": host_arch(), "os": "linux"}},
        ]});
        assert_eq!(
            pick_from_list(&serde_json::to_vec(&l).unwrap()).unwrap(),
            "sha256:2"
        );
        let none = serde_json::json!({"manifests": [{"digest": "sha256:1", "platform": {"architecture": "s390x", "os": "linux"}}]});
        let e = pick_from_list(&serde_json::to_vec(&none).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no entry for linux/") && e.contains("linux/s390x"),
            "{e}"
        );
    }

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(repository("127.0.0.1:5000/os:v1"), "127.0.0.1:5000/os");
        assert_eq!(repository("127.0.0.1:5000/os"), "127.0.0.1:5000/os");
        assert_eq!(repository("quay.io/a/b@sha256:00"), "quay.io/a/b");
    }
}
