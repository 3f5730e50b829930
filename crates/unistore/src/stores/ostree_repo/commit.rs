//! An image as one flattened ostree commit.
//!
//! The image's merged tree (whiteouts and opaque directories applied by
//! composefs-oci) is written as bootc's synthesized commits are laid out:
//! top-level `etc` becomes `usr/etc`; `var/*` moves to
//! `usr/share/factory/var/*` (libostree 2022.7 never uses a commit's `/var`:
//! the stateroot's `var/` is mounted there) and `var` stays, empty; `run tmp
//! proc sys dev` are kept as empty directories, device nodes under `/dev`
//! dropped with a note. A device node, FIFO or socket anywhere else is an
//! error: a bare repository cannot hold one. Content objects come from the
//! composefs objects ([`super::objects`]); dirtree, dirmeta, commit and ref
//! go through libostree. No parent, the image's creation time as the
//! commit's: the same image always gives the same commit.
//!
//! Two kinds, told apart by the metadata as bootc's proposal does: a
//! *classic* commit (imported through a staging repository that is then
//! removed) and a *synthesized* one (from the host's own composefs
//! repository, whose objects its content objects share on a bound host):
//! `ostree-ext.composefs-synthesized=true` and the image's manifest digest
//! there ([`COMPOSEFS_MANIFEST_KEY`]). Checksums of files seen before come
//! from the [`ChecksumCache`] instead of a re-read.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;

use anyhow::{Context, Result, anyhow, bail};
use cap_std_ext::cap_std::fs::Dir;
use composefs::generic_tree::{Inode, LeafContent, Stat};
use composefs::tree::{Directory, FileSystem, RegularFile};
use ostree::glib::prelude::Cast;
use ostree::{gio, glib};

use super::checksum_cache::ChecksumCache;
use super::content::{EMPTIED, prepare_content};
use super::objects::{FileMeta, file_info, xattrs_variant};
use crate::fs::reflink::Tally;
use crate::stores::composefs_repo::{ObjectId, Repo};

/// Commit metadata: the manifest digest of the image in the host's
/// composefs repository the commit was synthesized from.
pub const COMPOSEFS_MANIFEST_KEY: &str = "unistore.composefs-manifest";

/// What the commit records about the image.
#[derive(Debug, Clone)]
pub struct ImageCommit<'a> {
    /// `sha256:...` of the manifest (`ostree.manifest-digest`).
    pub manifest_digest: &'a str,
    /// The manifest as JSON (`ostree.manifest`).
    pub manifest_json: &'a str,
    /// The config as JSON (`ostree.container.image-config`).
    pub config_json: &'a str,
    /// Seconds since the epoch: the image's creation time.
    pub timestamp: u64,
    /// The ref that keeps the commit (`ostree/container/image/...`).
    pub ref_name: &'a str,
    /// Synthesized from the host's composefs repository (a bound host):
    /// the manifest digest the image has there. The commit then says so
    /// (`ostree-ext.composefs-synthesized`, `unistore.composefs-manifest`);
    /// `None`: a classic import through a staging repository.
    pub composefs_manifest: Option<&'a str>,
}

/// What an import wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Imported {
    /// The commit checksum.
    pub checksum: String,
    /// Synthesized from the host's composefs repository (else classic).
    pub synthesized: bool,
    /// Content objects written by reflink or copy.
    pub content: Tally,
    /// Content objects written from composefs objects.
    pub objects_written: u64,
    /// Content objects from composefs objects the repository already had.
    pub objects_reused: u64,
    /// Of those, objects that held their own copy and now share their
    /// composefs object's extents (a synthesized commit).
    pub objects_reused_shared: u64,
    /// Small files and symlinks handed to libostree (written or found).
    pub small_objects: u64,
    /// Content files read to compute their checksum (the others' checksums
    /// came from the [`ChecksumCache`]).
    pub files_read: u64,
    /// Their bytes.
    pub bytes_read: u64,
    /// Content files whose checksum came from the cache.
    pub checksums_cached: u64,
    /// Layer commits written ([`super::layers`]), and layers whose commit
    /// the repository had already.
    pub layers_written: u64,
    pub layers_reused: u64,
    /// What was left out of the commit, for people.
    pub notes: Vec<String>,
}

