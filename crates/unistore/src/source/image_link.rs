//! An image's EROFS images made from a tree unistore built, linked in place
//! of composefs-oci's: an ostree-encapsulated image's commit tree
//! ([`crate::source::ostree_encap`]) and a merge under unistore's layer rules
//! ([`crate::source::layer_merge`]).
//!
//! composefs-oci links an image's EROFS images to its config splitstream
//! (named refs `composefs.image`, `composefs.image.v1` and, for the boot
//! images, `composefs.image.boot`, `composefs.image.boot.v1`) and the config
//! to the manifest splitstream (`config:<digest>`); GC, `boot_image`,
//! `read_filesystem` and our fsck follow those links. [`link_tree`]
//! writes both images the way composefs-oci commits them
//! (`FileSystem::commit_images`, before and after `transform_for_boot`), the
//! config through composefs-oci's `write_config_raw` (the config's bytes
//! unchanged), and a copy of the manifest splitstream whose config ref names
//! the new config (every other named ref and the manifest's bytes as they
//! were, content type read from the old stream): what composefs-oci's own
//! `rewrite_manifest` does, which it does not export. Boot images of other
//! xattr modes are dropped (they were merges of the layers).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use composefs::erofs::format::{FormatEpoch, FormatVersion};
use composefs_boot::BootOps;
use composefs_oci::oci_image::OciImage;

use crate::stores::composefs_repo::{ObjectId, Repo};

/// The EROFS images made for an image, by format version.
type Images = HashMap<FormatVersion, ObjectId>;

/// The (V2-slot, V1-slot) ids of `images`, as composefs-oci files them.
fn slots(images: &Images) -> (Option<ObjectId>, Option<ObjectId>) {
    let mut v2 = None;
    let mut v1 = None;
    for (v, id) in images {
        match v.epoch() {
            FormatEpoch::Epoch2 => v2 = Some(id.clone()),
            FormatEpoch::Epoch1 => v1 = Some(id.clone()),
        }
    }
    (v2, v1)
}

/// Writes the EROFS images of `fs` (a merged tree, not yet transformed for
/// boot) and links them to `img` in place of the ones it has. Returns false
/// when `img` had exactly these images already.
pub fn link_tree(
    repo: &Arc<Repo>,
    img: &OciImage<ObjectId>,
    mut fs: composefs::tree::FileSystem<ObjectId>,
) -> Result<bool> {
    let (image_v2, image_v1) = slots(&fs.commit_images(repo, None)?);
    fs.transform_for_boot(repo)
        .context("preparing the boot image of the tree")?;
    let (boot_v2, boot_v1) = slots(&fs.commit_images(repo, None)?);
    let mut boot: HashMap<Box<str>, ObjectId> = HashMap::new();
    if let Some(id) = boot_v2 {
        boot.insert(composefs_oci::BOOT_IMAGE_REF_KEY.into(), id);
    }
    if let Some(id) = boot_v1 {
        boot.insert(composefs_oci::BOOT_IMAGE_REF_KEY_V1.into(), id);
    }
    let linked = composefs_oci::open_config(repo, img.config_digest(), Some(img.config_verity()))?;
    if linked.image_ref == image_v2
        && linked.image_ref_v1 == image_v1
        && linked.boot_image_refs == boot
    {
        return Ok(false);
    }
    let config_json = img.read_config_json(repo)?;
    let (_, config_verity) = composefs_oci::write_config_raw(
        repo,
        &config_json,
        img.layer_refs().clone(),
        image_v2.as_ref(),
        image_v1.as_ref(),
        &boot,
    )
    .context("linking the EROFS images to the image's config")?;
    relink_manifest(repo, img, &config_verity)
        .context("linking the new config to the image's manifest")?;
    Ok(true)
}

/// Rewrites `img`'s manifest splitstream so that its config ref names
/// `config_verity`; everything else as it was.
fn relink_manifest(
    repo: &Arc<Repo>,
    img: &OciImage<ObjectId>,
    config_verity: &ObjectId,
) -> Result<()> {
    let id = composefs_oci::oci_image::manifest_identifier(img.manifest_digest());
    let old = repo.open_stream(&id, Some(img.manifest_verity()), None)?;
    let content_type = old.content_type;
    let config_key = format!("config:{}", img.config_digest());
    let refs: Vec<(String, ObjectId)> = old
        .iter_named_refs()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    drop(old);
    anyhow::ensure!(
        refs.iter().any(|(k, _)| *k == config_key),
        "the manifest splitstream has no {config_key} ref"
    );
    let json = img.read_manifest_json(repo)?;
    let mut w = repo.create_stream(content_type)?;
    for (k, v) in &refs {
        w.add_named_stream_ref(k, if *k == config_key { config_verity } else { v });
    }
    w.write_external(&json)?;
    repo.write_stream(w, &id, None)?;
    Ok(())
}
