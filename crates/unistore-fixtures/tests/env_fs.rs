//! Loop-mounted filesystems and reflink detection, for real. Needs root.

mod common;

use common::sh;
use std::io::Write;
use unistore_fixtures::env::{FsKind, LoopFs, file_extents, require_root, shared_extents};
use unistore_fixtures::rng::PseudoRandom;

fn write_random(path: &std::path::Path, seed: &str, len: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    std::io::copy(&mut PseudoRandom::new(seed, len), &mut f).unwrap();
    f.flush().unwrap();
}

fn fstype(path: &std::path::Path) -> String {
    sh("findmnt", &["-n", "-o", "FSTYPE", path.to_str().unwrap()])
        .trim()
        .to_string()
}

fn attached(dev: &str) -> bool {
    sh("losetup", &["-a"])
        .lines()
        .any(|l| l.starts_with(&format!("{dev}:")))
}

#[test]
fn xfs_reflinks_are_detected() {
    require_root();
    let fs = LoopFs::new(FsKind::Xfs, 512).unwrap();
    assert_eq!(fstype(fs.path()), "xfs");
    assert!(fs.device().starts_with("/dev/loop"));
    let src = fs.path().join("src");
    write_random(&src, "reflink", 8 << 20);
    let reflinked = fs.path().join("reflinked");
    let copied = fs.path().join("copied");
    sh(
        "cp",
        &[
            "--reflink=always",
            src.to_str().unwrap(),
            reflinked.to_str().unwrap(),
        ],
    );
    sh(
        "cp",
        &[
            "--reflink=never",
            src.to_str().unwrap(),
            copied.to_str().unwrap(),
        ],
    );
    assert!(shared_extents(&src, &reflinked).unwrap());
    assert!(!shared_extents(&src, &copied).unwrap());
    assert!(!shared_extents(&reflinked, &copied).unwrap());
    assert!(
        file_extents(&reflinked)
            .unwrap()
            .iter()
            .all(|e| e.is_shared())
    );
    assert!(
        file_extents(&copied)
            .unwrap()
            .iter()
            .all(|e| !e.is_shared())
    );
    // filefrag agrees.
    let ff = sh("filefrag", &["-v", reflinked.to_str().unwrap()]);
    assert!(ff.contains("shared"), "{ff}");
}

#[test]
fn ext4_has_no_reflinks_and_space_is_accounted() {
    require_root();
    let fs = LoopFs::new(FsKind::Ext4, 128).unwrap();
    assert_eq!(fstype(fs.path()), "ext4");
    fs.sync();
    let before = fs.free_bytes();
    assert!(before > 64 << 20, "{before}");
    let src = fs.path().join("src");
    write_random(&src, "ext4", 16 << 20);
    fs.sync();
    let after = fs.free_bytes();
    assert!(
        before - after >= 16 << 20,
        "free space went from {before} to {after}"
    );
    let dst = fs.path().join("dst");
    let status = std::process::Command::new("cp")
        .arg("--reflink=always")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(!status.success(), "ext4 cannot reflink");
    sh(
        "cp",
        &[
            "--reflink=auto",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
    );
    assert!(!shared_extents(&src, &dst).unwrap());
}

#[test]
fn drop_unmounts_detaches_and_removes() {
    require_root();
    let fs = LoopFs::new(FsKind::Xfs, 300).unwrap();
    let mnt = fs.path().to_owned();
    let dev = fs.device().to_string();
    assert!(attached(&dev));
    // A busy mount (open file) still gets cleaned up (lazily).
    let busy = std::fs::File::create(mnt.join("busy")).unwrap();
    drop(fs);
    assert!(!mnt.exists(), "{mnt:?} still exists");
    assert!(!mnt.parent().unwrap().exists());
    drop(busy);
    // The lazy unmount finishes once the file is closed; then the device goes away.
    for _ in 0..50 {
        if !attached(&dev) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!attached(&dev), "{dev} still attached");
}
