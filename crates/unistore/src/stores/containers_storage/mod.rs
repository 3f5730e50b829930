//! The host-owned containers-storage at `composefs/bootc/storage`.
//!
//! A normal overlay store: podman uses it with `--root`, or read-only as an
//! `additionalimagestore`. unistore never writes its JSON itself:
//!
//! * reading ([`read_images`], [`read_layers`], [`find_complete_image`]) parses
//!   `overlay-images/images.json` and `overlay-layers/layers.json`, which
//!   containers/storage replaces atomically, so it needs no lock and no
//!   process (status and `image list` stay read-only);
//! * writing goes through the real peers, in a [`Session`]: podman (a
//!   transient `podman system service` on a private unix socket, whose
//!   streaming pull reports per-layer bytes) and skopeo.
//!
//! A session writes its own `containers.conf`, `storage.conf` and
//! `policy.json` in a private directory under the root's run directory, so
//! neither the library nor the peers depend on `/etc/containers` for the
//! store's settings (podman still reads the host's `policy.json` and
//! registries for registry pulls: that is the host's trust policy).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::progress::{ComponentId, Progress, ProgressEvent};
use crate::sysroot::{BOOTC_STATE_DIR, HOST_STORAGE_DIR, OSTREE_BOOTC_LINK, Sysroot};

pub mod format;
mod service;
mod session;
pub mod writer;

use service::*;
pub use session::*;

/// Where large temporary files go (blob staging, exported layers): on the
/// target filesystem, next to the store.
pub const BIG_TMP_DIR: &str = "composefs/bootc/tmp";

/// The store's absolute path.
pub fn store_path(sysroot: &Sysroot) -> PathBuf {
    sysroot.join(HOST_STORAGE_DIR)
}

/// Whether the store exists (read-only check).
pub fn store_exists(sysroot: &Sysroot) -> Result<bool> {
    Ok(sysroot.dir().try_exists(HOST_STORAGE_DIR)?)
}

/// Creates the store directory and the compatibility link (see
/// [`ensure_bootc_link`]).
pub fn ensure_store(sysroot: &Sysroot) -> Result<()> {
    sysroot
        .dir()
        .create_dir_all(HOST_STORAGE_DIR)
        .with_context(|| format!("creating {HOST_STORAGE_DIR}"))?;
    ensure_bootc_link(sysroot)
}

/// Creates `composefs/bootc` and the `ostree/bootc -> ../composefs/bootc`
/// compatibility link, as bootc's composefs install does. An existing
/// `ostree/bootc` is left alone: a real directory on ostree hosts, or one
/// bootc made itself (`upgrade --check` writes `ostree/bootc/storage`
/// where the link is missing); the host store stays `composefs/bootc/storage`.
pub fn ensure_bootc_link(sysroot: &Sysroot) -> Result<()> {
    let dir = sysroot.dir();
    dir.create_dir_all(BOOTC_STATE_DIR)
        .with_context(|| format!("creating {BOOTC_STATE_DIR}"))?;
    if dir.symlink_metadata(OSTREE_BOOTC_LINK).is_err() {
        dir.create_dir_all("ostree")?;
        dir.symlink("../composefs/bootc", OSTREE_BOOTC_LINK)
            .with_context(|| format!("creating the {OSTREE_BOOTC_LINK} link"))?;
    }
    Ok(())
}

/// On an ostree host the store is bootc's `ostree/bootc/storage`, a real
/// directory; `composefs/bootc` becomes a link to it so that every path of
/// the unified code (store, ownership record) names the same place on both
/// kinds of host. Left alone when `composefs/bootc` exists.
pub fn ensure_ostree_layout(sysroot: &Sysroot) -> Result<()> {
    let dir = sysroot.dir();
    dir.create_dir_all(format!("{OSTREE_BOOTC_LINK}/storage"))
        .with_context(|| format!("creating {OSTREE_BOOTC_LINK}/storage"))?;
    if dir
        .symlink_metadata(crate::sysroot::BOOTC_STATE_DIR)
        .is_err()
    {
        dir.create_dir_all(crate::sysroot::COMPOSEFS_DIR)?;
        dir.symlink("../ostree/bootc", crate::sysroot::BOOTC_STATE_DIR)
            .with_context(|| format!("creating the {} link", crate::sysroot::BOOTC_STATE_DIR))?;
    }
    Ok(())
}

/// One entry of `overlay-images/images.json`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct StoreImage {
    /// Image id: the config digest's hex.
    pub id: String,
    /// The manifest digest the image was stored with.
    #[serde(default)]
    pub digest: Option<String>,
    /// Every manifest digest it is known by.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Its names (`registry/repo:tag`).
    #[serde(default)]
    pub names: Vec<String>,
    /// The top layer id.
    #[serde(default)]
    pub layer: Option<String>,
}

/// One entry of `overlay-layers/layers.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StoreLayer {
    /// Layer id (the directory under `overlay/`).
    pub id: String,
    /// Parent layer id.
    #[serde(default)]
    pub parent: Option<String>,
    /// `sha256:` of the uncompressed layer (the OCI diff id).
    #[serde(default, rename = "diff-digest")]
    pub diff_digest: Option<String>,
    /// `sha256:` of the blob the layer was pulled from, when pulled.
    #[serde(default, rename = "compressed-diff-digest")]
    pub compressed_digest: Option<String>,
    /// Bytes of the uncompressed layer, when recorded.
    #[serde(default, rename = "diff-size")]
    pub diff_size: Option<u64>,
    /// When the layer was created (RFC 3339), as recorded.
    #[serde(default)]
    pub created: Option<String>,
    /// containers/storage flags; `incomplete` marks an interrupted write.
    #[serde(default)]
    pub flags: HashMap<String, serde_json::Value>,
}

