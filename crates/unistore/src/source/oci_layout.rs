//! Checks an `oci:` layout directory before importing it: the tag exists and
//! every blob the image uses matches its descriptor (size and sha256),
//! except the blobs of layers the importer already has (it never reads
//! them: an upgrade hashes only what is new).
//!
//! composefs-oci reads layout directories directly and does not compare
//! blob digests with their descriptors; a registry pull goes through skopeo,
//! which does.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::imgref::{ImageRef, Transport};

/// Splits `PATH[:TAG]` as the `oci:` transport does.
pub fn split_ref(name: &str) -> (PathBuf, Option<String>) {
    if Path::new(name).exists() {
        return (PathBuf::from(name), None);
    }
    match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (PathBuf::from(p), Some(t.to_string())),
        _ => (PathBuf::from(name), None),
    }
}

/// Verifies the image an `oci:` reference names; `have(diff_id)` says
/// which layers need no check (already imported). Returns the manifest's
/// digest (`None` for a multi-platform index or another transport).
pub async fn verify(
    imgref: &ImageRef,
    have: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Option<String>> {
    if imgref.transport != Transport::Oci {
        return Ok(None);
    }
    let (dir, tag) = split_ref(&imgref.name);
    tokio::task::spawn_blocking(move || verify_dir(&dir, tag.as_deref(), have)).await?
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("unsupported digest {digest}"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed digest {digest}");
    }
    Ok(dir.join("blobs/sha256").join(hex))
}

/// Hashes a blob and compares it with its descriptor.
fn check_blob(dir: &Path, desc: &Value) -> Result<PathBuf> {
    let digest = desc["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("descriptor without digest"))?;
    let path = blob_path(dir, digest)?;
    let mut f = std::fs::File::open(&path)
        .with_context(|| format!("blob {digest} is missing from {}", dir.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if got != digest {
        bail!("blob {digest} does not match its descriptor: its content has digest {got}");
    }
    if let Some(want) = desc["size"].as_u64()
        && want != size
    {
        bail!("blob {digest} has {size} bytes, its descriptor says {want}");
    }
    Ok(path)
}

/// Verifies the manifest selected by `tag` (or the only one) in `dir`, less
/// the layers `have` names by diff-id; returns the manifest's digest
/// (`None` for a multi-platform index).
pub fn verify_dir(
    dir: &Path,
    tag: Option<&str>,
    have: impl Fn(&str) -> bool,
) -> Result<Option<String>> {
    let index_path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path)
            .with_context(|| format!("{} is not an OCI layout (no index.json)", dir.display()))?,
    )
    .with_context(|| format!("parsing {}", index_path.display()))?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen = match tag {
        Some(t) => manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t))
            .ok_or_else(|| anyhow!("tag {t:?} not found in OCI layout {}", dir.display()))?,
        None => match manifests.as_slice() {
            [one] => one,
            [] => bail!("OCI layout {} holds no image", dir.display()),
            _ => bail!(
                "OCI layout {} holds several images: name one with :TAG",
                dir.display()
            ),
        },
    };
    if chosen["mediaType"].as_str() == Some("application/vnd.oci.image.index.v1+json") {
        // Multi-platform index: composefs-oci resolves the platform.
        check_blob(dir, chosen)?;
        return Ok(None);
    }
    let mpath = check_blob(dir, chosen)?;
    let manifest: Value = serde_json::from_slice(&std::fs::read(mpath)?)?;
    let cpath = check_blob(dir, &manifest["config"])?;
    // The config's diff-ids name the manifest's layers, in order (the
    // config was just checked against its digest).
    let config: Value = serde_json::from_slice(&std::fs::read(cpath)?).unwrap_or_default();
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    for (i, layer) in layers.iter().enumerate() {
        let known = layers.len() == diff_ids.len() && diff_ids[i].as_str().is_some_and(&have);
        if !known {
            check_blob(dir, layer)?;
        }
    }
    Ok(chosen["digest"].as_str().map(str::to_string))
}
