//! An encapsulated image's embedded commit, written into an ostree
//! repository as ostree-ext's import writes it: every object under the
//! checksum the layer states, verified.
//!
//! * dirtree, dirmeta, the commit and small files and symlinks go through
//!   libostree with their expected checksum (`write_metadata`,
//!   `write_regfile_inline`, `write_symlink`), which recomputes it;
//! * files whose content is a composefs object are written by unistore's
//!   content writer (a reflink of the object, like every other content
//!   object) after their checksum was computed from that object and
//!   compared with the name; the pair (object, metadata) -> checksum goes
//!   into the host's checksum cache, so the merge commit's writer finds
//!   every file of the commit there and reads none again.
//!
//! In one transaction, with the first layer's blob ref
//! (`ostree/container/blob/<escaped layer digest>`) pointing at the commit
//! and each further ostree layer's (a chunked image) at a commit of its
//! objects as ostree-ext writes one (`docs/ostree-ext-layout.md` section 3:
//! a root 0/0/0755 holding each content object named by its checksum, no
//! metadata, time 0). The caller's merge commit transaction then finds
//! those refs and writes commits only for the plain layers. An image whose
//! ostree layers' refs are all set, the first at its commit (v2 over v1's
//! ostree layers, a re-deploy), is not written again: refs are set only by
//! a transaction that wrote all their objects, and prune keeps what refs
//! reach.

use std::collections::HashSet;

use anyhow::{Context, Result, anyhow, bail};
use cap_std_ext::cap_std::fs::Dir;
use composefs::fsverity::FsVerityHashValue;
use composefs::generic_tree::LeafContent;
use composefs::tree::RegularFile;
use ostree::glib::prelude::Cast;
use ostree::{gio, glib};

use super::objects::{FileObject, ObjectSet};
use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::stores::ostree_repo::checksum_cache::{self, ChecksumCache};
use crate::stores::ostree_repo::layers::{blob_ref, layers_of};
use crate::stores::ostree_repo::objects::{ContentWriter, FileMeta, file_info, xattrs_variant};

/// What [`import`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncapImported {
    /// The embedded commit (the first layer's blob ref points at it).
    pub commit: String,
    /// Content objects the image carries.
    pub files: u64,
    /// Content objects written from composefs objects (reflinked or
    /// copied), and their checksums verified by reading them.
    pub files_written: u64,
    /// Content objects the repository already had with a known checksum.
    pub files_present: u64,
    /// Files read to verify their checksum.
    pub files_read: u64,
    /// Small files and symlinks handed to libostree.
    pub small_objects: u64,
    /// Dirtree and dirmeta objects.
    pub metadata_objects: u64,
    /// Layer blob refs set: the commit's, and one per chunk layer.
    pub layer_refs: u64,
    /// How the content of the files written reached them.
    pub content: crate::fs::reflink::Tally,
}

fn glib_err(what: &str) -> impl FnOnce(glib::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

fn meta_of(f: &FileObject) -> FileMeta<'_> {
    FileMeta {
        uid: f.stat.st_uid,
        gid: f.stat.st_gid,
        mode: (f.stat.st_mode & 0o7777) | f.content.file_type_bits(),
        xattrs: &f.stat.xattrs,
    }
}

