//! Issue 25: the owner and mode of a store layer's files, checked against
//! what its tar says under the rules every store follows
//! ([`crate::source::layer_merge`]'s): an entry's header sets its file's
//! metadata, and a hard link's header sets the metadata of every name of
//! the file (podman's rule), except a link to a symlink.
//!
//! The headers come from the layer's tar-split (no file content is read),
//! the files from its `diff` directory.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use composefs::fsverity::FsVerityHashValue;

use crate::stores::composefs_repo::ObjectId;
use crate::stores::containers_storage::format::TarSplitEntry;
use crate::stores::tar_walk::{self, Body, Entry, Kind, LayerVisitor};

/// Owner and permission bits.
type Meta = (u32, u64, u64);

/// Files (and their hard-link groups) with the metadata the tar gives them.
#[derive(Default)]
struct Expected {
    /// Path -> group.
    group_of: BTreeMap<Vec<u8>, usize>,
    /// Group -> metadata (`None`: a symlink's group, not checked).
    groups: Vec<Option<Meta>>,
}

impl LayerVisitor for Expected {
    fn raw(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn entry(&mut self, e: &Entry, _: Body<'_>) -> Result<()> {
        let Ok(rel) = e.rel_path() else {
            return Ok(());
        };
        let meta = (e.mode & 0o7777, e.uid, e.gid);
        match e.kind {
            Kind::Regular => {
                self.groups.push(Some(meta));
                self.group_of.insert(rel, self.groups.len() - 1);
            }
            Kind::Hardlink => {
                let target = e.rel_link_target().unwrap_or_default();
                if let Some(&g) = self.group_of.get(&target) {
                    if self.groups[g].is_some() {
                        self.groups[g] = Some(meta);
                    }
                    self.group_of.insert(rel, g);
                } else {
                    // A link to a symlink, a device or something absent: the
                    // name is not checked.
                    self.group_of.remove(&rel);
                }
            }
            Kind::Symlink | Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                self.groups.push(None);
                self.group_of.insert(rel, self.groups.len() - 1);
            }
            Kind::Directory | Kind::GlobalHeader => {
                self.group_of.remove(&rel);
            }
        }
        Ok(())
    }
}

/// The layer's regular files whose owner or mode in `diff` is not what its
/// tar gives them, one line each.
pub fn mismatches(diff: &Path, entries: &[TarSplitEntry]) -> Result<Vec<String>> {
    let none = ObjectId::EMPTY;
    let chunks = entries.iter().filter_map(|e| match e {
        TarSplitEntry::Segment(b) => Some(Ok(b.as_slice())),
        TarSplitEntry::File { size: 0, .. } => None,
        TarSplitEntry::File { .. } => Some(Err(&none)),
    });
    let mut exp = Expected::default();
    tar_walk::walk_chunks(chunks, &mut exp)?;
    let mut out = vec![];
    for (rel, g) in &exp.group_of {
        let Some((mode, uid, gid)) = exp.groups[*g] else {
            continue;
        };
        // Whiteouts and names a later entry replaced are not this group's.
        let p = diff.join(tar_walk::as_os_str(rel));
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !md.file_type().is_file() {
            continue;
        }
        let got = (md.mode() & 0o7777, u64::from(md.uid()), u64::from(md.gid()));
        if got != (mode, uid, gid) {
            out.push(format!(
                "/{}: mode {:04o} owner {}:{} in the store, the layer says mode {mode:04o} owner {uid}:{gid}",
                String::from_utf8_lossy(rel),
                got.0,
                got.1,
                got.2
            ));
        }
    }
    Ok(out)
}
