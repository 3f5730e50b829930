//! Deployments: `state/deploy/<id>/` with its `etc/`, `var` link and
//! `<id>.origin`.
//!
//! The room of a composefs host's deployments, one module per concern:
//! * [`create`](mod@create): a pulled image turned into a deployment (state directory,
//!   kernel directory, the entry that will name it);
//! * [`origin`]: the `<id>.origin` file (and the legacy `.imginfo`);
//! * [`etc`]: `/etc` and `/var` materialized from the image;
//! * [`etc_merge`]: the three-way `/etc` merge at finalize;
//! * [`staged`]: the staged-deployment marker, written last;
//! * [`host_state`]: the host as its entries describe it (booted, staged,
//!   rollback).

pub mod create;
pub mod etc;
pub mod etc_merge;
pub mod host_state;
pub mod origin;
pub mod staged;

use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::deployment::origin::{ImgInfoRef, Origin, parse_imginfo};
use crate::fs::reflink::Tally;
use crate::stores::composefs_repo::{self, Repo};
use crate::sysroot::{SHARED_VAR_DIR, STATE_DEPLOY_DIR, Sysroot};
use crate::util;

/// `state/deploy/<id>`.
pub fn state_dir(id: &str) -> String {
    format!("{STATE_DEPLOY_DIR}/{id}")
}

/// Whether `name` looks like a deployment id (hex fs-verity digest).
pub fn is_deployment_id(name: &str) -> bool {
    name.len() >= 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Ids of every state directory (complete or not; temporaries excluded).
pub fn list_state_dirs(sysroot: &Sysroot) -> Result<Vec<String>> {
    Ok(util::list_names(sysroot.dir(), STATE_DEPLOY_DIR)?
        .into_iter()
        .filter(|n| is_deployment_id(n))
        .collect())
}

/// Reads `state/deploy/<id>/<id>.origin`.
pub fn read_origin(sysroot: &Sysroot, id: &str) -> Result<Origin> {
    let path = format!("{}/{id}.origin", state_dir(id));
    let text = sysroot
        .dir()
        .read_to_string(&path)
        .with_context(|| format!("reading {path}"))?;
    Origin::parse(&text).with_context(|| format!("parsing {path}"))
}

/// Replaces `state/deploy/<id>/<id>.origin` (write-temp, fsync, rename):
/// the file is the old one or the new one, never a mix.
pub fn write_origin(sysroot: &Sysroot, id: &str, origin: &Origin) -> Result<()> {
    let path = format!("{}/{id}.origin", state_dir(id));
    util::atomic_write(sysroot.dir(), &path, origin.to_text().as_bytes())
        .with_context(|| format!("writing {path}"))
}

/// The manifest digest of a deployment: from its origin, else from the
/// legacy `.imginfo` (never from the network).
pub fn manifest_digest(
    sysroot: &Sysroot,
    repo: &Repo,
    id: &str,
    origin: &Origin,
) -> Result<String> {
    if let Some(d) = &origin.manifest_digest {
        return Ok(d.clone());
    }
    let path = format!("{}/{id}.imginfo", state_dir(id));
    let text = sysroot.dir().read_to_string(&path).with_context(|| {
        format!("origin of {id} has no manifest_digest and {path} cannot be read")
    })?;
    match parse_imginfo(&text).with_context(|| format!("parsing {path}"))? {
        ImgInfoRef::Manifest(d) => Ok(d),
        ImgInfoRef::Config(c) => composefs_repo::manifest_for_config(repo, &c)?
            .ok_or_else(|| anyhow!("no image in the repository has config {c} (from {path})")),
    }
}

/// What a new deployment directory holds.
pub struct NewDeployment<'a> {
    /// The deployment id.
    pub id: &'a str,
    /// Its origin.
    pub origin: &'a Origin,
    /// The image tree, for `/etc` and the first `/var`.
    pub fs: &'a composefs::tree::FileSystem<composefs_repo::ObjectId>,
    /// The repository holding the tree's objects.
    pub repo: &'a Repo,
    /// The registry's manifest of an image in Docker's format (see
    /// [`read_registry_manifest`]).
    pub registry_manifest: Option<&'a [u8]>,
}

/// The registry's manifest of a deployment's image, kept in its state
/// directory when it is not the repository's (Docker's format).
pub const REGISTRY_MANIFEST_FILE: &str = "registry-manifest.json";

/// The registry's manifest (digest, bytes) a deployment keeps, checked
/// against its origin's `registry_digest`; `None` when it keeps none.
pub fn read_registry_manifest(sysroot: &Sysroot, id: &str) -> Result<Option<(String, Vec<u8>)>> {
    let origin = read_origin(sysroot, id)?;
    let Some(want) = origin.registry_digest else {
        return Ok(None);
    };
    let path = format!("{}/{REGISTRY_MANIFEST_FILE}", state_dir(id));
    let bytes = match sysroot.dir().read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    let got = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    if got != want {
        anyhow::bail!("{path} is not the manifest {want} its origin names (its digest is {got})");
    }
    Ok(Some((want, bytes)))
}

/// Creates `state/deploy/<id>/` through a temporary directory renamed into
/// place: a state dir either is whole or is absent. Returns how the file
/// contents of `/etc` (and of `/var`, when seeded) were written.
pub fn create(sysroot: &Sysroot, d: &NewDeployment<'_>) -> Result<Tally> {
    let dir = sysroot.dir();
    dir.create_dir_all(STATE_DEPLOY_DIR)?;
    let final_rel = state_dir(d.id);
    if dir.try_exists(&final_rel)? {
        anyhow::bail!("deployment {} already exists", d.id);
    }
    let tmp_rel = format!("{STATE_DEPLOY_DIR}/.tmp-{}", d.id);
    util::remove_all(dir, &tmp_rel)?;
    dir.create_dir(&tmp_rel)?;
    let tmp_abs = sysroot.join(&tmp_rel);
    let mut tally = crate::deployment::etc::materialize(d.fs, "/etc", d.repo, &tmp_abs.join("etc"))
        .context("copying the image's /etc")?
        .content;
    // The shared /var is seeded from the first image that needs it.
    if !dir.try_exists(SHARED_VAR_DIR)? {
        let parent = Path::new(SHARED_VAR_DIR).parent().expect("has parent");
        dir.create_dir_all(parent)?;
        let var_tmp = sysroot.join(format!("{SHARED_VAR_DIR}.tmp"));
        util::remove_all(dir, format!("{SHARED_VAR_DIR}.tmp"))?;
        let var = crate::deployment::etc::materialize(d.fs, "/var", d.repo, &var_tmp)
            .context("seeding /var")?;
        tally.merge(&var.content);
        dir.rename(format!("{SHARED_VAR_DIR}.tmp"), dir, SHARED_VAR_DIR)?;
    }
    if let Some(m) = d.registry_manifest {
        util::atomic_write(dir, format!("{tmp_rel}/{REGISTRY_MANIFEST_FILE}"), m)?;
    }
    dir.symlink("../../os/default/var", format!("{tmp_rel}/var"))?;
    util::atomic_write(
        dir,
        format!("{tmp_rel}/{}.origin", d.id),
        d.origin.to_text().as_bytes(),
    )?;
    util::fsync_dir(dir, Some(Path::new(&tmp_rel)))?;
    dir.rename(&tmp_rel, dir, &final_rel)?;
    util::fsync_dir(dir, Some(Path::new(STATE_DEPLOY_DIR)))?;
    Ok(tally)
}
