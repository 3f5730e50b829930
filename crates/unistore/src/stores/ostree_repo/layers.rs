//! One commit per layer, the layout released bootc reads.
//!
//! ostree-ext (bootc's library for container images in ostree) keeps each
//! layer of an image as its own commit under
//! `ostree/container/blob/<escaped digest of the layer's descriptor in the
//! manifest>` beside the image's merge commit. `bootc status` asks for the
//! first layer's ref of every deployment (`query_image_commit`), an update
//! reuses every layer whose ref exists, and its GC keeps the layer refs the
//! live images' manifests name. So every image unistore commits gets its
//! layer commits too, written in the same transaction as the merge commit
//! ([`super::commit::import`]); a layer whose ref exists is not written again.
//!
//! A layer commit holds the layer's own tree as its tar has it: whiteout
//! files (`.wh.*`) stay ordinary empty files (ostree-ext applies them when
//! it merges), parent directories the tar does not declare are made
//! (root, 0755, as tar extractors do), xattrs filtered as in the merged tree,
//! and the same tree rules as the merge commit (`etc` as `usr/etc`, `var`
//! below `usr/share/factory/var`, `run tmp proc sys dev` empty). Content
//! objects are reflinks of the composefs objects, like the merge commit's,
//! so the stores still share every extent. Metadata: the layer's diff-id;
//! no parent; the image's timestamp, so the same layer gives the same commit.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result, anyhow, bail};
use composefs::generic_tree::{Inode, Stat};
use composefs::tree::{Directory, FileSystem};
use composefs_oci::tar::TarItem;

use super::escape_ref;
use crate::stores::composefs_repo::{ObjectId, Repo, layer_stream_id};

/// Layer commit metadata: the layer's diff-id.
pub const DIFF_ID_KEY: &str = "unistore.layer-diff-id";

/// Prefix of the refs that keep layer commits.
pub const BLOB_REF_PREFIX: &str = "ostree/container/blob/";

/// The ref of the layer whose descriptor in the manifest has `digest`
/// (`sha256:<hex>` of the blob as the registry serves it).
pub fn blob_ref(digest: &str) -> String {
    format!("{BLOB_REF_PREFIX}{}", escape_ref(digest))
}

/// A layer of an image: its blob digest (the manifest's) and its diff-id
/// (the config's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:...` of the blob (names the ref).
    pub blob_digest: String,
    /// `sha256:...` of the uncompressed tar (names the composefs stream).
    pub diff_id: String,
}

/// The layers of an image, in order, from its manifest and config (JSON).
pub fn layers_of(manifest_json: &str, config_json: &str) -> Result<Vec<Layer>> {
    let m: serde_json::Value =
        serde_json::from_str(manifest_json).context("the manifest is not JSON")?;
    let c: serde_json::Value =
        serde_json::from_str(config_json).context("the config is not JSON")?;
    let blobs: Vec<&str> = m
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or_else(|| anyhow!("the manifest has no layers"))?
        .iter()
        .map(|d| {
            d.get("digest")
                .and_then(|d| d.as_str())
                .ok_or_else(|| anyhow!("a layer of the manifest has no digest"))
        })
        .collect::<Result<_>>()?;
    let diff_ids: Vec<&str> = c
        .pointer("/rootfs/diff_ids")
        .and_then(|l| l.as_array())
        .ok_or_else(|| anyhow!("the config has no rootfs.diff_ids"))?
        .iter()
        .map(|d| {
            d.as_str()
                .ok_or_else(|| anyhow!("a diff-id of the config is not a string"))
        })
        .collect::<Result<_>>()?;
    if blobs.len() != diff_ids.len() {
        bail!(
            "the manifest names {} layers but the config {} diff-ids",
            blobs.len(),
            diff_ids.len()
        );
    }
    Ok(blobs
        .into_iter()
        .zip(diff_ids)
        .map(|(b, d)| Layer {
            blob_digest: b.to_string(),
            diff_id: d.to_string(),
        })
        .collect())
}

/// Every ref below [`BLOB_REF_PREFIX`] with its commit.
pub fn blob_refs(repo: &ostree::Repo) -> Result<Vec<(String, String)>> {
    super::refs_below(repo, BLOB_REF_PREFIX)
}

/// The blob refs the manifest recorded in an image's merge commit
/// (`ostree.manifest`) names; empty for a commit without one.
pub fn blob_refs_of(repo: &ostree::Repo, commit: &str) -> Result<Vec<String>> {
    let (c, _) = repo
        .load_commit(commit)
        .map_err(|e| anyhow!("loading commit {commit}: {e}"))?;
    let meta = ostree::glib::VariantDict::new(Some(&c.child_value(0)));
    let Some(m) = meta.lookup::<String>("ostree.manifest").ok().flatten() else {
        return Ok(vec![]);
    };
    let m: serde_json::Value = serde_json::from_str(&m)
        .with_context(|| format!("commit {commit}: ostree.manifest is not JSON"))?;
    Ok(m.get("layers")
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter_map(|d| d.get("digest")?.as_str())
                .map(blob_ref)
                .collect()
        })
        .unwrap_or_default())
}

