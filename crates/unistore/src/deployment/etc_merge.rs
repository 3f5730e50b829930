//! Three-way merge of `/etc` at finalize: the old image's `/etc`, the
//! host's current `/etc`, the new image's `/etc`.
//!
//! Per path: unchanged locally -> the new image's version; changed locally
//! (modified, added or deleted) and unchanged in the image -> the local
//! version; changed on both sides to different results -> a conflict.
//! The merge is planned first (conflicts are reported before anything is
//! written), then applied on a copy of the new `/etc`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use composefs::generic_tree::{Directory, Inode, LeafContent};
use composefs::tree::{FileSystem, RegularFile};
use sha2::{Digest, Sha256};

use crate::stores::composefs_repo::{ObjectId, Repo, open_file_content};

/// One path's state, compared across the three trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir { mode: u32, uid: u32, gid: u32 },
    /// A regular file, by content hash.
    File {
        sha256: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A symlink.
    Symlink { target: String, uid: u32, gid: u32 },
    /// A device, FIFO or socket.
    Other { mode: u32 },
}

/// Relative path -> node.
pub type Tree = BTreeMap<String, Node>;

fn hash_reader(mut r: impl std::io::Read) -> Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut r, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Scans a directory on disk.
pub fn scan_disk(root: &Path) -> Result<Tree> {
    let mut t = Tree::new();
    fn walk(dir: &Path, rel: &str, t: &mut Tree) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let p = e.path();
            let m = std::fs::symlink_metadata(&p)?;
            let mode = m.permissions().mode() & 0o7777;
            let node = if m.is_dir() {
                walk(&p, &r, t)?;
                Node::Dir {
                    mode,
                    uid: m.uid(),
                    gid: m.gid(),
                }
            } else if m.is_file() {
                Node::File {
                    sha256: hash_reader(std::fs::File::open(&p)?)?,
                    mode,
                    uid: m.uid(),
                    gid: m.gid(),
                }
            } else if m.file_type().is_symlink() {
                Node::Symlink {
                    target: std::fs::read_link(&p)?.to_string_lossy().into_owned(),
                    uid: m.uid(),
                    gid: m.gid(),
                }
            } else {
                Node::Other { mode: m.mode() }
            };
            t.insert(r, node);
        }
        Ok(())
    }
    walk(root, "", &mut t)?;
    Ok(t)
}

/// Scans a directory of an image tree (`/etc`).
pub fn scan_image(fs: &FileSystem<ObjectId>, repo: &Repo, path: &str) -> Result<Tree> {
    let mut t = Tree::new();
    let Ok(Some(dir)) = fs.root.get_directory_opt(std::ffi::OsStr::new(path)) else {
        return Ok(t);
    };
    fn walk(
        d: &Directory<RegularFile<ObjectId>>,
        rel: &str,
        fs: &FileSystem<ObjectId>,
        repo: &Repo,
        t: &mut Tree,
    ) -> Result<()> {
        for (name, inode) in d.sorted_entries() {
            let name = name.to_string_lossy();
            let r = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let node = match inode {
                Inode::Directory(sub) => {
                    walk(sub, &r, fs, repo, t)?;
                    let s = &sub.stat;
                    Node::Dir {
                        mode: s.st_mode & 0o7777,
                        uid: s.st_uid,
                        gid: s.st_gid,
                    }
                }
                Inode::Leaf(id, _) => {
                    let leaf = &fs.leaves[id.0];
                    let s = &leaf.stat;
                    match &leaf.content {
                        LeafContent::Regular(f) => Node::File {
                            sha256: hash_reader(open_file_content(f, repo)?)?,
                            mode: s.st_mode & 0o7777,
                            uid: s.st_uid,
                            gid: s.st_gid,
                        },
                        LeafContent::Symlink(target) => Node::Symlink {
                            target: target.to_string_lossy().into_owned(),
                            uid: s.st_uid,
                            gid: s.st_gid,
                        },
                        other => Node::Other {
                            mode: other.file_type_bits() | (s.st_mode & 0o7777),
                        },
                    }
                }
            };
            t.insert(r, node);
        }
        Ok(())
    }
    walk(dir, "", fs, repo, &mut t)?;
    Ok(t)
}

