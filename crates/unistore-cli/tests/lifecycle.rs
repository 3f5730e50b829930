//! End-to-end host lifecycle on real XFS with a real registry: upgrade,
//! finalize, rollback, switch, gc, kills at each stage, /etc merge, the
//! lock, and migration of older roots.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, EntryKind, TestImageOpts, build_test_image};

struct World {
    _work: tempfile::TempDir,
    fs: LoopFs,
    reg: Registry,
    images: Vec<(PathBuf, BuiltImage)>,
}

/// Images v1, v2, v3: /etc/untouched.conf is the same in all; /etc/changed.conf
/// changes in every version.
fn world() -> World {
    let work = tempfile::tempdir().unwrap();
    let mut images = vec![];
    for v in 1..=3u32 {
        let dir = work.path().join(format!("v{v}"));
        let opts = TestImageOpts {
            version: format!("{v}.0"),
            variant: v,
            etc_files: vec![
                (
                    "/etc/untouched.conf".into(),
                    b"same in every version\n".to_vec(),
                ),
                (
                    "/etc/changed.conf".into(),
                    format!("version {v}\n").into_bytes(),
                ),
            ],
            ..Default::default()
        };
        let img = build_test_image(&dir, "latest", &opts).unwrap();
        images.push((dir, img));
    }
    World {
        _work: work,
        fs: LoopFs::new(FsKind::Xfs, 1536).unwrap(),
        reg: Registry::start().unwrap(),
        images,
    }
}

impl World {
    fn root(&self) -> &Path {
        self.fs.path()
    }
    fn push(&self, v: usize, name: &str) -> String {
        self.reg
            .push_oci(&self.images[v - 1].0, "latest", name)
            .unwrap()
    }
    fn digest(&self, v: usize) -> &str {
        &self.images[v - 1].1.manifest_digest
    }
    fn cmd(&self) -> Command {
        let mut c = unistore();
        c.env("CONTAINERS_REGISTRIES_CONF", self.reg.registries_conf());
        c.arg("--sysroot").arg(self.root());
        c
    }
    fn install(&self, src: &str) {
        let mut c = unistore();
        c.env("CONTAINERS_REGISTRIES_CONF", self.reg.registries_conf());
        run_ok(
            c.args(["install", "to-filesystem", "--source-imgref", src])
                .arg(self.root()),
        );
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut c = self.cmd();
        c.args(args).arg("--json");
        serde_json::from_str(&run_ok(&mut c)).unwrap()
    }
    fn status(&self) -> Value {
        self.json(&["status"])
    }
    /// (booted, rollback, staged) manifest digests.
    fn digests(&self) -> (Option<String>, Option<String>, Option<String>) {
        let s = self.status();
        let d = |k: &str| {
            s["status"][k]["image"]["imageDigest"]
                .as_str()
                .map(str::to_string)
        };
        (d("booted"), d("rollback"), d("staged"))
    }
    fn id_of(&self, which: &str) -> String {
        self.status()["status"][which]["composefs"]["verity"]
            .as_str()
            .unwrap()
            .to_string()
    }
    fn etc_file(&self, which: &str, name: &str) -> String {
        let id = self.id_of(which);
        std::fs::read_to_string(self.root().join(format!("state/deploy/{id}/etc/{name}"))).unwrap()
    }
    /// Mounts `which` (booted/rollback) and compares it with image `v`.
    fn check_mount(&self, which: &str, v: usize) {
        self.check_mount_img(which, &self.images[v - 1].1)
    }
    /// Mounts `which` and compares it with `img` (outside /etc).
    fn check_mount_img(&self, which: &str, img: &BuiltImage) {
        let id = self.id_of(which);
        let mnt = tempfile::tempdir().unwrap();
        run_ok(
            self.cmd()
                .args(["internals", "mount", "--deployment", &id])
                .arg(mnt.path()),
        );
        let expected: Vec<_> = img
            .expected
            .iter()
            .filter(|e| !e.path.starts_with("/etc/"))
            .cloned()
            .collect();
        let r = std::panic::catch_unwind(|| compare_tree(mnt.path(), &expected));
        umount_all(mnt.path());
        let n = r.unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert!(n > 20);
    }
    fn v(&self, v: usize) -> Option<String> {
        Some(self.digest(v).to_string())
    }
}

