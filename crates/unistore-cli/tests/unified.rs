//! End-to-end unified storage on real loop-mounted XFS and ext4, a real
//! registry and real podman: the unified install, `image set-unified full`
//! (also killed at each stage), the install config, `status` and
//! `image list`; extents shared between containers-storage and composefs,
//! and the disk space both stores use.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::stores::*;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::BuiltImage;

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&run_ok(cmd)).unwrap()
}

fn cmd(root: &Path, reg: Option<&Registry>) -> Command {
    let mut c = unistore();
    if let Some(r) = reg {
        c.env("CONTAINERS_REGISTRIES_CONF", r.registries_conf());
    }
    c.arg("--sysroot").arg(root);
    c
}

fn install(root: &Path, reg: Option<&Registry>, src: &str, extra: &[&str]) -> std::process::Output {
    let mut c = unistore();
    if let Some(r) = reg {
        c.env("CONTAINERS_REGISTRIES_CONF", r.registries_conf());
    }
    c.args(["install", "to-filesystem", "--json", "--source-imgref", src])
        .args(extra)
        .arg(root);
    run(&mut c)
}

fn image_list(root: &Path) -> Value {
    json(cmd(root, None).args(["image", "list", "--json"]))
}

/// The image-list entry of `digest`.
fn listed(root: &Path, digest: &str) -> Value {
    image_list(root)["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["manifestDigest"] == digest)
        .cloned()
        .unwrap_or_else(|| panic!("{digest} not listed"))
}

#[test]
fn unified_install_from_registry_on_xfs() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("oci"), "1.0", 1, 64, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("oci"), "latest", "unified/os")
        .unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let root = fs.path();
    let free0 = free_bytes(&fs);

    let out = install(root, Some(&reg), &src, &["--unified", "enabled"]);
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unified"]["mode"], "enabled", "{r}");
    assert_eq!(r["unified"]["reflinks"], true);
    assert_eq!(r["unified"]["decided_by"], "cli");
    // The digest recorded is the registry's manifest, which is in the
    // repository and tagged.
    assert_eq!(r["manifest_digest"], img.manifest_digest.as_str());
    assert!(
        root.join("composefs/streams/refs/oci")
            .join(format!("localhost%2Fbootc-{}", img.manifest_digest))
            .exists()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("into containers-storage"), "{stderr}");
    assert!(root.join("ostree/bootc").is_symlink());
    // Nothing of podman's stays mounted in the root.
    assert_eq!(
        unistore_fixtures::env::mounts::mounts_under(root),
        vec![std::fs::canonicalize(root).unwrap()]
    );
    assert_eq!(
        std::fs::read_to_string(root.join(FLAG)).unwrap(),
        r#"{"unified":"enabled"}"#
    );

    // status: JSON and the human row on the booted entry; read-only.
    let before = snapshot(root);
    let st = json(cmd(root, None).args(["status", "--json"]));
    assert_eq!(st["status"]["storage"]["unified"], "enabled");
    assert_eq!(st["status"]["storage"]["ostreeComposefsBound"], false);
    let human = run_ok(cmd(root, None).arg("status"));
    assert!(human.contains("Storage: unified (enabled)"), "{human}");
    let l = listed(root, &img.manifest_digest);
    assert_eq!(l["inComposefs"], true);
    assert_eq!(l["inContainersStorage"], true);
    assert_eq!(l["roles"][0], "booted");
    assert_eq!(
        before,
        snapshot(root),
        "status or image list changed the root"
    );

    // podman runs the booted image from the host store.
    let podman = Podman::new(root);
    let osr = podman.cat_os_release(src.trim_start_matches("docker://"));
    assert!(osr.contains("ID=testos"), "{osr}");

    // One physical copy.
    let n = check_shared(root, &img.config_digest);
    assert!(n >= 10, "only {n} files checked");
    check_space(&fs, free0, unpacked_size(&img));

    // Again: nothing to do. `composefs`: nothing to do on this host.
    let o = run_ok(cmd(root, None).args(["image", "set-unified", "full"]));
    assert!(o.contains("Already unified"), "{o}");
    let o = run_ok(cmd(root, None).args(["image", "set-unified", "composefs"]));
    assert!(o.contains("native composefs"), "{o}");
}

