//! End-to-end: released bootc's own library (ostree-ext 0.15.3, the
//! test-only `crates/ostree-ext-peer`) reads and garbage-collects the ostree
//! hosts unistore writes, on a real XFS loop filesystem from a real registry
//! on 127.0.0.1: `list_images`, `query_image` by the origin's reference,
//! `query_image_commit` of every deployment, one blob ref per layer, an
//! update check that finds the deployed image present (`prepare`), and
//! `container::deploy::prune` removing nothing live. Hosts written by older
//! versions (refs escaped the old way, no layer commits) are migrated: the
//! refs by the first writing command, the layers of a classic host by its
//! next upgrade (the unified case, layers on the host, is the crash walk's
//! `walk_ostree_migrate`).

mod common;

use std::path::Path;
use std::process::Command;

use common::ostree::*;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, TestImageOpts, build_test_image};

fn image(dir: &Path, tag: &str, v: u32) -> BuiltImage {
    let opts = TestImageOpts {
        version: format!("{v}.0"),
        variant: v,
        etc_files: vec![("/etc/v.conf".into(), format!("{v}\n").into_bytes())],
        ..Default::default()
    };
    build_test_image(dir, tag, &opts).unwrap()
}

fn ostree_cmd(root: &Path) -> Command {
    let mut c = Command::new("ostree");
    c.arg(format!("--repo={}", root.join("ostree/repo").display()));
    c
}

/// `ostree refs` below `prefix`, each `(name, commit)`.
fn refs(root: &Path, prefix: &str) -> Vec<(String, String)> {
    let names = run_ok(ostree_cmd(root).args(["refs", "--list", prefix]));
    names
        .lines()
        .filter(|l| !l.is_empty())
        .map(|n| {
            let c = run_ok(ostree_cmd(root).args(["rev-parse", n]));
            (n.to_string(), c.trim().to_string())
        })
        .collect()
}

/// The blob refs ostree-ext names for the layers of the manifest `digest`
/// in the registry's layout at `oci`.
fn layer_refs(oci: &Path, digest: &str) -> Vec<String> {
    let hex = digest.trim_start_matches("sha256:");
    let m: Value =
        serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "ostree/container/blob/sha256_3A_{}",
                l["digest"].as_str().unwrap().trim_start_matches("sha256:")
            )
        })
        .collect()
}

/// `prepare` (an update check of released bootc) of `imgref`.
fn prepare_cmd(root: &Path, imgref: &str) -> Command {
    let mut c = peer();
    c.arg("prepare")
        .arg("--repo")
        .arg(root.join("ostree/repo"))
        .args(["--imgref", imgref, "--insecure"]);
    c
}

