//! Issue 25: the layer merge every store follows, fed generated layers:
//! directories, files, symlinks, hard links, whiteouts and opaque markers
//! at every depth, with odd names. It never panics, and a merge it accepts
//! is a well-formed tree (composefs' own `fsck`), the same on a second run.
#![no_main]
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use composefs::generic_tree::{LeafContent, Stat};
use composefs::tree::RegularFile;
use composefs_oci::tar::{TarEntry, TarItem};
use libfuzzer_sys::fuzz_target;
use unistore::source::layer_merge::Merger;
use unistore::stores::composefs_repo::ObjectId;

const NAMES: &[&[u8]] = &[
    b"a", b"b", b"usr", b"..", b".", b".wh.a", b".wh..wh..opq", b".wh.", b".wh..", b".wh...",
    b"x y", b"\xff\xfe", b"",
];

/// The layers the bytes describe: 4 bytes an entry.
fn layers(data: &[u8]) -> Vec<Vec<TarEntry<ObjectId>>> {
    let mut out = vec![vec![]];
    for c in data.chunks_exact(4) {
        let (op, p1, p2, mode) = (c[0], c[1], c[2], c[3]);
        if op == 0xff {
            out.push(vec![]);
            continue;
        }
        let mut path = b"/".to_vec();
        path.extend_from_slice(NAMES[p1 as usize % NAMES.len()]);
        if p2 & 0x80 != 0 {
            path.push(b'/');
            path.extend_from_slice(NAMES[p2 as usize % NAMES.len()]);
        }
        let stat = Stat {
            st_mode: u32::from(mode) * 7 & 0o7777,
            st_uid: u32::from(p2 & 3),
            ..Stat::uninitialized()
        };
        let item = match op % 5 {
            0 => TarItem::Directory,
            1 => TarItem::Leaf(LeafContent::Regular(RegularFile::Inline(
                vec![mode; usize::from(p2 % 8)].into(),
            ))),
            2 => TarItem::Leaf(LeafContent::Symlink(
                OsStr::from_bytes(NAMES[p2 as usize % NAMES.len()]).into(),
            )),
            3 => TarItem::Hardlink(OsStr::from_bytes(NAMES[p2 as usize % NAMES.len()]).into()),
            _ => TarItem::Leaf(LeafContent::Fifo),
        };
        out.last_mut().unwrap().push(TarEntry {
            path: PathBuf::from(OsStr::from_bytes(&path)),
            stat,
            item,
        });
    }
    out
}

fn merge(data: &[u8]) -> Option<String> {
    let mut m = Merger::new();
    for (i, layer) in layers(data).into_iter().enumerate() {
        for e in layer {
            let r = m.apply(&format!("{}", i + 1), e);
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(!msg.contains('\n') && !msg.contains("LeafId"), "{msg}");
                return None;
            }
        }
    }
    let merged = m.finish().ok()?;
    merged.fs.fsck().expect("the merge made a malformed tree");
    let mut dump = vec![];
    composefs::dumpfile::write_dumpfile(&mut dump, &merged.fs).ok()?;
    Some(String::from_utf8_lossy(&dump).into_owned())
}

fuzz_target!(|data: &[u8]| {
    let a = merge(data);
    assert_eq!(a, merge(data), "the merge is not deterministic");
});
