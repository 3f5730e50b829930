//! `internals fsck [images] [--repair] [--verify-content]` on real hosts:
//! loop-mounted XFS (reflinks) and ext4 (copies), real podman and skopeo.
//!
//! * an image removed from the host containers-storage (`podman rmi`) is
//!   reported, then rebuilt there by the native writer: podman runs it,
//!   skopeo exports layers with the image's diff-ids, its files share
//!   extents with the composefs objects;
//! * a damaged or missing composefs object is named and restored from the
//!   store;
//! * a store with a truncated `layers.json` or a missing `diff` directory
//!   gives a clear error and is not damaged further;
//! * without `--repair`, not a byte or an mtime under the root changes.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::stores::image_report;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, podman_env, shared_extents, unmount_all_under};
use unistore_fixtures::image::{BuiltImage, TestImageOpts, build_test_image};

const STORE: &str = "composefs/bootc/storage";

/// A host installed from a generated image that can run `cat`, on a fresh
/// loop filesystem; podman pointed at its store with one private run root.
struct Host {
    fs: LoopFs,
    work: tempfile::TempDir,
    img: BuiltImage,
    podman_dir: tempfile::TempDir,
}

impl Host {
    fn new(kind: FsKind) -> Self {
        unistore_fixtures::env::require_root();
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let oci = work.path().join("oci");
        let opts = TestImageOpts {
            extra_files: unistore_fixtures::image::host_executable_files("/usr/bin/cat").unwrap(),
            ..Default::default()
        };
        let img = build_test_image(&oci, "t", &opts).unwrap();
        let fs = LoopFs::new(kind, 1536).unwrap();
        run_ok(
            unistore()
                .args(["install", "to-filesystem", "--source-imgref"])
                .arg(format!("oci:{}:t", oci.display()))
                .arg(fs.path()),
        );
        Self {
            fs,
            work,
            img,
            podman_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> &Path {
        self.fs.path()
    }

    /// Builds another image into the host's OCI layout under `tag`; returns
    /// it and its `oci:` reference.
    fn build(&self, tag: &str, opts: &TestImageOpts) -> (BuiltImage, String) {
        let oci = self.work.path().join("oci");
        let img = build_test_image(&oci, tag, opts).unwrap();
        (img, format!("oci:{}:{tag}", oci.display()))
    }

    /// `switch REF` then `finalize-staged`: REF is booted, the old booted
    /// deployment the rollback.
    fn switch_and_finalize(&self, imgref: &str) {
        run_ok(self.cmd().args(["switch", imgref]));
        run_ok(self.cmd().args(["internals", "finalize-staged"]));
    }

    /// The ids of the images in the store.
    fn store_image_ids(&self) -> Vec<String> {
        let images: Value = serde_json::from_slice(
            &std::fs::read(self.store().join("overlay-images/images.json")).unwrap(),
        )
        .unwrap();
        images
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn store(&self) -> PathBuf {
        self.root().join(STORE)
    }

    fn image_id(&self) -> &str {
        self.img.config_digest.trim_start_matches("sha256:")
    }

    fn cmd(&self) -> Command {
        let mut c = unistore();
        c.arg("--sysroot").arg(self.root());
        c
    }

    fn runroot(&self) -> PathBuf {
        self.podman_dir.path().join("rr")
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.envs(podman_env(&self.podman_dir.path().join("conf")))
            .arg("--root")
            .arg(self.store())
            .arg("--runroot")
            .arg(self.runroot());
        c
    }

    fn set_unified(&self, extra: &[&str]) {
        run_ok(
            self.cmd()
                .args(["image", "set-unified", "full"])
                .args(extra),
        );
    }

    /// `fsck images ARGS` (and `--json` when asked): status and stdout.
    fn fsck(&self, args: &[&str]) -> (bool, String) {
        let out = run(self.cmd().args(["internals", "fsck"]).args(args));
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    }

    fn fsck_json(&self, args: &[&str]) -> (bool, Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let (ok, out) = self.fsck(&a);
        (ok, serde_json::from_str(&out).unwrap())
    }

    /// Runs `fsck ARGS` and checks it changed nothing under the root.
    fn fsck_read_only(&self, args: &[&str]) -> (bool, String) {
        let before = snapshot(self.root());
        let r = self.fsck(args);
        let after = snapshot(self.root());
        assert_snapshots_equal(&before, &after, &format!("fsck {args:?}"));
        r
    }

    fn cat_os_release(&self) -> String {
        let out = run(self.podman().args([
            "run",
            "--rm",
            "--network=none",
            self.image_id(),
            "/usr/bin/cat",
            "/usr/lib/os-release",
        ]));
        assert!(out.status.success(), "podman run failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The image's layer ids in the store, base first.
    fn store_layer_ids(&self) -> Vec<String> {
        let images: Value = serde_json::from_slice(
            &std::fs::read(self.store().join("overlay-images/images.json")).unwrap(),
        )
        .unwrap();
        let layers: Value = serde_json::from_slice(
            &std::fs::read(self.store().join("overlay-layers/layers.json")).unwrap(),
        )
        .unwrap();
        let img = images
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == self.image_id())
            .expect("image in the store");
        let mut out = vec![];
        let mut next = img["layer"].as_str().map(str::to_string);
        while let Some(id) = next {
            let l = layers
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["id"] == id.as_str())
                .unwrap();
            next = l["parent"].as_str().map(str::to_string);
            out.push(id);
        }
        out.reverse();
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        unmount_all_under(&self.store());
    }
}

/// Access times of the store's layer files and of the composefs objects
/// that are file contents (splitstreams, read through composefs-rs, left
/// out).
fn file_atimes(root: &Path) -> BTreeMap<PathBuf, (i64, i64)> {
    let mut out = BTreeMap::new();
    for dir in [
        root.join(STORE).join("overlay"),
        root.join("composefs/objects"),
    ] {
        for p in files_under(&dir) {
            use std::os::unix::fs::OpenOptionsExt;
            let m = std::fs::metadata(&p).unwrap();
            // O_NOATIME: looking must not change what is looked at.
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOATIME.bits() as i32)
                .open(&p)
                .unwrap();
            let mut head = [0u8; 11];
            let n = std::io::Read::read(&mut f, &mut head).unwrap();
            if &head[..n] == b"SplitStream" {
                continue;
            }
            out.insert(p, (m.atime(), m.atime_nsec()));
        }
    }
    out
}

/// The composefs objects by size.
fn objects_by_size(root: &Path) -> BTreeMap<u64, Vec<PathBuf>> {
    let mut m: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for p in files_under(&root.join("composefs/objects")) {
        m.entry(std::fs::metadata(&p).unwrap().len())
            .or_default()
            .push(p);
    }
    m
}

/// The object holding the content of `file` (same size and bytes).
fn object_of(root: &Path, file: &Path) -> PathBuf {
    let want = sha256_file(file);
    let size = std::fs::metadata(file).unwrap().len();
    objects_by_size(root)
        .remove(&size)
        .unwrap_or_default()
        .into_iter()
        .find(|o| sha256_file(o) == want)
        .unwrap_or_else(|| panic!("no object holds {}", file.display()))
}

/// `podman rmi` of the booted image, `fsck images` fails and changes
/// nothing; `--repair` rebuilds it natively; podman runs it; skopeo exports
/// its layers with their diff-ids; its files share extents with the
/// composefs objects.
#[test]
fn removed_image_is_reported_then_rebuilt_natively() {
    let h = Host::new(FsKind::Xfs);
    h.set_unified(&[]);
    let (ok, r) = h.fsck_json(&["images"]);
    assert!(ok, "{r:#}");
    assert_eq!(r["unifiedStorageEnabled"], true);
    assert_eq!(r["binding"], "unified");
    assert_eq!(r["reflinksSupported"], true);
    assert_eq!(r["ok"], true);
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["inComposefs"], true);
    assert_eq!(img["inContainersStorage"], true);
    assert_eq!(img["isLive"], true);
    assert_eq!(img["repaired"], false);
    assert!(h.cat_os_release().contains("ID=testos"));

    run_ok(h.podman().args(["rmi", "--force", h.image_id()]));
    assert!(!h.store().join("overlay-images").join(h.image_id()).exists());

    // Reported, and nothing changes: human, JSON, everything, re-hashing.
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok, "fsck must fail: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[FAIL]") && l.contains("missing from containers-storage")),
        "{out}"
    );
    assert!(out.lines().last().unwrap().starts_with("FAILED:"), "{out}");
    let before = snapshot(h.root());
    let (ok, r) = h.fsck_json(&["images", "--verify-content"]);
    assert!(!ok);
    assert_eq!(r["ok"], false);
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["inComposefs"], true);
    assert_eq!(img["inContainersStorage"], false);
    let (ok, _) = h.fsck(&["--verify-content"]);
    assert!(!ok);
    assert_snapshots_equal(&before, &snapshot(h.root()), "fsck --json/--verify-content");

    // Repaired.
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[REPAIRED]") && l.contains("written into containers-storage")),
        "{out}"
    );
    // Re-hashing reads every file it rebuilt (whose atimes are older than
    // their mtimes, so relatime would update them) and every object: their
    // atimes stay.
    let before = file_atimes(h.root());
    let (ok, r) = h.fsck_json(&["images", "--verify-content"]);
    assert!(ok, "{r:#}");
    assert_eq!(
        before,
        file_atimes(h.root()),
        "--verify-content changed atimes"
    );
    assert_eq!(
        image_report(&r, &h.img.manifest_digest)["inContainersStorage"],
        true
    );
    assert!(h.cat_os_release().contains("ID=testos"));

    // skopeo exports every layer with its diff-id.
    let out_dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!(
                "containers-storage:[overlay@{}+{}]{}",
                h.store().display(),
                h.runroot().display(),
                h.image_id()
            ))
            .arg(format!("dir:{}", out_dir.path().join("x").display())),
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("x/manifest.json")).unwrap())
            .unwrap();
    let exported: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap();
            let blob = out_dir
                .path()
                .join("x")
                .join(d.trim_start_matches("sha256:"));
            format!("sha256:{}", sha256_file(&blob))
        })
        .collect();
    assert_eq!(exported, h.img.diff_ids);

    // The store's files share their extents with the composefs objects.
    trim_prealloc(h.root());
    let mut shared = 0;
    for id in h.store_layer_ids() {
        for f in files_under(&h.store().join("overlay").join(&id).join("diff")) {
            let m = std::fs::metadata(&f).unwrap();
            if m.len() <= 64 || m.nlink() > 1 {
                continue;
            }
            let obj = object_of(h.root(), &f);
            assert!(
                shared_extents(&f, &obj).unwrap(),
                "{} does not share extents with {}",
                f.display(),
                obj.display()
            );
            shared += 1;
        }
    }
    assert!(shared >= 6, "only {shared} files checked");

    // All is well now, and saying so changes nothing.
    let (ok, out) = h.fsck_read_only(&["--verify-content"]);
    assert!(ok, "{out}");
    assert!(out.lines().last().unwrap().starts_with("OK:"), "{out}");
}

