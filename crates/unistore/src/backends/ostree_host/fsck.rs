//! `internals fsck [images]` on an ostree host. Reads only: libostree's
//! `fsck_object` re-hashes each object every live commit and image ref
//! reaches (what `ostree fsck` does, without its marking of partial
//! commits), then the boot entries, the deployments and the images.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use ostree::gio;

use super::name;
use crate::command::fsck::{
    DeploymentReport, EntryReport, FsckOpts, FullReport, ImageReport, ImagesReport, RepoReport,
    Verdict, all_ok,
};
use crate::stores::ostree_repo;
use crate::stores::ostree_repo::layers;
use crate::sysroot::{ENTRIES_DIR, Sysroot};
use crate::util;

/// Checks every object `commits` reach. Returns the report and the commits
/// found whole.
fn check_repo(repo: &ostree::Repo, commits: &BTreeSet<String>) -> (RepoReport, BTreeSet<String>) {
    let mut r = RepoReport {
        store: "ostree".into(),
        content_verified: true,
        ..Default::default()
    };
    let mut whole = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let none = gio::Cancellable::NONE;
    for c in commits {
        let objs = match repo.traverse_commit(c, 0, none) {
            Ok(o) => o,
            Err(e) => {
                r.missing_objects += 1;
                r.issues
                    .push(format!("commit {}: {e}", &c[..c.len().min(12)]));
                continue;
            }
        };
        let mut ok = true;
        for o in objs {
            let key = format!("{}.{:?}", o.checksum(), o.object_type());
            if !seen.insert(key) {
                continue;
            }
            r.objects_checked += 1;
            if let Err(e) = repo.fsck_object(o.object_type(), o.checksum(), none) {
                ok = false;
                r.objects_corrupted += 1;
                r.issues.push(format!("object {}: {e}", o.checksum()));
            }
        }
        if ok {
            whole.insert(c.clone());
        }
    }
    (r, whole)
}

/// The libostree loader entries: kernel and initrd must exist.
fn check_entries(sysroot: &Sysroot) -> Result<Vec<EntryReport>> {
    let mut out = vec![];
    for f in util::list_names(sysroot.dir(), ENTRIES_DIR)? {
        if !f.ends_with(".conf") {
            continue;
        }
        let text = sysroot.dir().read_to_string(format!("{ENTRIES_DIR}/{f}"))?;
        let mut issues = vec![];
        let mut deployment = None;
        for line in text.lines() {
            let mut it = line.splitn(2, char::is_whitespace);
            let (k, v) = (it.next().unwrap_or(""), it.next().unwrap_or("").trim());
            match k {
                "linux" | "initrd" => {
                    let rel = v.trim_start_matches("/boot").trim_start_matches('/');
                    if !sysroot.join("boot").join(rel).is_file() {
                        issues.push(format!("its {k} {v} does not exist"));
                    }
                }
                "options" => {
                    deployment = v
                        .split_whitespace()
                        .find_map(|a| a.strip_prefix("ostree="))
                        .map(str::to_string);
                }
                _ => {}
            }
        }
        match &deployment {
            None => issues.push("it names no deployment (no ostree= option)".into()),
            Some(p) if std::fs::canonicalize(sysroot.join(p.trim_start_matches('/'))).is_err() => {
                issues.push(format!("its ostree={p} leads nowhere"))
            }
            _ => {}
        }
        out.push(EntryReport {
            file: format!("{ENTRIES_DIR}/{f}"),
            deployment,
            issues,
        });
    }
    Ok(out)
}

/// Runs `internals fsck` on an ostree host.
pub fn fsck_all(sysroot: &Sysroot, opts: FsckOpts) -> Result<FullReport> {
    let os = super::load(sysroot)?;
    let repo = os.repo();
    let deps = os.deployments();
    // Each object is re-hashed once: the images' verdict reuses this walk.
    let (repository, whole) = check_repo(&repo, &checked_commits(&os)?);
    let boot_entries = check_entries(sysroot)?;
    let mut deployments = vec![];
    for d in &deps {
        let mut r = DeploymentReport {
            id: name(d),
            is_live: true,
            manifest_digest: None,
            issues: vec![],
            notes: vec![],
        };
        let dir = sysroot.join(os.deployment_dirpath(d).as_str());
        if !dir.is_dir() {
            r.issues
                .push(format!("its checkout {} does not exist", dir.display()));
        } else if !dir.join("etc").is_dir() {
            r.issues.push("its /etc does not exist".into());
        }
        if let Err(e) = super::deployment_image(d) {
            r.issues.push(format!("{e:#}"));
        }
        match ostree_repo::commit_info(&repo, &d.csum()) {
            Ok(i) => r.manifest_digest = i.manifest_digest,
            Err(e) => r.issues.push(format!("{e:#}")),
        }
        deployments.push(r);
    }
    let images = images_report(sysroot, &os, &whole, opts)?;
    let ok = repository.ok() && all_ok(&boot_entries) && all_ok(&deployments) && images.ok;
    Ok(FullReport {
        repository,
        boot_entries,
        deployments,
        images,
        ok,
    })
}

/// Who uses a commit: its image refs, its deployments, the reference those
/// deployments follow.
type CommitUse = (Vec<String>, Vec<String>, Option<String>);