/// If the image `composefs_digest` of `cfs` is ostree-encapsulated, writes
/// its embedded commit into `ostree` (opened at `repo_dir`) and its ostree
/// layers' blob refs (named from `manifest_json` and `config_json`, the
/// manifest the merge commit records). `None` for any other image.
pub fn import(
    ostree: &ostree::Repo,
    repo_dir: &Dir,
    cfs: &Repo,
    composefs_digest: &str,
    manifest_json: &str,
    config_json: &str,
    cache: &mut ChecksumCache,
) -> Result<Option<EncapImported>> {
    let img = composefs_repo::open_image(cfs, composefs_digest)?;
    let Some(enc) = super::detect(&img)? else {
        return Ok(None);
    };
    let layers = layers_of(manifest_json, config_json)?;
    for (l, d) in layers.iter().zip(&enc.ostree_layers) {
        if l.diff_id != *d {
            bail!(
                "the manifest's layer {} is not the config's ostree layer {d}",
                l.blob_digest
            );
        }
    }
    let set = ObjectSet::read(cfs, &enc)?;
    let none = gio::Cancellable::NONE;
    // Imported before: nothing to write (see the module documentation).
    let ostree_refs: Vec<String> = layers
        .iter()
        .take(enc.ostree_layers.len())
        .map(|l| blob_ref(&l.blob_digest))
        .collect();
    let mut present = true;
    for (i, r) in ostree_refs.iter().enumerate() {
        let c = ostree.resolve_rev(r, true).map_err(glib_err(r))?;
        present &= c.is_some_and(|c| i > 0 || c == set.commit);
    }
    if present {
        return Ok(Some(EncapImported {
            commit: set.commit.clone(),
            files: set.files.len() as u64,
            files_present: set.files.len() as u64,
            ..Default::default()
        }));
    }
    ostree
        .prepare_transaction(none)
        .map_err(glib_err("starting an ostree transaction"))?;
    let r = (|| -> Result<EncapImported> {
        let mut out = write_objects(ostree, repo_dir, cfs, &set, cache)?;
        for (i, r) in ostree_refs.iter().enumerate() {
            let target = if i == 0 {
                set.commit.clone()
            } else {
                chunk_commit(ostree, &set.layer_files[i])?
            };
            ostree.transaction_set_ref(None, r, Some(&target));
            out.layer_refs += 1;
        }
        Ok(out)
    })();
    match r {
        Ok(out) => {
            ostree
                .commit_transaction(none)
                .map_err(glib_err("committing the ostree transaction"))?;
            Ok(Some(out))
        }
        Err(e) => {
            let _ = ostree.abort_transaction(none);
            Err(e).with_context(|| format!("importing the image's ostree commit {}", enc.commit))
        }
    }
}

fn metadata(
    ostree: &ostree::Repo,
    kind: ostree::ObjectType,
    ty: &str,
    checksum: &str,
    bytes: &[u8],
) -> Result<()> {
    let v = glib::Variant::from_data_with_type(bytes, glib::VariantTy::new(ty)?);
    ostree
        .write_metadata(kind, Some(checksum), &v, gio::Cancellable::NONE)
        .map_err(glib_err(&format!("writing ostree object {checksum}")))?;
    Ok(())
}

/// Every object of `set`, in the caller's transaction.
fn write_objects(
    ostree: &ostree::Repo,
    repo_dir: &Dir,
    cfs: &Repo,
    set: &ObjectSet,
    cache: &mut ChecksumCache,
) -> Result<EncapImported> {
    let none = gio::Cancellable::NONE;
    let mut out = EncapImported {
        commit: set.commit.clone(),
        files: set.files.len() as u64,
        ..Default::default()
    };
    for (c, b) in &set.dirmetas {
        metadata(ostree, ostree::ObjectType::DirMeta, "(uuua(ayay))", c, b)?;
        out.metadata_objects += 1;
    }
    for (c, b) in &set.dirtrees {
        metadata(
            ostree,
            ostree::ObjectType::DirTree,
            "(a(say)a(sayay))",
            c,
            b,
        )?;
        out.metadata_objects += 1;
    }
    let mut external = vec![];
    for (c, f) in &set.files {
        let meta = meta_of(f);
        let xattrs = xattrs_variant(&f.stat.xattrs);
        match &f.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                ostree
                    .write_regfile_inline(
                        Some(c),
                        meta.uid,
                        meta.gid,
                        meta.mode,
                        Some(&xattrs),
                        data,
                        none,
                    )
                    .map_err(glib_err(&format!("writing ostree object {c}")))?;
                out.small_objects += 1;
            }
            LeafContent::Regular(
                RegularFile::External(obj, size) | RegularFile::ExternalNoVerity(obj, size),
            ) => external.push((c.as_str(), f, obj, *size)),
            LeafContent::Symlink(target) => {
                let t = target.to_str().ok_or_else(|| {
                    anyhow!("ostree object {c}: a symlink target that is not UTF-8")
                })?;
                ostree
                    .write_symlink(Some(c), meta.uid, meta.gid, Some(&xattrs), t, none)
                    .map_err(glib_err(&format!("writing ostree object {c}")))?;
                out.small_objects += 1;
            }
            _ => bail!("ostree object {c} is neither a regular file nor a symlink"),
        }
    }
    write_external(repo_dir, cfs, &external, cache, &mut out)?;
    metadata(
        ostree,
        ostree::ObjectType::Commit,
        "(a{sv}aya(say)sstayay)",
        &set.commit,
        &set.commit_bytes,
    )?;
    if let Some(m) = &set.commitmeta {
        let v = glib::Variant::from_data_with_type(m, glib::VariantTy::new("a{sv}")?);
        ostree
            .write_commit_detached_metadata(&set.commit, Some(&v), none)
            .map_err(glib_err("writing the commit's detached metadata"))?;
    }
    Ok(out)
}