/// A damaged object is named by `--verify-content` and restored from the
/// store; a missing one is found without it.
#[test]
fn damaged_and_missing_objects_are_restored_from_the_store() {
    let h = Host::new(FsKind::Xfs);
    h.set_unified(&[]);
    let size_9m = 9 * 1024 * 1024;
    let obj = objects_by_size(h.root())
        .remove(&size_9m)
        .unwrap()
        .remove(0);
    let rel = obj
        .strip_prefix(h.root().join("composefs"))
        .unwrap()
        .to_path_buf();
    let good = sha256_file(&obj);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&obj).unwrap();
        f.write_all_at(b"garbage", 4096).unwrap();
    }
    assert_ne!(sha256_file(&obj), good);

    let (ok, out) = h.fsck_read_only(&["images", "--verify-content"]);
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("[FAIL]") && l.contains(rel.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not named: {out}", rel.display()));
    assert!(
        line.contains("damaged") && line.contains("large-9m.bin"),
        "{line}"
    );
    // The whole check names it too (the repository's own fsck).
    let (ok, out) = h.fsck_read_only(&["--verify-content"]);
    assert!(!ok);
    assert!(out.contains("object-digest-mismatch"), "{out}");

    let (ok, out) = h.fsck(&["images", "--verify-content", "--repair"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[REPAIRED]") && l.contains("restored object")),
        "{out}"
    );
    assert_eq!(sha256_file(&obj), good);
    trim_prealloc(h.root());
    let store_copy = files_under(&h.store().join("overlay"))
        .into_iter()
        .find(|f| f.ends_with("usr/share/unistore-test/large-9m.bin"))
        .unwrap();
    assert!(shared_extents(&obj, &store_copy).unwrap());

    // A missing object: found by the structural check.
    std::fs::remove_file(&obj).unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok);
    assert!(
        out.contains(rel.to_str().unwrap()) && out.contains("missing"),
        "{out}"
    );
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert_eq!(sha256_file(&obj), good);
    let (ok, out) = h.fsck(&["--verify-content"]);
    assert!(ok, "{out}");

    // A truncated object: found without reading contents (its size), and
    // restored.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&obj)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("[FAIL]")
            && l.contains(rel.to_str().unwrap())
            && l.contains("damaged")),
        "{out}"
    );
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert_eq!(sha256_file(&obj), good);

    // Not in the store either: named, not repairable, nothing changes.
    run_ok(h.podman().args(["rmi", "--force", h.image_id()]));
    std::fs::remove_file(&obj).unwrap();
    let before = snapshot(h.root());
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(!ok);
    assert!(out.contains("no copy of it in containers-storage"), "{out}");
    assert_snapshots_equal(&before, &snapshot(h.root()), "an impossible repair");
}

