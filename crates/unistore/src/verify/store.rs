//! The host containers-storage as fsck reads it: its JSON under shared
//! locks, one image's layers, files that hold an object's content, and
//! whether the filesystem can reflink.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use crate::stores::containers_storage::format::{
    self as cfmt, IMAGES_JSON, IMAGES_LOCK, LAYERS_JSON, LAYERS_LOCK,
};
use crate::stores::containers_storage::writer;
use crate::stores::tar_walk;

use super::memo::BadObject;
use super::memo::LayerMemo;
use super::repo::verity_of;
use crate::util::short_digest;

/// The store's JSON, read once per check.
pub struct StoreView {
    pub path: PathBuf,
    pub layers: Vec<Value>,
    pub images: Vec<Value>,
}

/// Reads the store's JSON under shared locks (taken only if the lock files
/// exist). `Ok(None)` when there is no store.
pub fn read_store(path: &Path) -> Result<Option<StoreView>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let layers = {
        let _l = cfmt::StoreLock::shared_if_exists(&path.join(LAYERS_LOCK))?;
        cfmt::read_json_array(&path.join(LAYERS_JSON))?.unwrap_or_default()
    };
    let images = {
        let _l = cfmt::StoreLock::shared_if_exists(&path.join(IMAGES_LOCK))?;
        cfmt::read_json_array(&path.join(IMAGES_JSON))?.unwrap_or_default()
    };
    Ok(Some(StoreView {
        path: path.to_path_buf(),
        layers,
        images,
    }))
}

pub fn id_of(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// Problems of the image in the store; `None` when the store lacks it.
pub fn check_store_image(
    store: &StoreView,
    config_digest: &str,
    config_json: Option<&[u8]>,
    diff_ids: &[String],
    verify: bool,
    memo: &LayerMemo,
) -> Option<Vec<String>> {
    let image_id = config_digest.trim_start_matches("sha256:");
    let img = store.images.iter().find(|i| id_of(i) == image_id)?;
    let mut problems = vec![];
    let ids = match cfmt::chain_ids(diff_ids) {
        Ok(i) => i,
        Err(e) => return Some(vec![format!("{e:#}")]),
    };
    let top = img.get("layer").and_then(Value::as_str);
    if top != ids.last().map(String::as_str) {
        problems.push(format!(
            "its top layer is {}, expected {} (a different chain of diff-ids)",
            top.unwrap_or("(none)"),
            ids.last().map(String::as_str).unwrap_or("(none)")
        ));
    }
    for (id, diff_id) in ids.iter().zip(diff_ids) {
        match store.layers.iter().find(|l| id_of(l) == id) {
            None => problems.push(format!(
                "layer {} ({}) is missing",
                short_digest(id),
                short_digest(diff_id)
            )),
            Some(l) => {
                let key = (id.clone(), diff_id.clone(), verify);
                let problem = memo.store_layer(key, || {
                    writer::layer_problem(&store.path, l, diff_id, true).or_else(|| {
                        verify
                            .then(|| writer::verify_layer(&store.path, id, diff_id).err())
                            .flatten()
                            .map(|e| format!("{e:#}"))
                    })
                });
                problems.extend(problem);
            }
        }
    }
    // The config, as podman reads it.
    let dir = store.path.join(cfmt::IMAGES_DIR).join(image_id);
    match std::fs::read(dir.join(cfmt::big_data_file_name(config_digest))) {
        Ok(b) => {
            if cfmt::sha256_digest(&b) != config_digest
                || config_json.is_some_and(|c| c != b.as_slice())
            {
                problems.push("its config in the store is damaged".into());
            }
        }
        Err(_) => problems.push("its config is missing from the store".into()),
    }
    if !dir.join("manifest").is_file() {
        problems.push("its manifest is missing from the store".into());
    }
    Some(problems)
}

/// Whether the filesystem holding `path` can share extents, read from the
/// filesystem (no probe file is written): XFS says so in its geometry,
/// btrfs always can, others (ext4, tmpfs) cannot.
pub fn reflinks_supported(path: &Path) -> bool {
    const XFS_MAGIC: u64 = 0x5846_5342;
    const BTRFS_MAGIC: u64 = 0x9123_683E;
    const XFS_FSOP_GEOM_FLAGS_REFLINK: u32 = 1 << 20;
    let Ok(st) = rustix::fs::statfs(path) else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as u64 {
        BTRFS_MAGIC => true,
        XFS_MAGIC => {
            let Ok(f) = File::open(path) else {
                return false;
            };
            // XFS_IOC_FSGEOMETRY = _IOR('X', 126, struct xfs_fsop_geom),
            // 256 bytes; `flags` at offset 92.
            type Geom = [u8; 256];
            const OP: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<Geom>(b'X', 126);
            // SAFETY: the kernel fills a struct xfs_fsop_geom of that size.
            let geom =
                unsafe { rustix::ioctl::ioctl(&f, rustix::ioctl::Getter::<OP, Geom>::new()) };
            match geom {
                Ok(g) => {
                    let flags = u32::from_ne_bytes(g[92..96].try_into().expect("4 bytes"));
                    flags & XFS_FSOP_GEOM_FLAGS_REFLINK != 0
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// Where a store holds a file with the content of `bad`, if anywhere:
/// the same path in a layer with the same diff-id first, then the same
/// path in any layer; the content's fs-verity digest decides.
pub fn find_in_store(store: &StoreView, bad: &BadObject) -> Option<PathBuf> {
    let rel = tar_walk::as_os_str(&bad.path);
    let mut candidates: Vec<&Value> = store
        .layers
        .iter()
        .filter(|l| l.get("diff-digest").and_then(Value::as_str) == Some(&bad.diff_id))
        .collect();
    candidates.extend(
        store
            .layers
            .iter()
            .filter(|l| l.get("diff-digest").and_then(Value::as_str) != Some(&bad.diff_id)),
    );
    for l in candidates {
        let p = store
            .path
            .join("overlay")
            .join(id_of(l))
            .join("diff")
            .join(rel);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_file() || m.len() != bad.size {
            continue;
        }
        let Ok(mut f) = cfmt::open_noatime(&p) else {
            continue;
        };
        if let Ok((d, _)) = verity_of(&mut f)
            && d == bad.id
        {
            return Some(p);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflink_support_is_read_not_probed() {
        let td = tempfile::tempdir_in("/var/tmp").unwrap();
        let before = std::fs::read_dir(td.path()).unwrap().count();
        let _ = reflinks_supported(td.path());
        assert_eq!(std::fs::read_dir(td.path()).unwrap().count(), before);
        assert!(!reflinks_supported(Path::new("/proc")));
    }
}