/// sha256 of every object in the repository.
fn object_hashes(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for d in std::fs::read_dir(root.join("composefs/objects"))
        .unwrap()
        .flatten()
    {
        if !d.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.insert(sha256_file(&f.path()));
        }
    }
    out
}

fn file_sha(img: &BuiltImage, suffix: &str) -> String {
    match &img
        .expected
        .iter()
        .find(|e| e.path.ends_with(suffix))
        .unwrap()
        .kind
    {
        EntryKind::File { sha256, .. } => sha256.clone(),
        _ => panic!(),
    }
}

#[test]
fn full_lifecycle() {
    let w = world();
    let src = w.push(1, "os");
    w.install(&src);
    assert_eq!(w.digests(), (w.v(1), None, None));

    // A local edit that must survive the upgrade.
    let id1 = w.id_of("booted");
    std::fs::write(
        w.root()
            .join(format!("state/deploy/{id1}/etc/untouched.conf")),
        "local edit\n",
    )
    .unwrap();

    // No update yet.
    let o = w.json(&["upgrade"]);
    assert_eq!(o["result"], "no-change", "{o}");

    // --check reports without fetching or writing.
    w.push(2, "os");
    let before = snapshot(w.root());
    let o = w.json(&["upgrade", "--check"]);
    assert_eq!(o["result"], "update-available");
    assert_eq!(o["remote"]["manifest_digest"], w.digest(2));
    assert_eq!(o["remote"]["version"], "2.0");
    assert_eq!(
        before,
        snapshot(w.root()),
        "upgrade --check wrote to the root"
    );

    let o = w.json(&["upgrade"]);
    assert_eq!(o["result"], "staged", "{o}");
    assert_eq!(w.digests(), (w.v(1), None, w.v(2)));
    let o = w.json(&["upgrade"]);
    assert_eq!(o["result"], "no-change");
    assert_eq!(o["staged"], true);

    let o = w.json(&["internals", "finalize-staged"]);
    assert_eq!(o["result"], "finalized");
    assert_eq!(w.digests(), (w.v(2), w.v(1), None));
    assert_eq!(w.etc_file("booted", "untouched.conf"), "local edit\n");
    assert_eq!(w.etc_file("booted", "changed.conf"), "version 2\n");
    w.check_mount("booted", 2);

    // Rollback, and rollback again undoes it.
    let o = w.json(&["rollback"]);
    assert_eq!(o["rollback_queued"], false);
    assert_eq!(w.digests(), (w.v(1), w.v(2), None));
    w.json(&["rollback"]);
    assert_eq!(w.digests(), (w.v(2), w.v(1), None));

    // Switch to another image reference.
    let src3 = w.push(3, "other");
    let o = w.json(&["switch", &src3]);
    assert_eq!(o["result"], "staged");
    w.json(&["internals", "finalize-staged"]);
    assert_eq!(w.digests(), (w.v(3), w.v(2), None));
    let s = w.status();
    assert_eq!(
        s["status"]["booted"]["image"]["image"]["image"],
        src3.trim_start_matches("docker://")
    );
    // The upgrade that staged v3 ran a GC while v1 was still the rollback;
    // v1 left the boot menu at finalize: now it is garbage.
    let v1_kernel = file_sha(&w.images[0].1, "/vmlinuz");
    let before_objects = object_hashes(w.root());
    assert!(before_objects.contains(&v1_kernel));
    w.fs.sync();
    let free_before = w.fs.free_bytes();
    let g = w.json(&["internals", "gc"]);
    assert_eq!(g["state_dirs"].as_array().unwrap().len(), 1, "{g}");
    assert_eq!(g["kernel_dirs"].as_array().unwrap().len(), 1, "{g}");
    assert_eq!(g["tags_removed"].as_array().unwrap().len(), 1, "{g}");
    assert!(g["objects_removed"].as_u64().unwrap() > 0);
    let freed = g["object_bytes"].as_u64().unwrap() + g["other_bytes"].as_u64().unwrap();
    // XFS frees the blocks of unlinked files in the background (inode
    // inactivation; syncfs does not wait for it), the more so for files
    // whose extents are shared (the kernel directory's files are reflinks
    // of the objects): give it up to 10 s.
    w.fs.sync();
    let mut free_after = w.fs.free_bytes();
    for _ in 0..100 {
        if free_after >= free_before + freed / 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        w.fs.sync();
        free_after = w.fs.free_bytes();
    }
    assert!(
        free_after >= free_before + freed / 2,
        "df: {free_before} -> {free_after}, report says {freed} freed"
    );
    let after_objects = object_hashes(w.root());
    assert!(
        !after_objects.contains(&v1_kernel),
        "v1's kernel object survived gc"
    );
    assert!(after_objects.contains(&file_sha(&w.images[1].1, "/vmlinuz")));
    assert!(after_objects.contains(&file_sha(&w.images[2].1, "/vmlinuz")));
    w.check_mount("booted", 3);
    w.check_mount("rollback", 2);
    run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
}

