//! podman alongside unistore on one host store: while unistore upgrades,
//! runs `set-unified full` or repairs the store, podman pulls another
//! image into the same store and runs a container from the booted image;
//! `status` keeps reading a whole host; a second unistore writer fails at
//! once. Afterwards podman lists and runs both images and unistore's fsck
//! is clean.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::stores::{Podman, image};
use common::*;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};

fn sysroot(reg: &Registry, root: &std::path::Path) -> Command {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .arg("--sysroot")
        .arg(root);
    c
}

fn lock_held(root: &std::path::Path) -> bool {
    let Ok(f) = std::fs::File::open(root.join("state/unistore.lock")) else {
        return false;
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => false,
        Err(_) => true,
    }
}

/// Runs `writer` while podman pulls `other` and runs `booted_ref`, status
/// is read in a loop and a second writer is tried; returns how many status
/// reads were made during the write.
fn alongside(
    reg: &Registry,
    root: &std::path::Path,
    podman: &Podman,
    mut writer: Command,
    other: &str,
    booted_ref: &str,
    booted_digest: &str,
) -> usize {
    let mut child: Child = writer
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pull = podman
        .cmd()
        .args(["pull", "--tls-verify=false", "-q", other])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut statuses = 0;
    let mut second_writer_refused = false;
    loop {
        let done = child.try_wait().unwrap().is_some();
        // status reads a whole host while the write runs.
        let st: serde_json::Value =
            serde_json::from_str(&run_ok(sysroot(reg, root).args(["status", "--json"]))).unwrap();
        assert_eq!(
            st["status"]["booted"]["image"]["imageDigest"],
            booted_digest
        );
        statuses += 1;
        if !done && !second_writer_refused && lock_held(root) {
            let t = Instant::now();
            let out = run(sysroot(reg, root).args(["internals", "gc"]));
            if lock_held(root) {
                assert!(!out.status.success(), "a second writer ran");
                let e = String::from_utf8_lossy(&out.stderr);
                assert!(e.contains("another unistore operation"), "{e}");
                assert!(t.elapsed() < Duration::from_secs(5), "it waited");
                second_writer_refused = true;
            }
        }
        if done {
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pull.wait().unwrap().success(), "podman pull");
    // podman runs the booted image (from the store unistore manages).
    let osr = podman.cat_os_release(booted_ref);
    assert!(osr.contains("VERSION_ID"), "{osr}");
    eprintln!(
        "ALONGSIDE | {statuses} status reads during the write | second writer refused: {second_writer_refused}"
    );
    statuses
}

#[test]
fn podman_alongside_upgrade_set_unified_and_repair() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start().unwrap();
    let v1 = image(&work.path().join("v1"), "1.0", 1, 8, None);
    let v2 = image(&work.path().join("v2"), "2.0", 2, 8, None);
    let other = image(&work.path().join("other"), "9.0", 9, 1, None);
    let push = |d: &str, name: &str| reg.push_oci(&work.path().join(d), "latest", name).unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1536).unwrap();
    let root = fs.path();
    let src = push("v1", "os");
    let other_src = push("other", "other");
    let other_ref = other_src.trim_start_matches("docker://").to_string();
    run_ok(
        unistore()
            .env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
            .args(["install", "to-filesystem", "--source-imgref", &src])
            .arg(root),
    );
    let podman = Podman::new(root);
    let booted_ref = src.trim_start_matches("docker://").to_string();

    let go = |c| {
        alongside(
            &reg,
            root,
            &podman,
            c,
            &other_ref,
            &booted_ref,
            &v1.manifest_digest,
        )
    };

    // 1. set-unified full while podman pulls into the store it creates.
    let mut c = sysroot(&reg, root);
    c.args(["image", "set-unified", "full"]);
    // podman needs the store to exist to share it: set-unified creates it;
    // pull the other image first so both write the same store.
    run_ok(
        podman
            .cmd()
            .args(["pull", "--tls-verify=false", "-q", &other_ref]),
    );
    go(c);

    // 2. upgrade (pulls through the store) while podman pulls again.
    push("v2", "os");
    run_ok(podman.cmd().args(["rmi", &other_ref]));
    let mut c = sysroot(&reg, root);
    c.arg("upgrade");
    go(c);

    // 3. fsck images --repair of a damaged store while podman pulls.
    run_ok(podman.cmd().args(["rmi", &other_ref]));
    let id = v1.config_digest.trim_start_matches("sha256:");
    let big = root.join(format!("{}/overlay-images/{id}", common::stores::STORE));
    for e in std::fs::read_dir(&big).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("manifest") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let mut c = sysroot(&reg, root);
    c.args(["internals", "fsck", "images", "--repair"]);
    go(c);

    // Both consistent: podman lists and runs both; unistore's fsck clean.
    let imgs = podman.images();
    let ids: Vec<&str> = imgs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["Id"].as_str())
        .collect();
    for want in [&v1.config_digest, &v2.config_digest, &other.config_digest] {
        let want = want.trim_start_matches("sha256:");
        assert!(ids.contains(&want), "podman lists {want}: {imgs:#}");
    }
    assert!(podman.cat_os_release(&other_ref).contains("VERSION_ID=9.0"));
    run_ok(sysroot(&reg, root).args(["internals", "fsck", "images"]));
    run_ok(sysroot(&reg, root).args(["internals", "fsck"]));
}