/// `<root>/composefs/streams/<name>` -> its object, for the layer and config
/// splitstreams.
fn layer_streams(root: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(root.join("composefs/streams"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("oci-layer-") || n.starts_with("oci-config-"))
        .map(|n| {
            let target = std::fs::read_link(root.join("composefs/streams").join(&n)).unwrap();
            (n, target)
        })
        .collect()
}

/// The store a unified install writes (composefs first, then the native
/// writer) reads back into composefs as what composefs had: composefs-oci's
/// own containers-storage import of that store writes the same layer
/// splitstreams, byte for byte, and the same boot image (deployment id).
#[test]
fn unified_import_writes_what_composefs_oci_writes() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("oci"), "1.0", 1, 16, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("oci"), "latest", "same/os")
        .unwrap();
    let a = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let out = install(a.path(), Some(&reg), &src, &["--unified", "enabled"]);
    assert!(out.status.success());
    let ra: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(check_shared(a.path(), &img.config_digest) >= 5);

    // composefs-oci reads the same store natively into another root.
    let b = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let runroot = tempfile::tempdir().unwrap();
    let store_ref = format!(
        "containers-storage:[overlay@{}+{}]{}",
        a.path().join(STORE).display(),
        runroot.path().display(),
        src.trim_start_matches("docker://")
    );
    let out = install(b.path(), None, &store_ref, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rb: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (sa, sb) = (layer_streams(a.path()), layer_streams(b.path()));
    assert!(sa.keys().filter(|k| k.starts_with("oci-layer-")).count() >= 2);
    assert_eq!(sa, sb);
    assert_eq!(ra["deployment_id"], rb["deployment_id"]);
}

