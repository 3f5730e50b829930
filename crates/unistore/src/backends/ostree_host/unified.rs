//! Unified storage on an ostree host: the composefs binding and the three
//! stores.
//!
//! * `set-unified composefs` records the binding (`[composefs]
//!   unified=true` in `ostree/repo/config`) and nothing else. From then on
//!   upgrades pull into the host's composefs repository `composefs/` and
//!   synthesize their commit from it, every content object a reflink of
//!   its composefs object ([`super::staging::Source::Host`]).
//! * `set-unified full` brings every live image (booted, staged, rollback)
//!   into all three stores: the composefs repository (pulled by digest
//!   when it is not there yet), the ostree repository (its commit is
//!   there; each content object is made to share its composefs object's
//!   extents, `FIDEDUPERANGE`, which the kernel refuses unless the bytes
//!   are equal) and the host containers-storage `ostree/bootc/storage`
//!   (the native writer, reflinks of the composefs objects). The binding,
//!   then the flag `composefs/bootc.json`, are written last: killed or
//!   failed, the host is left unmarked; run again, it resumes.
//!
//! The booted deployment is never redeployed: its files are hardlinks of
//! the ostree objects, whose bytes a dedupe leaves as they are.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use composefs::fsverity::FsVerityHashValue;
use composefs::generic_tree::LeafContent;
use composefs::tree::{FileSystem, RegularFile};
use serde::Serialize;

use super::{deployment_image, name};
use crate::command::set_unified::{LiveImage, SetUnifiedOpts, SetUnifiedOutcome, Target};
use crate::crashpoint;
use crate::fs::reflink::{self, Method, Policy};
use crate::progress::{self, Progress};
use crate::source::fetch_config::FetchConfig;
use crate::source::imgref::{ImageRef, Transport};
use crate::source::pull;
use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::stores::containers_storage;
use crate::stores::ostree_repo::checksum_cache::{self, ChecksumCache};
use crate::stores::ostree_repo::objects::{ContentWriter, FileMeta, object_path};
use crate::stores::ostree_repo::{self, REPO_DIR};
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};
use crate::unified::{self, NameRule};

/// One live deployment's image.
#[derive(Debug, Clone)]
pub struct LiveCommit {
    /// The commit.
    pub commit: String,
    /// `ostree.manifest-digest` (the registry's digest).
    pub digest: String,
    /// The manifest digest in composefs, for a synthesized commit.
    pub composefs_manifest: Option<String>,
    /// The reference its deployment follows.
    pub image: ImageRef,
    /// booted, staged, rollback, other.
    pub role: String,
    /// `<commit>.<serial>`.
    pub deployment: String,
    /// The registry's manifest (`ostree.manifest`).
    pub manifest_json: Option<String>,
}

/// The live deployments' images, booted first, each commit once.
pub fn live_commits(sysroot: &Sysroot, os: &ostree::Sysroot) -> Result<Vec<LiveCommit>> {
    let (deps, booted) = super::deployments(sysroot, os);
    let mut order: Vec<(ostree::Deployment, &str)> = vec![];
    if let Some(b) = booted {
        order.push((deps[b].clone(), "booted"));
    }
    if let Some(s) = os.staged_deployment() {
        order.push((s, "staged"));
    }
    let mut rollback_seen = false;
    for (i, d) in deps.iter().enumerate() {
        if Some(i) == booted || d.is_staged() {
            continue;
        }
        order.push((d.clone(), if rollback_seen { "other" } else { "rollback" }));
        rollback_seen = true;
    }
    let repo = os.repo();
    let mut out: Vec<LiveCommit> = vec![];
    for (d, role) in order {
        let commit = d.csum().to_string();
        if out.iter().any(|l| l.commit == commit) {
            continue;
        }
        let info = ostree_repo::commit_info(&repo, &commit)
            .with_context(|| format!("{role} deployment {}", name(&d)))?;
        let digest = info.manifest_digest.clone().ok_or_else(|| {
            anyhow!(
                "{role} deployment {}: its commit records no image",
                name(&d)
            )
        })?;
        let manifest_json = read_manifest(&repo, &commit);
        out.push(LiveCommit {
            commit,
            digest,
            composefs_manifest: info.composefs_manifest,
            image: deployment_image(&d)?,
            role: role.to_string(),
            deployment: name(&d),
            manifest_json,
        });
    }
    Ok(out)
}

