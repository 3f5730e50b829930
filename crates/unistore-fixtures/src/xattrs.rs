//! Reading extended attributes of a path without following symlinks.

use anyhow::{Context, Result};
use rustix::io::Errno;
use std::path::Path;

/// All xattrs of `path` (not following a final symlink) whose name passes `keep`, sorted.
///
/// Filesystems without xattr support yield an empty list.
pub fn read_xattrs(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<(String, Vec<u8>)>> {
    let names = loop {
        let n = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing xattrs of {path:?}")),
        };
        let mut buf = vec![0u8; n];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                break buf;
            }
            // Grew between the two calls: try again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e).with_context(|| format!("listing xattrs of {path:?}")),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec())
            .with_context(|| format!("non-UTF-8 xattr name on {path:?}"))?;
        if !keep(&name) {
            continue;
        }
        let value = loop {
            let n = match rustix::fs::lgetxattr_query(path, name.as_str()) {
                Ok(n) => n,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e).with_context(|| format!("xattr {name} of {path:?}")),
            };
            let mut buf = vec![0u8; n];
            match rustix::fs::lgetxattr(path, name.as_str(), &mut buf[..]) {
                Ok(len) => {
                    buf.truncate(len);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e).with_context(|| format!("xattr {name} of {path:?}")),
            }
        };
        if let Some(value) = value {
            out.push((name, value));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_xattrs_when_supported() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        match rustix::fs::lsetxattr(&f, "user.fixture", b"v\0", rustix::fs::XattrFlags::empty()) {
            Ok(()) => {
                let x = read_xattrs(&f, |n| n.starts_with("user.")).unwrap();
                assert_eq!(x, vec![("user.fixture".to_string(), b"v\0".to_vec())]);
                assert!(read_xattrs(&f, |_| false).unwrap().is_empty());
            }
            // tmpfs without user xattrs, for example: nothing to check.
            Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                assert!(
                    read_xattrs(&f, |n| n.starts_with("user."))
                        .unwrap()
                        .is_empty()
                )
            }
            Err(e) => panic!("lsetxattr: {e}"),
        }
    }
}