#[test]
fn etc_conflict_keeps_old_boot() {
    let w = world();
    w.install(&w.push(1, "os"));
    let id1 = w.id_of("booted");
    std::fs::write(
        w.root()
            .join(format!("state/deploy/{id1}/etc/changed.conf")),
        "mine\n",
    )
    .unwrap();
    w.push(2, "os");
    w.json(&["upgrade"]);
    run_fails(
        w.cmd().args(["internals", "finalize-staged"]),
        "changed.conf",
    );
    assert_eq!(w.digests(), (w.v(1), None, w.v(2)));
    assert_eq!(w.etc_file("booted", "changed.conf"), "mine\n");
}

#[test]
fn second_writer_is_refused_and_status_does_not_block() {
    let w = world();
    w.install(&w.push(1, "os"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(w.root().join("state/unistore.lock"))
        .unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
    run_fails(
        w.cmd().args(["internals", "gc"]),
        "another unistore operation",
    );
    run_fails(w.cmd().arg("upgrade"), "another unistore operation");
    run_fails(w.cmd().arg("rollback"), "another unistore operation");
    assert_eq!(w.digests(), (w.v(1), None, None));
    drop(f);
    run_ok(w.cmd().args(["internals", "gc"]));
}

#[test]
fn kill_at_each_stage_of_upgrade_and_gc() {
    for point in [
        "upgrade:after-pull",
        "upgrade:after-deploy",
        "upgrade:after-entries",
        "upgrade:after-marker",
        "gc:before-repo-gc",
    ] {
        eprintln!("=== crash point {point}");
        let w = world();
        w.install(&w.push(1, "os"));
        w.push(2, "os");
        let mut c = w.cmd();
        c.arg("upgrade");
        run_killed(c, point);
        // The booted deployment still mounts and status is consistent.
        assert_eq!(w.digests().0, w.v(1), "{point}");
        w.check_mount("booted", 1);
        // The next upgrade completes; GC leaves nothing behind.
        let o = w.json(&["upgrade"]);
        assert!(
            o["result"] == "staged" || o["result"] == "no-change",
            "{point}: {o}"
        );
        assert_eq!(w.digests(), (w.v(1), None, w.v(2)), "{point}");
        run_ok(w.cmd().args(["internals", "gc"]));
        run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
        w.json(&["internals", "finalize-staged"]);
        assert_eq!(w.digests(), (w.v(2), w.v(1), None), "{point}");
        w.check_mount("booted", 2);
    }
}

#[test]
fn kill_during_finalize_and_gc() {
    for point in ["finalize:after-etc", "finalize:after-swap"] {
        let w = world();
        w.install(&w.push(1, "os"));
        w.push(2, "os");
        w.json(&["upgrade"]);
        let mut c = w.cmd();
        c.args(["internals", "finalize-staged"]);
        run_killed(c, point);
        w.check_mount("booted", if point == "finalize:after-swap" { 2 } else { 1 });
        w.json(&["internals", "finalize-staged"]);
        assert_eq!(w.digests(), (w.v(2), w.v(1), None), "{point}");
        w.check_mount("booted", 2);
        run_ok(w.cmd().args(["internals", "gc"]));
        run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
    }
    // gc killed right before the repository GC, after untagging.
    let w = world();
    w.install(&w.push(1, "os"));
    w.push(2, "os");
    w.json(&["upgrade"]);
    w.json(&["internals", "finalize-staged"]);
    w.push(3, "os");
    w.json(&["upgrade"]);
    w.json(&["internals", "finalize-staged"]);
    let mut c = w.cmd();
    c.args(["internals", "gc"]);
    run_killed(c, "gc:before-repo-gc");
    w.check_mount("booted", 3);
    w.check_mount("rollback", 2);
    let g = w.json(&["internals", "gc"]);
    assert!(g["objects_removed"].as_u64().unwrap() > 0, "{g}");
    run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
}

/// Makes an installed two-deployment root look like an older version wrote
/// it: unprefixed kernel directories and no manifest_digest in the booted
/// origin, with a legacy .imginfo instead.
fn make_old(w: &World) {
    let root = w.root();
    let entries_dir = root.join("boot/loader/entries");
    for e in std::fs::read_dir(&entries_dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let line = text.lines().find(|l| l.starts_with("linux ")).unwrap();
        let kd = line.split('/').rev().nth(1).unwrap().to_string();
        let old = kd.trim_start_matches("bootc_composefs-").to_string();
        if root.join("boot").join(&kd).exists() {
            std::fs::rename(root.join("boot").join(&kd), root.join("boot").join(&old)).unwrap();
        }
        std::fs::write(e.path(), text.replace(&kd, &old)).unwrap();
    }
    let id = w.id_of("booted");
    let origin_path = root.join(format!("state/deploy/{id}/{id}.origin"));
    let origin = std::fs::read_to_string(&origin_path).unwrap();
    let origin: String = origin
        .lines()
        .filter(|l| !l.starts_with("manifest_digest") && *l != "[image]")
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&origin_path, origin).unwrap();
    let cfg = &w.images[1].1.config_digest;
    std::fs::write(
        root.join(format!("state/deploy/{id}/{id}.imginfo")),
        format!(r#"{{"config": {{}}, "manifest": {{"config": {{"digest": "{cfg}"}}}}}}"#),
    )
    .unwrap();
}

fn boot_listing(root: &Path) -> Vec<String> {
    let mut v = vec![];
    for rel in ["boot", "boot/loader/entries"] {
        for e in std::fs::read_dir(root.join(rel)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let content = if e.path().is_file() {
                std::fs::read_to_string(e.path()).unwrap()
            } else {
                String::new()
            };
            v.push(format!("{rel}/{name}\n{content}"));
        }
    }
    v.sort();
    v
}

#[test]
fn old_layout_migrates_idempotently() {
    let w = world();
    w.install(&w.push(1, "os"));
    w.push(2, "os");
    w.json(&["upgrade"]);
    w.json(&["internals", "finalize-staged"]);
    make_old(&w);
    assert!(
        !boot_listing(w.root())
            .iter()
            .any(|l| l.starts_with("boot/bootc_composefs-"))
    );
    // Status reads an old root as it is, and writes nothing.
    let before = snapshot(w.root());
    assert_eq!(w.digests(), (w.v(2), w.v(1), None));
    assert_eq!(before, snapshot(w.root()));

    // Interrupted after renaming the kernel directories.
    let mut c = w.cmd();
    c.args(["internals", "gc"]);
    run_killed(c, "migrate:after-rename");
    run_ok(w.cmd().args(["internals", "gc"]));
    let first = boot_listing(w.root());
    assert_eq!(
        first
            .iter()
            .filter(|l| l.starts_with("boot/bootc_composefs-"))
            .count(),
        2,
        "{first:#?}"
    );
    run_ok(w.cmd().args(["internals", "gc"]));
    assert_eq!(
        first,
        boot_listing(w.root()),
        "a second migration changed something"
    );
    assert_eq!(w.digests(), (w.v(2), w.v(1), None));
    w.check_mount("booted", 2);
    w.check_mount("rollback", 1);
    run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
}

#[test]
fn rollback_with_too_few_entries_is_an_error() {
    let w = world();
    w.install(&w.push(1, "os"));
    run_fails(w.cmd().arg("rollback"), "no rollback deployment");
    assert_eq!(w.digests(), (w.v(1), None, None));
}

/// An upgrade whose kernel and initrd are identical reuses the kernel
/// directory; GC keeps a shared directory while any entry uses it, even
/// after the deployment that created it is gone.
#[test]
fn shared_kernel_dir_survives_gc() {
    let w = world();
    let work = tempfile::tempdir().unwrap();
    let v1b = work.path().join("v1b");
    let opts = TestImageOpts {
        version: "1.1".into(),
        variant: 1,
        extra_files: vec![("/usr/share/extra.txt".into(), b"only in 1.1\n".to_vec())],
        etc_files: vec![
            (
                "/etc/untouched.conf".into(),
                b"same in every version\n".to_vec(),
            ),
            ("/etc/changed.conf".into(), b"version 1\n".to_vec()),
        ],
        ..Default::default()
    };
    let img = build_test_image(&v1b, "latest", &opts).unwrap();
    w.install(&w.push(1, "os"));
    let id1 = w.id_of("booted");
    w.reg.push_oci(&v1b, "latest", "os").unwrap();
    let o = w.json(&["upgrade"]);
    assert_eq!(o["kernel_reused"], true, "{o}");
    w.json(&["internals", "finalize-staged"]);
    let shared = format!("bootc_composefs-{id1}");
    let entries = std::fs::read_dir(w.root().join("boot/loader/entries")).unwrap();
    for e in entries.flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap();
        assert!(t.contains(&shared), "{t}");
    }
    assert_eq!(
        w.status()["status"]["booted"]["image"]["imageDigest"],
        img.manifest_digest.as_str()
    );
    // v1 leaves the menu; v1.1 still boots from v1's kernel directory.
    let src2 = w.push(2, "two");
    w.json(&["switch", &src2]);
    w.json(&["internals", "finalize-staged"]);
    let g = w.json(&["internals", "gc"]);
    assert!(g["kernel_dirs"].as_array().unwrap().is_empty(), "{g}");
    assert!(
        w.root()
            .join("boot")
            .join(&shared)
            .join("vmlinuz")
            .is_file()
    );
    assert!(!w.root().join(format!("state/deploy/{id1}")).exists());
    w.check_mount_img("rollback", &img);
    run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
}

/// A broken origin file: status still reports the host and names the
/// problem; upgrade fails with a clear error and changes nothing.
#[test]
fn broken_origin_is_reported_not_fatal() {
    let w = world();
    w.install(&w.push(1, "os"));
    let id = w.id_of("booted");
    let origin = w.root().join(format!("state/deploy/{id}/{id}.origin"));
    std::fs::write(&origin, "[origin]\nnot an origin\n").unwrap();
    let s = w.status();
    let errors = s["status"]["booted"]["errors"].as_array().unwrap();
    assert!(errors[0].as_str().unwrap().contains(".origin"), "{s}");
    let human = run_ok(w.cmd().arg("status"));
    assert!(human.contains("Error"), "{human}");
    let before = snapshot(w.root());
    run_fails(w.cmd().arg("upgrade"), "origin");
    assert_eq!(before, snapshot(w.root()));
}

/// `switch` to the booted image under another reference records the new
/// reference in the booted deployment's origin (what bootc does) without a
/// new deployment; `upgrade` then follows the new reference.
#[test]
fn switch_to_same_image_under_another_reference_updates_origin() {
    let w = world();
    let src = w.push(1, "os");
    w.install(&src);
    let other = w.push(1, "other");
    let id = w.id_of("booted");
    let boot_before = snapshot(&w.root().join("boot"));
    let o = w.json(&["switch", &other]);
    assert_eq!(o["result"], "origin-updated", "{o}");
    assert_eq!(o["deployment_id"], id.as_str(), "{o}");
    assert_eq!(o["manifest_digest"], w.digest(1), "{o}");
    assert_snapshots_equal(&boot_before, &snapshot(&w.root().join("boot")), "switch");
    assert!(!w.root().join("boot/loader/entries.staged").exists());
    let origin =
        std::fs::read_to_string(w.root().join(format!("state/deploy/{id}/{id}.origin"))).unwrap();
    assert!(
        origin.contains(&format!(
            "container-image-reference=ostree-unverified-image:{other}\n"
        )),
        "{origin}"
    );
    assert!(
        origin.contains(&format!("manifest_digest={}", w.digest(1))),
        "{origin}"
    );
    let s = w.status();
    assert!(
        s["spec"]["image"]["image"]
            .as_str()
            .unwrap()
            .ends_with("/other:latest"),
        "{s}"
    );
    assert_eq!(w.digests(), (w.v(1), None, None));
    // Again: nothing to change.
    assert_eq!(w.json(&["switch", &other])["result"], "no-change");
    // `upgrade` follows the new reference, not the old one.
    w.push(3, "os");
    w.push(2, "other");
    let o = w.json(&["upgrade"]);
    assert_eq!(o["result"], "staged", "{o}");
    assert_eq!(o["manifest_digest"], w.digest(2), "{o}");
}

/// Manifest digests of the images in the host containers-storage, from the
/// store's own `overlay-images/images.json`.
fn store_digests(root: &Path) -> Vec<String> {
    let p = root.join("composefs/bootc/storage/overlay-images/images.json");
    let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    let mut d: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_string())
        .collect();
    d.sort();
    d
}