/// Whether every layer of the image `commit` records has its blob ref (a
/// commit without image metadata has none to have).
pub fn complete(repo: &ostree::Repo, commit: &str) -> Result<bool> {
    for r in blob_refs_of(repo, commit)? {
        if repo
            .resolve_rev(&r, true)
            .map_err(|e| anyhow!("reading ref {r}: {e}"))?
            .is_none()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The stat of a directory the layer does not declare: root, 0755.
fn default_dir_stat() -> Stat {
    Stat {
        st_mode: 0o755,
        st_uid: 0,
        st_gid: 0,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    }
}

/// The directory at `path` below `root`, made (with [`default_dir_stat`])
/// where missing. A non-directory in the way is replaced, as a later tar
/// entry replaces an earlier one.
fn ensure_dir<'d>(
    root: &'d mut Directory<ObjectId>,
    path: &[&OsStr],
) -> &'d mut Directory<ObjectId> {
    let mut d = root;
    for name in path {
        if !matches!(d.lookup(name), Some(Inode::Directory(_))) {
            d.insert(
                name,
                Inode::Directory(Box::new(Directory::new(default_dir_stat()))),
            );
        }
        d = match d.get_directory_mut(name) {
            Ok(sub) => sub,
            Err(_) => unreachable!("just made"),
        };
    }
    d
}

/// The tree of one layer, read from its splitstream in `repo`.
pub fn layer_tree(repo: &Repo, diff_id: &str) -> Result<FileSystem<ObjectId>> {
    let name = layer_stream_id(diff_id)?;
    let mut stream = repo
        .open_stream(&name, None, Some(composefs_oci::LAYER_CONTENT_TYPE))
        .with_context(|| format!("opening layer {diff_id} in the composefs repository"))?;
    let mut fs = FileSystem::new(default_dir_stat());
    let mut root_declared = false;
    while let Some(entry) = composefs_oci::tar::get_entry::<ObjectId>(&mut stream)
        .with_context(|| format!("reading layer {diff_id}"))?
    {
        let comps: Vec<&OsStr> = entry
            .path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let Some((file, parents)) = comps.split_last() else {
            if matches!(entry.item, TarItem::Directory) {
                fs.set_root_stat(entry.stat);
                root_declared = true;
            }
            continue;
        };
        let inode = match entry.item {
            TarItem::Directory => Inode::Directory(Box::new(Directory::new(entry.stat))),
            TarItem::Leaf(content) => Inode::leaf(fs.push_leaf(entry.stat, content)),
            TarItem::Hardlink(target) => {
                let t = target.as_bytes();
                let t = OsStr::from_bytes(t.strip_prefix(b"/").unwrap_or(t));
                let (dir, f) = fs.root.split(t).with_context(|| {
                    format!(
                        "layer {diff_id}: {} links to {}, which the layer does not have",
                        entry.path.display(),
                        t.to_string_lossy()
                    )
                })?;
                Inode::leaf(dir.leaf_id(f).with_context(|| {
                    format!(
                        "layer {diff_id}: {} links to {}, which is not a file",
                        entry.path.display(),
                        t.to_string_lossy()
                    )
                })?)
            }
        };
        ensure_dir(&mut fs.root, parents).merge(file, inode);
    }
    if !root_declared && fs.copy_root_metadata_from_usr().is_err() {
        fs.set_root_stat(default_dir_stat());
    }
    fs.filter_xattrs(composefs::generic_tree::is_allowed_container_xattr);
    fs.compact();
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_pair_blobs_with_diff_ids() {
        let m = r#"{"layers":[{"digest":"sha256:aa"},{"digest":"sha256:bb"}]}"#;
        let c = r#"{"rootfs":{"diff_ids":["sha256:11","sha256:22"]}}"#;
        let l = layers_of(m, c).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].blob_digest, "sha256:bb");
        assert_eq!(l[1].diff_id, "sha256:22");
        let short = r#"{"rootfs":{"diff_ids":["sha256:11"]}}"#;
        let e = layers_of(m, short).unwrap_err().to_string();
        assert!(e.contains("2 layers but the config 1"), "{e}");
        assert!(layers_of("{}", c).is_err());
    }

    #[test]
    fn blob_refs_are_escaped_like_ostree_ext() {
        assert_eq!(
            blob_ref("sha256:ab01"),
            "ostree/container/blob/sha256_3A_ab01"
        );
    }
}
