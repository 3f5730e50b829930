//! Assembling layers, config and manifest into an OCI layout directory, and reading back.

use super::BuiltImage;
use super::expected::ExpectedEntry;
use super::layer::LayerTar;
use super::merge::merge_layer_blobs;
use anyhow::{Context, Result};
use ocidir::OciDir;
use ocidir::cap_std::{ambient_authority, fs::Dir};
use ocidir::oci_spec::image::{
    Arch, ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder, ImageManifest, Os,
    PlatformBuilder,
};
use ocidir::prelude::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The fixed `created` timestamp of generated images and their history entries.
pub const FIXED_CREATED: &str = "2024-01-01T00:00:00Z";

/// Label carrying the image version.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// Open (creating if needed) an OCI layout directory.
pub fn open_oci_dir(oci_dir: &Path) -> Result<OciDir> {
    std::fs::create_dir_all(oci_dir).with_context(|| format!("creating {oci_dir:?}"))?;
    let dir = Dir::open_ambient_dir(oci_dir, ambient_authority())
        .with_context(|| format!("opening {oci_dir:?}"))?;
    OciDir::ensure(dir).with_context(|| format!("initializing OCI layout in {oci_dir:?}"))
}

/// The path of blob `digest` (`sha256:<hex>`) in a layout directory.
pub fn blob_path(oci_dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("unsupported digest {digest}"))?;
    Ok(oci_dir.join("blobs/sha256").join(hex))
}

/// Builds one image: layers are appended bottom first, then [`ImageWriter::finish`] tags it.
pub struct ImageWriter {
    oci_dir: PathBuf,
    oci: OciDir,
    manifest: ImageManifest,
    config: ImageConfiguration,
    compression: flate2::Compression,
}

impl std::fmt::Debug for ImageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageWriter")
            .field("oci_dir", &self.oci_dir)
            .finish_non_exhaustive()
    }
}

