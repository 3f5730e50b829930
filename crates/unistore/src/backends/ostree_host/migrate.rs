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
//!    upgrade (or switch) fetches the layers of each deployment's image
//!    again, by digest, and writes them ([`fetch_missing_layers`]).
//!
//! Reads never migrate: only writing commands call [`migrate`], under
//! libostree's sysroot lock.

use std::collections::BTreeSet;

use anyhow::{Result, anyhow};
use ostree::gio;

use crate::crashpoint;
use crate::progress::{self, Progress};
use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::{ImageRef, Transport};
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

/// The reference that names exactly the image `digest` of `image`: the
/// registry's `name@digest`; other transports as they are (the pulled
/// image's digest is then compared).
fn by_digest(image: &ImageRef, digest: &str) -> ImageRef {
    if image.transport != Transport::Registry {
        return image.clone();
    }
    let name = match image.name.split_once('@') {
        Some((n, _)) => n,
        None => {
            // A tag is what follows the last `:` after the last `/`.
            let slash = image.name.rfind('/').map_or(0, |i| i + 1);
            match image.name[slash..].rfind(':') {
                Some(i) => &image.name[..slash + i],
                None => &image.name,
            }
        }
    };
    ImageRef {
        transport: Transport::Registry,
        name: format!("{name}@{digest}"),
    }
}

/// For a host whose layers are not on the host (a classic host an older
/// version wrote): fetches the image of each deployment that lacks layer
/// commits, by digest, through a staging repository, and writes the
/// missing layer commits. Returns what it could not do, for people (an
/// image its source no longer serves, say); the host is whole either way.
pub async fn fetch_missing_layers(
    sysroot: &Sysroot,
    os: &ostree::Sysroot,
    fetch: &FetchConfig,
    progress: &Progress,
) -> Result<Vec<String>> {
    let repo = os.repo();
    let mut notes = vec![];
    let mut done = BTreeSet::new();
    for d in os.deployments() {
        let c = d.csum().to_string();
        if !done.insert(c.clone()) {
            continue;
        }
        let lacking = lacking_layers(&repo, &BTreeSet::from([c.clone()]))?;
        let Some((_, missing)) = lacking.into_iter().next() else {
            continue;
        };
        let info = ostree_repo::commit_info(&repo, &c)?;
        let (Ok(image), Some(digest)) = (super::deployment_image(&d), info.manifest_digest) else {
            notes.push(format!(
                "deployment {}: no image to fetch its layers from",
                super::name(&d)
            ));
            continue;
        };
        let src = by_digest(&image, &digest);
        progress::step(
            progress,
            format!("Fetching the layers of {src} (written by an older version)"),
        );
        let staged = match super::staging::pull(
            sysroot,
            &src,
            fetch,
            super::staging::Source::Staging,
            progress.clone(),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                super::staging::remove(sysroot)?;
                notes.push(format!("the layers of {src} could not be fetched: {e:#}"));
                continue;
            }
        };
        if staged.manifest_digest != digest {
            notes.push(format!(
                "{src} is now {}, not the deployed {digest}: its layers were not written",
                staged.manifest_digest
            ));
        } else {
            let repo_dir = sysroot.dir().open_dir(ostree_repo::REPO_DIR)?;
            let mut cache = ChecksumCache::load(sysroot);
            commit::import_layers(
                &repo,
                &repo_dir,
                &staged.repo,
                &missing,
                info.timestamp,
                &mut cache,
            )?;
            cache.save(sysroot)?;
        }
        drop(staged);
        super::staging::remove(sysroot)?;
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_digest_replaces_the_tag() {
        let d = "sha256:ab";
        let r = |s: &str| by_digest(&ImageRef::parse(s).unwrap(), d).to_string();
        assert_eq!(
            r("docker://127.0.0.1:5000/a/b:v1"),
            "docker://127.0.0.1:5000/a/b@sha256:ab"
        );
        assert_eq!(
            r("docker://127.0.0.1:5000/a/b"),
            "docker://127.0.0.1:5000/a/b@sha256:ab"
        );
        assert_eq!(r("docker://q.io/a@sha256:00"), "docker://q.io/a@sha256:ab");
        assert_eq!(r("oci:/x/y:t"), "oci:/x/y:t");
    }
}
