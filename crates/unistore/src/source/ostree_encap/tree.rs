//! The tree of an encapsulated image: the embedded commit's, read from its
//! own dirtree and dirmeta objects, then the plain layers above.
//!
//! Every file is one leaf per content object (paths naming one object are
//! hard links, as in an ostree checkout), with the object's owner, mode and
//! xattrs; directories carry their dirmeta's; mtimes are 0, as ostree
//! checks out. The commit's `usr/etc` is the tree's `/etc` (as the
//! layer's checkout paths, and every image, have it; the ostree writer
//! moves it back). Layers above the ostree layers are applied as
//! composefs-oci applies layers (whiteouts, opaque directories), their
//! xattrs filtered by composefs-oci's allowlist as for any OCI layer; a
//! root entry in them does not change the commit's root.

use std::collections::HashMap;
use std::ffi::OsStr;

use anyhow::{Context, Result, anyhow, bail};
use composefs::generic_tree::{LeafId, Stat};
use composefs::tree::{Directory, FileSystem, Inode};
use ostree::glib;

use super::Encapsulated;
use super::objects::{ObjectSet, xattrs_from_list};
use crate::stores::composefs_repo::{ObjectId, Repo, layer_stream_id};

/// Deeper than any real tree; a guard against a malicious one.
const MAX_DEPTH: usize = 256;

/// The root dirtree and dirmeta checksums of a serialized commit object.
pub fn commit_root(commit: &[u8]) -> Result<(String, String)> {
    let v =
        glib::Variant::from_data_with_type(commit, glib::VariantTy::new("(a{sv}aya(say)sstayay)")?);
    if !v.is_normal_form() {
        bail!("the commit object is not a valid commit variant");
    }
    let csum = |i: usize| -> Result<String> {
        let b: Vec<u8> = v
            .child_value(i)
            .get()
            .ok_or_else(|| anyhow!("the commit object is damaged"))?;
        if b.len() != 32 {
            bail!("the commit object names a checksum of {} bytes", b.len());
        }
        Ok(hex::encode(b))
    };
    Ok((csum(6)?, csum(7)?))
}

fn variant<'a>(bytes: &'a [u8], ty: &str, what: &str) -> Result<glib::Variant> {
    let v = glib::Variant::from_data_with_type(bytes as &'a [u8], glib::VariantTy::new(ty)?);
    if !v.is_normal_form() {
        bail!("{what} is not a valid {ty} variant");
    }
    Ok(v)
}

/// A dirmeta object as a directory's stat.
fn dir_stat(set: &ObjectSet, checksum: &str, path: &str) -> Result<Stat> {
    let bytes = set
        .dirmetas
        .get(checksum)
        .with_context(|| format!("{path}: the image lacks its dirmeta object {checksum}"))?;
    let v = variant(bytes, "(uuua(ayay))", &format!("dirmeta {checksum}"))?;
    let m =
        ostree::DirMetaParsed::from_variant(&v).map_err(|e| anyhow!("dirmeta {checksum}: {e}"))?;
    if m.mode & libc::S_IFMT != libc::S_IFDIR {
        bail!("{path}: its dirmeta {checksum} is not a directory's");
    }
    Ok(Stat {
        st_mode: m.mode & 0o7777,
        st_uid: m.uid,
        st_gid: m.gid,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: xattrs_from_list(m.xattrs),
    })
}

/// A file name as a dirtree may hold it: not empty, `.`, `..`, and
/// without `/` (libostree refuses the others too).
fn check_name(name: &str, path: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("{path}: the commit holds a bad file name {name:?}");
    }
    Ok(())
}

fn hex32(b: &[u8], path: &str) -> Result<String> {
    if b.len() != 32 {
        bail!("{path}: a dirtree names a checksum of {} bytes", b.len());
    }
    Ok(hex::encode(b))
}

struct Builder<'a> {
    set: &'a ObjectSet,
    fs: FileSystem<ObjectId>,
    leaves: HashMap<String, LeafId>,
}

