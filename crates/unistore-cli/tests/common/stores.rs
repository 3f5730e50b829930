//! Helpers of the unified-storage tests (composefs and ostree hosts): the
//! test image podman can run, podman on the host store, the store's
//! layers, the one-copy check (FIEMAP) and the space the stores use.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use unistore_fixtures::env::{
    FsKind, LoopFs, file_extents, podman_env, shared_extents, unmount_all_under,
};
use unistore_fixtures::image::{BuiltImage, EntryKind, TestImageOpts, build_test_image};

use super::trim_prealloc;

/// The host store, as the unified code names it on both kinds of host
/// (`composefs/bootc` links to `ostree/bootc` on ostree hosts).
pub const STORE: &str = "composefs/bootc/storage";
/// The unified flag.
pub const FLAG: &str = "composefs/bootc.json";

/// The test image plus what `podman run IMG cat FILE` needs (the host's
/// cat, libc and loader), an optional install config, and a payload.
pub fn image(
    dir: &Path,
    version: &str,
    variant: u32,
    payload_mib: u64,
    toml: Option<&str>,
) -> BuiltImage {
    let mut extra_files = unistore_fixtures::image::host_executable_files("/usr/bin/cat").unwrap();
    if let Some(t) = toml {
        extra_files.push((
            "/usr/lib/bootc/install/50-storage.toml".into(),
            t.as_bytes().to_vec(),
        ));
    }
    let opts = TestImageOpts {
        version: version.into(),
        variant,
        payload_mib,
        extra_files,
        ..Default::default()
    };
    build_test_image(dir, "latest", &opts).unwrap()
}

/// Bytes of the image's regular files (its unpacked size).
pub fn unpacked_size(img: &BuiltImage) -> u64 {
    img.expected
        .iter()
        .map(|e| match &e.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        })
        .sum()
}

/// Bytes allocated below `p` (each inode once) that no other file shares:
/// the kernel, initrd and `/etc` files are reflinks of composefs objects on
/// XFS and take no space of their own.
pub fn allocated(p: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert(m.ino()) {
            n += if m.is_file() {
                file_extents(&p)
                    .unwrap()
                    .iter()
                    .filter(|e| !e.is_shared())
                    .map(|e| e.length)
                    .sum::<u64>()
            } else {
                m.blocks() * 512
            };
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Free bytes after flushing (and, on XFS, trimming preallocation).
pub fn free_bytes(fs: &LoopFs) -> u64 {
    fs.sync();
    if fs.kind() == FsKind::Xfs {
        trim_prealloc(fs.path());
    }
    fs.free_bytes()
}

/// podman on the host store with a private run root (one per test: podman
/// remembers the run root of a store in its database).
pub struct Podman {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    /// The config directory and run root, when the caller keeps them
    /// (podman remembers a store's run root: every run on one store must
    /// use the same).
    pub dirs: Option<(PathBuf, PathBuf)>,
}

impl Podman {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            store: root.join(STORE),
            dirs: None,
        }
    }
    /// podman on the store of `root` with the caller's config directory and
    /// run root.
    pub fn with_dirs(root: &Path, conf: PathBuf, runroot: PathBuf) -> Self {
        let mut p = Self::new(root);
        p.dirs = Some((conf, runroot));
        p
    }
    pub fn cmd(&self) -> Command {
        let (conf, rr) = self
            .dirs
            .clone()
            .unwrap_or_else(|| (self.dir.path().join("conf"), self.dir.path().join("rr")));
        let mut c = Command::new("podman");
        c.envs(podman_env(&conf))
            .arg("--root")
            .arg(&self.store)
            .arg("--runroot")
            .arg(rr);
        c
    }
    pub fn cat_os_release(&self, image: &str) -> String {
        let out = self
            .cmd()
            .args([
                "run",
                "--rm",
                "--network=none",
                image,
                "cat",
                "/usr/lib/os-release",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman run {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    pub fn images(&self) -> Value {
        let out = self
            .cmd()
            .args(["images", "--format", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman images: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        unmount_all_under(&self.store);
    }
}

/// The store's layer directories of the image with config `config_digest`,
/// base first.
pub fn store_layers(root: &Path, config_digest: &str) -> Vec<PathBuf> {
    let store = root.join(STORE);
    let images: Value =
        serde_json::from_slice(&std::fs::read(store.join("overlay-images/images.json")).unwrap())
            .unwrap();
    let layers: Value =
        serde_json::from_slice(&std::fs::read(store.join("overlay-layers/layers.json")).unwrap())
            .unwrap();
    let id = config_digest.trim_start_matches("sha256:");
    let img = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("image {id} not in the store"));
    let by_id: BTreeMap<&str, &Value> = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["id"].as_str().unwrap(), l))
        .collect();
    let mut out = vec![];
    let mut next = img["layer"].as_str();
    while let Some(l) = next {
        out.push(store.join("overlay").join(l).join("diff"));
        next = by_id[l]["parent"].as_str();
    }
    out.reverse();
    out
}

/// Every regular file of at least 4 KiB in the image's store layers shares
/// its extents with the composefs object of the same content (found by its
/// fs-verity SHA-512 digest). Returns the number of files checked.
pub fn check_shared(root: &Path, config_digest: &str) -> usize {
    use composefs::fsverity::{FsVerityHashValue, Sha512HashValue, compute_verity};
    trim_prealloc(root);
    let mut checked = 0;
    for diff in store_layers(root, config_digest) {
        let mut stack = vec![diff];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if !m.is_file() || m.len() < 4096 {
                continue;
            }
            let data = std::fs::read(&p).unwrap();
            let hex = compute_verity::<Sha512HashValue>(&data).to_hex();
            let obj = root.join(format!("composefs/objects/{}/{}", &hex[..2], &hex[2..]));
            assert!(obj.is_file(), "{} has no composefs object", p.display());
            assert!(
                shared_extents(&p, &obj).unwrap(),
                "{} and its composefs object do not share extents",
                p.display()
            );
            checked += 1;
        }
    }
    checked
}

/// Space both stores use: free-space drop minus the boot and state trees.
pub fn check_space(fs: &LoopFs, free_before: u64, unpacked: u64) {
    let consumed = free_before - free_bytes(fs);
    let others = allocated(&fs.path().join("boot")) + allocated(&fs.path().join("state"));
    let stores = consumed.saturating_sub(others);
    let ratio = stores as f64 / unpacked as f64;
    eprintln!(
        "space: consumed {consumed}, boot+state {others}, stores {stores}, unpacked {unpacked}, ratio {ratio:.3}"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "both stores use {stores} bytes for an image of {unpacked} bytes (ratio {ratio:.3})"
    );
}

/// The `fsck images --json` report of the image with `digest`.
pub fn image_report<'a>(r: &'a Value, digest: &str) -> &'a Value {
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["manifestDigest"] == digest)
        .unwrap_or_else(|| panic!("{digest} not in the report: {r:#}"))
}
