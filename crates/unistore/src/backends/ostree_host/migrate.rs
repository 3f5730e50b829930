//! Bringing an ostree host an older version wrote to the layout released
//! bootc reads, idempotently and safely against interruption at any step.
//!
//! Older versions escaped every `/` and `-` of an image ref, and wrote no
//! layer commits. Steps, each a no-op when done:
//! 1. every image ref not spelled as ostree-ext spells it gets the right
//!    name (the new ref is written before the old one is removed: an
//!    interruption leaves both, and the next run removes the old one);
//! 2. every image a deployment or image ref keeps gets the commits of the
//!    layers it lacks ([`crate::stores::ostree_repo::layers`]), in one
//!    transaction, when the host's composefs repository holds those layers
//!    (a bound or unified host). A classic host keeps no layers: its next
//!    upgrade fetches the booted image's layers again and writes them
//!    ([`super::lifecycle`]).
//!
//! Reads never migrate: only writing commands call [`migrate`], under
//! libostree's sysroot lock.

use std::collections::BTreeSet;

use anyhow::{Result, anyhow};
use ostree::gio;

use crate::crashpoint;
use crate::stores::composefs_repo::{self, layer_stream_id};
use crate::stores::ostree_repo::checksum_cache::ChecksumCache;
use crate::stores::ostree_repo::{
    self, IMAGE_REF_PREFIX, commit, escape_ref, layers, unescape_ref,
};
use crate::sysroot::Sysroot;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Image refs renamed (old name, new name).
    pub renamed: Vec<(String, String)>,
    /// Layer commits written.
    pub layers: u64,
    /// Images whose layers are not on the host (a classic host): their
    /// next upgrade writes them.
    pub layers_missing: Vec<String>,
}

/// The commits an image ref or deployment keeps, with the layers each
/// lacks a blob ref for.
fn lacking_layers(
    repo: &ostree::Repo,
    commits: &BTreeSet<String>,
) -> Result<Vec<(String, Vec<layers::Layer>)>> {
    let mut out = vec![];
    for c in commits {
        let Some((manifest, config)) = commit::image_json(repo, c)? else {
            continue;
        };
        let mut missing = vec![];
        for l in layers::layers_of(&manifest, &config)? {
            let r = layers::blob_ref(&l.blob_digest);
            if repo
                .resolve_rev(&r, true)
                .map_err(|e| anyhow!("reading ref {r}: {e}"))?
                .is_none()
            {
                missing.push(l);
            }
        }
        if !missing.is_empty() {
            out.push((c.clone(), missing));
        }
    }
    Ok(out)
}

/// Migrates the host, as described above. `os` is loaded and locked.
pub fn migrate(sysroot: &Sysroot, os: &ostree::Sysroot) -> Result<Migrated> {
    let repo = os.repo();
    let none = gio::Cancellable::NONE;
    let mut done = Migrated::default();
    let current: BTreeSet<String> = ostree_repo::image_refs(&repo)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for (name, commit) in ostree_repo::image_refs(&repo)? {
        let suffix = &name[IMAGE_REF_PREFIX.len()..];
        let Some(image) = unescape_ref(suffix) else {
            tracing::warn!("image ref {name}: not an escaped reference, left as it is");
            continue;
        };
        let right = format!("{IMAGE_REF_PREFIX}{}", escape_ref(&image));
        if right == name {
            continue;
        }
        if !current.contains(&right) {
            repo.set_ref_immediate(None, &right, Some(&commit), none)
                .map_err(|e| anyhow!("writing ref {right}: {e}"))?;
        }
        crashpoint::hit("ostree-migrate:after-new-ref");
        repo.set_ref_immediate(None, &name, None, none)
            .map_err(|e| anyhow!("removing ref {name}: {e}"))?;
        done.renamed.push((name, right));
    }

    let mut keep: BTreeSet<String> = ostree_repo::image_refs(&repo)?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    keep.extend(os.deployments().iter().map(|d| d.csum().to_string()));
    let lacking = lacking_layers(&repo, &keep)?;
    if lacking.is_empty() {
        return Ok(done);
    }
    let cfs = if super::unified::has_composefs(sysroot)? {
        Some(composefs_repo::open(sysroot)?)
    } else {
        None
    };
    let repo_dir = sysroot.dir().open_dir(ostree_repo::REPO_DIR)?;
    let mut cache = ChecksumCache::load(sysroot);
    for (c, missing) in lacking {
        let have = cfs.as_ref().is_some_and(|cfs| {
            missing.iter().all(|l| {
                layer_stream_id(&l.diff_id)
                    .ok()
                    .and_then(|id| cfs.has_stream(&id).ok().flatten())
                    .is_some()
            })
        });
        let (Some(cfs), true) = (cfs.as_ref(), have) else {
            done.layers_missing.push(c);
            continue;
        };
        let timestamp = ostree_repo::commit_info(&repo, &c)?.timestamp;
        done.layers +=
            commit::import_layers(&repo, &repo_dir, cfs, &missing, timestamp, &mut cache)?;
        crashpoint::hit("ostree-migrate:after-layers");
    }
    cache.save(sysroot)?;
    Ok(done)
}