/// A truncated `layers.json`: a clear error, and neither the check nor the
/// repair changes anything. A missing `diff` directory: named; the repair
/// rebuilds that layer.
#[test]
fn damaged_store_gives_a_clear_error_and_no_further_damage() {
    let h = Host::new(FsKind::Xfs);
    h.set_unified(&[]);
    // Creates the sysroot lock file once, so that later repairs that change
    // nothing leave the root as it is.
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert!(!out.contains("[REPAIRED]"), "{out}");

    let json = h.store().join("overlay-layers/layers.json");
    let good = std::fs::read(&json).unwrap();
    std::fs::write(&json, &good[..good.len() / 3]).unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok);
    let fail = out
        .lines()
        .find(|l| l.starts_with("[FAIL]") && l.contains("containers-storage"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        fail.contains("overlay-layers/layers.json") && fail.contains("not valid JSON"),
        "{fail}"
    );
    let (ok, out) = h.fsck_read_only(&["images", "--repair"]);
    assert!(!ok, "{out}");
    let (ok, _) = h.fsck_read_only(&["--verify-content", "--repair"]);
    assert!(!ok);
    std::fs::write(&json, &good).unwrap();

    let top = h.store_layer_ids().pop().unwrap();
    let diff = h.store().join("overlay").join(&top).join("diff");
    std::fs::remove_dir_all(&diff).unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("[FAIL]") && l.contains(&top) && l.contains("diff is missing")),
        "{out}"
    );
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert!(diff.is_dir());
    assert!(h.cat_os_release().contains("ID=testos"));
    let (ok, out) = h.fsck_read_only(&["images", "--verify-content"]);
    assert!(ok, "{out}");

    // A file gone from a layer: found without reading contents.
    let base = h.store_layer_ids().remove(0);
    let victim = h
        .store()
        .join("overlay")
        .join(&base)
        .join("diff/usr/share/unistore-test/small.txt");
    std::fs::remove_file(&victim).unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok);
    assert!(out.contains("small.txt"), "{out}");
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"hello\n");
    // Same size, other bytes: only re-hashing sees it; so does its repair.
    std::fs::write(&victim, b"HELLO\n").unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(ok, "{out}");
    let (ok, out) = h.fsck_read_only(&["images", "--verify-content"]);
    assert!(!ok);
    assert!(out.contains("small.txt") && out.contains("CRC"), "{out}");
    let (ok, out) = h.fsck(&["images", "--verify-content", "--repair"]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"hello\n");
}