/// What a commit is: an image's merge commit (deployable), or one layer's.
enum Kind<'a> {
    Image(&'a ImageCommit<'a>),
    Layer { diff_id: &'a str, timestamp: u64 },
}

fn glib_err(what: &str) -> impl FnOnce(glib::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

fn name_str<'n>(name: &'n OsStr, path: &str) -> Result<&'n str> {
    name.to_str().ok_or_else(|| {
        anyhow!(
            "{path}/{}: ostree needs UTF-8 file names",
            name.to_string_lossy()
        )
    })
}

struct Walker<'a> {
    ostree: &'a ostree::Repo,
    fs: &'a FileSystem<ObjectId>,
    leaves: HashMap<usize, String>,
    /// Checksums of content leaves, their objects written ahead
    /// ([`prepare_content`]).
    precomputed: HashMap<usize, String>,
    dirmetas: HashMap<String, String>,
    libostree_written: u64,
}

impl Walker<'_> {
    fn dirmeta(&mut self, stat: &Stat) -> Result<String> {
        let x = xattrs_variant(&stat.xattrs);
        let key = format!(
            "{}:{}:{:o}:{}",
            stat.st_uid,
            stat.st_gid,
            stat.st_mode & 0o7777,
            x.print(false)
        );
        if let Some(c) = self.dirmetas.get(&key) {
            return Ok(c.clone());
        }
        let meta = FileMeta {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: (stat.st_mode & 0o7777) | libc::S_IFDIR,
            xattrs: &stat.xattrs,
        };
        let info = file_info(&meta, 0, None);
        info.set_file_type(gio::FileType::Directory);
        let v = ostree::create_directory_metadata(&info, Some(&x));
        let c = self
            .ostree
            .write_metadata(
                ostree::ObjectType::DirMeta,
                None,
                &v,
                gio::Cancellable::NONE,
            )
            .map_err(glib_err("writing a dirmeta object"))?
            .to_hex();
        self.dirmetas.insert(key, c.clone());
        Ok(c)
    }

    fn dir(&mut self, d: &Directory<ObjectId>, mt: &ostree::MutableTree, path: &str) -> Result<()> {
        mt.set_metadata_checksum(&self.dirmeta(&d.stat)?);
        for (name, inode) in d.sorted_entries() {
            let n = name_str(name, path)?;
            let child = format!("{path}/{n}");
            match inode {
                Inode::Directory(sub) => {
                    let smt = mt.ensure_dir(n).map_err(glib_err(&child))?;
                    self.dir(sub, &smt, &child)?;
                }
                Inode::Leaf(id, _) => {
                    let c = self.leaf(id.0, &child)?;
                    mt.replace_file(n, &c).map_err(glib_err(&child))?;
                }
            }
        }
        Ok(())
    }

    fn leaf(&mut self, id: usize, path: &str) -> Result<String> {
        if let Some(c) = self.leaves.get(&id) {
            return Ok(c.clone());
        }
        let leaf = &self.fs.leaves[id];
        let st = &leaf.stat;
        let meta = FileMeta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: (st.st_mode & 0o7777) | leaf.content.file_type_bits(),
            xattrs: &st.xattrs,
        };
        let xattrs = xattrs_variant(&st.xattrs);
        let none = gio::Cancellable::NONE;
        let c = match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                self.libostree_written += 1;
                self.ostree
                    .write_regfile_inline(
                        None,
                        meta.uid,
                        meta.gid,
                        meta.mode,
                        Some(&xattrs),
                        data,
                        none,
                    )
                    .map_err(glib_err(path))?
                    .to_string()
            }
            LeafContent::Regular(
                RegularFile::External(obj, size) | RegularFile::ExternalNoVerity(obj, size),
            ) => {
                let _ = (obj, size);
                self.precomputed
                    .remove(&id)
                    .ok_or_else(|| anyhow!("{path}: its ostree object was not written"))?
            }
            LeafContent::Regular(RegularFile::Sparse(size)) => {
                bail!("{path}: a sparse file of {size} bytes without content cannot be committed")
            }
            LeafContent::Symlink(target) => {
                let t = target
                    .to_str()
                    .ok_or_else(|| anyhow!("{path}: ostree needs a UTF-8 symlink target"))?;
                self.libostree_written += 1;
                self.ostree
                    .write_symlink(None, meta.uid, meta.gid, Some(&xattrs), t, none)
                    .map_err(glib_err(path))?
                    .to_string()
            }
            LeafContent::BlockDevice(_) | LeafContent::CharacterDevice(_) => {
                bail!(
                    "{path}: the image has a device node there, which an ostree commit cannot hold (only /dev may have them; they are dropped)"
                )
            }
            LeafContent::Fifo => {
                bail!("{path}: the image has a FIFO there, which an ostree commit cannot hold")
            }
            LeafContent::Socket => {
                bail!("{path}: the image has a socket there, which an ostree commit cannot hold")
            }
        };
        self.leaves.insert(id, c.clone());
        Ok(c)
    }
}

