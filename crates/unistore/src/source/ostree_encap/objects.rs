//! The ostree objects an encapsulated image's ostree layers carry, read
//! from their splitstreams in the composefs repository.
//!
//! Only entries below `sysroot/ostree/repo/objects/` count, as in
//! ostree-ext's import: the checkout paths (hard links to the `.file`
//! objects), the store's directories, `config` and `refs/` are skipped.
//! Metadata objects (`.commit`, `.commitmeta`, `.dirtree`, `.dirmeta`) are
//! kept as bytes and checked against their names (an ostree metadata
//! checksum is the SHA-256 of the serialized object). A `.file` object is
//! kept as the tar has it (its content is a composefs object, or inline,
//! or a symlink target; owner and mode from its header) with the xattrs of
//! the `.file-xattrs` object its `.file-xattrs-link` names (a hard link,
//! or a regular file holding them). Its checksum covers content and
//! metadata together and is checked where the object is written
//! ([`super::ostree_import`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result, anyhow, bail};
use composefs::generic_tree::{LeafContent, Stat};
use composefs::tree::RegularFile;
use composefs_oci::tar::TarItem;
use ostree::glib;
use sha2::{Digest, Sha256};

use super::Encapsulated;
use crate::stores::composefs_repo::{ObjectId, Repo, layer_stream_id};

/// Where the object store lives in an ostree layer.
const OBJECTS_PREFIX: &[u8] = b"sysroot/ostree/repo/objects/";

/// An ostree layer's object kinds, by file name extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Commit,
    CommitMeta,
    DirTree,
    DirMeta,
    File,
    FileXattrs,
    FileXattrsLink,
}

impl Kind {
    fn from_ext(ext: &[u8]) -> Option<Self> {
        Some(match ext {
            b"commit" => Self::Commit,
            b"commitmeta" => Self::CommitMeta,
            b"dirtree" => Self::DirTree,
            b"dirmeta" => Self::DirMeta,
            b"file" => Self::File,
            b"file-xattrs" => Self::FileXattrs,
            b"file-xattrs-link" => Self::FileXattrsLink,
            _ => return None,
        })
    }
}

/// The checksum and kind of the object at `path` (a layer path, with or
/// without its leading `/`); `None` for anything else.
pub fn parse_object_path(path: &[u8]) -> Option<(String, Kind)> {
    let path = path.strip_prefix(b"/").unwrap_or(path);
    let rest = path.strip_prefix(OBJECTS_PREFIX)?;
    let (dir, name) = (rest.get(..2)?, rest.get(2..)?);
    let name = name.strip_prefix(b"/")?;
    let dot = name.iter().position(|b| *b == b'.')?;
    let (stem, ext) = (&name[..dot], &name[dot + 1..]);
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    if stem.len() != 62 || !hex(dir) || !hex(stem) {
        return None;
    }
    let kind = Kind::from_ext(ext)?;
    let mut c = String::with_capacity(64);
    c.push_str(std::str::from_utf8(dir).ok()?);
    c.push_str(std::str::from_utf8(stem).ok()?);
    Some((c, kind))
}

/// Xattrs as composefs trees keep them: names without their NUL.
pub type Xattrs = BTreeMap<Box<OsStr>, Box<[u8]>>;

/// Parses a serialized `a(ayay)` (a `.file-xattrs` object, or a dirmeta's
/// xattrs) into names without their trailing NUL and values as they are.
pub fn parse_xattrs(bytes: &[u8]) -> Result<Xattrs> {
    let v = glib::Variant::from_data_with_type(bytes, glib::VariantTy::new("a(ayay)")?);
    if !v.is_normal_form() {
        bail!("an xattrs object is not a valid a(ayay) variant");
    }
    let list: Vec<(Vec<u8>, Vec<u8>)> = v
        .get()
        .ok_or_else(|| anyhow!("an xattrs object is not a(ayay)"))?;
    Ok(xattrs_from_list(list))
}

/// `a(ayay)` pairs (names NUL-terminated) as a composefs xattr map.
pub fn xattrs_from_list(list: Vec<(Vec<u8>, Vec<u8>)>) -> Xattrs {
    list.into_iter()
        .map(|(mut k, v)| {
            if k.last() == Some(&0) {
                k.pop();
            }
            (Box::from(OsStr::from_bytes(&k)), v.into_boxed_slice())
        })
        .collect()
}

