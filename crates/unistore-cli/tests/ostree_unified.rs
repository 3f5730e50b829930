//! End-to-end: unified storage on ostree hosts, on real loop-mounted XFS
//! and ext4, a real registry, real podman, libostree and the `ostree` CLI.
//! The binding (`set-unified composefs`) and bound upgrades, `set-unified
//! full` (three stores), `install --backend ostree --unified`, fsck and
//! GC of the three stores, kills at every stage; extents shared three ways
//! (FIEMAP) and the space the stores use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ostree::*;
use common::stores::*;
use common::*;
use composefs::fsverity::{FsVerityHashValue, Sha512HashValue, compute_verity};
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry, shared_extents};

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&run_ok(cmd)).unwrap()
}

/// The checkout of the `which` deployment.
fn checkout(root: &Path, st: &Value, which: &str) -> PathBuf {
    let o = &st["status"][which]["ostree"];
    root.join(format!(
        "ostree/deploy/{}/deploy/{}.{}",
        o["stateroot"].as_str().unwrap(),
        o["checksum"].as_str().unwrap(),
        o["deploySerial"]
    ))
}

fn fsck_images(root: &Path) -> Value {
    let out = run(cmd(root, None).args(["internals", "fsck", "images", "--json"]));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck images: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The report of the image the `which` deployment uses.
fn deployment_report<'a>(r: &'a Value, st: &Value, which: &str) -> &'a Value {
    let o = &st["status"][which]["ostree"];
    let name = format!("{}.{}", o["checksum"].as_str().unwrap(), o["deploySerial"]);
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| *d == name.as_str())
        })
        .unwrap_or_else(|| panic!("{name} not in {r}"))
}

fn notes(i: &Value) -> String {
    i["notes"].to_string()
}

/// Every regular file of at least 4 KiB below `dir` (a deployment's
/// checkout, whose files are hardlinks of the ostree objects, or the
/// objects themselves; metadata objects aside) shares its
/// extents with the composefs object of the same content. Returns how many
/// files were checked.
fn check_objects_shared(root: &Path, dir: &Path) -> usize {
    trim_prealloc(root);
    let mut checked = 0;
    for p in files_under(dir) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let meta_object = p.extension().is_some_and(|e| {
            ["dirtree", "dirmeta", "commit", "commitmeta"].contains(&e.to_str().unwrap_or(""))
        });
        if m.len() < 4096 || p.starts_with(dir.join("etc")) || meta_object {
            continue;
        }
        let hex = compute_verity::<Sha512HashValue>(&std::fs::read(&p).unwrap()).to_hex();
        let obj = root.join(format!("composefs/objects/{}/{}", &hex[..2], &hex[2..]));
        assert!(obj.is_file(), "{} has no composefs object", p.display());
        assert!(
            shared_extents(&p, &obj).unwrap(),
            "{} (an ostree object) and its composefs object do not share extents",
            p.display()
        );
        checked += 1;
    }
    checked
}

/// unistore's name of an image in the store.
fn bootc_name(manifest_digest: &str) -> String {
    format!(
        "localhost/bootc:{}",
        manifest_digest.trim_start_matches("sha256:")
    )
}

/// Makes the object at `p` hold its own copy of its bytes (same inode
/// metadata), as a store written without reflinks would.
fn own_copy(p: &Path, work: &Path) {
    let copy = work.join("own-copy");
    std::fs::copy(p, &copy).unwrap();
    let perm = std::fs::metadata(p).unwrap().permissions();
    std::fs::remove_file(p).unwrap();
    assert!(
        Command::new("cp")
            .args(["--reflink=never", "-p"])
            .arg(&copy)
            .arg(p)
            .status()
            .unwrap()
            .success()
    );
    std::fs::set_permissions(p, perm).unwrap();
    std::fs::remove_file(&copy).unwrap();
}

