//! The EROFS images of an encapsulated image in the composefs repository,
//! made from its tree ([`super::tree`]) instead of a plain merge of its
//! layers, and linked in place of composefs-oci's by
//! [`crate::source::image_link`].

use std::sync::Arc;

use anyhow::{Context, Result};
use composefs_oci::OciDigest;
use composefs_oci::oci_image::OciImage;

use super::objects::ObjectSet;
use crate::stores::composefs_repo::Repo;

/// What [`link_images`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    /// Not an encapsulated image: nothing done.
    NotEncapsulated,
    /// Its images were the commit's already.
    AlreadyLinked,
    /// Its images are the commit's now; composefs-oci's, and the config and
    /// manifest splitstreams that linked them, are garbage for the
    /// repository's GC.
    Relinked,
}

/// For an ostree-encapsulated image of `repo`, writes its EROFS images from
/// the embedded commit's tree and links them to the image in place of
/// composefs-oci's. Idempotent: an image already linked so is left as it
/// is.
pub fn link_images(repo: &Arc<Repo>, manifest_digest: &OciDigest) -> Result<Linked> {
    let img = OciImage::open(repo, manifest_digest, None)?;
    let Some(enc) = super::detect(&img)? else {
        return Ok(Linked::NotEncapsulated);
    };
    let set = ObjectSet::read(repo, &enc)?;
    let fs = super::tree::build(repo, &enc, &set)?;
    if !crate::source::image_link::link_tree(repo, &img, fs)
        .context("linking the ostree commit's EROFS images")?
    {
        return Ok(Linked::AlreadyLinked);
    }
    tracing::debug!(
        "ostree-encapsulated image {manifest_digest} (commit {}): linked the commit's EROFS images",
        enc.commit
    );
    Ok(Linked::Relinked)
}
