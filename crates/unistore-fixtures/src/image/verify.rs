//! Comparing a real directory tree (a mount, an unpacked bundle) with an expected tree.

use super::expected::{EntryKind, ExpectedEntry, assign_hardlinks, split_xattrs};
use crate::xattrs::read_xattrs;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Which xattrs [`compare_tree`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrCheck {
    /// Do not compare xattrs.
    Ignore,
    /// Compare the composefs-visible set ([`ExpectedEntry::xattrs`]).
    #[default]
    Composefs,
    /// Compare the `user.*` and `security.capability` xattrs with
    /// [`ExpectedEntry::layer_xattrs`] (what an extracting tool like umoci or podman sets).
    Layer,
}

/// Options of [`compare_tree`].
#[derive(Debug, Clone, Default)]
pub struct CompareOpts {
    /// Which xattrs to compare.
    pub xattrs: XattrCheck,
    /// Absolute paths left out on both sides, each with everything below it.
    pub ignore: Vec<String>,
    /// Do not compare uid/gid.
    pub ignore_owners: bool,
}

fn scanned_xattr(name: &str) -> bool {
    name == "security.capability" || name.starts_with("user.")
}

/// Describe the tree under `root` like [`super::BuiltImage::expected`]: sorted by path,
/// root itself omitted, hard links (same device and inode) as [`EntryKind::Hardlink`].
/// Only `user.*` and `security.capability` xattrs are read. Does not cross into `ignore`d
/// paths (absolute, relative to `root`).
pub fn scan_tree(root: &Path, ignore: &[String]) -> Result<Vec<ExpectedEntry>> {
    let mut found: BTreeMap<String, (ExpectedEntry, Option<u64>)> = BTreeMap::new();
    let mut inode_keys: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(rel.trim_start_matches('/'));
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir:?}"))? {
            let e = e?;
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("non-UTF-8 name {n:?} in {dir:?}"))?;
            let path = format!("{rel}/{name}");
            if is_ignored(&path, ignore) {
                continue;
            }
            let full = e.path();
            let md = std::fs::symlink_metadata(&full)?;
            let ft = md.file_type();
            let mut ino = None;
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                EntryKind::Dir
            } else if ft.is_file() {
                let mut h = Sha256::new();
                let mut f = std::fs::File::open(&full).with_context(|| format!("{full:?}"))?;
                let size = std::io::copy(&mut f, &mut h)?;
                if md.nlink() > 1 {
                    let next = inode_keys.len() as u64;
                    ino = Some(*inode_keys.entry((md.dev(), md.ino())).or_insert(next));
                }
                EntryKind::File {
                    sha256: hex::encode(h.finalize()),
                    size,
                }
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&full)?;
                EntryKind::Symlink {
                    target: t.to_str().context("non-UTF-8 symlink target")?.to_string(),
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
                if ft.is_char_device() {
                    EntryKind::CharDev { major, minor }
                } else {
                    EntryKind::BlockDev { major, minor }
                }
            } else if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                anyhow::bail!("{full:?}: unsupported file type");
            };
            let (xattrs, layer_xattrs) = split_xattrs(read_xattrs(&full, scanned_xattr)?);
            let entry = ExpectedEntry {
                path: path.clone(),
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                xattrs,
                layer_xattrs,
            };
            found.insert(path, (entry, ino));
        }
    }
    let (mut entries, inodes): (Vec<_>, Vec<_>) = found.into_values().unzip();
    assign_hardlinks(&mut entries, &inodes);
    Ok(entries)
}

fn is_ignored(path: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|i| {
        path == i
            || path
                .strip_prefix(i.as_str())
                .is_some_and(|r| r.starts_with('/'))
    })
}

/// Compare the tree under `root` with `expected`; returns one line per difference
/// (empty when they match).
pub fn compare_tree(
    root: &Path,
    expected: &[ExpectedEntry],
    opts: &CompareOpts,
) -> Result<Vec<String>> {
    let actual = scan_tree(root, &opts.ignore)?;
    Ok(diff_entries(expected, &actual, opts))
}

/// Differences between two entry lists under `opts`, one line each.
pub fn diff_entries(
    expected: &[ExpectedEntry],
    actual: &[ExpectedEntry],
    opts: &CompareOpts,
) -> Vec<String> {
    let exp: BTreeMap<&str, &ExpectedEntry> = expected
        .iter()
        .filter(|e| !is_ignored(&e.path, &opts.ignore))
        .map(|e| (e.path.as_str(), e))
        .collect();
    let act: BTreeMap<&str, &ExpectedEntry> = actual
        .iter()
        .filter(|e| !is_ignored(&e.path, &opts.ignore))
        .map(|e| (e.path.as_str(), e))
        .collect();
    let mut out = Vec::new();
    for (p, e) in &exp {
        let Some(a) = act.get(p) else {
            out.push(format!("{p}: missing"));
            continue;
        };
        if e.kind != a.kind {
            out.push(format!("{p}: kind {:?} != expected {:?}", a.kind, e.kind));
        }
        if e.mode != a.mode {
            out.push(format!("{p}: mode {:o} != expected {:o}", a.mode, e.mode));
        }
        if !opts.ignore_owners && (e.uid, e.gid) != (a.uid, a.gid) {
            out.push(format!(
                "{p}: owner {}:{} != expected {}:{}",
                a.uid, a.gid, e.uid, e.gid
            ));
        }
        let (ex, ax) = match opts.xattrs {
            XattrCheck::Ignore => (None, None),
            XattrCheck::Composefs => (Some(&e.xattrs), Some(&a.xattrs)),
            XattrCheck::Layer => (Some(&e.layer_xattrs), Some(&a.layer_xattrs)),
        };
        if ex != ax {
            out.push(format!("{p}: xattrs {ax:?} != expected {ex:?}"));
        }
    }
    for p in act.keys().filter(|p| !exp.contains_key(*p)) {
        out.push(format!("{p}: unexpected"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn scan_and_compare() {
        let td = tempfile::tempdir().unwrap();
        let r = td.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("d/f"), b"abc").unwrap();
        std::fs::set_permissions(r.join("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(r.join("d/f"), r.join("d/g")).unwrap();
        std::os::unix::fs::symlink("f", r.join("d/s")).unwrap();
        std::fs::create_dir_all(r.join("skip/me")).unwrap();

        let opts = CompareOpts {
            ignore: vec!["/skip".into()],
            xattrs: XattrCheck::Ignore,
            ..Default::default()
        };
        let scanned = scan_tree(r, &opts.ignore).unwrap();
        let paths: Vec<&str> = scanned.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["/d", "/d/f", "/d/g", "/d/s"]);
        assert_eq!(scanned[2].kind, EntryKind::Hardlink { to: "/d/f".into() });
        assert_eq!(scanned[1].mode, 0o600);
        assert!(compare_tree(r, &scanned, &opts).unwrap().is_empty());

        let mut changed = scanned.clone();
        changed[1].mode = 0o644;
        changed.remove(3);
        let diffs = compare_tree(r, &changed, &opts).unwrap();
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].contains("/d/f: mode 600 != expected 644"));
        assert!(diffs[1].contains("/d/s: unexpected"));
    }

    #[test]
    fn ignore_matches_whole_components() {
        let ig = vec!["/run".to_string()];
        assert!(is_ignored("/run", &ig));
        assert!(is_ignored("/run/x", &ig));
        assert!(!is_ignored("/running", &ig));
    }
}
