//! `internals fsck [images]` on a composefs host: checks the host's storage and, with
//! `--repair`, fixes what can be fixed from another copy on the host.
//!
//! Host images are the manifests tagged `localhost/bootc-*` in the composefs
//! repository and the manifests named by live boot entries (entry ->
//! `composefs=<id>` -> `state/deploy/<id>/<id>.origin` -> manifest digest).
//! For each:
//!
//! * in the composefs repository: the manifest and config (their sha256),
//!   every layer's splitstream and the objects it references, the EROFS
//!   images (the boot image of each deployment is the deployment id and is
//!   linked to the image); with `verify_content`, every object's fs-verity
//!   digest is recomputed and each layer reassembled to check its diff-id;
//! * live: named by a live boot entry (a tag no entry uses is a note: the
//!   GC removes it), and tagged (a live image without its tag is no GC root);
//! * on a unified host (`composefs/bootc.json`), in the host
//!   containers-storage with the same image id (config digest), the same
//!   chain of layers (diff-ids) whole, and the config and manifest; with
//!   `verify_content`, each layer reassembled from its tar-split and `diff`
//!   gives its diff-id; where the filesystem has reflinks, every store file
//!   holding an object's content shares that object's extents (one physical
//!   copy; a file with its own copy is a note with a count and bytes).
//!
//! Without `repair` nothing on disk changes: no lock files are created, the
//! store's locks are taken shared and only when they exist, the sysroot lock
//! is not taken, and reflink support is read from the filesystem instead of
//! probed.
//!
//! With `repair` (under the sysroot lock): an object missing or damaged in
//! the repository is restored from a store file with the same content
//! (fs-verity digest recomputed before it is put in place), a live image's
//! missing tag is added back, and an image missing or damaged in the store
//! of a unified host is rewritten from the repository by the native writer
//! ([`crate::stores::containers_storage::writer`]) and recorded as unistore's in
//! [`crate::unified::RECORD_FILE`] like a unified pull (so the store GC
//! prunes it once no deployment uses it); store files that hold their own
//! copy are made to share the objects' extents (the unified share pass,
//! `FIDEDUPERANGE`). Each repaired image is checked again.

mod images;

pub use images::fsck_images;

use anyhow::Result;

use crate::command::fsck::all_ok;
use crate::command::fsck::{
    DeploymentReport, EntryReport, FsckOpts, FullReport, RepoReport, Verdict,
};
use crate::deployment;
use crate::deployment::host_state::HostState;
use crate::stores::composefs_repo;
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};
use crate::util::short_digest;

/// Checks the repository's objects and streams (`verify_content`: re-hash
/// every object; else structure only).
async fn check_repository(sysroot: &Sysroot, verify: bool) -> Result<RepoReport> {
    let mut r = RepoReport {
        content_verified: verify,
        ..Default::default()
    };
    if !sysroot.dir().try_exists(COMPOSEFS_DIR)? {
        r.issues.push(format!(
            "there is no composefs repository ({COMPOSEFS_DIR})"
        ));
        return Ok(r);
    }
    let repo = composefs_repo::open(sysroot)?;
    let f = if verify {
        repo.fsck().await?
    } else {
        repo.fsck_metadata_only().await?
    };
    r.objects_checked = f.objects_checked();
    r.objects_corrupted = f.objects_corrupted();
    r.streams_checked = f.streams_checked();
    r.streams_corrupted = f.streams_corrupted();
    r.images_checked = f.images_checked();
    r.missing_objects = f.missing_objects();
    r.issues = f
        .errors()
        .iter()
        .map(|e| e.to_string().trim_start_matches("fsck: ").to_string())
        .collect();
    Ok(r)
}

