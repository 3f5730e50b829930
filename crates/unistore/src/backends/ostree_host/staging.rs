//! The staging composefs repository an ostree host pulls through.
//!
//! composefs-oci fetches and unpacks the image (every transport, digests
//! checked) into `ostree/unistore-staging/`; the merged tree is then written
//! as one ostree commit whose content objects are reflinks of the staging
//! objects (copies without reflinks), and the staging repository is removed.
//! A run killed in between leaves only that directory, which the next
//! import and `internals gc` remove.
//!
//! A host bound to composefs (`set-unified composefs`, or installed
//! unified) pulls into its own composefs repository `composefs/` instead
//! ([`Source::Host`]), which stays: its objects back the commit's content
//! objects (reflinks), and the image is tagged there
//! `localhost/bootc-<digest>` (also under the registry's digest for an
//! image in Docker's format), the GC root while a deployment uses it.

use std::sync::Arc;

use anyhow::{Context, Result};
use composefs::tree::FileSystem;

use crate::progress::Progress;
use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::ImageRef;
use crate::source::pull;
use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::stores::ostree_repo::checksum_cache::ChecksumCache;
use crate::stores::ostree_repo::{self, commit::ImageCommit, commit::Imported};
use crate::sysroot::Sysroot;
use crate::unified::UnifiedMode;
use crate::util;

/// Where the staging repository lives (same filesystem as `ostree/repo`).
pub const STAGING_DIR: &str = "ostree/unistore-staging";

/// Where an image is pulled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A staging repository, removed after the commit (a classic commit).
    Staging,
    /// The host's composefs repository (a bound host): the commit is
    /// synthesized from it. With a unified mode, the image also goes into
    /// the host containers-storage ([`crate::unified::fetch_unified`]).
    Host(Option<UnifiedMode>),
}

/// An image pulled into the staging repository.
pub struct Staged {
    /// Where it was pulled to.
    pub source: Source,
    /// Its manifest digest in that composefs repository (the OCI
    /// conversion's for an image in Docker's format).
    pub composefs_digest: String,
    /// The staging repository.
    pub repo: Arc<Repo>,
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// The merged tree.
    pub fs: FileSystem<ObjectId>,
    /// Manifest and config as JSON.
    pub manifest_json: String,
    /// The config as JSON.
    pub config_json: String,
    /// The image's creation time, seconds since the epoch (without one,
    /// its newest file's mtime).
    pub created: u64,
    /// The config's architecture.
    pub architecture: String,
}

