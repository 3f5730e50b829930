//! End-to-end on real loop-mounted btrfs (Fedora's root filesystem: reflinks,
//! subvolumes, small files stored inline): installs with no extra flag, a
//! root on a subvolume gets `rootflags=subvol=`, unified storage shares
//! every extent it can, fsck knows inline files cannot share, the GC's dry
//! run counts what the real run removes.
//!
//! No power cuts here: this kernel's btrfs has no shutdown ioctl
//! (`XFS_IOC_GOINGDOWN`/`FS_IOC_SHUTDOWN`: "Inappropriate ioctl"), so the
//! crash walk's power cuts stay on XFS.

mod common;

use std::path::Path;
use std::process::Command;

use common::stores::*;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&run_ok(cmd)).unwrap()
}

fn cmd(root: &Path, reg: &Registry) -> Command {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf());
    c.arg("--sysroot").arg(root);
    c
}

fn install(root: &Path, reg: &Registry, src: &str, extra: &[&str]) -> Value {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf());
    c.args(["install", "to-filesystem", "--json", "--source-imgref", src])
        .args(extra)
        .arg(root);
    json(&mut c)
}

fn blkid_uuid(dev: &str) -> String {
    run_ok(Command::new("blkid").args(["-p", "-o", "value", "-s", "UUID", dev]))
        .trim()
        .to_string()
}

fn primary_entry(root: &Path) -> String {
    let dir = root.join("boot/loader/entries");
    let e = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-1.conf"))
        .expect("a primary entry");
    std::fs::read_to_string(e).unwrap()
}

/// fsck of the images: ok, no issue and no note on any image.
fn fsck_clean(root: &Path, reg: &Registry) {
    let r = json(cmd(root, reg).args(["internals", "fsck", "images", "--json"]));
    assert_eq!(r["ok"], true, "{r:#}");
    for i in r["images"].as_array().unwrap() {
        assert_eq!(i["issues"], serde_json::json!([]), "{i:#}");
        assert_eq!(i["notes"], serde_json::json!([]), "{i:#}");
        assert_eq!(i["unsharedFiles"].as_u64().unwrap_or(0), 0, "{i:#}");
    }
}

#[test]
fn unified_host_on_btrfs_with_no_extra_flag() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    // Many small files (btrfs keeps files under ~2 KiB inline) and a payload.
    let img = image(&oci, "1.0", 1, 48, None);
    let reg = Registry::start().unwrap();
    let src = reg.push_oci(&oci, "latest", "btrfs/os").unwrap();
    let fs = LoopFs::new(FsKind::Btrfs, 2048).unwrap();
    let root = fs.path();
    let free0 = free_bytes(&fs);

    let r = install(root, &reg, &src, &["--unified", "enabled"]);
    assert_eq!(r["unified"]["reflinks"], true, "{r}");
    let entry = primary_entry(root);
    let uuid = blkid_uuid(fs.device());
    assert!(entry.contains(&format!("root=UUID={uuid}")), "{entry}");
    assert!(!entry.contains("rootflags="), "top level: {entry}");

    // podman runs the booted image from the host store.
    let podman = Podman::new(root);
    let osr = podman.cat_os_release(src.trim_start_matches("docker://"));
    assert!(osr.contains("ID=testos"), "{osr}");
    // One physical copy of every file that has extents; fsck says nothing
    // about the inline ones.
    let n = check_shared(root, &img.config_digest);
    assert!(n >= 10, "only {n} files checked");
    fsck_clean(root, &reg);
    run_ok(cmd(root, &reg).args(["internals", "gc", "--assert-no-op"]));
    fs.sync();
    let consumed = free0 - free_bytes(&fs);
    let others = allocated(&root.join("boot")) + allocated(&root.join("state"));
    let ratio = consumed.saturating_sub(others) as f64 / unpacked_size(&img) as f64;
    eprintln!("btrfs: both stores use {ratio:.3}x the image's bytes");
    assert!(ratio <= 1.05, "{ratio:.3}x the image's bytes");

    // Upgrade, finalize; the GC's dry run counts what the real run removes.
    let _v2 = image(&oci, "2.0", 2, 48, None);
    reg.push_oci(&oci, "latest", "btrfs/os").unwrap();
    let o = json(cmd(root, &reg).args(["upgrade", "--json"]));
    assert_eq!(o["result"], "staged", "{o}");
    json(cmd(root, &reg).args(["internals", "finalize-staged", "--json"]));
    // A third version drops the first deployment's tag at the GC.
    let _v3 = image(&oci, "3.0", 3, 48, None);
    reg.push_oci(&oci, "latest", "btrfs/os").unwrap();
    json(cmd(root, &reg).args(["upgrade", "--json"]));
    json(cmd(root, &reg).args(["internals", "finalize-staged", "--json"]));
    let before = snapshot(root);
    let dry = json(cmd(root, &reg).args(["internals", "gc", "--dry-run", "--json"]));
    assert_eq!(before, snapshot(root), "the dry run wrote");
    let real = json(cmd(root, &reg).args(["internals", "gc", "--json"]));
    for k in [
        "objects_removed",
        "object_bytes",
        "streams_pruned",
        "images_pruned",
    ] {
        assert_eq!(dry[k], real[k], "{k}: dry {dry:#} real {real:#}");
    }
    assert!(real["objects_removed"].as_u64().unwrap() > 0, "{real:#}");
    run_ok(cmd(root, &reg).args(["internals", "gc", "--assert-no-op"]));
    fsck_clean(root, &reg);
    let osr = podman.cat_os_release(src.trim_start_matches("docker://"));
    assert!(osr.contains("ID=testos"), "{osr}");
}

#[test]
fn root_on_a_btrfs_subvolume_gets_rootflags() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "1.0", 1, 0, None);
    let reg = Registry::start().unwrap();
    let src = reg.push_oci(&oci, "latest", "btrfs/sub").unwrap();
    let fs = LoopFs::new_btrfs_subvol(1024, "root").unwrap();
    let root = fs.path();
    install(root, &reg, &src, &["--unified", "enabled"]);
    let entry = primary_entry(root);
    let uuid = blkid_uuid(fs.device());
    let options = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap();
    let opts: Vec<&str> = options.split_whitespace().collect();
    let at = opts
        .iter()
        .position(|o| *o == format!("root=UUID={uuid}"))
        .expect(&entry);
    assert_eq!(opts.get(at + 1), Some(&"rootflags=subvol=root"), "{entry}");
    let st = json(cmd(root, &reg).args(["status", "--json"]));
    assert!(
        st["status"]["booted"]["composefs"]["verity"].is_string(),
        "{st}"
    );
    fsck_clean(root, &reg);
    run_ok(cmd(root, &reg).args(["internals", "gc", "--assert-no-op"]));
    // The upgrade keeps rootflags (the booted entry's arguments).
    image(&oci, "2.0", 2, 0, None);
    reg.push_oci(&oci, "latest", "btrfs/sub").unwrap();
    json(cmd(root, &reg).args(["upgrade", "--json"]));
    json(cmd(root, &reg).args(["internals", "finalize-staged", "--json"]));
    let entry = primary_entry(root);
    assert!(entry.contains("version 2.0"), "{entry}");
    assert!(entry.contains("rootflags=subvol=root"), "{entry}");
}