/// Counts the entries below `d` (recursively).
fn count_entries(d: &Directory<ObjectId>) -> usize {
    d.entries()
        .map(|(_, i)| match i {
            Inode::Directory(sub) => 1 + count_entries(sub),
            Inode::Leaf(..) => 1,
        })
        .sum()
}

/// Writes `fs` as the image's merge commit and points `c.ref_name` at it,
/// and a commit for each layer of the image the repository lacks (kept by
/// its blob ref, [`super::layers`]), in one transaction of `ostree` (the
/// repository opened at `repo_dir`): a crash leaves either all the refs or
/// none. `cfs` holds the tree's objects and the layers' streams.
pub fn import(
    ostree: &ostree::Repo,
    repo_dir: &Dir,
    cfs: &Repo,
    fs: &FileSystem<ObjectId>,
    c: &ImageCommit<'_>,
    cache: &mut ChecksumCache,
) -> Result<Imported> {
    let layers = super::layers::layers_of(c.manifest_json, c.config_json)?;
    let mut imported = in_transaction(ostree, || {
        let share = c.composefs_manifest.is_some();
        let mut imported = write_tree(ostree, repo_dir, cfs, fs, Kind::Image(c), cache, share)?;
        ostree.transaction_set_ref(None, c.ref_name, Some(&imported.checksum));
        let (written, totals) =
            write_layers(ostree, repo_dir, cfs, &layers, c.timestamp, cache, share)?;
        imported.layers_reused = layers.len() as u64 - written;
        imported.add_layers(written, &totals);
        Ok(imported)
    })?;
    imported.notes.dedup();
    Ok(imported)
}

