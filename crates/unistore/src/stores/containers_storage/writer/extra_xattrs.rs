//! Xattrs a layer's files get beyond what its tar says (issue 22).
//!
//! An ostree-encapsulated image's ostree layers keep their files' xattrs in
//! `.file-xattrs` objects, not in PAX headers, so the tar alone gives the
//! store's files none (podman's own pull loses them the same way). The
//! caller, which knows the format ([`crate::source::ostree_encap`]), names
//! the paths of a layer and their xattrs; they are set on the layer's
//! `diff` after the layer was replayed and its digest checked, before it is
//! published. The tar-split and the layer's digest do not change: an
//! export of the layer is still the original tar.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::XattrFlags;

/// Xattrs by name, names without their NUL.
pub type Xattrs = BTreeMap<Box<OsStr>, Box<[u8]>>;

/// Per layer diff-id: paths relative to the layer root (`""` for the root
/// itself) and the xattrs each gets.
pub type ExtraXattrs = HashMap<String, Vec<(String, Xattrs)>>;

/// Sets `extra` below the layer directory `diff`; returns how many xattrs
/// were set. A `user.*` xattr on a symlink (which Linux refuses) is left
/// out.
pub fn apply(diff: &Path, extra: &[(String, Xattrs)]) -> Result<u64> {
    let mut n = 0;
    for (rel, xattrs) in extra {
        let p = if rel.is_empty() {
            diff.to_path_buf()
        } else {
            diff.join(rel)
        };
        let is_link = std::fs::symlink_metadata(&p)
            .with_context(|| format!("{rel}: not in the layer"))?
            .file_type()
            .is_symlink();
        for (k, v) in xattrs {
            if is_link && k.as_encoded_bytes().starts_with(b"user.") {
                continue;
            }
            rustix::fs::lsetxattr(&p, k.as_ref(), v, XattrFlags::empty())
                .with_context(|| format!("setting xattr {} on {rel}", k.to_string_lossy()))?;
            n += 1;
        }
    }
    Ok(n)
}