/// The content objects backed by composefs objects, on every CPU: a
/// checksum the cache knows (with its object present) is taken as it is,
/// any other is computed from the composefs object and must be the name.
fn write_external(
    repo_dir: &Dir,
    cfs: &Repo,
    work: &[(&str, &FileObject, &ObjectId, u64)],
    cache: &mut ChecksumCache,
    out: &mut EncapImported,
) -> Result<()> {
    let keys: Vec<String> = work
        .iter()
        .map(|(_, f, obj, _)| {
            let m = meta_of(f);
            checksum_cache::key(&obj.to_hex(), m.uid, m.gid, m.mode, m.xattrs)
        })
        .collect();
    let known: HashSet<usize> = (0..work.len())
        .filter(|i| cache.lookup(repo_dir, &keys[*i]).as_deref() == Some(work[*i].0))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Out = (Vec<usize>, u64, u64, crate::fs::reflink::Tally);
    let results: Vec<Result<Out>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<Out> {
                    let mut verified = vec![];
                    let mut writer = ContentWriter::new(repo_dir);
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((c, f, obj, size)) = work.get(i) else {
                            break;
                        };
                        if known.contains(&i) {
                            continue;
                        }
                        let meta = meta_of(f);
                        let src = std::fs::File::from(cfs.open_object(obj).with_context(|| {
                            format!("opening composefs object {}", obj.to_hex())
                        })?);
                        let actual = ContentWriter::checksum(&meta, &src, *size)?;
                        if actual != *c {
                            bail!(
                                "ostree object {c}: the image's content and metadata for it have checksum {actual}"
                            );
                        }
                        writer
                            .write_from_object(&meta, &src, *size, Some(actual))
                            .with_context(|| format!("writing ostree object {c}"))?;
                        verified.push(i);
                    }
                    Ok((verified, writer.written, writer.reused, writer.tally))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a content object thread panicked")))
            })
            .collect()
    });
    out.files_present += known.len() as u64;
    for r in results {
        let (verified, written, reused, tally) = r?;
        out.content.merge(&tally);
        out.files_read += verified.len() as u64;
        out.files_written += written;
        out.files_present += reused;
        for i in verified {
            cache.insert(keys[i].clone(), work[i].0.to_string());
        }
    }
    Ok(())
}

/// The commit ostree-ext gives a chunk layer: a root 0/0/0755 holding each
/// of its content objects, named by checksum; no metadata, time 0.
fn chunk_commit(ostree: &ostree::Repo, files: &[String]) -> Result<String> {
    let none = gio::Cancellable::NONE;
    let empty = std::collections::BTreeMap::new();
    let meta = FileMeta {
        uid: 0,
        gid: 0,
        mode: libc::S_IFDIR | 0o755,
        xattrs: &empty,
    };
    let info = file_info(&meta, 0, None);
    info.set_file_type(gio::FileType::Directory);
    let dirmeta = ostree::create_directory_metadata(&info, None);
    let dirmeta = ostree
        .write_metadata(ostree::ObjectType::DirMeta, None, &dirmeta, none)
        .map_err(glib_err("writing a dirmeta object"))?
        .to_hex();
    let root = ostree::MutableTree::new();
    root.set_metadata_checksum(&dirmeta);
    for c in files {
        root.replace_file(c, c).map_err(glib_err(c))?;
    }
    let tree = ostree
        .write_mtree(&root, none)
        .map_err(glib_err("writing a chunk layer's tree"))?
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("libostree returned a tree that is not a RepoFile"))?;
    Ok(ostree
        .write_commit_with_time(None, None, None, None, &tree, 0, none)
        .map_err(glib_err("writing a chunk layer's commit"))?
        .to_string())
}