/// ext4 has no reflinks: with `enabled-with-copy` the repair copies; the
/// image runs and exports as before.
#[test]
fn ext4_repair_copies() {
    let h = Host::new(FsKind::Ext4);
    h.set_unified(&["--enabled-with-copy"]);
    let (ok, r) = h.fsck_json(&["images"]);
    assert!(ok, "{r:#}");
    assert_eq!(r["reflinksSupported"], false);
    run_ok(h.podman().args(["rmi", "--force", h.image_id()]));
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok, "{out}");
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with("[REPAIRED]")).unwrap();
    assert!(line.contains("0 file(s) reflinked"), "{line}");
    assert!(h.cat_os_release().contains("ID=testos"));
    let (ok, out) = h.fsck_read_only(&["--verify-content"]);
    assert!(ok, "{out}");
}

/// On a host that is not unified the store is not required; a tag no boot
/// entry uses is a note, not a failure; a live image's missing tag is a
/// failure the repair fixes.
#[test]
fn notes_and_tags_on_a_plain_host() {
    let h = Host::new(FsKind::Xfs);
    let (ok, r) = h.fsck_json(&["images"]);
    assert!(ok, "{r:#}");
    assert_eq!(r["unifiedStorageEnabled"], false);
    assert_eq!(r["binding"], "disabled");
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["inContainersStorage"], false);
    assert!(!h.store().exists());

    // The tag without an entry: hide the entry (keep it to put it back).
    let entries = h.root().join("boot/loader/entries");
    let entry = std::fs::read_dir(&entries)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let saved = std::fs::read(&entry).unwrap();
    std::fs::remove_file(&entry).unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("[NOTE]") && l.contains("no live boot entry uses it")),
        "{out}"
    );
    std::fs::write(&entry, saved).unwrap();

    // A live image without its tag.
    let refs = h.root().join("composefs/streams/refs/oci");
    let tag = std::fs::read_dir(&refs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let target = std::fs::read_link(&tag).unwrap();
    std::fs::remove_file(&tag).unwrap();
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(!ok);
    assert!(out.contains("not tagged"), "{out}");
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("[REPAIRED]") && out.contains("tagged it"),
        "{out}"
    );
    assert_eq!(std::fs::read_link(&tag).unwrap(), target);
}

