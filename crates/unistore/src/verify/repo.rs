//! One image in the composefs repository: manifest, config, layers, the
//! objects they reference, EROFS images; restoring an object.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use composefs::fsverity::{FsVerityHashValue, FsVerityHasher};
use rustix::fs::{AtFlags, FileType};
use sha2::{Digest, Sha256};

use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::stores::containers_storage::format as cfmt;
use crate::stores::containers_storage::writer;
use crate::stores::tar_walk::{self, Body, Entry, LayerVisitor};
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};

use super::memo::{LayerFindings, LayerMemo};
use crate::util::short_digest;
use crate::verify::memo::BadObject;

/// What the repository says about one image.
#[derive(Debug, Default)]
pub struct CfsCheck {
    pub problems: Vec<String>,
    pub config_digest: Option<String>,
    pub config_json: Option<Vec<u8>>,
    pub diff_ids: Vec<String>,
    pub bad_objects: Vec<BadObject>,
}

impl CfsCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.bad_objects.is_empty()
    }
}

/// Checks a layer's splitstream and the objects it references.
struct LayerCheck {
    /// `composefs/objects`, opened.
    objects: File,
    diff_id: String,
    verify: bool,
    sha: Sha256,
    hash_complete: bool,
    bad: Vec<BadObject>,
    buf: Vec<u8>,
}