fn check_entries(sysroot: &Sysroot, host: &HostState) -> Result<Vec<EntryReport>> {
    let prefix = sysroot.boot_path_prefix()?;
    let boot = sysroot.boot_root_path().join(sysroot.kernels_dir());
    let mut out = vec![];
    let all = host
        .entries
        .iter()
        .map(|e| (sysroot.entries_dir(), e))
        .chain(
            host.staged_entries
                .iter()
                .map(|e| (sysroot.staged_entries_dir(), e)),
        );
    for (dir, e) in all {
        let mut issues = vec![];
        for (what, p) in [("kernel", &e.linux), ("initrd", &e.initrd)] {
            let rel = p.strip_prefix(prefix).unwrap_or(p).trim_start_matches('/');
            if !boot.join(rel).is_file() {
                issues.push(format!("its {what} {p} does not exist"));
            }
        }
        match e.deployment_id() {
            None => issues.push("it names no deployment (no composefs= option)".into()),
            Some(id) => {
                if !sysroot.dir().try_exists(deployment::state_dir(id))? {
                    issues.push(format!(
                        "its deployment's state directory {} does not exist",
                        deployment::state_dir(id)
                    ));
                }
                if !sysroot
                    .dir()
                    .try_exists(format!("{COMPOSEFS_DIR}/images/{id}"))?
                {
                    issues.push(format!(
                        "its boot image {COMPOSEFS_DIR}/images/{} does not exist",
                        short_digest(id)
                    ));
                }
            }
        }
        out.push(EntryReport {
            file: format!("{dir}/{}", e.file_name),
            deployment: e.deployment_id().map(str::to_string),
            issues,
        });
    }
    // A marker naming the deployment the menu already boots first is a
    // finalize interrupted after its swap: the next finalize (or writing
    // command) only removes it; not a problem (found by the crash walk).
    if let Some(m) = &host.marker
        && host.staged_entry().is_none()
        && host.entries.first().and_then(|e| e.deployment_id()) != Some(m.depl_id.as_str())
    {
        out.push(EntryReport {
            file: sysroot.staged_entries_dir().to_string(),
            deployment: Some(m.depl_id.clone()),
            issues: vec![format!(
                "the staged-deployment marker names {} but no staged entry does",
                short_digest(&m.depl_id)
            )],
        });
    }
    Ok(out)
}

fn check_deployments(sysroot: &Sysroot, host: &HostState) -> Result<Vec<DeploymentReport>> {
    let live = host.live_ids();
    let repo = composefs_repo::open(sysroot).ok();
    let mut out = vec![];
    for name in crate::util::list_names(sysroot.dir(), crate::sysroot::STATE_DEPLOY_DIR)? {
        if let Some(id) = name.strip_prefix(".tmp-") {
            out.push(DeploymentReport {
                id: id.to_string(),
                is_live: false,
                manifest_digest: None,
                issues: vec![],
                notes: vec!["an interrupted deployment (`internals gc` removes it)".into()],
            });
            continue;
        }
        if !deployment::is_deployment_id(&name) {
            continue;
        }
        let mut d = DeploymentReport {
            id: name.clone(),
            is_live: live.contains(&name),
            manifest_digest: None,
            issues: vec![],
            notes: vec![],
        };
        match deployment::read_origin(sysroot, &name) {
            Err(e) => d.issues.push(format!("{e:#}")),
            Ok(origin) => match repo
                .as_ref()
                .map(|r| deployment::manifest_digest(sysroot, r, &name, &origin))
            {
                Some(Ok(m)) => d.manifest_digest = Some(m),
                Some(Err(e)) => d.issues.push(format!("{e:#}")),
                None => d
                    .issues
                    .push("no composefs repository to resolve its image".into()),
            },
        }
        if !d.is_live {
            d.notes
                .push("no boot entry uses it (`internals gc` removes it)".into());
        }
        out.push(d);
    }
    for id in &live {
        if !out.iter().any(|d| &d.id == id) {
            out.push(DeploymentReport {
                id: id.clone(),
                is_live: true,
                manifest_digest: None,
                issues: vec![format!(
                    "a boot entry uses it but {} does not exist",
                    deployment::state_dir(id)
                )],
                notes: vec![],
            });
        }
    }
    Ok(out)
}

/// Runs `internals fsck`: the repository, the boot entries, the state
/// directories and the images (repairing images only).
pub async fn fsck_all(sysroot: &Sysroot, opts: FsckOpts) -> Result<FullReport> {
    let repository = check_repository(sysroot, opts.verify_content).await?;
    let host = HostState::read(sysroot)?;
    let boot_entries = check_entries(sysroot, &host)?;
    let deployments = check_deployments(sysroot, &host)?;
    let images = fsck_images(sysroot, opts)?;
    // Repairs may have fixed what the repository check saw.
    let repository = if images.images.iter().any(|i| i.repaired) && !repository.issues.is_empty() {
        check_repository(sysroot, opts.verify_content).await?
    } else {
        repository
    };
    let ok = repository.ok() && all_ok(&boot_entries) && all_ok(&deployments) && images.ok;
    Ok(FullReport {
        repository,
        boot_entries,
        deployments,
        images,
        ok,
    })
}