/// Runs `f` in a libostree transaction: committed when it succeeds,
/// aborted when it fails (nothing it wrote gets a ref).
fn in_transaction<T>(ostree: &ostree::Repo, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let none = gio::Cancellable::NONE;
    ostree
        .prepare_transaction(none)
        .map_err(glib_err("starting an ostree transaction"))?;
    match f() {
        Ok(v) => {
            ostree
                .commit_transaction(none)
                .map_err(glib_err("committing the ostree transaction"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = ostree.abort_transaction(none);
            Err(e)
        }
    }
}

/// Writes the commit of each of `layers` whose blob ref is missing, and
/// sets that ref, inside the caller's transaction. Returns how many it
/// wrote and their totals.
fn write_layers(
    ostree: &ostree::Repo,
    repo_dir: &Dir,
    cfs: &Repo,
    layers: &[super::layers::Layer],
    timestamp: u64,
    cache: &mut ChecksumCache,
    share: bool,
) -> Result<(u64, Imported)> {
    let mut written = 0;
    let mut totals = Imported::default();
    for l in layers {
        let r = super::layers::blob_ref(&l.blob_digest);
        if ostree
            .resolve_rev(&r, true)
            .map_err(glib_err(&r))?
            .is_some()
        {
            continue;
        }
        let tree = super::layers::layer_tree(cfs, &l.diff_id)?;
        let kind = Kind::Layer {
            diff_id: &l.diff_id,
            timestamp,
        };
        let li = write_tree(ostree, repo_dir, cfs, &tree, kind, cache, share)
            .with_context(|| format!("writing the commit of layer {}", l.blob_digest))?;
        ostree.transaction_set_ref(None, &r, Some(&li.checksum));
        totals.add_layers(1, &li);
        written += 1;
    }
    Ok((written, totals))
}

/// Writes the commits of the `layers` whose blob ref is missing (their
/// streams in `cfs`), in one transaction: what a host an older version
/// wrote lacks. Returns how many it wrote.
pub fn import_layers(
    ostree: &ostree::Repo,
    repo_dir: &Dir,
    cfs: &Repo,
    layers: &[super::layers::Layer],
    timestamp: u64,
    cache: &mut ChecksumCache,
) -> Result<u64> {
    in_transaction(ostree, || {
        write_layers(ostree, repo_dir, cfs, layers, timestamp, cache, true).map(|(n, _)| n)
    })
}

/// The manifest and config JSON an image's merge commit records
/// (`ostree.manifest`, `ostree.container.image-config`); `None` for a
/// commit without them.
pub fn image_json(ostree: &ostree::Repo, checksum: &str) -> Result<Option<(String, String)>> {
    let (commit, _) = ostree
        .load_commit(checksum)
        .map_err(|e| anyhow!("loading commit {checksum}: {e}"))?;
    let meta = glib::VariantDict::new(Some(&commit.child_value(0)));
    let get = |k: &str| meta.lookup::<String>(k).ok().flatten();
    Ok(get("ostree.manifest").zip(get("ostree.container.image-config")))
}

impl Imported {
    /// Counts what `n` layer commits wrote into the image's totals.
    fn add_layers(&mut self, n: u64, l: &Imported) {
        self.layers_written += n;
        self.content.merge(&l.content);
        self.objects_written += l.objects_written;
        self.objects_reused += l.objects_reused;
        self.objects_reused_shared += l.objects_reused_shared;
        self.small_objects += l.small_objects;
        self.files_read += l.files_read;
        self.bytes_read += l.bytes_read;
        self.checksums_cached += l.checksums_cached;
    }
}

fn write_tree(
    ostree: &ostree::Repo,
    repo_dir: &Dir,
    cfs: &Repo,
    fs: &FileSystem<ObjectId>,
    kind: Kind<'_>,
    cache: &mut ChecksumCache,
    share_reused: bool,
) -> Result<Imported> {
    let t0 = std::time::Instant::now();
    let mut pre = prepare_content(cfs, fs, repo_dir, cache, share_reused)?;
    tracing::debug!(
        "content objects: {} files read, {} checksums cached, {:?}",
        pre.files_read,
        pre.cached,
        t0.elapsed()
    );
    let mut w = Walker {
        ostree,
        fs,
        leaves: HashMap::new(),
        precomputed: std::mem::take(&mut pre.checksums),
        dirmetas: HashMap::new(),
        libostree_written: 0,
    };
    let mut notes = vec![];
    let root = ostree::MutableTree::new();
    root.set_metadata_checksum(&w.dirmeta(&fs.root.stat)?);
    let mut etc = None;
    let mut var = None;
    for (name, inode) in fs.root.sorted_entries() {
        let n = name_str(name, "")?;
        match (n, inode) {
            ("etc", Inode::Directory(d)) => etc = Some(d),
            ("var", Inode::Directory(d)) => var = Some(d),
            (e, Inode::Directory(d)) if EMPTIED.contains(&e) => {
                let mt = root.ensure_dir(e).map_err(glib_err(e))?;
                mt.set_metadata_checksum(&w.dirmeta(&d.stat)?);
                let dropped = count_entries(d);
                if dropped > 0 {
                    notes.push(format!(
                        "/{e}: {dropped} entries left out (ostree keeps /{e} empty{})",
                        if e == "dev" {
                            "; device nodes cannot be stored"
                        } else {
                            ""
                        }
                    ));
                }
            }
            (_, Inode::Directory(d)) => {
                let mt = root.ensure_dir(n).map_err(glib_err(n))?;
                w.dir(d, &mt, &format!("/{n}"))?;
            }
            (_, Inode::Leaf(id, _)) => {
                let csum = w.leaf(id.0, &format!("/{n}"))?;
                root.replace_file(n, &csum).map_err(glib_err(n))?;
            }
        }
    }
    let default_meta = Stat {
        st_mode: 0o755,
        ..Stat::uninitialized()
    };
    // What a booted ostree deployment needs at its top, as ostree images
    // carry it: `/sysroot` (the physical root is mounted there), `/boot`
    // (the physical /boot is bound there) and `/ostree -> sysroot/ostree`
    // (where libostree finds its repository on the running system).
    let has = |n: &str| fs.root.entries().any(|(name, _)| name == OsStr::new(n));
    // Only the merge commit is deployed; a layer's commit is its own tree.
    let deployable = matches!(kind, Kind::Image(_));
    for d in ["sysroot", "boot"] {
        if !deployable {
            break;
        }
        if !has(d) {
            let mt = root.ensure_dir(d).map_err(glib_err(d))?;
            mt.set_metadata_checksum(&w.dirmeta(&default_meta)?);
            notes.push(format!("/{d}: added (an ostree deployment needs it)"));
        }
    }
    if deployable && !has("ostree") {
        let none = BTreeMap::new();
        let csum = ostree
            .write_symlink(
                None,
                0,
                0,
                Some(&xattrs_variant(&none)),
                "sysroot/ostree",
                gio::Cancellable::NONE,
            )
            .map_err(glib_err("/ostree"))?
            .to_string();
        root.replace_file("ostree", &csum)
            .map_err(glib_err("ostree"))?;
        w.libostree_written += 1;
    }
    // `ensure_dir` along `path` below the root, giving directories the
    // image does not have default metadata.
    let ensure = |w: &mut Walker<'_>, path: &[&str]| -> Result<ostree::MutableTree> {
        let mut mt = root.clone();
        let mut sofar = String::new();
        for p in path {
            sofar.push('/');
            sofar.push_str(p);
            let existed = fs
                .root
                .get_directory_opt(OsStr::new(sofar.trim_start_matches('/')))
                .ok()
                .flatten()
                .is_some();
            mt = mt.ensure_dir(p).map_err(glib_err(&sofar))?;
            if !existed {
                mt.set_metadata_checksum(&w.dirmeta(&default_meta)?);
            }
        }
        Ok(mt)
    };
    if let Some(etc) = etc {
        if fs
            .root
            .get_directory_opt(OsStr::new("usr/etc"))
            .ok()
            .flatten()
            .is_some()
        {
            bail!("the image has both /etc and /usr/etc; an ostree commit keeps /etc as /usr/etc");
        }
        let mt = ensure(&mut w, &["usr", "etc"])?;
        w.dir(etc, &mt, "/etc")?;
    }
    if let Some(var) = var {
        let mt = root.ensure_dir("var").map_err(glib_err("var"))?;
        mt.set_metadata_checksum(&w.dirmeta(&var.stat)?);
        if var.entries().next().is_some() {
            let mt = ensure(&mut w, &["usr", "share", "factory", "var"])?;
            w.dir(var, &mt, "/var")?;
        }
    }
    tracing::debug!("tree walk: {:?}", t0.elapsed());
    let tree = ostree
        .write_mtree(&root, gio::Cancellable::NONE)
        .map_err(glib_err("writing the tree"))?;
    let tree = tree
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("libostree returned a tree that is not a RepoFile"))?;
    let dict = glib::VariantDict::new(None);
    let (subject, timestamp) = match kind {
        Kind::Image(c) => {
            dict.insert("ostree.manifest-digest", c.manifest_digest);
            dict.insert("ostree.manifest", c.manifest_json);
            dict.insert("ostree.container.image-config", c.config_json);
            dict.insert("ostree.bootable", true);
            if let Some(m) = c.composefs_manifest {
                dict.insert("ostree-ext.composefs-synthesized", true);
                dict.insert(COMPOSEFS_MANIFEST_KEY, m);
            }
            (c.manifest_digest, c.timestamp)
        }
        Kind::Layer { diff_id, timestamp } => {
            dict.insert(super::layers::DIFF_ID_KEY, diff_id);
            (diff_id, timestamp)
        }
    };
    let metadata = dict.end();
    let checksum = ostree
        .write_commit_with_time(
            None,
            Some(subject),
            None,
            Some(&metadata),
            &tree,
            timestamp,
            gio::Cancellable::NONE,
        )
        .map_err(glib_err("writing the commit"))?
        .to_string();
    tracing::debug!("tree and commit written: {:?}", t0.elapsed());
    Ok(Imported {
        checksum,
        synthesized: share_reused,
        content: pre.tally,
        objects_written: pre.written,
        objects_reused: pre.reused,
        objects_reused_shared: pre.reused_shared,
        small_objects: w.libostree_written,
        files_read: pre.files_read,
        bytes_read: pre.bytes_read,
        checksums_cached: pre.cached,
        layers_written: 0,
        layers_reused: 0,
        notes,
    })
}
