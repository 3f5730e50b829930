//! `image list`: the host's images and where each one is present.
//!
//! Host images are those a boot entry names (booted, rollback, staged) and
//! those tagged `localhost/bootc-<digest>` in the composefs repository. For
//! each: whether its manifest is in the composefs repository and whether
//! the host containers-storage holds it complete. Reads only: never creates
//! the store.

use std::collections::BTreeMap;

use anyhow::Result;

use super::set_unified::live_images_lenient;
use crate::command::image_list::HostImage;
use crate::command::image_list::ImageList;
use crate::stores::composefs_repo;
use crate::sysroot::{BOOTC_TAG_PREFIX, Sysroot};
use crate::unified::{self};

/// Lists the host's images. Reads only.
pub fn list_images(sysroot: &Sysroot) -> Result<ImageList> {
    let repo = composefs_repo::open(sysroot)?;
    let mut by_digest: BTreeMap<String, HostImage> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    let blank = |d: &str| HostImage {
        manifest_digest: d.to_string(),
        config_digest: None,
        image: None,
        roles: vec![],
        version: None,
        in_composefs: false,
        in_containers_storage: false,
        store_names: vec![],
        owned_by_unistore: false,
        in_ostree: None,
    };
    // Every entry's image with its role (live_images dedups by digest, so
    // add roles of duplicates from the entries themselves).
    let (live, errors) = live_images_lenient(sysroot)?;
    for (l, _) in live {
        let e = by_digest
            .entry(l.manifest_digest.clone())
            .or_insert_with(|| {
                order.push(l.manifest_digest.clone());
                blank(&l.manifest_digest)
            });
        e.image = Some(l.image);
        e.roles.push(l.role);
    }
    for (name, digest) in composefs_oci::oci_image::list_refs(repo.as_ref())? {
        if !name.starts_with(BOOTC_TAG_PREFIX) {
            continue;
        }
        let d = digest.to_string();
        by_digest.entry(d.clone()).or_insert_with(|| {
            order.push(d.clone());
            blank(&d)
        });
    }
    let owned = unified::owned_images(sysroot).unwrap_or_default();
    let mut images = vec![];
    for d in order {
        let mut h = by_digest.remove(&d).expect("inserted");
        if let Ok(img) = composefs_repo::open_image(&repo, &d) {
            h.in_composefs = true;
            let c = img.config_digest().to_string();
            h.version = super::status::version_of(&img);
            if let Some(si) = unified::store_image(sysroot, &c)? {
                h.in_containers_storage = true;
                h.store_names = si.names;
            }
            h.owned_by_unistore = owned.iter().any(|o| o.manifest_digest == d && !o.pending);
            h.config_digest = Some(c);
        }
        images.push(h);
    }
    Ok(ImageList {
        ostree_composefs_bound: false,
        unified: unified::unified_mode(sysroot)?,
        images,
        errors,
    })
}