impl Builder<'_> {
    fn leaf(&mut self, checksum: &str, path: &str) -> Result<LeafId> {
        if let Some(id) = self.leaves.get(checksum) {
            return Ok(*id);
        }
        let f =
            self.set.files.get(checksum).with_context(|| {
                format!("{path}: the image lacks its content object {checksum}")
            })?;
        let id = self.fs.push_leaf(f.stat.clone(), f.content.clone());
        self.leaves.insert(checksum.to_string(), id);
        Ok(id)
    }

    fn dir(
        &mut self,
        tree: &str,
        meta: &str,
        path: &str,
        depth: usize,
    ) -> Result<Directory<ObjectId>> {
        if depth > MAX_DEPTH {
            bail!("{path}: the commit's tree is deeper than {MAX_DEPTH} directories");
        }
        let mut d = Directory::new(dir_stat(self.set, meta, path)?);
        let bytes = self
            .set
            .dirtrees
            .get(tree)
            .with_context(|| format!("{path}: the image lacks its dirtree object {tree}"))?;
        let v = variant(bytes, "(a(say)a(sayay))", &format!("dirtree {tree}"))?;
        let (files, dirs): ostree::TreeVariantType = v
            .get()
            .ok_or_else(|| anyhow!("dirtree {tree} is damaged"))?;
        for (name, csum) in files {
            let child = format!("{path}/{name}");
            check_name(&name, path)?;
            let id = self.leaf(&hex32(&csum, &child)?, &child)?;
            d.insert(OsStr::new(&name), Inode::leaf(id));
        }
        for (name, t, m) in dirs {
            let child = format!("{path}/{name}");
            check_name(&name, path)?;
            let sub = self.dir(&hex32(&t, &child)?, &hex32(&m, &child)?, &child, depth + 1)?;
            d.insert(OsStr::new(&name), Inode::Directory(Box::new(sub)));
        }
        Ok(d)
    }
}

/// The embedded commit's tree alone, `usr/etc` still where ostree keeps it.
pub fn commit_tree(set: &ObjectSet) -> Result<FileSystem<ObjectId>> {
    Ok(commit_tree_with_checksums(set)?.0)
}

/// [`commit_tree`], and the content object of each leaf.
pub fn commit_tree_with_checksums(
    set: &ObjectSet,
) -> Result<(FileSystem<ObjectId>, HashMap<LeafId, String>)> {
    let (tree, meta) = commit_root(&set.commit_bytes)?;
    let mut b = Builder {
        set,
        fs: FileSystem::new(Stat::uninitialized()),
        leaves: HashMap::new(),
    };
    let root = b.dir(&tree, &meta, "", 0)?;
    b.fs.root = root;
    let ids = b.leaves.into_iter().map(|(c, id)| (id, c)).collect();
    Ok((b.fs, ids))
}

/// Moves the commit's `usr/etc` to `/etc`, where images have it.
fn etc_to_top(fs: &mut FileSystem<ObjectId>) {
    if fs.root.lookup(OsStr::new("etc")).is_some() {
        return;
    }
    let Ok(usr) = fs.root.get_directory_mut(OsStr::new("usr")) else {
        return;
    };
    if !matches!(usr.lookup(OsStr::new("etc")), Some(Inode::Directory(_))) {
        return;
    }
    if let Some(etc) = usr.pop(OsStr::new("etc")) {
        fs.root.insert(OsStr::new("etc"), etc);
    }
}

/// The tree of the encapsulated image `enc` (its objects in `set`): the
/// commit's, `/etc` at the top, the plain layers above applied.
pub fn build(repo: &Repo, enc: &Encapsulated, set: &ObjectSet) -> Result<FileSystem<ObjectId>> {
    let mut fs =
        commit_tree(set).with_context(|| format!("reading ostree commit {}", enc.commit))?;
    etc_to_top(&mut fs);
    for diff_id in &enc.derived_layers {
        let name = layer_stream_id(diff_id)?;
        let mut stream = repo
            .open_stream(&name, None, Some(composefs_oci::LAYER_CONTENT_TYPE))
            .with_context(|| format!("opening layer {diff_id} in the composefs repository"))?;
        while let Some(mut entry) = composefs_oci::tar::get_entry::<ObjectId>(&mut stream)
            .with_context(|| format!("reading layer {diff_id}"))?
        {
            if entry.path.file_name().is_none() {
                continue;
            }
            entry
                .stat
                .xattrs
                .retain(|k, _| composefs::generic_tree::is_allowed_container_xattr(k));
            composefs_oci::image::process_entry(&mut fs, entry)
                .with_context(|| format!("applying layer {diff_id}"))?;
        }
    }
    if fs
        .root
        .get_directory_opt(OsStr::new("usr"))
        .ok()
        .flatten()
        .is_some()
    {
        fs.canonicalize_run()?;
    }
    fs.compact();
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        for n in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(n, "/usr").is_err(), "{n:?}");
        }
        check_name("ping", "/usr/bin").unwrap();
    }

    #[test]
    fn etc_moves_to_the_top_once() {
        let st = Stat {
            st_mode: 0o755,
            ..Stat::uninitialized()
        };
        let mut fs: FileSystem<ObjectId> = FileSystem::new(st.clone());
        let mut usr = Directory::new(st.clone());
        usr.insert(
            OsStr::new("etc"),
            Inode::Directory(Box::new(Directory::new(st.clone()))),
        );
        fs.root
            .insert(OsStr::new("usr"), Inode::Directory(Box::new(usr)));
        etc_to_top(&mut fs);
        assert!(
            fs.root
                .get_directory_opt(OsStr::new("etc"))
                .unwrap()
                .is_some()
        );
        assert!(
            fs.root
                .get_directory_opt(OsStr::new("usr/etc"))
                .unwrap()
                .is_none()
        );
    }
}