#[test]
fn set_unified_full_on_plain_xfs_host() {
    let work = tempfile::tempdir().unwrap();
    let img1 = image(&work.path().join("v1"), "1.0", 1, 64, None);
    let img2 = image(&work.path().join("v2"), "2.0", 2, 64, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("v1"), "latest", "plain/os")
        .unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let root = fs.path();
    let free0 = free_bytes(&fs);
    assert!(install(root, Some(&reg), &src, &[]).status.success());
    assert!(!root.join(STORE).exists());
    let st = json(cmd(root, None).args(["status", "--json"]));
    assert!(st["status"]["storage"].is_null());
    assert!(!run_ok(cmd(root, None).arg("status")).contains("Storage:"));
    assert_eq!(
        listed(root, &img1.manifest_digest)["inContainersStorage"],
        false
    );

    let out = run_ok(cmd(root, Some(&reg)).args(["image", "set-unified", "full"]));
    assert!(out.contains("unified (enabled)"), "{out}");
    assert_eq!(
        std::fs::read_to_string(root.join(FLAG)).unwrap(),
        r#"{"unified":"enabled"}"#
    );
    let l = listed(root, &img1.manifest_digest);
    assert_eq!(l["inContainersStorage"], true, "{l}");
    let podman = Podman::new(root);
    // Named after the registry reference and after its digest.
    let osr = podman.cat_os_release(src.trim_start_matches("docker://"));
    assert!(osr.contains("VERSION_ID=1.0"), "{osr}");
    let by_digest = format!(
        "localhost/bootc:{}",
        img1.manifest_digest.trim_start_matches("sha256:")
    );
    assert!(podman.cat_os_release(&by_digest).contains("ID=testos"));
    assert!(check_shared(root, &img1.config_digest) >= 10);
    check_space(&fs, free0, unpacked_size(&img1));

    // The upgrade of a unified host pulls through the store. The base layer
    // it shares with v1 was written from composefs by set-unified: no pass
    // over it again, and its files do share their objects' extents.
    reg.push_oci(&work.path().join("v2"), "latest", "plain/os")
        .unwrap();
    let out = run(cmd(root, Some(&reg)).args(["upgrade"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("into containers-storage"), "{err}");
    assert!(
        !err.contains("Sharing extents"),
        "the upgrade passed over layers written before: {err}"
    );
    assert!(check_shared(root, &img2.config_digest) >= 10);
    assert_eq!(
        listed(root, &img2.manifest_digest)["inContainersStorage"],
        true
    );
    // A staged image missing from the store (removed behind unistore's
    // back): set-unified brings it back from composefs.
    let id2 = img2.config_digest.trim_start_matches("sha256:");
    let out = podman.cmd().args(["rmi", "--force", id2]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listed(root, &img2.manifest_digest)["inContainersStorage"],
        false
    );
    let o = run_ok(cmd(root, Some(&reg)).args(["image", "set-unified", "full"]));
    assert!(!o.contains("Already unified"), "{o}");
    let l2 = listed(root, &img2.manifest_digest);
    assert_eq!(l2["roles"][0], "staged", "{l2}");
    assert_eq!(l2["inContainersStorage"], true, "{l2}");
    assert_eq!(
        listed(root, &img1.manifest_digest)["inContainersStorage"],
        true
    );
    assert!(check_shared(root, &img2.config_digest) >= 10);
    let by_digest2 = format!(
        "localhost/bootc:{}",
        img2.manifest_digest.trim_start_matches("sha256:")
    );
    assert!(
        podman
            .cat_os_release(&by_digest2)
            .contains("VERSION_ID=2.0")
    );
    let o = run_ok(cmd(root, None).args(["image", "set-unified", "full"]));
    assert!(o.contains("Already unified"), "{o}");
}

/// The flag never says "unified" unless every live image is in the store.
fn check_invariant(root: &Path, podman: &Podman) -> bool {
    let flag = root.join(FLAG).exists();
    let list = image_list(root);
    let all = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["roles"].as_array().unwrap().is_empty())
        .all(|i| i["inContainersStorage"] == true);
    assert!(!flag || all, "flag written with images missing: {list}");
    // The store stays usable.
    podman.images();
    flag
}

#[test]
fn set_unified_survives_kills_at_each_stage() {
    let work = tempfile::tempdir().unwrap();
    let img1 = image(&work.path().join("v1"), "1.0", 1, 0, None);
    let img2 = image(&work.path().join("v2"), "2.0", 2, 0, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("v1"), "latest", "os")
        .unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1536).unwrap();
    let root = fs.path();
    assert!(install(root, Some(&reg), &src, &[]).status.success());
    reg.push_oci(&work.path().join("v2"), "latest", "os")
        .unwrap();
    run_ok(cmd(root, Some(&reg)).args(["upgrade"]));

    let podman = Podman::new(root);
    let set_unified = || {
        let mut c = cmd(root, Some(&reg));
        c.args(["image", "set-unified", "full"]);
        c
    };
    // In an order where each point is reached: the first image's layers
    // are written, then the image, shared and finished over several runs,
    // then the second.
    for point in [
        "set-unified:start",
        "cstor-writer:after-layer",
        "unified:after-store-write",
        "unified:after-share",
        "set-unified:after-image",
        "cstor-writer:after-layer",
        "set-unified:before-flag",
    ] {
        run_killed(set_unified(), point);
        assert!(
            !check_invariant(root, &podman),
            "flag present after a kill at {point}"
        );
    }
    run_killed(set_unified(), "set-unified:after-flag");
    assert!(check_invariant(root, &podman));
    let o = run_ok(&mut set_unified());
    assert!(o.contains("Already unified"), "{o}");
    for img in [&img1, &img2] {
        assert_eq!(
            listed(root, &img.manifest_digest)["inContainersStorage"],
            true
        );
        assert!(check_shared(root, &img.config_digest) >= 5);
    }
    // Nothing of the killed runs is left behind.
    assert!(!root.join("composefs/bootc/tmp").exists());
    let names: Vec<String> = podman
        .images()
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["Names"].as_array().cloned().unwrap_or_default())
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for img in [&img1, &img2] {
        let n = format!(
            "localhost/bootc:{}",
            img.manifest_digest.trim_start_matches("sha256:")
        );
        assert!(names.contains(&n), "{n} not in {names:?}");
    }

    // The store's GC: only what unistore put there, only when not live.
    let id = |img: &BuiltImage| img.config_digest.trim_start_matches("sha256:").to_string();
    let user_name = "localhost/user/kept:1";
    let out = podman
        .cmd()
        .args(["tag", &id(&img2), user_name])
        .output()
        .unwrap();
    assert!(out.status.success());
    unistore::stores::containers_storage::set_runtime_dir("/run/unistore-test");
    let sysroot = unistore::Sysroot::open(root).unwrap();
    let live = vec![img1.manifest_digest.clone(), img2.manifest_digest.clone()];
    let r = unistore::unified::prune_store(&sysroot, &live).unwrap();
    assert!(r.is_no_op(), "{r:?}");
    // v1 is no longer live: unistore created it and nobody else named it.
    let r = unistore::unified::prune_store(&sysroot, &live[1..]).unwrap();
    assert_eq!(r.removed, vec![id(&img1)], "{r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
    // v2 carries a name the user gave: it only loses unistore's names.
    let r = unistore::unified::prune_store(&sysroot, &[]).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(!r.untagged.is_empty(), "{r:?}");
    let left = podman.images();
    let ids: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id(&img2).as_str()], "{left}");
    assert_eq!(left[0]["Names"], serde_json::json!([user_name]), "{left}");
    // Nothing recorded any more: a second run touches nothing.
    assert!(
        unistore::unified::prune_store(&sysroot, &[])
            .unwrap()
            .is_no_op()
    );
}

