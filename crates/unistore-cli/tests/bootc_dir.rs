//! End-to-end: a composefs host after the real bootc has been at it.
//! unistore's install makes `ostree/bootc` bootc's compatibility link to
//! `../composefs/bootc`; bootc's `upgrade --check` leaves a real directory
//! `ostree/bootc/storage/` where that link was missing. Every command must
//! stay right on such a host, keep its own store `composefs/bootc/storage`
//! and leave bootc's directory alone. Plain and unified hosts, on a real
//! XFS loop filesystem, from a real registry.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::checker::check_host;
use common::stores::*;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};

fn cmd(root: &Path, reg: &Registry) -> Command {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .arg("--sysroot")
        .arg(root);
    c
}

fn json(c: &mut Command) -> Value {
    serde_json::from_str(&run_ok(c)).unwrap()
}

/// What bootc leaves: `ostree/bootc` a real directory with an empty
/// `storage/` inside.
fn as_bootc_leaves_it(root: &Path) {
    let link = root.join("ostree/bootc");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../composefs/bootc"),
        "install makes bootc's compatibility link"
    );
    std::fs::remove_file(&link).unwrap();
    std::fs::create_dir_all(link.join("storage")).unwrap();
}

/// bootc's directory is still there, a directory, empty.
fn bootc_dir_intact(root: &Path, after: &str) {
    let d = root.join("ostree/bootc");
    let m = std::fs::symlink_metadata(&d).unwrap();
    assert!(m.is_dir(), "{after}: ostree/bootc is no longer a directory");
    let names = |p: &Path| -> Vec<_> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    assert_eq!(names(&d), ["storage"], "{after}: ostree/bootc changed");
    assert!(
        names(&d.join("storage")).is_empty(),
        "{after}: something wrote into ostree/bootc/storage"
    );
}

#[test]
fn commands_keep_their_store_when_bootc_made_ostree_bootc_a_directory() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("v1"), "1.0", 1, 0, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("v1"), "latest", "bootcdir/os")
        .unwrap();
    let images = BTreeMap::from([(img.manifest_digest.clone(), &img)]);
    for unified in [false, true] {
        let what = if unified { "unified" } else { "plain" };
        let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        let root = fs.path();
        let mut install = unistore();
        install
            .env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
            .args(["install", "to-filesystem", "--source-imgref", &src]);
        if unified {
            install.args(["--unified", "enabled"]);
        }
        run_ok(install.arg(root));
        assert!(root.join("boot/grub2").is_dir(), "{what}");
        as_bootc_leaves_it(root);

        // status reads the host as before.
        let st = json(cmd(root, &reg).args(["status", "--json"]));
        assert_eq!(
            st["status"]["booted"]["image"]["imageDigest"],
            img.manifest_digest.as_str(),
            "{what}: {st}"
        );
        assert_eq!(!st["status"]["storage"].is_null(), unified, "{what}: {st}");
        bootc_dir_intact(root, "status");

        // set-unified brings the image into composefs/bootc/storage, not
        // into bootc's directory.
        run_ok(cmd(root, &reg).args(["image", "set-unified", "full"]));
        assert_eq!(
            std::fs::read_to_string(root.join(FLAG)).unwrap(),
            r#"{"unified":"enabled"}"#,
            "{what}"
        );
        let list = json(cmd(root, &reg).args(["image", "list", "--json"]));
        let listed = list["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["manifestDigest"] == img.manifest_digest.as_str())
            .unwrap_or_else(|| panic!("{what}: not listed: {list}"));
        assert_eq!(listed["inContainersStorage"], true, "{what}: {list}");
        let podman = Podman::new(root);
        let only_the_image = || {
            let ids: Vec<Value> = podman
                .images()
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["Id"].clone())
                .collect();
            let want = img.config_digest.trim_start_matches("sha256:");
            assert!(
                !ids.is_empty() && ids.iter().all(|i| i == want),
                "{what}: podman on composefs/bootc/storage: {ids:?}"
            );
        };
        only_the_image();
        bootc_dir_intact(root, "set-unified full");

        // GC keeps the live image in the store; fsck is clean, with and
        // without --repair, whole and images only.
        let gc = json(cmd(root, &reg).args(["internals", "gc", "--json"]));
        assert_eq!(
            gc["store_images_removed"],
            serde_json::json!([]),
            "{what}: {gc}"
        );
        assert_eq!(gc["store_errors"], serde_json::json!([]), "{what}: {gc}");
        bootc_dir_intact(root, "gc");
        for args in [
            &["internals", "fsck"][..],
            &["internals", "fsck", "--repair"],
            &["internals", "fsck", "images"],
            &["internals", "fsck", "images", "--repair"],
        ] {
            let r = json(cmd(root, &reg).args(args).arg("--json"));
            assert_eq!(r["ok"], true, "{what}: {args:?}: {r}");
            bootc_dir_intact(root, &args.join(" "));
        }
        run_ok(cmd(root, &reg).args(["internals", "gc", "--assert-no-op"]));

        // The host is whole.
        let c = check_host(root, &images, false);
        assert_eq!(c.mounted, 1, "{what}");
        assert!(c.repaired.is_empty(), "{what}: {:?}", c.repaired);
        bootc_dir_intact(root, "the checks");
        only_the_image();
    }
}