impl LayerVisitor for LayerCheck {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.sha.update(bytes);
        Ok(())
    }

    fn entry(&mut self, e: &Entry, body: Body<'_>) -> Result<()> {
        match body {
            Body::Empty => {}
            Body::Inline(b) => self.sha.update(b),
            Body::External(id) => {
                let bad = |missing| BadObject {
                    id: id.clone(),
                    path: e.rel_path().unwrap_or_default(),
                    diff_id: self.diff_id.clone(),
                    size: e.size,
                    missing,
                };
                let rel = id.to_object_pathname();
                if !self.verify {
                    // Without reading it: there, a regular file of the size
                    // the layer gives.
                    match rustix::fs::statat(&self.objects, &rel, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st)
                            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                                && st.st_size as u64 == e.size => {}
                        Ok(_) => self.bad.push(bad(false)),
                        Err(_) => self.bad.push(bad(true)),
                    }
                    self.hash_complete = false;
                    return Ok(());
                }
                let mut f = match cfmt::open_noatime_at(&self.objects, Path::new(&rel)) {
                    Ok(f) => f,
                    Err(_) => {
                        self.bad.push(bad(true));
                        self.hash_complete = false;
                        return Ok(());
                    }
                };
                {
                    let mut h = FsVerityHasher::<ObjectId, 12>::new();
                    let mut n = 0u64;
                    loop {
                        let got = f.read(&mut self.buf)?;
                        if got == 0 {
                            break;
                        }
                        h.write_all(&self.buf[..got])?;
                        self.sha.update(&self.buf[..got]);
                        n += got as u64;
                    }
                    if h.digest() != *id || n != e.size {
                        self.bad.push(bad(false));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One layer's splitstream and the objects it references.
fn check_layer(
    repo: &Repo,
    objects: &Path,
    diff_id: &str,
    verity: &ObjectId,
    verify: bool,
) -> LayerFindings {
    let objects = match File::open(objects) {
        Ok(f) => f,
        Err(e) => {
            return LayerFindings {
                problems: vec![format!("{} cannot be opened: {e}", objects.display())],
                bad: vec![],
            };
        }
    };
    let mut lc = LayerCheck {
        objects,
        diff_id: diff_id.to_string(),
        verify,
        sha: Sha256::new(),
        hash_complete: true,
        bad: vec![],
        buf: vec![0u8; 1 << 20],
    };
    let mut out = LayerFindings::default();
    match tar_walk::walk_layer(repo, diff_id, Some(verity), &mut lc) {
        Ok(()) => {
            if verify && lc.hash_complete && lc.bad.is_empty() {
                let actual = format!("sha256:{}", hex::encode(lc.sha.finalize()));
                if actual != diff_id {
                    out.problems.push(format!(
                        "layer {diff_id} reassembled from the composefs repository has digest {actual}"
                    ));
                }
            }
            out.bad = lc.bad;
        }
        Err(e) => out.problems.push(format!(
            "layer {diff_id} cannot be read from the composefs repository: {e:#}"
        )),
    }
    out
}

/// fs-verity digest of a whole file.
pub fn verity_of(f: &mut File) -> Result<(ObjectId, u64)> {
    let mut h = FsVerityHasher::<ObjectId, 12>::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.write_all(&buf[..got])?;
        n += got as u64;
    }
    Ok((h.digest(), n))
}

pub fn check_composefs(
    repo: &Repo,
    objects: &Path,
    manifest_digest: &str,
    deployments: &[String],
    verify: bool,
    memo: &LayerMemo,
) -> CfsCheck {
    let mut c = CfsCheck::default();
    let img = match composefs_repo::open_image(repo, manifest_digest) {
        Ok(i) => i,
        Err(e) => {
            c.problems.push(format!(
                "the manifest is missing or damaged in the composefs repository: {e:#}"
            ));
            return c;
        }
    };
    let config_digest = img.config_digest().to_string();
    c.config_digest = Some(config_digest.clone());
    match img.read_config_json(repo) {
        Ok(json) => {
            let actual = cfmt::sha256_digest(&json);
            if actual != config_digest {
                c.problems.push(format!(
                    "the config {config_digest} is damaged in the composefs repository (its digest is {actual})"
                ));
            } else {
                c.config_json = Some(json);
            }
        }
        Err(e) => c.problems.push(format!(
            "the config {config_digest} cannot be read from the composefs repository: {e:#}"
        )),
    }
    c.diff_ids = img.layer_diff_ids().iter().map(|s| s.to_string()).collect();
    if c.diff_ids.is_empty() {
        c.problems.push("the config lists no layers".into());
    }
    for diff_id in c.diff_ids.clone() {
        let Some(verity) = img.layer_verity(&diff_id).cloned() else {
            c.problems.push(format!(
                "layer {diff_id} is not linked from the config in the composefs repository"
            ));
            continue;
        };
        let findings = memo.composefs_layer((diff_id.clone(), verity.to_hex(), verify), || {
            check_layer(repo, objects, &diff_id, &verity, verify)
        });
        c.problems.extend(findings.problems);
        c.bad_objects.extend(findings.bad);
    }
    // EROFS images linked to the image, and each deployment's boot image.
    let mut erofs: BTreeSet<String> = img
        .all_erofs_images()
        .into_iter()
        .map(|l| l.id.to_hex())
        .collect();
    for d in deployments {
        match ObjectId::from_hex(d) {
            Ok(id) if img.has_erofs_id(&id) => {}
            Ok(_) => c.problems.push(format!(
                "the boot image of deployment {} is not linked to the image (the repository GC would remove it)",
                short_digest(d)
            )),
            Err(_) => c.problems.push(format!("deployment id {d} is not a digest")),
        }
        erofs.insert(d.clone());
    }
    for id in erofs {
        match repo.open_image(&id) {
            Ok(_) => {
                let image_path = objects.join("../images").join(&id);
                if verify {
                    match cfmt::open_noatime(&image_path)
                        .map_err(anyhow::Error::from)
                        .and_then(|mut f| verity_of(&mut f))
                    {
                        Ok((actual, _)) if actual.to_hex() == id => {}
                        Ok(_) => c.problems.push(format!(
                            "EROFS image {} is damaged (its content does not match its digest)",
                            short_digest(&id)
                        )),
                        Err(e) => c.problems.push(format!(
                            "EROFS image {} cannot be read: {e:#}",
                            short_digest(&id)
                        )),
                    }
                }
            }
            Err(e) => c.problems.push(format!(
                "EROFS image {} is missing from the composefs repository: {e:#}",
                short_digest(&id)
            )),
        }
    }
    c
}

/// Puts the content of `src` (reflinked where possible) in place of object
/// `id`, after checking its digest; replaces a damaged file atomically.
/// Returns whether the content was reflinked.
pub fn restore_object(sysroot: &Sysroot, repo: &Repo, id: &ObjectId, src: &Path) -> Result<bool> {
    let objdir = sysroot
        .join(COMPOSEFS_DIR)
        .join("objects")
        .join(id.to_object_dir());
    cfmt::ensure_dir(&objdir, 0o755)?;
    let pathname = id.to_object_pathname();
    let base = pathname.rsplit('/').next().unwrap_or(&pathname);
    let dest = objdir.join(base);
    let tmp = objdir.join(format!(".unistore-restore-{base}"));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> Result<bool> {
        let s = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut d = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let reflinked = match rustix::fs::ioctl_ficlone(&d, &s) {
            Ok(()) => true,
            Err(e) if writer::reflink_unsupported(e) => {
                std::io::copy(&mut &s, &mut d)?;
                false
            }
            Err(e) => return Err(std::io::Error::from(e)).context("FICLONE"),
        };
        rustix::fs::fchmod(&d, rustix::fs::Mode::from_raw_mode(0o644))?;
        d.sync_all()?;
        let mut check = File::open(&tmp)?;
        let (actual, _) = verity_of(&mut check)?;
        if actual != *id {
            bail!("{} does not hold the object's content", src.display());
        }
        if !repo.is_insecure() {
            composefs::fsverity::enable_verity_raw::<ObjectId>(&check)
                .map_err(|e| anyhow::anyhow!("enabling fs-verity: {e:?}"))?;
        }
        drop(check);
        std::fs::rename(&tmp, &dest)?;
        File::open(&objdir)?.sync_all()?;
        Ok(reflinked)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