/// What `prepare` says for `imgref`.
fn prepare(root: &Path, imgref: &str) -> Value {
    let out = run(&mut prepare_cmd(root, imgref));
    assert!(
        out.status.success(),
        "ostree-ext 0.15.3 prepare fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An update check of released bootc (`prepare`, as `bootc upgrade
/// --check`) that finds `newer` caches its manifest and config in the
/// detached metadata of the deployed commit; status shows it as bootc's
/// `cachedUpdate`. ostree-ext 0.15.3 then refuses to go on with an image
/// that has no `ostree.final-diffid` label, after it cached the update.
fn update_check_is_shown(root: &Path, imgref: &str, newer: &BuiltImage) {
    let out = run(&mut prepare_cmd(root, imgref));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("ostree.final-diffid"),
        "{err}"
    );
    let st = status(root);
    let b = &st["status"]["booted"];
    let u = &b["cachedUpdate"];
    assert_eq!(u["imageDigest"], newer.manifest_digest.as_str(), "{st}");
    assert_eq!(u["image"], b["image"]["image"], "{st}");
    assert_eq!(u["version"], "2.0", "{st}");
    assert_eq!(
        u["timestamp"],
        unistore_fixtures::image::oci::FIXED_CREATED,
        "{st}"
    );
    assert_eq!(u["architecture"], "amd64", "{st}");
    let human = run_ok(cmd(root, None).arg("status"));
    assert!(human.contains("UpdateVersion: 2.0"), "{human}");
    assert!(
        human.contains(&format!("UpdateDigest: {}", newer.manifest_digest)),
        "{human}"
    );
}

#[test]
fn released_bootc_reads_and_prunes_ostree_hosts() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let v1 = image(&oci, "v1", 1);
    let reg = Registry::start().unwrap();
    let src = reg.push_oci(&oci, "v1", "probe/os").unwrap();
    let name = src.trim_start_matches("docker://").to_string();
    let origin_ref = format!("ostree-unverified-registry:{name}");
    let fs = LoopFs::new(FsKind::Xfs, 1536).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(root, &src, Some(&reg), &[]));

    // The image ref is ostree-ext's spelling of the reference; each layer of
    // the manifest has its blob ref.
    let image_refs = refs(root, "ostree/container/image");
    let escaped = name.replace('.', "_2E_").replace(':', "_3A_");
    assert_eq!(
        image_refs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec![format!(
            "ostree/container/image/docker_3A__2F__2F_{escaped}"
        )],
        "{image_refs:?}"
    );
    let want1 = layer_refs(&oci, &v1.manifest_digest);
    let mut blobs: Vec<String> = refs(root, "ostree/container/blob")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    blobs.sort();
    let mut sorted1 = want1.clone();
    sorted1.sort();
    sorted1.dedup();
    assert_eq!(blobs, sorted1);
    ostree_fsck(root);
    bootc_reads_and_prunes(root);
    // An update check of released bootc: nothing to fetch.
    let p = prepare(root, &origin_ref);
    assert_eq!(p["result"], "AlreadyPresent", "{p}");

    // v2 under the same tag: the upgrade commits only the layers v1 lacks.
    let v2 = image(&oci, "v1", 2);
    reg.push_oci(&oci, "v1", "probe/os").unwrap();
    update_check_is_shown(root, &origin_ref, &v2);
    let want2 = layer_refs(&oci, &v2.manifest_digest);
    let new_layers = want2.iter().filter(|r| !want1.contains(r)).count() as u64;
    assert!(new_layers > 0 && new_layers < want2.len() as u64);
    let up: Value =
        serde_json::from_str(&run_ok(cmd(root, Some(&reg)).args(["upgrade", "--json"]))).unwrap();
    assert_eq!(up["commit"]["layers_written"], new_layers, "{up}");
    assert_eq!(
        up["commit"]["layers_reused"],
        want2.len() as u64 - new_layers,
        "{up}"
    );
    let st = status(root);
    assert_eq!(
        st["status"]["booted"]["image"]["imageDigest"],
        v2.manifest_digest.as_str()
    );
    // The new commit has no update cached; v1's still names v2, as bootc
    // reads each deployment's own commit.
    assert!(st["status"]["booted"]["cachedUpdate"].is_null(), "{st}");
    assert_eq!(
        st["status"]["rollback"]["cachedUpdate"]["imageDigest"],
        v2.manifest_digest.as_str(),
        "{st}"
    );
    ostree_fsck(root);
    bootc_reads_and_prunes(root);
    assert_eq!(prepare(root, &origin_ref)["result"], "AlreadyPresent");
    // Both deployments' layers are kept (v1 is the rollback).
    let blobs: Vec<String> = refs(root, "ostree/container/blob")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for r in want1.iter().chain(&want2) {
        assert!(blobs.contains(r), "{r} missing: {blobs:?}");
    }

    // Rollback: bootc still reads every deployment.
    run_ok(cmd(root, None).arg("rollback"));
    bootc_reads(root);
    run_ok(cmd(root, None).arg("rollback"));

    // A host an older version wrote: image refs escaped the old way (every
    // `/` escaped), no layer commits. The next writing command migrates it.
    let new_style = refs(root, "ostree/container/image");
    for (n, _) in refs(root, "ostree/container/blob") {
        run_ok(ostree_cmd(root).args(["refs", "--delete", &n]));
    }
    for (n, c) in refs(root, "ostree/container/image") {
        let old = n
            .replacen("ostree/container/image/", "", 1)
            .replace('/', "_2F_");
        run_ok(ostree_cmd(root).args([
            "refs",
            "--create",
            &format!("ostree/container/image/{old}"),
            &c,
        ]));
        run_ok(ostree_cmd(root).args(["refs", "--delete", &n]));
    }
    let mut q = peer();
    q.args([
        "query-image-commit",
        "--repo",
        root.join("ostree/repo").to_str().unwrap(),
        "--commit",
        &checksum(&status(root), "booted"),
    ]);
    let out = run(&mut q);
    assert!(
        !out.status.success(),
        "an old host is not readable by bootc"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Missing base image ref"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reads do not migrate.
    let before = snapshot(root);
    status(root);
    run_ok(cmd(root, None).args(["internals", "fsck"]));
    assert_snapshots_equal(&before, &snapshot(root), "status and fsck");
    // The first writing command renames the refs; this classic host keeps
    // no layers, so its next upgrade fetches them (by digest: the
    // rollback's image is no longer the tag's).
    run_ok(cmd(root, None).args(["internals", "gc"]));
    assert_eq!(refs(root, "ostree/container/image"), new_style);
    assert!(refs(root, "ostree/container/blob").is_empty());
    let up: Value =
        serde_json::from_str(&run_ok(cmd(root, Some(&reg)).args(["upgrade", "--json"]))).unwrap();
    assert_eq!(up["result"], "no-change", "{up}");
    let mut blobs: Vec<String> = refs(root, "ostree/container/blob")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    blobs.sort();
    let mut both: Vec<String> = want1.iter().chain(&want2).cloned().collect();
    both.sort();
    both.dedup();
    assert_eq!(blobs, both);
    bootc_reads_and_prunes(root);
    assert_eq!(prepare(root, &origin_ref)["result"], "AlreadyPresent");
    // Migrated once: the next writing command finds nothing to do.
    let before = snapshot(root);
    run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
    assert_snapshots_equal(&before, &snapshot(root), "gc after the migration");
}
