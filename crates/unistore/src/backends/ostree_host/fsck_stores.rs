//! `fsck images` of a bound or unified ostree host: each live image in
//! each store it should be in, the one-copy promise between them, and the
//! checksum cache.
//!
//! * bound (`[composefs] unified=true`): every live image in the composefs
//!   repository, except a booted classic commit, which is `pending` (the
//!   next upgrade synthesizes it) and is not a failure; each ostree content
//!   object of an image in composefs compared with its composefs object:
//!   missing is a failure, holding its own copy a note with count and bytes.
//! * unified (`composefs/bootc.json`): also whole in the host
//!   containers-storage, its files sharing the composefs objects' extents.
//! * the checksum cache: every entry whose ostree object exists must name
//!   an object with the key's owner, mode and size (with
//!   `--verify-content`, the checksum recomputed from the composefs object).
//!
//! `--repair` (under libostree's sysroot lock): a missing ostree object is
//! written from its composefs object (its checksum recomputed and compared),
//! unshared objects and store files share again, a missing store image is
//! written by the native writer, a wrong cache entry is dropped.

use anyhow::Result;
use composefs::fsverity::FsVerityHashValue;
use std::os::unix::fs::MetadataExt;

use super::unified::{Walk, composefs_digest_of, has_composefs, walk_objects};
use crate::command::fsck::{Binding, FsckOpts, ImageReport};
use crate::fs::reflink::Policy;
use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::stores::containers_storage::{self, writer::WriteOptions};
use crate::stores::ostree_repo::checksum_cache::{self, ChecksumCache};
use crate::stores::ostree_repo::objects::{ContentWriter, object_path};
use crate::stores::ostree_repo::{self, REPO_DIR};
use crate::sysroot::Sysroot;
use crate::unified::{self, UnifiedMode};
use crate::verify::{LayerMemo, check_composefs_image, check_image_sharing, write_into_store};

/// What the stores check adds to the images report.
pub struct StoresCheck {
    /// How the stores are bound.
    pub binding: Binding,
    /// The unified mode, when marked.
    pub mode: Option<UnifiedMode>,
    /// Problems tied to no single image.
    pub issues: Vec<String>,
    /// Remarks tied to no single image.
    pub notes: Vec<String>,
}

fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Checks (and with `opts.repair`, repairs) the stores of the live images
/// in `images` (reports made from the ostree repository, one per commit);
/// `classic[i]` says whether image `i`'s commit is classic, `booted` names
/// the booted deployment.
pub fn check(
    sysroot: &Sysroot,
    os: &ostree::Sysroot,
    images: &mut [ImageReport],
    classic: &[bool],
    booted: Option<&str>,
    opts: FsckOpts,
) -> Result<StoresCheck> {
    let repo = os.repo();
    let bound = ostree_repo::is_bound(&repo);
    let mode = unified::unified_mode(sysroot)?;
    let binding = match (bound, mode) {
        (_, Some(_)) => Binding::Unified,
        (true, None) => Binding::BoundOnly,
        (false, None) => Binding::Disabled,
    };
    let mut out = StoresCheck {
        binding,
        mode,
        issues: vec![],
        notes: vec![],
    };
    if binding == Binding::Disabled {
        return Ok(out);
    }
    let cfs = if has_composefs(sysroot)? {
        Some(composefs_repo::open(sysroot)?)
    } else {
        None
    };
    let policy = match mode {
        Some(UnifiedMode::Enabled) => Policy::ReflinkOnly,
        _ => Policy::ReflinkOrCopy,
    };
    let reflinks = crate::verify::reflinks_supported(&sysroot.join(REPO_DIR));
    let mut cache = ChecksumCache::load(sysroot);
    let store = containers_storage::store_path(sysroot);
    let memo = LayerMemo::default();
    for (i, r) in images.iter_mut().enumerate().filter(|(_, r)| r.is_live) {
        let classic = classic.get(i).copied().unwrap_or(false);
        let m = match &cfs {
            Some(c) => composefs_digest_of(c, &r.manifest_digest)?,
            None => None,
        };
        let pending_ok = classic && mode.is_none();
        let Some((cfs, m)) = cfs.as_ref().zip(m) else {
            if pending_ok {
                r.notes.push(pending_note(r, booted));
            } else {
                r.issues.push(
                    "not in the composefs repository (`image set-unified full` pulls it again)"
                        .into(),
                );
            }
            continue;
        };
        // The image in composefs; objects restored from the ostree objects
        // the cache pairs them with, or from the store.
        let repo_path = sysroot.join(REPO_DIR);
        let sources = |id: &ObjectId| -> Vec<std::path::PathBuf> {
            let prefix = format!("{}:", id.to_hex());
            cache
                .entries()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, c)| repo_path.join(object_path(c)))
                .filter(|p| p.is_file())
                .collect()
        };
        r.in_composefs = check_composefs_image(sysroot, cfs, &m, opts, sources, r);
        if !r.in_composefs {
            continue;
        }
        if classic {
            r.notes.push(pending_note(r, booted));
        }
        // The ostree objects and the composefs objects.
        let walk = if opts.repair {
            Walk::Repair(policy)
        } else {
            Walk::Check
        };
        match walk_objects(sysroot, cfs, &m, &mut cache, walk) {
            Ok(s) => {
                if !s.missing.is_empty() {
                    r.issues.push(format!(
                        "ostree: {} content object(s) missing (`--repair` writes them from composefs)",
                        s.missing.len()
                    ));
                }
                if !s.restored.is_empty() {
                    r.repaired = true;
                    r.repairs.push(format!(
                        "ostree: {} content object(s) written again from their composefs objects",
                        s.restored.len()
                    ));
                }
                if s.reflinked > 0 {
                    r.repaired = true;
                    r.repairs.push(format!(
                        "ostree: {} object(s) share their composefs object's extents again",
                        s.reflinked
                    ));
                }
                if reflinks && s.unshared > 0 && (!classic || mode.is_some()) {
                    r.notes.push(format!(
                        "ostree: {} object(s) ({}) hold their own copy instead of sharing the composefs objects' extents{}",
                        s.unshared,
                        human(s.unshared_bytes),
                        if opts.repair { "" } else { " (`--repair` shares them)" }
                    ));
                }
                r.ostree_unshared_files = Some(s.unshared);
                r.ostree_unshared_bytes = Some(s.unshared_bytes);
            }
            Err(e) => r.issues.push(format!(
                "ostree: its objects could not be compared with composefs: {e:#}"
            )),
        }
        if mode.is_none() {
            continue;
        }
        // The host containers-storage.
        let img = composefs_repo::open_image(cfs, &m)?;
        let config = img.config_digest().to_string();
        r.config_digest = Some(config.clone());
        drop(img);
        let mut in_store = unified::image_in_store(sysroot, &config)?;
        if !in_store && opts.repair {
            let wo = WriteOptions {
                names: vec![unified::store_name(&m)],
                allow_copy: policy == Policy::ReflinkOrCopy,
                verify_reused: opts.verify_content,
                check_reused_files: true,
                manifest: None,
            };
            let view = crate::verify::read_store(&store).ok().flatten();
            match write_into_store(sysroot, cfs, &m, &config, view.as_ref(), &wo) {
                Ok(st) => {
                    r.repaired = true;
                    r.repairs.push(format!(
                        "containers-storage: written from the composefs repository ({} layer(s), {} file(s) reflinked)",
                        st.layers_written.len(),
                        st.files_reflinked
                    ));
                    in_store = unified::image_in_store(sysroot, &config)?;
                }
                Err(e) => r
                    .issues
                    .push(format!("containers-storage: could not write it: {e:#}")),
            }
        }
        r.in_containers_storage = in_store;
        if !in_store {
            r.issues.push(format!(
                "not whole in containers-storage {}{}",
                store.display(),
                if opts.repair {
                    ""
                } else {
                    " (`--repair` writes it from composefs)"
                }
            ));
        } else if reflinks {
            let saved = std::mem::replace(&mut r.manifest_digest, m.clone());
            check_image_sharing(sysroot, cfs, &store, mode, opts, &memo, r);
            r.manifest_digest = saved;
        }
    }
    check_cache(sysroot, cfs.as_deref(), opts, &mut out)?;
    if opts.repair {
        cache.save(sysroot)?;
    }
    Ok(out)
}