/// Pulls `image` into a fresh staging repository.
pub async fn pull(
    sysroot: &Sysroot,
    image: &ImageRef,
    fetch: &FetchConfig,
    source: Source,
    progress: Progress,
) -> Result<Staged> {
    remove(sysroot)?;
    sysroot.dir().create_dir_all("ostree")?;
    // An ostree host boots from its deployments: no boot EROFS image.
    let fetch = &FetchConfig {
        no_boot_image: true,
        // Issue 26: a partial pull takes the files the ostree repository
        // has (a bound host's first upgrade has them nowhere else).
        ostree_objects: sysroot
            .dir()
            .open_dir("ostree/repo/objects")
            .ok()
            .map(std::sync::Arc::new),
        ..fetch.clone()
    };
    let (repo, pulled) = match source {
        Source::Staging => {
            let (repo, _) = composefs_repo::init_at(sysroot, STAGING_DIR)?;
            let pulled = pull::pull(&repo, image, fetch, progress).await?;
            (repo, pulled)
        }
        Source::Host(mode) => {
            let (repo, _) = composefs_repo::init(sysroot)?;
            let pulled = match mode {
                Some(m) => {
                    crate::stores::containers_storage::ensure_ostree_layout(sysroot)?;
                    crate::unified::fetch_unified(sysroot, &repo, image, fetch, m, progress).await?
                }
                None => pull::pull(&repo, image, fetch, progress).await?,
            };
            if let Some(r) = &pulled.registry {
                // Found again by the digest the commit records.
                composefs_oci::oci_image::tag_image(
                    repo.as_ref(),
                    &pulled.manifest_digest.parse()?,
                    &composefs_repo::bootc_tag(&r.digest),
                )
                .context("tagging the image under the registry's digest")?;
            }
            (repo, pulled)
        }
    };
    let img = composefs_repo::open_image(&repo, &pulled.manifest_digest)?;
    // Issue 22: an ostree-encapsulated image's tree is its commit's.
    let fs = crate::source::ostree_encap::merged_tree(&repo, &img)?;
    // An image in Docker's format: the commit records the registry's
    // manifest and digest (composefs holds its OCI conversion).
    let (manifest_digest, manifest_bytes) = match &pulled.registry {
        Some(r) => (r.digest.clone(), r.bytes.clone()),
        None => (
            pulled.manifest_digest.clone(),
            img.read_manifest_json(&repo)?,
        ),
    };
    let manifest_json = String::from_utf8(manifest_bytes).context("the manifest is not UTF-8")?;
    let config_json =
        String::from_utf8(img.read_config_json(&repo)?).context("the config is not UTF-8")?;
    // Without `created`, the newest mtime of the image's files: never
    // epoch 0 (rpm-ostree takes it for no time), and the same image gives
    // the same commit on every host.
    let created = img
        .created()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
        .map_or_else(|| fs.root.newest_file(&fs.leaves).0, |t| t.timestamp())
        .max(0) as u64;
    let architecture = img.architecture();
    Ok(Staged {
        source,
        composefs_digest: pulled.manifest_digest.clone(),
        repo,
        manifest_digest,
        fs,
        manifest_json,
        config_json,
        created,
        architecture,
    })
}

impl Staged {
    /// Writes the image as one commit kept by the ref of `image` (classic
    /// from a staging repository, synthesized from the host's); what the
    /// commit leaves out is reported as notes. Checksums come from the
    /// host's cache where it knows them, and new ones go into it.
    pub fn commit(
        &self,
        sysroot: &Sysroot,
        ostree: &ostree::Repo,
        image: &ImageRef,
        progress: &Progress,
    ) -> Result<Imported> {
        crate::progress::step(progress, "Writing the ostree commit".to_string());
        let repo_dir = sysroot.dir().open_dir(ostree_repo::REPO_DIR)?;
        let ref_name = ostree_repo::image_ref(image);
        let mut cache = ChecksumCache::load(sysroot);
        // Issue 22: an ostree-encapsulated image's embedded commit, as is.
        let encap = crate::source::ostree_encap::ostree_import::import(
            ostree,
            &repo_dir,
            &self.repo,
            &self.composefs_digest,
            &self.manifest_json,
            &self.config_json,
            &mut cache,
        )?;
        if let Some(e) = &encap {
            crate::progress::step(
                progress,
                format!(
                    "ostree-encapsulated image: commit {} imported ({} files, {} read, {} already present)",
                    e.commit, e.files, e.files_read, e.files_present
                ),
            );
        }
        let mut imported = ostree_repo::commit::import(
            ostree,
            &repo_dir,
            &self.repo,
            &self.fs,
            &ImageCommit {
                manifest_digest: &self.manifest_digest,
                manifest_json: &self.manifest_json,
                config_json: &self.config_json,
                timestamp: self.created,
                ref_name: &ref_name,
                composefs_manifest: (self.source != Source::Staging)
                    .then_some(self.composefs_digest.as_str()),
            },
            &mut cache,
        )?;
        if let Some(e) = &encap {
            imported.content.merge(&e.content);
            imported.objects_written += e.files_written;
        }
        cache.save(sysroot)?;
        for n in &imported.notes {
            crate::progress::step(progress, format!("note: {n}"));
        }
        Ok(imported)
    }
}

/// Removes the staging repository (and what a killed run left there);
/// never the host's own composefs repository.
pub fn remove(sysroot: &Sysroot) -> Result<()> {
    util::remove_all(sysroot.dir(), STAGING_DIR)
}