/// A `.file` object of an ostree layer.
#[derive(Debug, Clone)]
pub struct FileObject {
    /// Owner, permission bits and xattrs (mtime 0, as ostree checks out).
    pub stat: Stat,
    /// The content: a regular file (a composefs object or inline) or a
    /// symlink.
    pub content: LeafContent<RegularFile<ObjectId>>,
    /// Index of the ostree layer that carries it.
    pub layer: usize,
}

/// Everything the ostree layers of an image carry.
#[derive(Debug, Default)]
pub struct ObjectSet {
    /// The embedded commit's checksum.
    pub commit: String,
    /// The commit object.
    pub commit_bytes: Vec<u8>,
    /// Its detached metadata, if the image carries it.
    pub commitmeta: Option<Vec<u8>>,
    /// Dirtree objects by checksum.
    pub dirtrees: HashMap<String, Vec<u8>>,
    /// Dirmeta objects by checksum.
    pub dirmetas: HashMap<String, Vec<u8>>,
    /// Content objects by checksum.
    pub files: HashMap<String, FileObject>,
    /// Content checksums of each ostree layer, in tar order.
    pub layer_files: Vec<Vec<String>>,
    /// Entries outside the object store (checkout paths, the store's
    /// directories): skipped.
    pub skipped: u64,
}

/// Where a file's xattrs come from.
enum XattrsSrc {
    /// The `.file-xattrs` object of that name.
    Named(String),
    /// A `.file-xattrs-link` that is a regular file holding them.
    Inline(Vec<u8>),
}

/// The bytes of a regular file entry (metadata objects are small; a big
/// one is read from its composefs object).
fn entry_bytes(repo: &Repo, item: &TarItem<ObjectId>, path: &str) -> Result<Vec<u8>> {
    match item {
        TarItem::Leaf(LeafContent::Regular(RegularFile::Inline(d))) => Ok(d.to_vec()),
        TarItem::Leaf(LeafContent::Regular(
            RegularFile::External(id, _) | RegularFile::ExternalNoVerity(id, _),
        )) => repo
            .read_object(id)
            .with_context(|| format!("reading {path} from the composefs repository")),
        _ => bail!("{path} is not a regular file"),
    }
}

fn check_metadata(bytes: &[u8], checksum: &str, path: &str) -> Result<()> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != checksum {
        bail!("{path}: its content has checksum {actual}, not the one it is named by");
    }
    Ok(())
}

impl ObjectSet {
    /// Reads the ostree layers of `enc` from `repo`.
    pub fn read(repo: &Repo, enc: &Encapsulated) -> Result<Self> {
        let mut set = ObjectSet {
            commit: enc.commit.clone(),
            ..Default::default()
        };
        let mut named_xattrs: HashMap<String, Vec<u8>> = HashMap::new();
        let mut links: HashMap<String, XattrsSrc> = HashMap::new();
        for (li, diff_id) in enc.ostree_layers.iter().enumerate() {
            set.layer_files.push(vec![]);
            set.read_layer(repo, li, diff_id, &mut named_xattrs, &mut links)
                .with_context(|| format!("reading ostree layer {diff_id}"))?;
        }
        if set.commit_bytes.is_empty() {
            bail!(
                "the image names ostree commit {} but its first layer does not carry it",
                enc.commit
            );
        }
        for (c, f) in set.files.iter_mut() {
            let parsed = match links.remove(c) {
                Some(XattrsSrc::Named(n)) => parse_xattrs(named_xattrs.get(&n).with_context(|| {
                    format!("the xattrs of ostree object {c} name {n}.file-xattrs, which the image lacks")
                })?),
                Some(XattrsSrc::Inline(b)) => parse_xattrs(&b),
                // An exporter that puts xattrs in PAX headers (older
                // ostree-ext): the tar reader already has them.
                None => continue,
            };
            f.stat.xattrs = parsed.with_context(|| format!("the xattrs of ostree object {c}"))?;
        }
        Ok(set)
    }