/// The commits a check walks: every deployment's and every image ref's.
fn checked_commits(os: &ostree::Sysroot) -> Result<BTreeSet<String>> {
    let mut commits: BTreeSet<String> = os
        .deployments()
        .iter()
        .map(|d| d.csum().to_string())
        .collect();
    commits.extend(
        ostree_repo::image_refs(&os.repo())?
            .into_iter()
            .map(|(_, c)| c),
    );
    commits.extend(layers::blob_refs(&os.repo())?.into_iter().map(|(_, c)| c));
    Ok(commits)
}

/// Runs `internals fsck images` on an ostree host. Not bound, each object
/// exists once, so `--repair` has no other copy to rebuild from; bound or
/// unified, the other stores are checked and repaired from one another
/// ([`super::fsck_stores`]), under libostree's sysroot lock.
pub fn fsck_images(sysroot: &Sysroot, opts: FsckOpts) -> Result<ImagesReport> {
    let os = super::load(sysroot)?;
    let _lock = if opts.repair {
        Some(super::lock_and_migrate(sysroot, &os)?)
    } else {
        None
    };
    let (_, whole) = check_repo(&os.repo(), &checked_commits(&os)?);
    let report = images_report(sysroot, &os, &whole, opts)?;
    if opts.repair && report.images.iter().any(|i| i.repaired) {
        // Checked again: what the repair wrote must make the commits whole.
        let (_, whole) = check_repo(&os.repo(), &checked_commits(&os)?);
        let mut again = images_report(
            sysroot,
            &os,
            &whole,
            FsckOpts {
                repair: false,
                ..opts
            },
        )?;
        for (a, b) in again.images.iter_mut().zip(&report.images) {
            a.repaired = b.repaired;
            a.repairs = b.repairs.clone();
        }
        return Ok(again);
    }
    Ok(report)
}

/// The images' verdict, given the commits found whole.
fn images_report(
    sysroot: &Sysroot,
    os: &ostree::Sysroot,
    whole: &BTreeSet<String>,
    opts: FsckOpts,
) -> Result<ImagesReport> {
    let repo = os.repo();
    let mut classic = vec![];
    let booted = super::deployments(sysroot, os)
        .1
        .and_then(|i| os.deployments().get(i).map(name));
    // commit -> (refs, deployments)
    let mut by_commit: BTreeMap<String, CommitUse> = BTreeMap::new();
    for (r, c) in ostree_repo::image_refs(&repo)? {
        by_commit.entry(c).or_default().0.push(r);
    }
    for d in os.deployments() {
        let e = by_commit.entry(d.csum().to_string()).or_default();
        e.1.push(name(&d));
        if let Ok(img) = super::deployment_image(&d) {
            e.2 = Some(img.to_string());
        }
    }
    let mut images = vec![];
    for (commit, (refs, deps, reference)) in by_commit {
        let info = ostree_repo::commit_info(&repo, &commit);
        let mut r = ImageReport {
            name: reference
                .clone()
                .or_else(|| refs.first().cloned())
                .unwrap_or_else(|| commit.clone()),
            tags: refs.clone(),
            deployments: deps.clone(),
            is_live: !deps.is_empty(),
            in_ostree: Some(whole.contains(&commit)),
            ..Default::default()
        };
        match info {
            Ok(i) => match i.manifest_digest {
                Some(m) => {
                    classic.push(i.composefs_manifest.is_none());
                    r.manifest_digest = m
                }
                None => r.issues.push(format!(
                    "commit {commit} records no image (no ostree.manifest-digest)"
                )),
            },
            Err(e) => r.issues.push(format!("{e:#}")),
        }
        classic.resize(images.len() + 1, false);
        if !whole.contains(&commit) {
            r.issues.push(format!(
                "commit {} is not whole in the ostree repository",
                &commit[..12]
            ));
        }
        match layers::blob_refs_of(&repo, &commit) {
            Ok(want) => {
                let missing: Vec<&String> = want
                    .iter()
                    .filter(|b| !matches!(repo.resolve_rev(b, true), Ok(Some(_))))
                    .collect();
                if !missing.is_empty() {
                    r.notes.push(format!(
                        "{} of its {} layer commits are missing (written by an older version): released bootc cannot read it until the next writing command or upgrade writes them",
                        missing.len(),
                        want.len()
                    ));
                }
            }
            Err(e) => r.issues.push(format!("{e:#}")),
        }
        if deps.is_empty() {
            r.notes
                .push("no deployment uses it (`internals gc` removes its ref)".into());
        } else if refs.is_empty() {
            r.notes
                .push("its deployments keep it; no image ref names it".into());
        }
        images.push(r);
    }
    let stores =
        super::fsck_stores::check(sysroot, os, &mut images, &classic, booted.as_deref(), opts)?;
    let mut issues = stores.issues;
    for n in stores.notes {
        tracing::info!("{n}");
    }
    issues.dedup();
    let store_path = crate::stores::containers_storage::store_path(sysroot);
    let ok = images.iter().all(|i| i.ok()) && issues.is_empty();
    Ok(ImagesReport {
        unified_storage_enabled: stores.mode.is_some(),
        unified_mode: stores.mode,
        binding: stores.binding,
        reflinks_supported: crate::verify::reflinks_supported(&sysroot.join(ostree_repo::REPO_DIR)),
        containers_storage: crate::command::fsck::StoreReport {
            exists: store_path.is_dir(),
            path: store_path,
            issues: vec![],
        },
        images,
        issues,
        ok,
    })
}