/// On a unified host, upgrades and switches go through the host store, and
/// GC keeps the store to the live images.
#[test]
fn unified_host_lifecycle() {
    let w = world();
    let src = w.push(1, "os");
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", w.reg.registries_conf());
    run_ok(
        c.args([
            "install",
            "to-filesystem",
            "--unified",
            "enabled",
            "--source-imgref",
            &src,
        ])
        .arg(w.root()),
    );
    assert_eq!(store_digests(w.root()), vec![w.digest(1).to_string()]);
    w.push(2, "os");
    assert_eq!(w.json(&["upgrade"])["result"], "staged");
    let mut want = vec![w.digest(1).to_string(), w.digest(2).to_string()];
    want.sort();
    assert_eq!(
        store_digests(w.root()),
        want,
        "the upgrade did not pull through the store"
    );
    w.json(&["internals", "finalize-staged"]);
    let src3 = w.push(3, "other");
    w.json(&["switch", &src3]);
    w.json(&["internals", "finalize-staged"]);
    // The dry run previews the store prune and changes nothing.
    let before = snapshot(w.root());
    let preview = w.json(&["internals", "gc", "--dry-run"]);
    assert_snapshots_equal(&before, &snapshot(w.root()), "gc --dry-run");
    let v1_id = w.images[0].1.config_digest.trim_start_matches("sha256:");
    assert_eq!(
        preview["store_images_removed"],
        serde_json::json!([v1_id]),
        "{preview}"
    );
    assert!(
        !preview["store_layers_removed"]
            .as_array()
            .unwrap()
            .is_empty()
            && preview["store_layer_bytes"].as_u64().unwrap() > 0,
        "{preview}"
    );
    let human = run_ok(w.cmd().args(["internals", "gc", "--dry-run"]));
    assert!(
        human.contains("1 store image(s)") && human.contains(&format!("store image {v1_id}")),
        "{human}"
    );
    run_fails(
        w.cmd().args(["internals", "gc", "--assert-no-op"]),
        "not a no-op",
    );
    assert_snapshots_equal(&before, &snapshot(w.root()), "gc --dry-run");
    let g = w.json(&["internals", "gc"]);
    assert_eq!(
        g["store_images_removed"], preview["store_images_removed"],
        "{g}"
    );
    assert_eq!(
        g["store_layers_removed"], preview["store_layers_removed"],
        "{g}"
    );
    let mut want = vec![w.digest(2).to_string(), w.digest(3).to_string()];
    want.sort();
    assert_eq!(store_digests(w.root()), want);
    assert_eq!(w.digests(), (w.v(3), w.v(2), None));
    let s = w.status();
    assert_eq!(s["status"]["storage"]["unified"], "enabled", "{s}");
    w.check_mount("booted", 3);
    run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
}