/// fsck goes through the host backend: a root that is an ostree host, or
/// no host at all, is one clear error and stays as it was.
#[test]
fn fsck_asks_the_host_backend() {
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::create_dir_all(td.path().join("ostree/repo")).unwrap();
    let before = snapshot(td.path());
    for args in [
        &["internals", "fsck"][..],
        &["internals", "fsck", "images", "--repair"],
    ] {
        run_fails(
            unistore().arg("--sysroot").arg(td.path()).args(args),
            "ostree host",
        );
    }
    assert_eq!(before, snapshot(td.path()));
    std::fs::remove_dir_all(td.path().join("ostree")).unwrap();
    let before = snapshot(td.path());
    run_fails(
        unistore()
            .arg("--sysroot")
            .arg(td.path())
            .args(["internals", "fsck", "--json"]),
        "holds no installed host",
    );
    assert_eq!(before, snapshot(td.path()));
}

/// What `--repair` writes into the store is recorded as unistore's, the
/// way a unified pull records it: once no deployment uses the image, the
/// GC prunes it from the store. An image the user put in the store
/// themselves stays.
#[test]
fn repaired_image_is_owned_and_pruned_by_gc() {
    let h = Host::new(FsKind::Xfs);
    h.set_unified(&[]);
    // The user's own image in the host store.
    let user_opts = TestImageOpts {
        version: "9.0".into(),
        variant: 9,
        ..Default::default()
    };
    let (user_img, user_ref) = h.build("user", &user_opts);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", &user_ref])
            .arg(format!(
                "containers-storage:[overlay@{}+{}]localhost/mine:1",
                h.store().display(),
                h.runroot().display()
            )),
    );
    let user_id = user_img.config_digest.trim_start_matches("sha256:");
    // The booted image gone from the store, and unistore's record of it
    // too (a store reset, or a host made unified by a version that kept no
    // record).
    run_ok(h.podman().args(["rmi", "--force", h.image_id()]));
    std::fs::remove_file(h.root().join("composefs/bootc/unistore-images.json")).unwrap();

    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    assert!(out.contains("[REPAIRED]"), "{out}");
    let record: Value = serde_json::from_slice(
        &std::fs::read(h.root().join("composefs/bootc/unistore-images.json")).unwrap(),
    )
    .unwrap();
    let images = record["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{record:#}");
    let e = &images[0];
    assert_eq!(e["manifest_digest"], h.img.manifest_digest.as_str());
    assert_eq!(e["image_id"], h.image_id());
    assert_eq!(e["created"], true);
    assert_eq!(e["pending"], false);
    let ours = format!(
        "localhost/bootc:{}",
        h.img.manifest_digest.trim_start_matches("sha256:")
    );
    assert!(
        e["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == ours.as_str()),
        "{record:#}"
    );

    // Two moves later no deployment uses the repaired image: the GC prunes
    // it from the store, and leaves the user's image alone.
    for (tag, v) in [("t2", 2), ("t3", 3)] {
        let opts = TestImageOpts {
            version: format!("{v}.0"),
            variant: v,
            extra_files: unistore_fixtures::image::host_executable_files("/usr/bin/cat").unwrap(),
            ..Default::default()
        };
        let (_, imgref) = h.build(tag, &opts);
        h.switch_and_finalize(&imgref);
    }
    let ids = h.store_image_ids();
    assert!(ids.iter().any(|i| i == h.image_id()), "{ids:?}");
    let g: Value =
        serde_json::from_str(&run_ok(h.cmd().args(["internals", "gc", "--json"]))).unwrap();
    assert_eq!(
        g["store_images_removed"],
        serde_json::json!([h.image_id()]),
        "{g:#}"
    );
    let ids = h.store_image_ids();
    assert!(!ids.iter().any(|i| i == h.image_id()), "{ids:?}");
    assert!(ids.iter().any(|i| i == user_id), "{ids:?}");
    let names = run_ok(
        h.podman()
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"]),
    );
    assert!(names.contains("localhost/mine:1"), "{names}");
    run_ok(h.cmd().args(["internals", "gc", "--assert-no-op"]));
}