impl StoreLayer {
    /// Whether containers/storage marked the layer as being written.
    pub fn incomplete(&self) -> bool {
        self.flags
            .get("incomplete")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }
}

/// Parses a JSON array file of the store (`images.json`, `layers.json`):
/// an empty file is an empty array.
pub fn parse_json_array<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![]);
    }
    Ok(serde_json::from_slice(bytes)?)
}

fn read_json_array<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    match std::fs::read(path) {
        Ok(b) => parse_json_array(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The images of the store at `store` (none if it does not exist).
pub fn read_images(store: &Path) -> Result<Vec<StoreImage>> {
    read_json_array(&store.join("overlay-images/images.json"))
}

/// The layers of the store at `store` (none if it does not exist).
pub fn read_layers(store: &Path) -> Result<Vec<StoreLayer>> {
    read_json_array(&store.join("overlay-layers/layers.json"))
}

/// The layers of `image`, base first; an error names what is missing.
pub fn layer_chain(image: &StoreImage, layers: &[StoreLayer]) -> Result<Vec<StoreLayer>> {
    let by_id: HashMap<&str, &StoreLayer> = layers.iter().map(|l| (l.id.as_str(), l)).collect();
    let mut chain = vec![];
    let mut next = image.layer.clone();
    while let Some(id) = next {
        let l = by_id
            .get(id.as_str())
            .ok_or_else(|| anyhow!("layer {id} of image {} is missing", image.id))?;
        if l.incomplete() {
            bail!("layer {id} of image {} is incomplete", image.id);
        }
        chain.push((*l).clone());
        next = l.parent.clone();
        if chain.len() > 1000 {
            bail!("layer chain of image {} loops", image.id);
        }
    }
    chain.reverse();
    Ok(chain)
}

/// The image with id `image_id` (hex, `sha256:` optional) if the store holds
/// it with all its layers.
pub fn find_complete_image(store: &Path, image_id: &str) -> Result<Option<StoreImage>> {
    let id = image_id.trim_start_matches("sha256:");
    let Some(img) = read_images(store)?.into_iter().find(|i| i.id == id) else {
        return Ok(None);
    };
    let layers = read_layers(store)?;
    match layer_chain(&img, &layers) {
        Ok(chain) if store.join("overlay-images").join(id).is_dir() => {
            let all_dirs = chain
                .iter()
                .all(|l| store.join("overlay").join(&l.id).join("diff").is_dir());
            Ok(all_dirs.then_some(img))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_references() {
        assert_eq!(
            percent_encode("127.0.0.1:5000/os:v1", false),
            "127.0.0.1%3A5000%2Fos%3Av1"
        );
        assert_eq!(
            percent_encode("127.0.0.1:5000/os@sha256:ab", true),
            "127.0.0.1:5000/os@sha256:ab"
        );
    }

    #[test]
    fn layer_chains() {
        let l = |id: &str, parent: Option<&str>, incomplete: bool| StoreLayer {
            id: id.into(),
            parent: parent.map(str::to_string),
            diff_digest: None,
            compressed_digest: None,
            diff_size: None,
            created: None,
            flags: if incomplete {
                [("incomplete".to_string(), serde_json::Value::Bool(true))].into()
            } else {
                HashMap::new()
            },
        };
        let img = StoreImage {
            id: "i".into(),
            digest: None,
            digests: vec![],
            names: vec![],
            layer: Some("c".into()),
        };
        let layers = vec![
            l("a", None, false),
            l("b", Some("a"), false),
            l("c", Some("b"), false),
        ];
        let chain = layer_chain(&img, &layers).unwrap();
        assert_eq!(
            chain.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(layer_chain(&img, &layers[1..]).is_err());
        let broken = vec![
            l("a", None, false),
            l("b", Some("a"), true),
            l("c", Some("b"), false),
        ];
        assert!(layer_chain(&img, &broken).is_err());
    }

    #[test]
    fn pull_stream_to_progress() {
        use std::sync::Mutex;
        struct Rec(Mutex<Vec<ProgressEvent>>);
        impl crate::progress::ProgressReporter for Rec {
            fn report(&self, e: ProgressEvent) {
                self.0.lock().unwrap().push(e);
            }
        }
        let rec = std::sync::Arc::new(Rec(Mutex::new(vec![])));
        let p: Progress = rec.clone();
        let mut t = PullTracker::default();
        for l in [
            r#"{"status":"Pulling fs layer","progressDetail":{},"id":"aaa"}"#,
            r#"{"status":"Downloading","progressDetail":{"current":10,"total":20},"id":"aaa"}"#,
            r#"{"status":"Download complete","progressDetail":{},"id":"aaa"}"#,
            r#"{"status":"Download complete","progressDetail":{},"id":"aaa"}"#,
            r#"{"status":"Pulling fs layer","progressDetail":{},"id":"bbb"}"#,
        ] {
            t.event(&serde_json::from_str(l).unwrap(), &p);
        }
        t.finish(&p);
        let ev = rec.0.lock().unwrap();
        let done = ev
            .iter()
            .filter(|e| matches!(e, ProgressEvent::Done { .. }))
            .count();
        assert_eq!(done, 2);
        assert!(ev.iter().any(|e| matches!(
            e,
            ProgressEvent::Progress {
                fetched: 10,
                total: Some(20),
                ..
            }
        )));
    }
}
