//! The description of a merged image tree that tests compare real trees against.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The only xattr that composefs keeps when importing OCI layers (by default).
pub const COMPOSEFS_VISIBLE_XATTRS: &[&str] = &["security.capability"];

/// A list of `(name, value)` extended attributes.
pub type Xattrs = Vec<(String, Vec<u8>)>;

/// Whether composefs keeps xattr `name` from an OCI layer.
pub fn is_composefs_visible_xattr(name: &str) -> bool {
    COMPOSEFS_VISIBLE_XATTRS.contains(&name)
}

/// What kind of filesystem object an [`ExpectedEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file (the first name, in path order, of a hardlinked file).
    File {
        /// Lowercase hex SHA-256 of the content.
        sha256: String,
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The link target, verbatim.
        target: String,
    },
    /// A further name of the regular file at `to` (same inode).
    Hardlink {
        /// Absolute path of the first name (in path order) of that file.
        to: String,
    },
    /// A character device.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One object of a merged tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedEntry {
    /// Absolute path, e.g. `/usr/bin/foo`. The root directory itself is not listed.
    pub path: String,
    /// The object's kind and content.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The xattrs visible after a composefs import (only `security.capability`), sorted.
    pub xattrs: Xattrs,
    /// Every xattr carried by the layers (e.g. `user.*` too), sorted.
    pub layer_xattrs: Xattrs,
}

impl ExpectedEntry {
    /// Whether this is a regular file or a further name of one.
    pub fn is_file_like(&self) -> bool {
        matches!(
            self.kind,
            EntryKind::File { .. } | EntryKind::Hardlink { .. }
        )
    }
}

/// Look an entry up by absolute path in a list sorted by path.
pub fn find_entry<'a>(entries: &'a [ExpectedEntry], path: &str) -> Option<&'a ExpectedEntry> {
    entries
        .binary_search_by(|e| e.path.as_str().cmp(path))
        .ok()
        .map(|i| &entries[i])
}

/// Turn files sharing an inode into one `File` (the first path in order) plus `Hardlink`s.
///
/// `entries` must be sorted by path; `inode_of[i]` is `Some(key)` for regular files whose
/// names should be grouped by `key`, `None` otherwise.
pub(crate) fn assign_hardlinks(entries: &mut [ExpectedEntry], inode_of: &[Option<u64>]) {
    let mut first: HashMap<u64, String> = HashMap::new();
    for (e, ino) in entries.iter_mut().zip(inode_of) {
        let Some(ino) = ino else { continue };
        match first.get(ino) {
            Some(to) => e.kind = EntryKind::Hardlink { to: to.clone() },
            None => {
                first.insert(*ino, e.path.clone());
            }
        }
    }
}

/// Split a full xattr list into (composefs-visible, all), both sorted by name.
pub(crate) fn split_xattrs(mut all: Xattrs) -> (Xattrs, Xattrs) {
    all.sort();
    let visible = all
        .iter()
        .filter(|(k, _)| is_composefs_visible_xattr(k))
        .cloned()
        .collect();
    (visible, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> ExpectedEntry {
        ExpectedEntry {
            path: path.into(),
            kind: EntryKind::File {
                sha256: "00".into(),
                size: 1,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            xattrs: vec![],
            layer_xattrs: vec![],
        }
    }

    #[test]
    fn hardlinks_point_to_first_name() {
        let mut v = vec![file("/a"), file("/b"), file("/c"), file("/d")];
        assign_hardlinks(&mut v, &[Some(7), None, Some(7), Some(7)]);
        assert!(matches!(v[0].kind, EntryKind::File { .. }));
        assert!(matches!(v[1].kind, EntryKind::File { .. }));
        assert_eq!(v[2].kind, EntryKind::Hardlink { to: "/a".into() });
        assert_eq!(v[3].kind, EntryKind::Hardlink { to: "/a".into() });
        assert!(v[3].is_file_like());
        assert_eq!(find_entry(&v, "/c").unwrap().path, "/c");
        assert!(find_entry(&v, "/e").is_none());
    }

    #[test]
    fn only_capability_is_visible() {
        let (vis, all) = split_xattrs(vec![
            ("user.x".into(), b"1".to_vec()),
            ("security.capability".into(), b"c".to_vec()),
        ]);
        assert_eq!(
            vis,
            vec![("security.capability".to_string(), b"c".to_vec())]
        );
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "security.capability");
    }

    #[test]
    fn serializes_to_json() {
        let j = serde_json::to_string(&file("/a")).unwrap();
        assert!(j.contains("\"type\":\"file\""), "{j}");
    }
}
