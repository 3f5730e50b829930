//! An OCI layout directory edited by hand, for tests that craft images
//! from a real one: read its manifests and blobs, write blobs, tag a new
//! manifest.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// An OCI layout and its index.
pub struct Layout {
    dir: PathBuf,
    index: Value,
}

impl Layout {
    pub fn open(dir: &Path) -> Self {
        let index =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        Self {
            dir: dir.to_path_buf(),
            index,
        }
    }

    /// The bytes of blob `digest` (`sha256:...`).
    pub fn read(&self, digest: &str) -> Vec<u8> {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::read(self.dir.join("blobs/sha256").join(hex)).unwrap()
    }

    /// The blob `digest`, as JSON.
    pub fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.read(digest)).unwrap()
    }

    /// Writes a blob; its digest and size.
    pub fn put(&self, bytes: &[u8]) -> (String, u64) {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len() as u64)
    }

    /// Writes `v` as a blob and points `desc` (a descriptor) at it.
    pub fn put_json(&self, v: &Value, desc: &mut Value) {
        let (d, s) = self.put(&serde_json::to_vec(v).unwrap());
        desc["digest"] = d.into();
        desc["size"] = s.into();
    }

    /// The index's descriptor of `tag` and its manifest.
    pub fn manifest(&self, tag: &str) -> (Value, Value) {
        let desc = self.index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag}"))
            .clone();
        let m = self.json(desc["digest"].as_str().unwrap());
        (desc, m)
    }

    /// Tags `manifest` as `tag`, with the rest of descriptor `desc`.
    pub fn tag(&mut self, desc: &Value, manifest: &Value, tag: &str) {
        let mut d = desc.clone();
        self.put_json(manifest, &mut d);
        d["annotations"]["org.opencontainers.image.ref.name"] = tag.into();
        self.index["manifests"].as_array_mut().unwrap().push(d);
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&self.index).unwrap(),
        )
        .unwrap();
    }
}
