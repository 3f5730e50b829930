//! Packing an existing root filesystem directory (e.g. a debootstrap tree) into an image.
//!
//! Two layers: `/usr` first (the big, rarely changing part), then everything else. Modes,
//! owners, mtimes, symlinks, device nodes, `security.capability` and `user.*` xattrs are
//! preserved; hard links are kept as tar hard links when both names land in the same
//! layer (a name in the other layer gets its own copy, since layers cannot link across).
//! File contents are streamed, never held in memory. The contents of `/proc`, `/sys` and
//! `/dev` are left out (the directories themselves are kept); sockets are skipped.

use super::BuiltImage;
use super::layer::{LayerTar, Meta, Special};
use super::oci::ImageWriter;
use crate::xattrs::read_xattrs;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Top-level directories whose contents are not packed.
pub const SKIPPED_CONTENTS: &[&str] = &["proc", "sys", "dev"];

/// Which xattrs of the source tree are carried into the layers.
pub fn packed_xattr(name: &str) -> bool {
    name == "security.capability" || name.starts_with("user.")
}

/// Pack `rootfs` into `oci_dir` under `tag`, labelled with `version`.
pub fn build_from_rootfs(
    rootfs: &Path,
    oci_dir: &Path,
    tag: &str,
    version: &str,
) -> Result<BuiltImage> {
    anyhow::ensure!(rootfs.is_dir(), "{rootfs:?} is not a directory");
    let mut top: Vec<String> = Vec::new();
    for e in std::fs::read_dir(rootfs).with_context(|| format!("reading {rootfs:?}"))? {
        let name = e?.file_name();
        let name = name
            .into_string()
            .map_err(|n| anyhow::anyhow!("non-UTF-8 name {n:?} in {rootfs:?}"))?;
        top.push(name);
    }
    top.sort();
    let mut w = ImageWriter::new(
        oci_dir,
        version,
        &[("containers.bootc", "1")],
        flate2::Compression::default(),
    )?;
    let has_usr = top.iter().any(|n| n == "usr") && rootfs.join("usr").is_dir();
    if has_usr {
        w.add_layer("unistore-fixture from-rootfs: /usr", |t| {
            Packer::new(rootfs, t).entry("usr")
        })?;
    }
    w.add_layer("unistore-fixture from-rootfs: rest", |t| {
        let mut p = Packer::new(rootfs, t);
        for name in top.iter().filter(|n| !(has_usr && *n == "usr")) {
            p.entry(name)?;
        }
        Ok(())
    })?;
    w.finish(tag)
}

struct Packer<'a, 'w> {
    root: &'a Path,
    tar: &'a mut LayerTar<&'w mut dyn Write>,
    /// (dev, ino) -> first layer path, for hard links within this layer.
    links: HashMap<(u64, u64), String>,
}

fn meta_of(md: &Metadata) -> Result<Meta> {
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
    })
}

impl<'a, 'w> Packer<'a, 'w> {
    fn new(root: &'a Path, tar: &'a mut LayerTar<&'w mut dyn Write>) -> Self {
        Self {
            root,
            tar,
            links: HashMap::new(),
        }
    }

    /// Pack `rel` (relative to the root, no leading slash) and, for a directory, its tree.
    fn entry(&mut self, rel: &str) -> Result<()> {
        let src = self.root.join(rel);
        let md = std::fs::symlink_metadata(&src).with_context(|| format!("stat {src:?}"))?;
        let ft = md.file_type();
        let meta = meta_of(&md)?;
        let xattrs = read_xattrs(&src, packed_xattr)?;
        if ft.is_dir() {
            self.tar.dir_x(rel, meta, &xattrs)?;
            if SKIPPED_CONTENTS.contains(&rel) {
                return Ok(());
            }
            let mut names = Vec::new();
            for e in std::fs::read_dir(&src).with_context(|| format!("reading {src:?}"))? {
                let name = e?
                    .file_name()
                    .into_string()
                    .map_err(|n| anyhow::anyhow!("non-UTF-8 name {n:?} in {src:?}"))?;
                names.push(name);
            }
            names.sort();
            for n in names {
                self.entry(&format!("{rel}/{n}"))?;
            }
        } else if ft.is_file() {
            if md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                if let Some(first) = self.links.get(&key) {
                    return self.tar.hardlink(rel, &first.clone(), meta);
                }
                self.links.insert(key, rel.to_string());
            }
            let f = std::fs::File::open(&src).with_context(|| format!("opening {src:?}"))?;
            self.tar
                .file_from_reader(rel, meta, md.len(), std::io::BufReader::new(f), &xattrs)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src)?;
            let target = target
                .to_str()
                .with_context(|| format!("non-UTF-8 symlink target in {src:?}"))?;
            self.tar.symlink_x(rel, target, meta, &xattrs)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = md.rdev();
            let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            let kind = if ft.is_char_device() {
                Special::Char(major, minor)
            } else {
                Special::Block(major, minor)
            };
            self.tar.special(rel, kind, meta, &xattrs)?;
        } else if ft.is_fifo() {
            self.tar.special(rel, Special::Fifo, meta, &xattrs)?;
        } else {
            eprintln!("unistore-fixture: skipping socket {src:?}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{EntryKind, find_entry};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn packs_a_small_tree() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("root");
        let p = |s: &str| root.join(s);
        for d in ["usr/bin", "etc", "proc/1", "dev"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::write(p("usr/bin/tool"), b"tool").unwrap();
        std::fs::set_permissions(p("usr/bin/tool"), std::fs::Permissions::from_mode(0o4711))
            .unwrap();
        std::fs::hard_link(p("usr/bin/tool"), p("usr/bin/tool2")).unwrap();
        // A hard link across the /usr split becomes a copy.
        std::fs::hard_link(p("usr/bin/tool"), p("etc/tool-copy")).unwrap();
        std::os::unix::fs::symlink("usr/bin", p("bin")).unwrap();
        std::fs::write(p("proc/1/status"), b"skipped").unwrap();
        std::fs::write(p("etc/big"), vec![7u8; 300_000]).unwrap();

        let out = td.path().join("oci");
        let built = build_from_rootfs(&root, &out, "t", "3").unwrap();
        assert_eq!(built.diff_ids.len(), 2);
        let paths: Vec<&str> = built.expected.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/bin",
                "/dev",
                "/etc",
                "/etc/big",
                "/etc/tool-copy",
                "/proc",
                "/usr",
                "/usr/bin",
                "/usr/bin/tool",
                "/usr/bin/tool2"
            ]
        );
        let e = &built.expected;
        assert_eq!(find_entry(e, "/usr/bin/tool").unwrap().mode, 0o4711);
        assert_eq!(
            find_entry(e, "/usr/bin/tool2").unwrap().kind,
            EntryKind::Hardlink {
                to: "/usr/bin/tool".into()
            }
        );
        assert!(matches!(
            find_entry(e, "/etc/tool-copy").unwrap().kind,
            EntryKind::File { size: 4, .. }
        ));
        assert_eq!(
            find_entry(e, "/bin").unwrap().kind,
            EntryKind::Symlink {
                target: "usr/bin".into()
            }
        );
        assert!(matches!(
            find_entry(e, "/etc/big").unwrap().kind,
            EntryKind::File { size: 300_000, .. }
        ));
    }
}
