//! Ostree-encapsulated images (issue 22): Fedora's and CentOS's bootc base
//! images, made by ostree-ext's `container encapsulate` (or rpm-ostree) from
//! an ostree commit.
//!
//! Such an image names its commit in the config label `ostree.commit`, and
//! the diff-id of its last ostree layer in `ostree.final-diffid`. Its ostree
//! layers hold the commit's objects as `sysroot/ostree/repo/objects/XX/<62
//! hex>.{commit,dirtree,dirmeta,file,...}`, plus the checkout's paths as tar
//! hard links to the `.file` objects; the files' xattrs are only in
//! `.file-xattrs` objects (a `.file-xattrs-link` hard link per file names
//! them), never in PAX headers (`docs/ostree-ext-layout.md`, section 8). A
//! plain tar reader (composefs-oci, podman) therefore sees the object store
//! under `/sysroot/ostree/repo` and loses every xattr, `security.capability`
//! included.
//!
//! unistore reads such an image as ostree-ext's import does: the tree is the
//! embedded commit's, built from its own dirtree and dirmeta objects
//! ([`tree`]), each file with its object's owner, mode and xattrs
//! ([`objects`]); everything outside the object store (the checkout paths)
//! and the store's directories are ignored. Layers above the ostree layers
//! are plain OCI layers and are applied on top as usual (whiteouts,
//! composefs-oci's xattr allowlist).
//!
//! * composefs hosts: [`images::link_images`] writes the image's EROFS
//!   images (the plain one and the boot one, whose digest is the deployment
//!   id) from that tree and links them to the image's config in place of
//!   composefs-oci's, so every later reader (deployment `/etc`, mounts, GC,
//!   fsck) sees the commit's tree. Hook: `source::pull::finish_pull`.
//! * ostree hosts: [`merged_tree`] gives the same tree to the commit writer
//!   (hooks in `backends/ostree_host/staging.rs` and `unified.rs`), and
//!   [`ostree_import::import`] first writes the embedded commit itself into
//!   the repository with the checksums the layer states, verified by
//!   libostree (metadata, small files, symlinks) or by our own content
//!   writer (files reflinked from composefs objects), and points the first
//!   layer's blob ref at it, as ostree-ext's import does. The merge commit
//!   then reuses those objects, so its tree is the embedded commit's.
//! * the host containers-storage (unified storage) keeps the layers as
//!   their tars have them, the object store included (an export must give
//!   the tars back); [`store_xattrs::store_xattrs`] names the xattrs its
//!   files get there, which the store writer sets (hook:
//!   `unified::import_into_store`).
//!
//! Images without the label take none of these paths.

pub mod images;
pub mod objects;
pub mod ostree_import;
pub mod store_xattrs;
pub mod tree;

use anyhow::{Context, Result, bail};
use composefs::tree::FileSystem;
use composefs_oci::oci_image::OciImage;

use crate::stores::composefs_repo::{ObjectId, Repo};

/// Config label naming the embedded commit.
pub const COMMIT_LABEL: &str = "ostree.commit";
/// Config label naming the diff-id of the last ostree layer.
pub const FINAL_DIFFID_LABEL: &str = "ostree.final-diffid";

/// How an encapsulated image's layers divide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encapsulated {
    /// The embedded commit (label `ostree.commit`).
    pub commit: String,
    /// Diff-ids of the ostree layers, bottom first: the first holds the
    /// commit and its metadata objects, the others (a chunked image's)
    /// content objects only.
    pub ostree_layers: Vec<String>,
    /// Diff-ids of the plain OCI layers above them.
    pub derived_layers: Vec<String>,
}

impl Encapsulated {
    /// Reads the labels and diff-ids of a config; `None` without the
    /// `ostree.commit` label. Without `ostree.final-diffid` only the first
    /// layer is an ostree layer (as newer ostree-ext reads such images).
    pub fn from_labels(
        commit: Option<&str>,
        final_diffid: Option<&str>,
        diff_ids: &[&str],
    ) -> Result<Option<Self>> {
        let Some(commit) = commit else {
            return Ok(None);
        };
        if commit.len() != 64
            || !commit
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!("the image's label {COMMIT_LABEL} is not an ostree checksum: {commit:?}");
        }
        if diff_ids.is_empty() {
            bail!("the image names ostree commit {commit} but has no layers");
        }
        let last = match final_diffid {
            Some(f) => diff_ids.iter().position(|d| *d == f).with_context(|| {
                format!("the image's label {FINAL_DIFFID_LABEL} names {f}, which is not one of its layers")
            })?,
            None => 0,
        };
        Ok(Some(Self {
            commit: commit.to_string(),
            ostree_layers: diff_ids[..=last].iter().map(|s| s.to_string()).collect(),
            derived_layers: diff_ids[last + 1..].iter().map(|s| s.to_string()).collect(),
        }))
    }
}

/// Whether `img` is ostree-encapsulated, and how its layers divide.
pub fn detect(img: &OciImage<ObjectId>) -> Result<Option<Encapsulated>> {
    Encapsulated::from_labels(
        img.label(COMMIT_LABEL),
        img.label(FINAL_DIFFID_LABEL),
        &img.layer_diff_ids(),
    )
    .with_context(|| format!("image {}", img.manifest_digest()))
}

/// The merged tree of an image of `repo`: for an encapsulated image the
/// embedded commit's tree with the layers above applied ([`tree::build`]),
/// otherwise the merge of its layers under unistore's rules
/// ([`crate::source::layer_merge`], the boot image's).
pub fn merged_tree(repo: &Repo, img: &OciImage<ObjectId>) -> Result<FileSystem<ObjectId>> {
    match detect(img)? {
        Some(enc) => tree::build(repo, &enc, &objects::ObjectSet::read(repo, &enc)?),
        None => Ok(crate::source::layer_merge::merged(repo, img)?.fs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "df0f9605244b11e53f83dbacc94a77ea9dab5e2246590c94b8ce14669a3ca294";

    #[test]
    fn layers_divide_at_the_final_diffid() {
        assert_eq!(
            Encapsulated::from_labels(None, None, &["sha256:a"]).unwrap(),
            None
        );
        let e = Encapsulated::from_labels(
            Some(C),
            Some("sha256:b"),
            &["sha256:a", "sha256:b", "sha256:c"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.commit, C);
        assert_eq!(e.ostree_layers, ["sha256:a", "sha256:b"]);
        assert_eq!(e.derived_layers, ["sha256:c"]);
        let e = Encapsulated::from_labels(Some(C), None, &["sha256:a", "sha256:c"])
            .unwrap()
            .unwrap();
        assert_eq!(e.ostree_layers, ["sha256:a"]);
        assert_eq!(e.derived_layers, ["sha256:c"]);
    }

    #[test]
    fn bad_labels_are_refused() {
        let e = Encapsulated::from_labels(Some("xyz"), None, &["sha256:a"]).unwrap_err();
        assert!(e.to_string().contains("not an ostree checksum"), "{e}");
        let e = Encapsulated::from_labels(Some(C), Some("sha256:z"), &["sha256:a"]).unwrap_err();
        assert!(e.to_string().contains("not one of its layers"), "{e}");
        assert!(Encapsulated::from_labels(Some(C), None, &[]).is_err());
    }
}