fn read_manifest(repo: &ostree::Repo, commit: &str) -> Option<String> {
    let (c, _) = repo.load_commit(commit).ok()?;
    let meta = ostree::glib::VariantDict::new(Some(&c.child_value(0)));
    meta.lookup::<String>("ostree.manifest").ok().flatten()
}

/// Whether the root has the host's composefs repository.
pub fn has_composefs(sysroot: &Sysroot) -> Result<bool> {
    Ok(sysroot
        .dir()
        .try_exists(format!("{COMPOSEFS_DIR}/meta.json"))?)
}

/// The manifest digest in composefs of the image a commit records as
/// `digest`, when the repository holds it (tagged `localhost/bootc-<digest>`).
pub fn composefs_digest_of(cfs: &Repo, digest: &str) -> Result<Option<String>> {
    let tag = composefs_repo::bootc_tag(digest);
    Ok(composefs_oci::oci_image::list_refs(cfs)?
        .into_iter()
        .find(|(n, _)| *n == tag)
        .map(|(_, m)| m.to_string()))
}

/// `imgref` pinned to `digest`: the registry serves exactly that image even
/// after its tag moved on. Other transports are read as they are (the
/// caller checks the digest).
fn pinned(imgref: &ImageRef, digest: &str) -> ImageRef {
    if imgref.transport != Transport::Registry {
        return imgref.clone();
    }
    let name = imgref.name.split('@').next().unwrap_or(&imgref.name);
    let (head, last) = name.rsplit_once('/').unwrap_or(("", name));
    let last = last.split(':').next().unwrap_or(last);
    let repo = if head.is_empty() {
        last.to_string()
    } else {
        format!("{head}/{last}")
    };
    ImageRef {
        transport: Transport::Registry,
        name: format!("{repo}@{digest}"),
    }
}

/// Pulls the image a live commit records into the host's composefs
/// repository unless it is there; returns its manifest digest there.
pub async fn ensure_in_composefs(
    cfs: &Arc<Repo>,
    live: &LiveCommit,
    fetch: &FetchConfig,
    progress: &Progress,
) -> Result<String> {
    if let Some(m) = composefs_digest_of(cfs, &live.digest)? {
        return Ok(m);
    }
    let src = pinned(&live.image, &live.digest);
    progress::step(
        progress,
        format!("Pulling {src} into the composefs repository"),
    );
    let pulled = pull::pull(cfs, &src, fetch, progress.clone())
        .await
        .with_context(|| {
            format!(
                "the {} image {} is not in the composefs repository and could not be fetched",
                live.role, live.digest
            )
        })?;
    if pulled.identity_digest() != live.digest {
        bail!(
            "{} now serves {}, not the {} image {} (its deployment's); it cannot be brought into composefs",
            live.image,
            pulled.identity_digest(),
            live.role,
            live.digest
        );
    }
    if let Some(r) = &pulled.registry {
        composefs_oci::oci_image::tag_image(
            cfs.as_ref(),
            &pulled.manifest_digest.parse()?,
            &composefs_repo::bootc_tag(&r.digest),
        )?;
    }
    Ok(pulled.manifest_digest)
}

/// How an image's ostree objects share their composefs objects' extents.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSharing {
    /// Content objects compared.
    pub files: u64,
    /// Made to share by this pass.
    pub reflinked: u64,
    /// Sharing already.
    pub already_shared: u64,
    /// Holding their own copy (left so: no reflinks, or a check only).
    pub unshared: u64,
    /// Their bytes.
    pub unshared_bytes: u64,
    /// Content objects the image needs that the repository lacks.
    pub missing: Vec<String>,
    /// Missing objects written again from their composefs objects.
    pub restored: Vec<String>,
    /// Files read to compute a checksum the cache did not know.
    pub files_read: u64,
}

/// The merged tree of an image of the composefs repository.
pub fn image_tree(cfs: &Repo, manifest: &str) -> Result<FileSystem<ObjectId>> {
    let img = composefs_repo::open_image(cfs, manifest)?;
    // Issue 22: an ostree-encapsulated image's tree is its commit's.
    crate::source::ostree_encap::merged_tree(cfs, &img)
}

/// What [`walk_objects`] does with each ostree object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Compare extents only (first extents, no flush): reads no content.
    Check,
    /// Make objects that hold their own copy share the composefs object's
    /// extents (`FIDEDUPERANGE`).
    Share(Policy),
    /// Share, and write missing objects from their composefs objects (the
    /// checksum recomputed from the content must be the one the commit
    /// names).
    Repair(Policy),
}