/// A unified upgrade killed after its pull into composefs, then in the
/// middle of writing the store: the booted image stays in the store and
/// runs, nothing is staged, and the next upgrade completes; what a killed
/// run left in the store is recorded as unistore's, so the store GC can
/// remove it once it is no longer live.
#[test]
fn unified_upgrade_survives_kills() {
    let work = tempfile::tempdir().unwrap();
    let img1 = image(&work.path().join("v1"), "1.0", 1, 0, None);
    let img2 = image(&work.path().join("v2"), "2.0", 2, 0, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("v1"), "latest", "up/os")
        .unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1536).unwrap();
    let root = fs.path();
    assert!(
        install(root, Some(&reg), &src, &["--unified", "enabled"])
            .status
            .success()
    );
    reg.push_oci(&work.path().join("v2"), "latest", "up/os")
        .unwrap();
    let podman = Podman::new(root);
    let name = src.trim_start_matches("docker://");
    for point in ["unified:after-composefs-pull", "cstor-writer:after-layer"] {
        let mut c = cmd(root, Some(&reg));
        c.arg("upgrade");
        run_killed(c, point);
        let st = json(cmd(root, None).args(["status", "--json"]));
        assert!(
            st["status"]["staged"].is_null(),
            "staged after a kill at {point}: {st}"
        );
        assert_eq!(
            st["status"]["booted"]["image"]["imageDigest"],
            img1.manifest_digest.as_str()
        );
        // The booted image is still whole in the store, under its name.
        assert!(podman.cat_os_release(name).contains("VERSION_ID=1.0"));
    }
    let owned = unistore::unified::owned_images(&unistore::Sysroot::open(root).unwrap()).unwrap();
    let pending: Vec<_> = owned.iter().filter(|o| o.pending).collect();
    assert_eq!(pending.len(), 1, "{owned:?}");
    assert_eq!(pending[0].manifest_digest, img2.manifest_digest);

    let out = run_ok(cmd(root, Some(&reg)).args(["upgrade", "--json"]));
    assert!(out.contains("staged"), "{out}");
    // The registry name moved to v2, as `podman pull` would move it.
    assert!(podman.cat_os_release(name).contains("VERSION_ID=2.0"));
    assert!(check_shared(root, &img2.config_digest) >= 5);
    let owned = unistore::unified::owned_images(&unistore::Sysroot::open(root).unwrap()).unwrap();
    assert!(owned.iter().all(|o| !o.pending), "{owned:?}");
    run_ok(cmd(root, None).args(["internals", "fsck", "images"]));
}

#[test]
fn ext4_enabled_refuses_and_with_copy_copies() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("oci"), "1.0", 1, 0, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci(&work.path().join("oci"), "latest", "os")
        .unwrap();
    let fs = LoopFs::new(FsKind::Ext4, 1024).unwrap();
    let root = fs.path();
    let before = snapshot(root);

    // `enabled` without reflinks: a clear error, the root unchanged.
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .args([
            "install",
            "to-filesystem",
            "--unified",
            "enabled",
            "--source-imgref",
        ])
        .arg(&src)
        .arg(root);
    let line = run_fails(&mut c, "reflinks");
    assert!(line.contains("ext4"), "{line}");
    assert_eq!(before, snapshot(root));
    // The same from a host install config file.
    let cfg = work.path().join("host.toml");
    std::fs::write(&cfg, "[install.storage]\nunified = \"enabled\"\n").unwrap();
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .args(["install", "to-filesystem", "--install-config"])
        .arg(&cfg)
        .arg("--source-imgref")
        .arg(&src)
        .arg(root);
    run_fails(&mut c, "reflinks");
    assert_eq!(before, snapshot(root));

    // `enabled-with-copy` works and says it copied.
    let out = install(root, Some(&reg), &src, &["--unified", "enabled-with-copy"]);
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unified"]["mode"], "enabled-with-copy");
    assert_eq!(r["unified"]["reflinks"], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no reflinks") && stderr.contains("copied"),
        "{stderr}"
    );
    let msg = r["unified"]["message"].as_str().unwrap();
    assert!(msg.contains("copies"), "{msg}");
    let st = json(cmd(root, None).args(["status", "--json"]));
    assert_eq!(st["status"]["storage"]["unified"], "enabled-with-copy");
    assert_eq!(
        listed(root, &img.manifest_digest)["inContainersStorage"],
        true
    );
    let podman = Podman::new(root);
    assert!(
        podman
            .cat_os_release(src.trim_start_matches("docker://"))
            .contains("ID=testos")
    );
    // set-unified full (reflinks required) refuses here; with copies it is done.
    run_fails(
        cmd(root, None).args(["image", "set-unified", "full"]),
        "reflinks",
    );
    let o = run_ok(cmd(root, None).args(["image", "set-unified", "full", "--enabled-with-copy"]));
    assert!(o.contains("Already unified"), "{o}");

    // Killed right after podman's pull (podman first without reflinks):
    // the image in the store is already recorded as unistore's, pending,
    // with the name podman gave it, so the store GC can remove it.
    let fs2 = LoopFs::new(FsKind::Ext4, 1024).unwrap();
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .args(["install", "to-filesystem", "--unified", "enabled-with-copy"])
        .args(["--source-imgref", &src])
        .arg(fs2.path());
    run_killed(c, "unified:after-store-pull");
    let owned =
        unistore::unified::owned_images(&unistore::Sysroot::open(fs2.path()).unwrap()).unwrap();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert!(owned[0].pending && owned[0].created, "{owned:?}");
    assert_eq!(owned[0].manifest_digest, img.manifest_digest);
    assert!(
        owned[0]
            .names
            .contains(&src.trim_start_matches("docker://").to_string()),
        "{owned:?}"
    );
}