/// One step of a merge, applied on a copy of the new `/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put the host's version of this path in place.
    TakeLocal(String),
    /// Remove this path (deleted locally).
    Delete(String),
}

/// The planned merge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub conflicts: Vec<String>,
}

/// Plans the merge of `cur` (host) with `new` (new image) given `old` (old image).
pub fn plan(old: &Tree, cur: &Tree, new: &Tree) -> Plan {
    let paths: BTreeSet<&String> = old.keys().chain(cur.keys()).chain(new.keys()).collect();
    let mut p = Plan::default();
    for path in paths {
        let (o, c, n) = (old.get(path), cur.get(path), new.get(path));
        if c == o || n == c {
            continue; // untouched locally: follow the image; or both agree
        }
        if n == o {
            p.ops.push(match c {
                Some(_) => Op::TakeLocal(path.clone()),
                None => Op::Delete(path.clone()),
            });
        } else {
            p.conflicts.push(path.clone());
        }
    }
    p
}

/// Applies `plan` to `merged` (a copy of the new `/etc`), taking local
/// versions from `cur`.
pub fn apply(plan: &Plan, cur: &Path, merged: &Path) -> Result<()> {
    if !plan.conflicts.is_empty() {
        bail!("merge has conflicts");
    }
    for op in &plan.ops {
        match op {
            Op::Delete(p) => {
                let t = merged.join(p);
                match std::fs::symlink_metadata(&t) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&t)?,
                    Ok(_) => std::fs::remove_file(&t)?,
                    Err(_) => {}
                }
            }
            Op::TakeLocal(p) => {
                let src = cur.join(p);
                let dst = merged.join(p);
                let m = std::fs::symlink_metadata(&src)?;
                if m.is_dir() {
                    if !dst.is_dir() {
                        let _ = std::fs::remove_file(&dst);
                        std::fs::create_dir(&dst)?;
                    }
                    std::fs::set_permissions(&dst, m.permissions())?;
                    std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))?;
                    continue;
                }
                match std::fs::symlink_metadata(&dst) {
                    Ok(dm) if dm.is_dir() => std::fs::remove_dir_all(&dst)?,
                    Ok(_) => std::fs::remove_file(&dst)?,
                    Err(_) => {}
                }
                let st = std::process::Command::new("cp")
                    .args(["-a", "--reflink=auto", "--no-target-directory"])
                    .arg(&src)
                    .arg(&dst)
                    .status()
                    .context("running cp")?;
                if !st.success() {
                    bail!("copying {} failed", src.display());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(h: &str) -> Node {
        Node::File {
            sha256: h.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn three_way() {
        let old: Tree = [
            ("a", f("1")),
            ("b", f("1")),
            ("c", f("1")),
            ("d", f("1")),
            ("g", f("1")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut cur = old.clone();
        cur.insert("a".into(), f("local")); // local edit, image unchanged
        cur.insert("b".into(), f("local")); // both changed differently
        cur.remove("d"); // local delete
        cur.insert("e".into(), f("added")); // local add
        cur.insert("g".into(), f("same")); // both changed the same way
        let mut new = old.clone();
        new.insert("b".into(), f("image"));
        new.insert("c".into(), f("image")); // image change, untouched locally
        new.insert("g".into(), f("same"));
        let p = plan(&old, &cur, &new);
        assert_eq!(p.conflicts, vec!["b".to_string()]);
        assert_eq!(
            p.ops,
            vec![
                Op::TakeLocal("a".into()),
                Op::Delete("d".into()),
                Op::TakeLocal("e".into())
            ]
        );
    }
}
