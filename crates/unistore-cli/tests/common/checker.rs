//! The one checker of what must hold on a host after anything (a crash, a
//! power cut, hostile input): status works; every deployment in the boot
//! menu mounts and its tree is its image's; a staged deployment exists only
//! with its marker; the unified flag only when every live image is whole in
//! both stores; fsck reports nothing worse than notes (or `--repair` makes
//! it clean); nothing outside ROOT changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use unistore_fixtures::image::BuiltImage;

use super::{compare_tree, run, umount_all, unistore};

/// What the checker found, for the reports.
#[derive(Debug, Default)]
pub struct Checked {
    /// No host (an install interrupted before its boot entry).
    pub empty: bool,
    /// Deployments mounted and compared.
    pub mounted: usize,
    /// fsck needed `--repair` (what it repaired).
    pub repaired: Vec<String>,
    /// fsck notes.
    pub notes: usize,
}

/// A listing of `dir` (names, types, sizes) to compare before and after:
/// what lies outside ROOT must not change.
pub fn outside(dirs: &[&Path]) -> BTreeMap<PathBuf, (bool, u64)> {
    let mut out = BTreeMap::new();
    for d in dirs {
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            out.insert(
                p.clone(),
                (m.is_dir(), if m.is_dir() { 0 } else { m.len() }),
            );
            if m.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            }
        }
    }
    out
}

fn json(root: &Path, args: &[&str]) -> (bool, Value) {
    let out = run(unistore()
        .arg("--sysroot")
        .arg(root)
        .args(args)
        .arg("--json"));
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

/// `loader/` of the host: on its ESP (`boot/efi`, as the crash walk's ESP
/// hosts keep it) when systemd-boot is there, else under `boot/`.
pub fn loader_dir(root: &Path) -> std::path::PathBuf {
    let esp = root.join("boot/efi/loader");
    if esp.join("entries.srel").is_file() {
        esp
    } else {
        root.join("boot/loader")
    }
}

fn has_entries(root: &Path) -> bool {
    std::fs::read_dir(loader_dir(root).join("entries"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".conf"))
        })
        .unwrap_or(false)
}

/// Checks `root` (see the module). `images` are the images the host may
/// run, by manifest digest; `may_be_empty`: an install may have been
/// interrupted before the host existed.
pub fn check_host(
    root: &Path,
    images: &BTreeMap<String, &BuiltImage>,
    may_be_empty: bool,
) -> Checked {
    let mut c = Checked::default();
    if !has_entries(root) {
        assert!(
            may_be_empty,
            "no boot entry: the host is gone ({})",
            root.display()
        );
        c.empty = true;
        return c;
    }
    // status works.
    let (ok, st) = json(root, &["status"]);
    assert!(ok, "status fails");
    assert_eq!(st["kind"], "BootcHost", "{st}");
    assert!(!st["status"]["booted"].is_null(), "nothing booted: {st}");
    let ostree = !st["status"]["booted"]["ostree"].is_null();
    // bootc 1.16.9's shape: `type` and `store` only on ostree hosts, its
    // spellings of the boot type and loader.
    let b = &st["status"]["booted"];
    if ostree {
        assert_eq!(st["status"]["type"], "bootcHost", "{st}");
        assert_eq!(b["store"], "ostreeContainer", "{st}");
    } else {
        assert!(st["status"]["type"].is_null(), "{st}");
        assert!(b["store"].is_null(), "{st}");
        assert_eq!(b["composefs"]["bootType"], "Bls", "{st}");
        let loader = if loader_dir(root).starts_with(root.join("boot/efi")) {
            "systemd"
        } else {
            "grub"
        };
        assert_eq!(b["composefs"]["bootloader"], loader, "{st}");
    }
    assert_eq!(st["status"]["readOnly"], false, "{st}");
    assert!(b.get("cachedUpdate").is_some(), "{st}");

    // Every deployment of the menu mounts and is its image.
    for which in ["booted", "rollback", "staged"] {
        let e = &st["status"][which];
        if e.is_null() {
            continue;
        }
        let digest = e["image"]["imageDigest"].as_str().unwrap();
        let img = images
            .get(digest)
            .unwrap_or_else(|| panic!("{which} runs an unknown image {digest}"));
        let id = if ostree {
            format!(
                "{}.{}",
                e["ostree"]["checksum"].as_str().unwrap(),
                e["ostree"]["deploySerial"]
            )
        } else {
            e["composefs"]["verity"].as_str().unwrap().to_string()
        };
        let mnt = tempfile::tempdir().unwrap();
        let out = run(unistore()
            .arg("--sysroot")
            .arg(root)
            .args(["internals", "mount", "--deployment", &id])
            .arg(mnt.path()));
        assert!(
            out.status.success(),
            "{which} deployment {id} does not mount"
        );
        let expected: Vec<_> = img
            .expected
            .iter()
            .filter(|e| {
                !["/etc/", "/run/", "/tmp/", "/var/"]
                    .iter()
                    .any(|p| e.path.starts_with(p))
            })
            .cloned()
            .collect();
        let r = std::panic::catch_unwind(|| compare_tree(mnt.path(), &expected));
        umount_all(mnt.path());
        let n = r.unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert!(n > 10, "{which}: only {n} entries compared");
        c.mounted += 1;
    }

    // A staged deployment only with its marker. A marker without a staged
    // deployment may only name the deployment that boots next (a finalize
    // interrupted before its cleanup).
    if !ostree {
        let marker = root.join("run/composefs/staged-deployment");
        if !st["status"]["staged"].is_null() {
            assert!(
                marker.exists(),
                "a staged deployment without its marker: {st}"
            );
            assert!(loader_dir(root).join("entries.staged").is_dir());
        } else if marker.exists() {
            let m: Value = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
            let next = if st["status"]["rollbackQueued"] == true {
                &st["status"]["rollback"]
            } else {
                &st["status"]["booted"]
            };
            assert_eq!(
                m["depl_id"], next["composefs"]["verity"],
                "a marker naming a deployment that is not staged: {st}"
            );
        }
    }

    // fsck: nothing worse than notes, or --repair makes it clean.
    let (ok, f) = json(root, &["internals", "fsck"]);
    if !(ok && f["ok"] == true) {
        let (ok, r) = json(root, &["internals", "fsck", "--repair"]);
        c.repaired.push(format!("{f}"));
        let (ok2, again) = json(root, &["internals", "fsck"]);
        assert!(
            ok2 && again["ok"] == true,
            "fsck fails and --repair ({ok}) does not fix it: {f:#} / {r:#} / {again:#}"
        );
    }
    c.notes = f.to_string().matches("\"notes\":[\"").count();

    // The unified flag only when every live image is whole in both stores.
    if root.join("composefs/bootc.json").exists() {
        let (_, r) = json(root, &["internals", "fsck", "images"]);
        for i in r["images"].as_array().unwrap_or(&vec![]) {
            if i["isLive"] == true {
                assert!(
                    i["inComposefs"] == true && i["inContainersStorage"] == true,
                    "unified flag but a live image is not in both stores: {i:#}"
                );
            }
        }
    }
    if ostree {
        super::ostree::ostree_fsck(root);
    }
    c
}