/// Walks every regular file of the image `manifest` of `cfs` whose content
/// is a composefs object with its ostree object, found by checksum (from
/// the cache, else computed and cached). Files under 4 KiB are not compared
/// (they fit one block).
pub fn walk_objects(
    sysroot: &Sysroot,
    cfs: &Repo,
    manifest: &str,
    cache: &mut ChecksumCache,
    walk: Walk,
) -> Result<ObjectSharing> {
    let share = match walk {
        Walk::Check => None,
        Walk::Share(p) | Walk::Repair(p) => Some(p),
    };
    let fs = image_tree(cfs, manifest)?;
    let repo_dir = sysroot.dir().open_dir(REPO_DIR)?;
    let mut out = ObjectSharing::default();
    let mut seen = std::collections::HashSet::new();
    for leaf in &fs.leaves {
        let LeafContent::Regular(
            RegularFile::External(obj, size) | RegularFile::ExternalNoVerity(obj, size),
        ) = &leaf.content
        else {
            continue;
        };
        let st = &leaf.stat;
        let mode = (st.st_mode & 0o7777) | libc::S_IFREG;
        let key = checksum_cache::key(&obj.to_hex(), st.st_uid, st.st_gid, mode, &st.xattrs);
        if !seen.insert(key.clone()) {
            continue;
        }
        let src = std::fs::File::from(cfs.open_object(obj)?);
        let meta = FileMeta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode,
            xattrs: &st.xattrs,
        };
        let csum = match cache.get(&key) {
            Some(c) => c,
            None => {
                out.files_read += 1;
                let c = ContentWriter::checksum(&meta, &src, *size)?;
                cache.insert(key.clone(), c.clone());
                c
            }
        };
        let rel = object_path(&csum);
        let dst = match repo_dir.open(&rel) {
            Ok(f) => f.into_std(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Walk::Repair(_) = walk {
                    let mut w = ContentWriter::new(&repo_dir);
                    let written = w.write_from_object(&meta, &src, *size, None)?;
                    if written != csum {
                        bail!(
                            "ostree object {csum}: its composefs object gives {written}; not restored"
                        );
                    }
                    out.restored.push(csum);
                } else {
                    out.missing.push(csum);
                }
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("opening ostree object {csum}")),
        };
        out.files += 1;
        if *size < 4096 {
            out.already_shared += 1;
            continue;
        }
        let shared = match share {
            Some(policy) => {
                match reflink::share_identical(&src, &dst, policy).with_context(|| {
                    format!("sharing ostree object {csum} with its composefs object")
                })? {
                    Method::Reflinked => {
                        out.reflinked += 1;
                        true
                    }
                    Method::AlreadyShared => {
                        out.already_shared += 1;
                        true
                    }
                    Method::Copied => false,
                }
            }
            None => {
                let s = reflink::already_shared(&src, &dst);
                out.already_shared += u64::from(s);
                s
            }
        };
        if shared {
            cache.mark_shared(&key);
        } else {
            out.unshared += 1;
            out.unshared_bytes += size;
            cache.mark_unshared(&key);
        }
    }
    Ok(out)
}

