//! The xattrs an encapsulated image's ostree layers give their files in
//! the host containers-storage (unified storage), where the layers are
//! stored as their tars have them (`sysroot/ostree/repo` included: an
//! export of the layer must give the original tar back).
//!
//! Set on the store's files (as
//! [`crate::stores::containers_storage::writer::extra_xattrs`] applies
//! them): each content object's xattrs on its `.file` object, which the
//! checkout paths are hard links to; an empty file's also on its checkout
//! path (ostree-ext writes empty files as plain files there); each
//! directory's (from its dirmeta) on its checkout directory. Checkout paths
//! as the layer has them: `usr/etc` is `etc`.

use anyhow::Result;
use composefs::generic_tree::LeafContent;
use composefs::tree::{Directory, Inode, RegularFile};

use super::objects::{ObjectSet, Xattrs};
use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::stores::containers_storage::writer::extra_xattrs::ExtraXattrs;

/// The layer path of the commit path `p` (no leading `/`).
fn layer_path(p: &str) -> String {
    match p.strip_prefix("usr/etc") {
        Some("") => "etc".to_string(),
        Some(rest) if rest.starts_with('/') => format!("etc{rest}"),
        _ => p.to_string(),
    }
}

fn object_path(checksum: &str) -> String {
    format!(
        "sysroot/ostree/repo/objects/{}/{}.file",
        &checksum[..2],
        &checksum[2..]
    )
}

/// For the image `manifest_digest` of `repo`, the xattrs its ostree layers'
/// files get in the store; empty for an image that is not encapsulated.
pub fn store_xattrs(repo: &Repo, manifest_digest: &str) -> Result<ExtraXattrs> {
    let img = composefs_repo::open_image(repo, manifest_digest)?;
    let mut out = ExtraXattrs::new();
    let Some(enc) = super::detect(&img)? else {
        return Ok(out);
    };
    let set = ObjectSet::read(repo, &enc)?;
    let mut add = |layer: usize, path: String, x: &Xattrs| {
        if !x.is_empty() {
            out.entry(enc.ostree_layers[layer].clone())
                .or_default()
                .push((path, x.clone()));
        }
    };
    let mut objects: Vec<(&String, &super::objects::FileObject)> = set.files.iter().collect();
    objects.sort_by_key(|(c, _)| *c);
    for (c, f) in objects {
        add(f.layer, object_path(c), &f.stat.xattrs);
    }
    let (fs, checksums) = super::tree::commit_tree_with_checksums(&set)?;
    fn walk(
        d: &Directory<ObjectId>,
        path: &str,
        fs_leaves: &[composefs::tree::Leaf<ObjectId>],
        visit: &mut dyn FnMut(&str, Option<composefs::generic_tree::LeafId>, &Xattrs),
    ) {
        visit(path, None, &d.stat.xattrs);
        for (name, inode) in d.sorted_entries() {
            let child = if path.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{path}/{}", name.to_string_lossy())
            };
            match inode {
                Inode::Directory(sub) => walk(sub, &child, fs_leaves, visit),
                Inode::Leaf(id, _) => {
                    let l = &fs_leaves[id.0];
                    if matches!(&l.content, LeafContent::Regular(RegularFile::Inline(d)) if d.is_empty())
                    {
                        visit(&child, Some(*id), &l.stat.xattrs);
                    }
                }
            }
        }
    }
    walk(&fs.root, "", &fs.leaves, &mut |p, leaf, x| {
        let layer = match leaf {
            None => 0,
            Some(id) => checksums
                .get(&id)
                .and_then(|c| set.files.get(c))
                .map_or(0, |f| f.layer),
        };
        add(layer, layer_path(p), x);
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr_etc_is_etc_in_the_layer() {
        assert_eq!(layer_path("usr/etc"), "etc");
        assert_eq!(layer_path("usr/etc/foo.conf"), "etc/foo.conf");
        assert_eq!(layer_path("usr/etcetera"), "usr/etcetera");
        assert_eq!(layer_path("usr/bin/ping"), "usr/bin/ping");
        assert_eq!(layer_path(""), "");
    }
}