#[test]
fn image_install_config_decides() {
    let work = tempfile::tempdir().unwrap();
    // On XFS the image asks for unified storage: the host ends up unified.
    let img = image(
        &work.path().join("with"),
        "1.0",
        1,
        0,
        Some("[install.storage]\nunified = \"enabled\"\n"),
    );
    let src = format!("oci:{}:latest", work.path().join("with").display());
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let out = install(fs.path(), None, &src, &[]);
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unified"]["decided_by"], "image-config", "{r}");
    assert_eq!(
        json(cmd(fs.path(), None).args(["status", "--json"]))["status"]["storage"]["unified"],
        "enabled"
    );
    assert_eq!(
        listed(fs.path(), &img.manifest_digest)["inContainersStorage"],
        true
    );
    assert!(check_shared(fs.path(), &img.config_digest) >= 5);
    // --unified disabled wins over the image.
    let fs2 = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let out = install(fs2.path(), None, &src, &["--unified", "disabled"]);
    assert!(out.status.success());
    assert!(!fs2.path().join(FLAG).exists());
    assert!(!fs2.path().join(STORE).exists());

    // On ext4 `enabled` from the image fails once the image is read, and
    // what was written is removed.
    let ext4 = LoopFs::new(FsKind::Ext4, 1024).unwrap();
    let before = snapshot(ext4.path());
    let mut c = unistore();
    c.args(["install", "to-filesystem", "--source-imgref", &src])
        .arg(ext4.path());
    run_fails(&mut c, "reflinks");
    assert_eq!(before, snapshot(ext4.path()));
}

#[test]
fn bad_unified_values_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    image(
        &work.path().join("bad"),
        "1.0",
        1,
        0,
        Some("[install.storage]\nunified = \"sometimes\"\n"),
    );
    let fs = LoopFs::new(FsKind::Xfs, 512).unwrap();
    let root = fs.path();
    let before = snapshot(root);
    let src = format!("oci:{}:latest", work.path().join("bad").display());
    let mut c = unistore();
    c.args(["install", "to-filesystem", "--source-imgref", &src])
        .arg(root);
    let line = run_fails(&mut c, "50-storage.toml");
    assert!(line.contains("install config"), "{line}");
    let out = run(&mut c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sometimes"), "{stderr}");
    assert_eq!(before, snapshot(root));

    // A bad host config file: refused before anything is written.
    let cfg = work.path().join("host.toml");
    std::fs::write(&cfg, "[install.storage]\nunified = \"yes\"\n").unwrap();
    let mut c = unistore();
    c.args(["install", "to-filesystem", "--install-config"])
        .arg(&cfg)
        .args(["--source-imgref", &src])
        .arg(root);
    run_fails(&mut c, "host.toml");
    assert_eq!(before, snapshot(root));

    // A bad flag value.
    let mut c = unistore();
    c.args([
        "install",
        "to-filesystem",
        "--unified",
        "always",
        "--source-imgref",
        &src,
    ])
    .arg(root);
    run_fails(&mut c, "unknown unified storage mode");
    assert_eq!(before, snapshot(root));
}