/// Runs `set-unified` on an ostree host.
pub async fn set_unified(
    sysroot: &Sysroot,
    opts: &SetUnifiedOpts,
    progress: Progress,
) -> Result<SetUnifiedOutcome> {
    let os = super::load(sysroot)?;
    let _lock = super::lock_and_migrate(sysroot, &os)?;
    let repo = os.repo();
    if opts.target == Target::Composefs {
        if ostree_repo::is_bound(&repo) {
            return Ok(SetUnifiedOutcome::NoOp {
                message: "this ostree host is already bound to composefs".into(),
            });
        }
        ostree_repo::bind(&repo)?;
        return Ok(SetUnifiedOutcome::Bound {
            message: "bound to composefs: the next upgrade pulls into composefs/ and synthesizes its ostree commit from it (each file one copy, shared by reflinks); the booted deployment is unchanged"
                .into(),
        });
    }
    let Some(policy) = opts.mode.policy() else {
        bail!("set-unified full needs a mode: enabled or enabled-with-copy");
    };
    let probe = unified::probe_reflinks(sysroot)?;
    opts.mode.require_reflinks(&probe, sysroot.path())?;
    let live = live_commits(sysroot, &os)?;
    if live.is_empty() {
        bail!("no deployment: nothing to unify");
    }
    if unified::unified_mode(sysroot)? == Some(opts.mode)
        && ostree_repo::is_bound(&repo)
        && has_composefs(sysroot)?
        && all_in_store(sysroot, composefs_repo::open(sysroot)?.as_ref(), &live)?
    {
        return Ok(SetUnifiedOutcome::AlreadyUnified {
            mode: opts.mode,
            images: live.iter().map(live_image).collect(),
        });
    }
    crashpoint::hit("ostree-set-unified:start");
    containers_storage::ensure_ostree_layout(sysroot)?;
    let (cfs, _) = composefs_repo::init(sysroot)?;
    let fetch = FetchConfig {
        no_boot_image: true,
        ..opts.fetch.clone()
    };
    let mut cache = ChecksumCache::load(sysroot);
    let mut reports = vec![];
    let mut messages = vec![];
    for l in &live {
        progress::step(
            &progress,
            format!("{} image {} ({})", l.role, l.image, l.digest),
        );
        let m = ensure_in_composefs(&cfs, l, &fetch, &progress).await?;
        crashpoint::hit("ostree-set-unified:after-composefs");
        progress::step(
            &progress,
            "Sharing the ostree objects' extents with composefs",
        );
        let sharing = walk_objects(sysroot, &cfs, &m, &mut cache, Walk::Share(policy))?;
        cache.save(sysroot)?;
        if !sharing.missing.is_empty() {
            bail!(
                "the {} commit {} lacks {} content objects (run `internals fsck images --repair`)",
                l.role,
                &l.commit[..12],
                sharing.missing.len()
            );
        }
        crashpoint::hit("ostree-set-unified:after-share");
        let registry = (m != l.digest).then(|| pull::RegistryManifest {
            digest: l.digest.clone(),
            bytes: l.manifest_json.clone().unwrap_or_default().into_bytes(),
        });
        let r = unified::import_into_store(
            sysroot,
            &cfs,
            &m,
            Some(&l.image),
            NameRule::IfFree,
            policy,
            &probe,
            &progress,
            registry.as_ref(),
        )
        .await
        .with_context(|| format!("bringing {} into containers-storage", l.digest))?;
        let msg = format!(
            "{}; ostree: {} objects share their composefs object ({} newly), {} hold a copy",
            unified::import_message(opts.mode, &probe, &r),
            sharing.reflinked + sharing.already_shared,
            sharing.reflinked,
            sharing.unshared
        );
        progress::step(&progress, msg.clone());
        messages.push(msg);
        reports.push(r);
        crashpoint::hit("ostree-set-unified:after-image");
    }
    if !all_in_store(sysroot, &cfs, &live)? {
        bail!("an image is still missing from containers-storage");
    }
    crashpoint::hit("ostree-set-unified:before-flag");
    if !ostree_repo::is_bound(&repo) {
        ostree_repo::bind(&repo)?;
    }
    unified::write_flag(sysroot, opts.mode)?;
    crashpoint::hit("ostree-set-unified:after-flag");
    crate::fs::xfs_prealloc::trim_quietly(sysroot);
    Ok(SetUnifiedOutcome::Unified {
        mode: opts.mode,
        reflinks: probe.supported,
        filesystem: probe.describe(),
        images: reports,
        messages,
    })
}

fn live_image(l: &LiveCommit) -> LiveImage {
    LiveImage {
        manifest_digest: l.digest.clone(),
        image: l.image.to_string(),
        role: l.role.clone(),
        deployment_id: l.deployment.clone(),
    }
}

/// Whether every live image is in composefs and whole in the store.
pub fn all_in_store(sysroot: &Sysroot, cfs: &Repo, live: &[LiveCommit]) -> Result<bool> {
    for l in live {
        let Some(m) = composefs_digest_of(cfs, &l.digest)? else {
            return Ok(false);
        };
        let img = composefs_repo::open_image(cfs, &m)?;
        if !unified::image_in_store(sysroot, img.config_digest().as_ref())? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_keeps_the_repository_and_drops_the_tag() {
        let d = "sha256:abc";
        let p = |s: &str| pinned(&ImageRef::parse(s).unwrap(), d).to_string();
        assert_eq!(
            p("docker://127.0.0.1:5000/os:v1"),
            "docker://127.0.0.1:5000/os@sha256:abc"
        );
        assert_eq!(p("docker://quay.io/a/b"), "docker://quay.io/a/b@sha256:abc");
        assert_eq!(
            p("docker://quay.io/a/b@sha256:old"),
            "docker://quay.io/a/b@sha256:abc"
        );
        assert_eq!(p("oci:/srv/os:v1"), "oci:/srv/os:v1");
    }
}