/// Rewrites `file` as a byte copy of itself (`cp -a --reflink=never` to a
/// temporary name, then renamed over it): same content, mode, owner,
/// xattrs and mtime, its own data blocks.
fn unshare(file: &Path) {
    let tmp = file.with_file_name(".unshare-tmp");
    run_ok(
        Command::new("cp")
            .args(["-a", "--reflink=never"])
            .arg(file)
            .arg(&tmp),
    );
    std::fs::rename(&tmp, file).unwrap();
}

/// Free bytes after flushing and trimming XFS preallocation, once XFS has
/// freed what it frees in the background (up to 10 s for `at_least`).
fn free_bytes(h: &Host, at_least: u64) -> u64 {
    let mut free = 0;
    for _ in 0..100 {
        trim_prealloc(h.root());
        free = h.fs.free_bytes();
        if free >= at_least {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    free
}

/// A fresh unified host: every store file shares its object's extents.
/// Store files rewritten as byte copies of themselves are a note (count
/// and bytes), not a failure, and the check changes nothing (not even
/// atimes); `--repair` makes them share again (FIEMAP says so, the space
/// comes back) and a second check finds none.
#[test]
fn unshared_store_files_are_noted_then_shared_again() {
    let h = Host::new(FsKind::Xfs);
    h.set_unified(&[]);
    let (ok, r) = h.fsck_json(&["images"]);
    assert!(ok, "{r:#}");
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["sharingChecked"], true, "{img:#}");
    assert_eq!(img["unsharedFiles"], 0, "{img:#}");
    assert_eq!(img["unsharedBytes"], 0, "{img:#}");
    assert!(img["sharedFiles"].as_u64().unwrap() > 3, "{img:#}");

    // The three largest store files (all of at least 4 KiB).
    let mut files: Vec<(u64, PathBuf)> = files_under(&h.store().join("overlay"))
        .into_iter()
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .filter(|(n, _)| *n >= 4096)
        .collect();
    files.sort();
    let victims: Vec<(u64, PathBuf)> = files.split_off(files.len() - 3);
    let total: u64 = victims.iter().map(|(n, _)| n).sum();
    let objects: Vec<PathBuf> = victims
        .iter()
        .map(|(_, p)| object_of(h.root(), p))
        .collect();
    let metas: Vec<_> = victims
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap())
        .collect();
    trim_prealloc(h.root());
    for ((_, p), o) in victims.iter().zip(&objects) {
        assert!(shared_extents(p, o).unwrap(), "{}", p.display());
        unshare(p);
    }
    trim_prealloc(h.root());
    for (((_, p), o), m) in victims.iter().zip(&objects).zip(&metas) {
        assert!(!shared_extents(p, o).unwrap(), "{}", p.display());
        let n = std::fs::metadata(p).unwrap();
        assert_eq!(
            (n.mode(), n.uid(), n.gid(), n.mtime(), n.mtime_nsec()),
            (m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec())
        );
    }

    // Noted, not failed; nothing changes, not even an atime.
    let atimes = file_atimes(h.root());
    let (ok, out) = h.fsck_read_only(&["images"]);
    assert!(ok, "{out}");
    let note = out
        .lines()
        .find(|l| l.starts_with("[NOTE]") && l.contains("hold their own copy"))
        .unwrap_or_else(|| panic!("no note: {out}"));
    assert!(note.contains("3 file(s)"), "{note}");
    let before = snapshot(h.root());
    let (ok, r) = h.fsck_json(&["images"]);
    assert_snapshots_equal(&before, &snapshot(h.root()), "fsck images --json");
    assert_eq!(atimes, file_atimes(h.root()), "fsck changed atimes");
    assert!(ok, "{r:#}");
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["unsharedFiles"], 3, "{img:#}");
    assert_eq!(img["unsharedBytes"], total, "{img:#}");
    assert_eq!(img["issues"].as_array().unwrap().len(), 0, "{img:#}");

    // Repaired: shared again, and the copies' blocks are free.
    let free_before = free_bytes(&h, 0);
    let (ok, out) = h.fsck(&["images", "--repair"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("[REPAIRED]"))
        .unwrap_or_else(|| panic!("no repair: {out}"));
    assert!(
        line.contains("3 file(s)") && line.contains("extents again"),
        "{line}"
    );
    // Give or take the record rewritten and the metadata of a few inodes.
    let want = free_before + total - 256 * 1024;
    let free_after = free_bytes(&h, want);
    assert!(
        free_after >= want,
        "free {free_before} -> {free_after}, {total} bytes shared again"
    );
    for ((_, p), o) in victims.iter().zip(&objects) {
        assert!(shared_extents(p, o).unwrap(), "{}", p.display());
    }
    let (ok, r) = h.fsck_json(&["images"]);
    assert!(ok, "{r:#}");
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["unsharedFiles"], 0, "{img:#}");
    assert_eq!(img["notes"].as_array().unwrap().len(), 0, "{img:#}");
    let (ok, out) = h.fsck_read_only(&["--verify-content"]);
    assert!(ok, "{out}");
}

/// ext4 has no reflinks: the sharing is not checked, and the report says so.
#[test]
fn sharing_is_not_checked_without_reflinks() {
    let h = Host::new(FsKind::Ext4);
    h.set_unified(&["--enabled-with-copy"]);
    let (ok, r) = h.fsck_json(&["images"]);
    assert!(ok, "{r:#}");
    let img = image_report(&r, &h.img.manifest_digest);
    assert_eq!(img["sharingChecked"], false, "{img:#}");
    assert_eq!(img["inContainersStorage"], true, "{img:#}");
}