/// An upgrade applies the new image's kernel arguments (install config
/// `kargs`, `kargs.d`) in place of the old image's, and keeps those the
/// user added.
#[test]
fn upgrade_applies_the_new_images_kargs_and_keeps_the_users() {
    let work = tempfile::tempdir().unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1536).unwrap();
    let reg = Registry::start().unwrap();
    let build = |v: u32, files: Vec<(String, Vec<u8>)>| {
        let dir = work.path().join(format!("k{v}"));
        let opts = TestImageOpts {
            version: format!("{v}.0"),
            variant: v,
            extra_files: files,
            ..Default::default()
        };
        build_test_image(&dir, "latest", &opts).unwrap();
        reg.push_oci(&dir, "latest", "kos").unwrap()
    };
    let toml = |k: &str| {
        (
            "/usr/lib/bootc/install/10-kargs.toml".to_string(),
            k.as_bytes().to_vec(),
        )
    };
    let src = build(
        1,
        vec![toml(
            "[install]\nkargs = [\"quiet\", \"img.v=1\", \"old.only\"]\n",
        )],
    );
    let cmd = || {
        let mut c = unistore();
        c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf());
        c
    };
    run_ok(
        cmd()
            .args([
                "install",
                "to-filesystem",
                "--karg",
                "user.opt=1",
                "--source-imgref",
                &src,
            ])
            .arg(fs.path()),
    );
    let options = |dir: &str| -> Vec<Vec<String>> {
        std::fs::read_dir(fs.path().join(dir))
            .unwrap()
            .map(|e| {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                let line = text.lines().find(|l| l.starts_with("options ")).unwrap();
                // root=UUID=<the loop filesystem's> (the install's default)
                // is not the image's: left out here.
                line.split_whitespace()
                    .skip(3)
                    .filter(|o| !o.starts_with("root="))
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    };
    let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        options("boot/loader/entries"),
        vec![k(&["quiet", "img.v=1", "old.only", "user.opt=1"])]
    );
    build(
        2,
        vec![
            toml("[install]\nkargs = [\"quiet\", \"img.v=2\"]\n"),
            (
                "/usr/lib/bootc/kargs.d/20-more.toml".into(),
                b"kargs = [\"kd.opt\"]\n".to_vec(),
            ),
        ],
    );
    let o: Value = serde_json::from_str(&run_ok(
        cmd()
            .arg("--sysroot")
            .arg(fs.path())
            .args(["upgrade", "--json"]),
    ))
    .unwrap();
    assert_eq!(o["result"], "staged", "{o}");
    let mut staged = options("boot/loader/entries.staged");
    staged.sort();
    assert_eq!(
        staged,
        vec![
            // The rollback keeps its own.
            k(&["quiet", "img.v=1", "old.only", "user.opt=1"]),
            k(&["quiet", "user.opt=1", "img.v=2", "kd.opt"]),
        ]
    );
}