    fn read_layer(
        &mut self,
        repo: &Repo,
        li: usize,
        diff_id: &str,
        named_xattrs: &mut HashMap<String, Vec<u8>>,
        links: &mut HashMap<String, XattrsSrc>,
    ) -> Result<()> {
        let name = layer_stream_id(diff_id)?;
        let mut stream = repo
            .open_stream(&name, None, Some(composefs_oci::LAYER_CONTENT_TYPE))
            .context("opening the layer in the composefs repository")?;
        while let Some(entry) = composefs_oci::tar::get_entry::<ObjectId>(&mut stream)? {
            let raw = entry.path.as_os_str().as_bytes();
            let Some((csum, kind)) = parse_object_path(raw) else {
                self.skipped += 1;
                continue;
            };
            if matches!(entry.item, TarItem::Directory) {
                self.skipped += 1;
                continue;
            }
            let path = entry.path.display().to_string();
            match kind {
                Kind::Commit => {
                    if li != 0 || csum != self.commit {
                        bail!(
                            "{path}: the image names commit {} in its first layer",
                            self.commit
                        );
                    }
                    let b = entry_bytes(repo, &entry.item, &path)?;
                    check_metadata(&b, &csum, &path)?;
                    self.commit_bytes = b;
                }
                Kind::CommitMeta => {
                    if csum == self.commit {
                        self.commitmeta = Some(entry_bytes(repo, &entry.item, &path)?);
                    }
                }
                Kind::DirTree | Kind::DirMeta => {
                    let b = entry_bytes(repo, &entry.item, &path)?;
                    check_metadata(&b, &csum, &path)?;
                    let map = if kind == Kind::DirTree {
                        &mut self.dirtrees
                    } else {
                        &mut self.dirmetas
                    };
                    map.insert(csum, b);
                }
                Kind::FileXattrs => {
                    let b = entry_bytes(repo, &entry.item, &path)?;
                    named_xattrs.insert(csum, b);
                }
                Kind::FileXattrsLink => {
                    let src = match &entry.item {
                        TarItem::Hardlink(target) => match parse_object_path(target.as_bytes()) {
                            Some((n, Kind::FileXattrs)) => XattrsSrc::Named(n),
                            _ => bail!(
                                "{path} links to {}, which is not a .file-xattrs object",
                                target.to_string_lossy()
                            ),
                        },
                        item => XattrsSrc::Inline(entry_bytes(repo, item, &path)?),
                    };
                    links.insert(csum, src);
                }
                Kind::File => {
                    let content = match entry.item {
                        TarItem::Leaf(c @ (LeafContent::Regular(_) | LeafContent::Symlink(_))) => c,
                        _ => bail!("{path}: a content object must be a regular file or a symlink"),
                    };
                    let stat = Stat {
                        st_mode: entry.stat.st_mode & 0o7777,
                        st_uid: entry.stat.st_uid,
                        st_gid: entry.stat.st_gid,
                        st_mtim_sec: 0,
                        st_mtim_nsec: 0,
                        xattrs: entry.stat.xattrs,
                    };
                    self.layer_files[li].push(csum.clone());
                    self.files.insert(
                        csum,
                        FileObject {
                            stat,
                            content,
                            layer: li,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_name_checksum_and_kind() {
        let c = format!("ab{}", "0".repeat(62));
        let p = format!("sysroot/ostree/repo/objects/ab/{}.file", "0".repeat(62));
        assert_eq!(
            parse_object_path(p.as_bytes()),
            Some((c.clone(), Kind::File))
        );
        let p = format!(
            "/sysroot/ostree/repo/objects/ab/{}.file-xattrs-link",
            "0".repeat(62)
        );
        assert_eq!(
            parse_object_path(p.as_bytes()),
            Some((c.clone(), Kind::FileXattrsLink))
        );
        for bad in [
            "usr/bin/ping".to_string(),
            "sysroot/ostree/repo/objects/ab".to_string(),
            format!("sysroot/ostree/repo/objects/ab/{}.file", "0".repeat(61)),
            format!("sysroot/ostree/repo/objects/AB/{}.file", "0".repeat(62)),
            format!("sysroot/ostree/repo/objects/ab/{}.sig", "0".repeat(62)),
            format!("sysroot/ostree/repo/tmp/ab/{}.file", "0".repeat(62)),
        ] {
            assert_eq!(parse_object_path(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn xattrs_lose_their_nul_and_keep_their_values() {
        use glib::prelude::ToVariant;
        let list = vec![
            (b"security.capability\0".to_vec(), vec![1u8, 0, 0, 2]),
            (
                b"security.selinux\0".to_vec(),
                b"system_u:object_r:bin_t:s0\0".to_vec(),
            ),
        ];
        let v = list.to_variant();
        let x = parse_xattrs(v.data()).unwrap();
        assert_eq!(x.len(), 2);
        assert_eq!(&*x[OsStr::new("security.capability")], &[1, 0, 0, 2]);
        assert_eq!(
            &*x[OsStr::new("security.selinux")],
            b"system_u:object_r:bin_t:s0\0"
        );
        // No xattrs: an empty object.
        assert!(parse_xattrs(&[]).unwrap().is_empty());
        // What the writer computes checksums from gives the same bytes back.
        let back = crate::stores::ostree_repo::objects::xattrs_variant(&x);
        assert_eq!(back.data(), v.data());
    }
}