impl ImageWriter {
    /// Start an amd64/linux image with the version label (plus `extra_labels`) and the fixed
    /// `created` timestamp; layers are gzip-compressed at `compression`.
    pub fn new(
        oci_dir: &Path,
        version: &str,
        extra_labels: &[(&str, &str)],
        compression: flate2::Compression,
    ) -> Result<Self> {
        let oci = open_oci_dir(oci_dir)?;
        let manifest = oci.new_empty_manifest()?.build()?;
        let mut labels = HashMap::new();
        labels.insert(VERSION_LABEL.to_string(), version.to_string());
        for (k, v) in extra_labels {
            labels.insert(k.to_string(), v.to_string());
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .created(FIXED_CREATED)
            .config(ConfigBuilder::default().labels(labels).build()?)
            .build()?;
        Ok(Self {
            oci_dir: oci_dir.to_owned(),
            oci,
            manifest,
            config,
            compression,
        })
    }

    /// Append one layer whose entries `fill` writes.
    pub fn add_layer(
        &mut self,
        description: &str,
        fill: impl FnOnce(&mut LayerTar<&mut dyn Write>) -> Result<()>,
    ) -> Result<()> {
        let mut w = self.oci.create_gzip_layer(Some(self.compression))?;
        {
            let mut tar = LayerTar::new(&mut w as &mut dyn Write);
            fill(&mut tar).with_context(|| format!("writing layer {description:?}"))?;
            tar.finish()?;
        }
        let layer = w.complete()?;
        let created = chrono::DateTime::parse_from_rfc3339(FIXED_CREATED)?.to_utc();
        self.oci.push_layer_full(
            &mut self.manifest,
            &mut self.config,
            layer,
            None::<HashMap<String, String>>,
            description,
            created,
        );
        Ok(())
    }

    /// Another writer continuing from the layers added so far (they are shared, not
    /// rewritten), with the version label set to `version`: for images derived from a
    /// common stack of layers.
    pub fn fork(&self, version: &str) -> Result<Self> {
        let mut config = self.config.clone();
        let mut c = config.config().clone().unwrap_or_default();
        c.labels_mut()
            .get_or_insert_with(HashMap::new)
            .insert(VERSION_LABEL.to_string(), version.to_string());
        config.set_config(Some(c));
        Ok(Self {
            oci_dir: self.oci_dir.clone(),
            oci: open_oci_dir(&self.oci_dir)?,
            manifest: self.manifest.clone(),
            config,
            compression: self.compression,
        })
    }

    /// Write config and manifest and tag the manifest, without computing the merged tree
    /// (for large images); returns the manifest digest.
    pub fn finish_untracked(mut self, tag: &str) -> Result<String> {
        let config_desc = self.oci.write_config(self.config)?;
        self.manifest.set_config(config_desc);
        let platform = PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()?;
        let desc = self
            .oci
            .insert_manifest(self.manifest, Some(tag), platform)?;
        Ok(desc.digest().to_string())
    }

    /// Write config and manifest, tag the manifest, and compute the merged tree.
    pub fn finish(mut self, tag: &str) -> Result<BuiltImage> {
        let diff_ids = self.config.rootfs().diff_ids().clone();
        let config_desc = self.oci.write_config(self.config)?;
        let config_digest = config_desc.digest().to_string();
        self.manifest.set_config(config_desc);
        let platform = PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()?;
        let blobs = self
            .manifest
            .layers()
            .iter()
            .map(|l| blob_path(&self.oci_dir, l.digest().as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let desc = self
            .oci
            .insert_manifest(self.manifest, Some(tag), platform)?;
        let expected: Vec<ExpectedEntry> = merge_layer_blobs(&blobs)?;
        Ok(BuiltImage {
            manifest_digest: desc.digest().to_string(),
            config_digest,
            diff_ids,
            expected,
        })
    }
}

/// The layer blob paths (bottom first) of the image tagged `tag`.
pub fn layer_blobs(oci_dir: &Path, tag: &str) -> Result<Vec<PathBuf>> {
    let oci = open_existing(oci_dir)?;
    let manifest = oci
        .find_manifest_with_tag(tag)?
        .with_context(|| format!("no tag {tag:?} in {oci_dir:?}"))?;
    manifest
        .layers()
        .iter()
        .map(|l| blob_path(oci_dir, l.digest().as_ref()))
        .collect()
}

fn open_existing(oci_dir: &Path) -> Result<OciDir> {
    let dir = Dir::open_ambient_dir(oci_dir, ambient_authority())
        .with_context(|| format!("opening {oci_dir:?}"))?;
    Ok(OciDir::open(dir)?)
}

/// The merged tree of any image tagged `tag` in an OCI layout (gzip or plain layers).
pub fn expected_from_oci(oci_dir: &Path, tag: &str) -> Result<Vec<ExpectedEntry>> {
    merge_layer_blobs(&layer_blobs(oci_dir, tag)?)
}

/// Flip bytes in the middle of the first layer blob of the first manifest in `index.json`,
/// keeping its size, so the blob no longer matches its descriptor's digest.
///
/// Blobs are shared between the tags of one layout directory: every image using that
/// layer is corrupted too. Returns the corrupted blob's path.
pub fn corrupt_first_layer_blob(oci_dir: &Path) -> Result<PathBuf> {
    let oci = open_existing(oci_dir)?;
    let index = oci.read_index()?;
    let mdesc = index
        .manifests()
        .first()
        .with_context(|| format!("{oci_dir:?}: empty index"))?;
    let manifest: ImageManifest = oci.read_json_blob(mdesc)?;
    let layer = manifest
        .layers()
        .first()
        .context("manifest without layers")?;
    let path = blob_path(oci_dir, layer.digest().as_ref())?;
    let mut data = std::fs::read(&path).with_context(|| format!("reading {path:?}"))?;
    anyhow::ensure!(!data.is_empty(), "{path:?} is empty");
    let mid = data.len() / 2;
    let end = (mid + 16).min(data.len());
    for b in &mut data[mid..end] {
        *b ^= 0xff;
    }
    // Blobs may be read-only; replace the file rather than writing through it.
    let tmp = path.with_extension("corrupting");
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Adds to the image tagged `tag` a top layer holding one regular file whose
/// tar name is `hostile_name` verbatim (e.g. `../../escape` or
/// `/etc/../../x`), and retags the result `new_tag`. For bad-input tests:
/// the name is written into the raw tar header, bypassing the `tar` crate's
/// path checks. Returns the new manifest digest.
pub fn add_hostile_layer(
    oci_dir: &Path,
    tag: &str,
    new_tag: &str,
    hostile_name: &str,
) -> Result<String> {
    let mut header = tar::Header::new_old();
    let name = hostile_name.as_bytes();
    anyhow::ensure!(name.len() < 100, "hostile name too long");
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    let data = b"escaped\n";
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut raw = Vec::new();
    raw.extend_from_slice(header.as_bytes());
    raw.extend_from_slice(data);
    raw.resize(raw.len().div_ceil(512) * 512, 0);
    raw.extend_from_slice(&[0u8; 1024]);
    add_raw_layer(oci_dir, tag, new_tag, &raw, "hostile")
}

/// Adds to the image tagged `tag` a top layer made of the tar bytes `raw`
/// (gzip-compressed here), and retags the result `new_tag`. Returns the new
/// manifest digest.
pub fn add_raw_layer(
    oci_dir: &Path,
    tag: &str,
    new_tag: &str,
    raw: &[u8],
    what: &str,
) -> Result<String> {
    add_raw_layer_claiming(oci_dir, tag, new_tag, raw, what, None)
}

/// [`add_raw_layer`], with the config naming `diff_id` (when given) for the
/// new layer instead of the digest of its tar stream: an image that lies.
pub fn add_raw_layer_claiming(
    oci_dir: &Path,
    tag: &str,
    new_tag: &str,
    raw: &[u8],
    what: &str,
    diff_id: Option<&str>,
) -> Result<String> {
    let oci = open_existing(oci_dir)?;
    let mut manifest = oci
        .find_manifest_with_tag(tag)?
        .with_context(|| format!("no tag {tag} in {oci_dir:?}"))?;
    let mut config: ImageConfiguration = oci.read_json_blob(manifest.config())?;
    let mut w = oci.create_gzip_layer(None)?;
    std::io::Write::write_all(&mut w, raw)?;
    let layer = w.complete()?;
    let created = chrono::DateTime::parse_from_rfc3339(FIXED_CREATED)?.to_utc();
    oci.push_layer_full(
        &mut manifest,
        &mut config,
        layer,
        None::<HashMap<String, String>>,
        what,
        created,
    );
    if let Some(lie) = diff_id {
        let mut rootfs = config.rootfs().clone();
        if let Some(last) = rootfs.diff_ids_mut().last_mut() {
            *last = lie.to_string();
        }
        config.set_rootfs(rootfs);
    }
    let config_desc = oci.write_config(config)?;
    manifest.set_config(config_desc);
    let platform = PlatformBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .build()?;
    let desc = oci.insert_manifest(manifest, Some(new_tag), platform)?;
    Ok(desc.digest().to_string())
}

/// Adds a top layer of special files (`tar::EntryType::Fifo`, `Char`,
/// `Block`; devices as 1:3) at absolute `paths` whose parents exist, and
/// retags the result `new_tag`. Returns the new manifest digest.
pub fn add_special_layer(
    oci_dir: &Path,
    tag: &str,
    new_tag: &str,
    entries: &[(&str, tar::EntryType)],
) -> Result<String> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, ty) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*ty);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1)?;
            h.set_device_minor(3)?;
        }
        b.append_data(&mut h, path.trim_start_matches('/'), std::io::empty())?;
    }
    let raw = b.into_inner()?;
    add_raw_layer(oci_dir, tag, new_tag, &raw, "special")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::Meta;
    use sha2::Digest;

    #[test]
    fn writes_a_readable_image_and_corrupts_it() {
        let td = tempfile::tempdir().unwrap();
        let mut w =
            ImageWriter::new(td.path(), "9.9", &[("a", "b")], flate2::Compression::fast()).unwrap();
        w.add_layer("one", |t| {
            t.dir("/usr", Meta::root(0o755))?;
            t.file("/usr/x", Meta::root(0o644), b"hello")
        })
        .unwrap();
        let built = w.finish("t1").unwrap();
        assert_eq!(built.diff_ids.len(), 1);
        assert_eq!(built.expected.len(), 2);
        assert_eq!(expected_from_oci(td.path(), "t1").unwrap(), built.expected);

        // The config carries the label and the fixed timestamps.
        let cfg = std::fs::read(blob_path(td.path(), &built.config_digest).unwrap()).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
        assert_eq!(cfg["config"]["Labels"][VERSION_LABEL], "9.9");
        assert_eq!(cfg["created"], FIXED_CREATED);
        assert_eq!(cfg["history"][0]["created"], FIXED_CREATED);
        assert_eq!(cfg["architecture"], "amd64");

        let blob = corrupt_first_layer_blob(td.path()).unwrap();
        let data = std::fs::read(&blob).unwrap();
        let actual = hex::encode(sha2::Sha256::digest(&data));
        assert_ne!(
            blob.file_name().unwrap().to_str().unwrap(),
            actual,
            "digest still matches"
        );
    }
}