fn pending_note(r: &ImageReport, booted: Option<&str>) -> String {
    if booted.is_some_and(|b| r.deployments.iter().any(|d| d == b)) {
        "pending: the booted deployment's classic commit; the next upgrade synthesizes its image from composefs".into()
    } else {
        "pending: a classic commit of a deployment that is not booted (a rollback): it stays classic, its files not shared with composefs, until GC removes it".into()
    }
}

/// Every cache entry whose ostree object exists names an object with the
/// key's owner, mode and size; with `verify_content`, the checksum of its
/// composefs object. A wrong entry is a failure (an upgrade would reuse a
/// wrong object); `--repair` drops it.
fn check_cache(
    sysroot: &Sysroot,
    cfs: Option<&Repo>,
    opts: FsckOpts,
    out: &mut StoresCheck,
) -> Result<()> {
    let mut cache = match ChecksumCache::load_strict(sysroot) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => {
            if opts.repair {
                crate::util::remove_all(sysroot.dir(), checksum_cache::CACHE_FILE)?;
                out.notes.push(format!(
                    "checksum cache removed ({e:#}); it is rebuilt as upgrades read files"
                ));
            } else {
                out.issues.push(format!("{e:#} (`--repair` removes it)"));
            }
            return Ok(());
        }
    };
    let repo_dir = sysroot.dir().open_dir(REPO_DIR)?;
    let mut wrong = vec![];
    let mut checked = 0u64;
    for (key, csum) in cache.entries() {
        let Ok(f) = repo_dir.open(object_path(csum)) else {
            continue;
        };
        checked += 1;
        let Some((id, uid, gid, mode)) = checksum_cache::parse_key(key) else {
            wrong.push((key.clone(), "a malformed key".to_string()));
            continue;
        };
        let md = f.into_std().metadata()?;
        if md.uid() != uid || md.gid() != gid || md.mode() != mode {
            wrong.push((
                key.clone(),
                format!("object {csum} has another owner or mode"),
            ));
            continue;
        }
        let Some(cfs) = cfs else { continue };
        let Ok(obj) = ObjectId::from_hex(id) else {
            wrong.push((key.clone(), "a malformed object id".to_string()));
            continue;
        };
        let Ok(src) = cfs.open_object(&obj).map(std::fs::File::from) else {
            continue;
        };
        let size = src.metadata()?.len();
        if size != md.len() {
            wrong.push((key.clone(), format!("object {csum} has another size")));
            continue;
        }
        if opts.verify_content {
            let xattrs = object_xattrs(&sysroot.join(REPO_DIR).join(object_path(csum)))?;
            let meta = crate::stores::ostree_repo::objects::FileMeta {
                uid,
                gid,
                mode,
                xattrs: &xattrs,
            };
            if ContentWriter::checksum(&meta, &src, size)? != *csum {
                wrong.push((
                    key.clone(),
                    format!("the content of its composefs object is not object {csum}"),
                ));
            }
        }
    }
    out.notes.push(format!(
        "checksum cache: {checked} entr{} checked{}",
        if checked == 1 { "y" } else { "ies" },
        if opts.verify_content {
            " (checksums recomputed)"
        } else {
            ""
        }
    ));
    for (key, why) in &wrong {
        if opts.repair {
            cache.remove(key);
        } else {
            out.issues.push(format!(
                "checksum cache entry {key}: {why} (`--repair` drops it)"
            ));
        }
    }
    if opts.repair && !wrong.is_empty() {
        cache.save(sysroot)?;
        out.notes.push(format!(
            "checksum cache: {} wrong entr{} dropped",
            wrong.len(),
            if wrong.len() == 1 { "y" } else { "ies" }
        ));
    }
    Ok(())
}

/// The xattrs of a file, as the commit walk keeps them.
fn object_xattrs(
    path: &std::path::Path,
) -> Result<std::collections::BTreeMap<Box<std::ffi::OsStr>, Box<[u8]>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = std::collections::BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names)?;
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let mut val = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, cname, &mut val)?;
        val.truncate(len);
        out.insert(Box::from(cname), val.into_boxed_slice());
    }
    Ok(out)
}
