//! What a registry (or layout) says an image is now, without fetching its
//! layers (`upgrade --check`).

use anyhow::{Context, Result};

use super::fetch_config::FetchConfig;
use super::imgref::ImageRef;

/// What a registry (or layout) says an image is now, without fetching layers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteImage {
    /// The manifest digest.
    pub manifest_digest: String,
    /// `org.opencontainers.image.version` of its config.
    pub version: Option<String>,
    /// The sum of its layers' (compressed) sizes, as the manifest says.
    pub layer_bytes: u64,
}

/// Fetches only the manifest of `imgref`, and its config when `version`
/// is asked for (`upgrade --check` shows it; an upgrade takes it from the
/// image it pulls, and saves the round trip).
pub async fn inspect_remote(
    imgref: &ImageRef,
    fetch: &FetchConfig,
    version: bool,
) -> Result<RemoteImage> {
    let config = fetch.proxy_config().unwrap_or_default();
    let proxy = containers_image_proxy::ImageProxy::new_with_config(config)
        .await
        .context("starting skopeo")?;
    let spec = imgref.to_string();
    let img = proxy
        .open_image(&spec)
        .await
        .with_context(|| format!("opening {spec}"))?;
    let (digest, raw) = proxy
        .fetch_manifest_raw_oci(&img)
        .await
        .with_context(|| format!("fetching the manifest of {spec}"))?;
    let version = if version {
        let config = proxy
            .fetch_config(&img)
            .await
            .with_context(|| format!("fetching the config of {spec}"))?;
        config
            .labels_of_config()
            .and_then(|l| l.get("org.opencontainers.image.version").cloned())
    } else {
        None
    };
    let _ = proxy.close_image(&img).await;
    let _ = proxy.finalize().await;
    Ok(RemoteImage {
        manifest_digest: digest,
        version,
        layer_bytes: layer_bytes(&raw),
    })
}

/// The sum of `layers[].size` of a manifest (0 when it says none).
fn layer_bytes(manifest: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|m| {
            m.get("layers")?
                .as_array()
                .map(|ls| ls.iter().filter_map(|l| l.get("size")?.as_u64()).sum())
        })
        .unwrap_or(0)
}