fn composefs_tag(root: &Path, digest: &str) -> PathBuf {
    root.join(format!(
        "composefs/streams/refs/oci/localhost%2Fbootc-{digest}"
    ))
}

/// Bind, upgrade (re-synthesized), upgrade to v2 (checksums from the
/// cache), `set-unified full`, upgrade to v3 with GC: on XFS, from a
/// registry whose v1 is in Docker's format and whose tag moves on.
#[test]
fn bound_upgrades_and_full_unification_share_every_file_on_xfs() {
    let work = tempfile::tempdir().unwrap();
    let v1 = image(&work.path().join("v1"), "1.0", 1, 16, None);
    let v2 = image(&work.path().join("v2"), "2.0", 2, 16, None);
    let v3 = image(&work.path().join("v3"), "3.0", 3, 16, None);
    let reg = Registry::start().unwrap();
    let src = reg
        .push_oci_docker(&work.path().join("v1"), "latest", "bound/os")
        .unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(root, &src, Some(&reg), &[]));
    let st = status(root);
    let classic = checksum(&st, "booted");
    let v1_digest = st["status"]["booted"]["image"]["imageDigest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1_digest, v1.manifest_digest, "served in Docker's format");
    assert!(st["status"]["storage"].is_null(), "{st}");

    // The binding: recorded, shown, nothing else touched.
    let before = snapshot(&root.join("ostree/deploy"));
    let out = run_ok(cmd(root, None).args(["image", "set-unified", "composefs"]));
    assert!(out.contains("ostree-composefs-bound"), "{out}");
    assert_snapshots_equal(
        &before,
        &snapshot(&root.join("ostree/deploy")),
        "set-unified composefs",
    );
    let cfg = Command::new("ostree")
        .arg(format!("--repo={}", root.join("ostree/repo").display()))
        .args(["config", "get", "composefs.unified"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cfg.stdout).trim(), "true");
    let st = status(root);
    assert_eq!(st["status"]["storage"]["ostreeComposefsBound"], true);
    assert_eq!(st["status"]["storage"]["unified"], "disabled");
    let human = run_ok(cmd(root, None).arg("status"));
    assert!(human.contains("Storage: ostree-composefs-bound"), "{human}");
    // Issue 25: `image list` says what `status` says.
    let list = run_ok(cmd(root, None).args(["image", "list"]));
    assert!(list.contains("Storage: ostree-composefs-bound"), "{list}");
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert_eq!(f["binding"], "bound-only");
    let n = notes(image_report(&f, &v1_digest));
    assert!(n.contains("pending: the booted deployment's"), "{f}");
    // A second bind is a no-op.
    let out = run_ok(cmd(root, None).args(["image", "set-unified", "composefs"]));
    assert!(out.contains("already bound"), "{out}");

    // The same image: re-synthesized from composefs.
    let up = json(cmd(root, Some(&reg)).args(["upgrade", "--json"]));
    assert_eq!(up["result"], "deployed", "{up}");
    assert_eq!(up["commit"]["synthesized"], true, "{up}");
    let st = status(root);
    let synthesized = checksum(&st, "booted");
    assert_ne!(synthesized, classic);
    assert_eq!(checksum(&st, "rollback"), classic);
    assert!(
        admin_status(root).contains(&format!("default {synthesized}.")),
        "{}",
        admin_status(root)
    );
    // Found under the registry's digest in composefs.
    assert!(composefs_tag(root, &v1_digest).is_file());
    let n = check_objects_shared(root, &checkout(root, &st, "booted"));
    assert!(n >= 3, "only {n} files of 4 KiB or more");
    ostree_fsck(root);
    // Released bootc reads the bound host (ostree-ext 0.15.3).
    bootc_reads(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert!(
        !notes(deployment_report(&f, &st, "booted")).contains("pending"),
        "{f}"
    );
    // Issue 25: the rollback's classic commit is not "synthesized by the
    // next upgrade" (only a booted one's image is).
    let rb = notes(deployment_report(&f, &st, "rollback"));
    assert!(
        rb.contains("pending: a classic commit of a deployment that is not booted"),
        "{f}"
    );
    assert!(!rb.contains("next upgrade"), "{f}");
    // Once synthesized, an upgrade without a new image does nothing.
    let up = json(cmd(root, Some(&reg)).args(["upgrade", "--json"]));
    assert_eq!(up["result"], "no-change", "{up}");

    // v2: unchanged files' checksums come from the cache, unread.
    reg.push_oci(&work.path().join("v2"), "latest", "bound/os")
        .unwrap();
    let up = json(cmd(root, Some(&reg)).args(["upgrade", "--json"]));
    assert_eq!(up["result"], "deployed", "{up}");
    let c = &up["commit"];
    let (read, cached) = (
        c["files_read"].as_u64().unwrap(),
        c["checksums_cached"].as_u64().unwrap(),
    );
    eprintln!("v1 -> v2: {read} files read, {cached} checksums from the cache");
    assert!(cached >= 2 && read < cached, "{c}");
    let st = status(root);
    assert_eq!(st["status"]["booted"]["image"]["version"], "2.0");
    check_objects_shared(root, &checkout(root, &st, "booted"));
    ostree_fsck(root);
    bootc_reads(root);

    // Full: the store too. v1 (now rollback) is still in composefs.
    let out = json(cmd(root, Some(&reg)).args(["image", "set-unified", "full", "--json"]));
    assert_eq!(out["result"], "unified", "{out}");
    assert!(root.join(FLAG).is_file());
    assert!(root.join("ostree/bootc/storage").is_dir());
    assert!(
        std::fs::symlink_metadata(root.join("composefs/bootc"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let st = status(root);
    assert_eq!(st["status"]["storage"]["unified"], "enabled");
    assert_eq!(st["status"]["storage"]["ostreeComposefsBound"], true);
    assert!(check_shared(root, &v2.config_digest) >= 3);
    assert!(check_shared(root, &v1.config_digest) >= 3);
    let podman = Podman::new(root);
    let osr = podman.cat_os_release(src.trim_start_matches("docker://"));
    assert!(osr.contains("VERSION_ID=2.0"), "{osr}");
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert_eq!(f["binding"], "unified");
    for d in [&v1_digest, &v2.manifest_digest] {
        let i = image_report(&f, d);
        assert_eq!(i["inContainersStorage"], true, "{i}");
        assert_eq!(i["inComposefs"], true, "{i}");
        assert_eq!(i["inOstree"], true, "{i}");
        assert_eq!(i["ostreeUnsharedFiles"], 0, "{i}");
    }
    ostree_fsck(root);
    let again = json(cmd(root, Some(&reg)).args(["image", "set-unified", "full", "--json"]));
    assert_eq!(again["result"], "already-unified", "{again}");
    bootc_reads(root);

    // v3: v1 is no longer live; GC drops it from composefs and the store.
    reg.push_oci(&work.path().join("v3"), "latest", "bound/os")
        .unwrap();
    let up = json(cmd(root, Some(&reg)).args(["upgrade", "--json"]));
    assert_eq!(up["result"], "deployed", "{up}");
    assert!(!composefs_tag(root, &v1_digest).exists());
    assert!(composefs_tag(root, &v2.manifest_digest).exists());
    let names = podman.images().to_string();
    assert!(
        !names.contains(v1.config_digest.trim_start_matches("sha256:")),
        "{names}"
    );
    assert!(
        names.contains(v3.config_digest.trim_start_matches("sha256:")),
        "{names}"
    );
    let st = status(root);
    check_objects_shared(root, &checkout(root, &st, "booted"));
    assert!(check_shared(root, &v3.config_digest) >= 3);
    ostree_fsck(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    let gc = json(cmd(root, None).args(["internals", "gc", "--json"]));
    assert!(
        gc["tags_removed"].as_array().unwrap().is_empty()
            && gc["store_images_removed"].as_array().unwrap().is_empty(),
        "a second GC is a no-op: {gc}"
    );
    // bootc's own GC on the unified host removes nothing live.
    bootc_reads_and_prunes(root);
}

/// Unified from the start, on XFS: the stores together use no more than
/// the image unpacked (within 5%), and the same image gives the same
/// commit on another host.
#[test]
fn unified_ostree_install_on_xfs_uses_one_copy() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("oci"), "1.0", 1, 64, None);
    let src = format!("oci:{}:latest", work.path().join("oci").display());
    let fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let root = fs.path();
    let free_before = free_bytes(&fs);
    let r = json(&mut install_cmd(
        root,
        &src,
        None,
        &["--unified", "enabled"],
    ));
    assert_eq!(r["unified"]["mode"], "enabled", "{r}");
    let st = status(root);
    assert_eq!(st["status"]["storage"]["unified"], "enabled");
    assert_eq!(st["status"]["storage"]["ostreeComposefsBound"], true);
    let commit = checksum(&st, "booted");
    let list = json(cmd(root, None).args(["image", "list", "--json"]));
    assert_eq!(list["unified"], "enabled", "{list}");
    let i = &list["images"][0];
    assert_eq!(i["manifestDigest"], img.manifest_digest.as_str(), "{list}");
    for k in [
        "inOstree",
        "inComposefs",
        "inContainersStorage",
        "ownedByUnistore",
    ] {
        assert_eq!(i[k], true, "{k}: {list}");
    }
    assert!(check_objects_shared(root, &checkout(root, &st, "booted")) >= 8);
    assert!(check_shared(root, &img.config_digest) >= 8);
    ostree_fsck(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert!(!notes(image_report(&f, &img.manifest_digest)).contains("pending"));
    let podman = Podman::new(root);
    assert!(
        podman
            .cat_os_release(&bootc_name(&img.manifest_digest))
            .contains("ID=testos")
    );
    drop(podman);

    let consumed = free_before - free_bytes(&fs);
    let others = allocated(&root.join("boot"));
    let stores = consumed.saturating_sub(others);
    let unpacked = unpacked_size(&img);
    let ratio = stores as f64 / unpacked as f64;
    eprintln!(
        "space: consumed {consumed}, boot {others}, three stores {stores}, unpacked {unpacked}, ratio {ratio:.3}"
    );
    assert!(
        ratio <= 1.05,
        "composefs, ostree and containers-storage use {stores} bytes for an image of {unpacked} ({ratio:.3})"
    );

    // The same image, another host: the same commit.
    let fs2 = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    run_ok(&mut install_cmd(
        fs2.path(),
        &src,
        None,
        &["--unified", "enabled"],
    ));
    assert_eq!(checksum(&status(fs2.path()), "booted"), commit);
}

/// ext4 has no reflinks: `enabled` is refused before anything is written;
/// `enabled-with-copy` installs and says it copied.
#[test]
fn unified_ostree_install_on_ext4() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("oci"), "1.0", 1, 0, None);
    let src = format!("oci:{}:latest", work.path().join("oci").display());
    let fs = LoopFs::new(FsKind::Ext4, 1024).unwrap();
    let root = fs.path();
    let before = snapshot(root);
    let err = run_fails(
        &mut install_cmd(root, &src, None, &["--unified", "enabled"]),
        "reflink",
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_snapshots_equal(&before, &snapshot(root), "enabled refused on ext4");

    let r = json(&mut install_cmd(
        root,
        &src,
        None,
        &["--unified", "enabled-with-copy"],
    ));
    let msg = r["unified"]["message"].as_str().unwrap();
    assert!(msg.contains("copies"), "{msg}");
    let st = status(root);
    assert_eq!(st["status"]["storage"]["unified"], "enabled-with-copy");
    ostree_fsck(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert_eq!(
        image_report(&f, &img.manifest_digest)["inContainersStorage"],
        true
    );
    let podman = Podman::new(root);
    assert!(
        podman
            .cat_os_release(&bootc_name(&img.manifest_digest))
            .contains("ID=testos")
    );
    mount_and_compare(root, &img.expected);
}

/// Kills at every stage of `set-unified full` and of a bound upgrade: the
/// flag is never there unless every live image is in all three stores, the
/// booted deployment is untouched, running again completes.
#[test]
fn ostree_unification_survives_kills() {
    let work = tempfile::tempdir().unwrap();
    for (v, tag) in [(1u32, "v1"), (2, "v2"), (3, "v3")] {
        image(&work.path().join(tag), &format!("{v}.0"), v, 8, None);
    }
    let layout = |tag: &str| format!("oci:{}:latest", work.path().join(tag).display());
    let fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(root, &layout("v1"), None, &[]));
    run_ok(cmd(root, None).args(["switch", &layout("v2")]));
    let booted = checksum(&status(root), "booted");
    let full = || {
        let mut c = cmd(root, None);
        c.args(["image", "set-unified", "full"]);
        c
    };
    for point in [
        "ostree-set-unified:start",
        "ostree-set-unified:after-composefs",
        "ostree-set-unified:after-share",
        "cstor-writer:after-layer",
        "unified:after-store-write",
        "ostree-set-unified:after-image",
        "ostree-set-unified:before-flag",
    ] {
        run_killed(full(), point);
        assert!(!root.join(FLAG).exists(), "flag after a kill at {point}");
        assert_eq!(checksum(&status(root), "booted"), booted, "{point}");
        ostree_fsck(root);
    }
    run_ok(&mut full());
    assert!(root.join(FLAG).is_file());
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");

    // A bound, unified upgrade killed at each stage: the old deployment
    // stays booted, the flag stays true (all live images in all stores).
    for point in [
        "unified:after-store-write",
        "ostree-upgrade:after-pull",
        "ostree-upgrade:after-commit",
        "ostree-upgrade:after-deploy",
    ] {
        run_killed(
            {
                let mut c = cmd(root, None);
                c.args(["switch", &layout("v3")]);
                c
            },
            point,
        );
        let st = status(root);
        assert_eq!(checksum(&st, "booted"), booted, "{point}");
        ostree_fsck(root);
        let f = fsck_images(root);
        assert_eq!(f["ok"], true, "after a kill at {point}: {f}");
    }
    let up = json(cmd(root, None).args(["switch", &layout("v3"), "--json"]));
    assert_eq!(up["result"], "deployed", "{up}");
    let st = status(root);
    assert_eq!(st["status"]["booted"]["image"]["version"], "3.0");
    check_objects_shared(root, &checkout(root, &st, "booted"));
    ostree_fsck(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    // Leftovers of the killed runs are garbage the GC removes; then a no-op.
    run_ok(cmd(root, None).args(["internals", "gc"]));
    let gc = json(cmd(root, None).args(["internals", "gc", "--dry-run", "--json"]));
    assert!(gc["tags_removed"].as_array().unwrap().is_empty(), "{gc}");
}

/// fsck images repairs between the stores: a missing ostree object from its
/// composefs object, an ostree object holding its own copy, a store image.
#[test]
fn ostree_fsck_repairs_between_the_three_stores() {
    let work = tempfile::tempdir().unwrap();
    let img = image(&work.path().join("oci"), "1.0", 1, 16, None);
    let src = format!("oci:{}:latest", work.path().join("oci").display());
    let fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(
        root,
        &src,
        None,
        &["--unified", "enabled"],
    ));
    let objects = root.join("ostree/repo/objects");
    let mut big: Vec<PathBuf> = files_under(&objects)
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "file")
                && std::fs::metadata(p).unwrap().len() >= 1 << 20
        })
        .collect();
    big.sort();
    assert!(big.len() >= 2);
    // One object holds its own copy; another is gone.
    own_copy(&big[0], work.path());
    let gone = std::fs::read(&big[1]).unwrap();
    std::fs::remove_file(&big[1]).unwrap();
    // And a composefs object is gone: the ostree object holds its content.
    let hex = compute_verity::<Sha512HashValue>(&std::fs::read(&big[0]).unwrap()).to_hex();
    let cfs_obj = root.join(format!("composefs/objects/{}/{}", &hex[..2], &hex[2..]));
    std::fs::remove_file(&cfs_obj).unwrap();
    let before = snapshot(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], false, "{f}");
    let i = image_report(&f, &img.manifest_digest);
    assert!(i["issues"].to_string().contains("composefs: object"), "{i}");
    assert_snapshots_equal(&before, &snapshot(root), "fsck images without --repair");

    let out = run(cmd(root, None).args(["internals", "fsck", "images", "--repair", "--json"]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let i = image_report(&r, &img.manifest_digest);
    assert_eq!(i["repaired"], true, "{i}");
    assert!(
        i["repairs"].to_string().contains("composefs: restored"),
        "{i}"
    );
    assert_eq!(std::fs::read(&big[1]).unwrap(), gone);
    assert!(cfs_obj.is_file());
    trim_prealloc(root);
    ostree_fsck(root);
    // (The checkout's files are other inodes now: the test replaced the
    // objects; the objects themselves are what must share.)
    check_objects_shared(root, &root.join("ostree/repo/objects"));
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert_eq!(
        image_report(&f, &img.manifest_digest)["ostreeUnsharedFiles"],
        0
    );

    // Only the ostree side broken: an object holding its own copy is a
    // note with its count, a missing one a failure; --repair writes the
    // missing one from composefs (its checksum recomputed) and shares both.
    own_copy(&big[0], work.path());
    std::fs::remove_file(&big[1]).unwrap();
    trim_prealloc(root);
    let f = fsck_images(root);
    assert_eq!(f["ok"], false, "{f}");
    let i = image_report(&f, &img.manifest_digest);
    assert!(
        i["issues"]
            .to_string()
            .contains("ostree: 1 content object(s) missing"),
        "{i}"
    );
    assert_eq!(i["ostreeUnsharedFiles"], 1, "{i}");
    assert!(
        i["notes"].to_string().contains("hold their own copy"),
        "{i}"
    );
    let out = run(cmd(root, None).args(["internals", "fsck", "images", "--repair", "--json"]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let i = image_report(&r, &img.manifest_digest);
    assert!(
        i["repairs"]
            .to_string()
            .contains("written again from their composefs objects"),
        "{i}"
    );
    assert_eq!(std::fs::read(&big[1]).unwrap(), gone);
    trim_prealloc(root);
    ostree_fsck(root);
    check_objects_shared(root, &root.join("ostree/repo/objects"));
}

/// The image's own install config asks for unified storage: the staging
/// repository becomes the host's composefs repository and the image goes
/// into the store; the commit is synthesized.
#[test]
fn image_install_config_makes_an_ostree_host_unified() {
    let work = tempfile::tempdir().unwrap();
    let img = image(
        &work.path().join("oci"),
        "1.0",
        1,
        8,
        Some("[install.storage]\nunified = \"enabled\"\n"),
    );
    let src = format!("oci:{}:latest", work.path().join("oci").display());
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    let r = json(&mut install_cmd(root, &src, None, &[]));
    assert_eq!(r["unified"]["decided_by"], "image-config", "{r}");
    assert!(!root.join("ostree/unistore-staging").exists());
    let st = status(root);
    assert_eq!(st["status"]["storage"]["unified"], "enabled");
    assert!(check_objects_shared(root, &checkout(root, &st, "booted")) >= 3);
    assert!(check_shared(root, &img.config_digest) >= 3);
    let f = fsck_images(root);
    assert_eq!(f["ok"], true, "{f}");
    assert!(
        !notes(image_report(&f, &img.manifest_digest)).contains("pending"),
        "{f}"
    );
    ostree_fsck(root);
}
