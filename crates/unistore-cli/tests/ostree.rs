//! End-to-end: ostree hosts (`install --backend ostree`) on real XFS and
//! ext4 loop filesystems, from `oci:` and a real registry, checked by the
//! real `ostree fsck` and `ostree admin status`; the lifecycle through
//! libostree; bad inputs; kills between import, deploy and write.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ostree::*;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, EntryKind, TestImageOpts, build_test_image};

fn image(dir: &Path, tag: &str, v: u32) -> BuiltImage {
    let opts = TestImageOpts {
        version: format!("{v}.0"),
        variant: v,
        etc_files: vec![(
            "/etc/changed.conf".into(),
            format!("version {v}\n").into_bytes(),
        )],
        ..Default::default()
    };
    build_test_image(dir, tag, &opts).unwrap()
}

/// A loop filesystem to install on, and an `oci:` layout (in a temporary
/// work directory) holding v1 of the test image under `tag`.
struct Setup {
    fs: LoopFs,
    work: tempfile::TempDir,
    oci: PathBuf,
    v1: BuiltImage,
}

fn setup(kind: FsKind, mib: u64, tag: &str) -> Setup {
    let fs = LoopFs::new(kind, mib).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let v1 = image(&oci, tag, 1);
    Setup { fs, work, oci, v1 }
}

fn digest(st: &Value, which: &str) -> Option<String> {
    st["status"][which]["image"]["imageDigest"]
        .as_str()
        .map(str::to_string)
}

/// Checks an installed ostree host; returns the booted commit.
fn check_host(root: &Path, img: &BuiltImage, name: &str, transport: &str) -> String {
    let st = status(root);
    let b = &st["status"]["booted"];
    assert_eq!(st["kind"], "BootcHost");
    assert_eq!(b["image"]["image"]["image"], name);
    assert_eq!(b["image"]["image"]["transport"], transport);
    assert_eq!(b["image"]["imageDigest"], img.manifest_digest.as_str());
    assert_eq!(b["image"]["architecture"], "amd64");
    assert_eq!(b["ostree"]["stateroot"], "default");
    assert!(b["composefs"].is_null());
    // bootc 1.16.9's fields on an ostree host.
    assert_eq!(st["status"]["type"], "bootcHost", "{st}");
    assert_eq!(b["store"], "ostreeContainer", "{st}");
    assert_fresh_bootc_fields(&st);
    let commit = checksum(&st, "booted");
    assert_eq!(commit.len(), 64);
    let serial = b["ostree"]["deploySerial"].as_i64().unwrap();

    ostree_fsck(root);
    let admin = admin_status(root);
    assert!(
        admin.contains(&format!("default {commit}.{serial}")),
        "{admin}"
    );

    let dep = root.join(format!("ostree/deploy/default/deploy/{commit}.{serial}"));
    let origin = std::fs::read_to_string(dep.with_extension(format!("{serial}.origin"))).unwrap();
    let want = if transport == "registry" {
        format!("container-image-reference=ostree-unverified-registry:{name}")
    } else {
        format!("container-image-reference=ostree-unverified-image:{transport}:{name}")
    };
    assert!(origin.contains(&want), "{origin}");
    assert!(dep.join("etc/hostname").is_file(), "/etc is there");
    // The version is the image's label (its os-release's VERSION_ID).
    let os_release = std::fs::read_to_string(dep.join("usr/lib/os-release")).unwrap();
    let version_id = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .unwrap();
    assert_eq!(b["image"]["version"], version_id, "{st}");
    assert!(
        dep.join("usr/etc/hostname").is_file(),
        "/etc is kept as /usr/etc"
    );

    // The BLS entry libostree wrote points at files that exist.
    let entry =
        std::fs::read_to_string(root.join("boot/loader/entries/ostree-1-default.conf")).unwrap();
    assert!(entry.contains("ostree=/ostree/boot."), "{entry}");
    for key in ["linux", "initrd"] {
        let p = entry
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap();
        assert!(
            root.join("boot").join(p.trim_start_matches('/')).is_file(),
            "{key} {p}"
        );
    }
    let EntryKind::File { size, .. } = &img
        .expected
        .iter()
        .find(|e| e.path.ends_with("/vmlinuz"))
        .unwrap()
        .kind
    else {
        panic!()
    };
    let kernel = entry
        .lines()
        .find(|l| l.starts_with("linux"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(
        std::fs::metadata(root.join("boot").join(kernel.trim_start_matches('/')))
            .unwrap()
            .len(),
        *size
    );

    // Every file of the image, as the booted system sees it.
    let mnt = tempfile::tempdir().unwrap();
    run_ok(cmd(root, None).args(["internals", "mount"]).arg(mnt.path()));
    let expected: Vec<_> = img
        .expected
        .iter()
        .filter(|e| !e.path.starts_with("/run/") && !e.path.starts_with("/tmp/"))
        .cloned()
        .collect();
    let checked = std::panic::catch_unwind(|| compare_tree(mnt.path(), &expected));
    let ro = std::fs::write(mnt.path().join("usr/should-fail"), b"x").is_err();
    umount_all(mnt.path());
    let checked = checked.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(checked > 20, "only {checked} entries compared");
    assert!(ro, "/usr must be read-only");
    commit
}

#[test]
fn ostree_install_from_oci_on_xfs_and_lifecycle() {
    let Setup {
        fs,
        work: _work,
        oci,
        v1,
    } = setup(FsKind::Xfs, 1536, "os");
    let root = fs.path();
    let src = format!("oci:{}:os", oci.display());
    let r: Value = serde_json::from_str(&run_ok(&mut install_cmd(root, &src, None, &[]))).unwrap();
    assert_eq!(r["manifest_digest"], v1.manifest_digest.as_str());
    let c1 = check_host(root, &v1, &format!("{}:os", oci.display()), "oci");
    assert_eq!(r["deployment_id"], format!("{c1}.0"));
    // Released bootc reads the host (ostree-ext 0.15.3).
    bootc_reads(root);

    // The human status names the commit, the stateroot and the entry.
    let human = run_ok(cmd(root, None).arg("status"));
    assert!(human.contains(&format!("Commit: {c1}.0")), "{human}");
    assert!(human.contains("Stateroot: default"), "{human}");
    assert!(
        human.contains("Boot: bls (ostree-1-default.conf)"),
        "{human}"
    );

    // Reads never write.
    let before = snapshot(root);
    status(root);
    run_ok(cmd(root, None).args(["internals", "fsck"]));
    run_ok(cmd(root, None).args(["image", "list"]));
    assert_snapshots_equal(&before, &snapshot(root), "status/fsck/image list");
    run_fails(
        &mut install_cmd(root, &src, None, &[]),
        "already holds a deployment",
    );
    assert_snapshots_equal(&before, &snapshot(root), "a second install");

    // A local /etc edit, then upgrade to v2 under the same tag.
    let dep1 = root.join(format!("ostree/deploy/default/deploy/{c1}.0"));
    std::fs::write(dep1.join("etc/local.conf"), b"mine\n").unwrap();
    let v2 = image(&oci, "os", 2);
    let check = run_ok(cmd(root, None).args(["upgrade", "--check", "--json"]));
    assert!(check.contains("update-available"), "{check}");
    run_ok(cmd(root, None).args(["upgrade"]));
    let st = status(root);
    assert_eq!(
        digest(&st, "booted").as_deref(),
        Some(v2.manifest_digest.as_str())
    );
    assert_eq!(
        digest(&st, "rollback").as_deref(),
        Some(v1.manifest_digest.as_str())
    );
    let c2 = checksum(&st, "booted");
    let dep2 = root.join(format!("ostree/deploy/default/deploy/{c2}.0"));
    assert_eq!(
        std::fs::read(dep2.join("etc/local.conf")).unwrap(),
        b"mine\n",
        "/etc edit kept"
    );
    assert_eq!(
        std::fs::read(dep2.join("etc/changed.conf")).unwrap(),
        b"version 2\n"
    );
    ostree_fsck(root);
    bootc_reads(root);
    let up = run_ok(cmd(root, None).args(["upgrade", "--json"]));
    assert!(up.contains("no-change"), "{up}");
    let fin = run_ok(cmd(root, None).args(["internals", "finalize-staged", "--json"]));
    assert!(fin.contains("nothing-staged"), "{fin}");

    // Rollback, and rollback again.
    run_ok(cmd(root, None).arg("rollback"));
    let st = status(root);
    assert_eq!(
        digest(&st, "booted").as_deref(),
        Some(v1.manifest_digest.as_str())
    );
    bootc_reads(root);
    assert_eq!(
        digest(&st, "rollback").as_deref(),
        Some(v2.manifest_digest.as_str())
    );
    run_ok(cmd(root, None).arg("rollback"));
    assert_eq!(
        digest(&status(root), "booted").as_deref(),
        Some(v2.manifest_digest.as_str())
    );

    // Switch to v3: v1 falls out of the boot menu; gc removes what only it used.
    let v3 = image(&oci, "os3", 3);
    let sw: Value = serde_json::from_str(&run_ok(
        cmd(root, None)
            .args(["switch", "--json"])
            .arg(format!("oci:{}:os3", oci.display())),
    ))
    .unwrap();
    // The switch's gc pruned the objects only v1 used.
    assert!(sw["gc"]["objects_removed"].as_u64().unwrap() > 0, "{sw}");
    assert!(sw["gc"]["object_bytes"].as_u64().unwrap() > 0, "{sw}");
    let st = status(root);
    assert_eq!(
        digest(&st, "booted").as_deref(),
        Some(v3.manifest_digest.as_str())
    );
    assert_eq!(
        digest(&st, "rollback").as_deref(),
        Some(v2.manifest_digest.as_str())
    );
    let admin = admin_status(root);
    assert!(!admin.contains(&c1), "{admin}");
    assert!(!dep1.exists(), "v1's deployment was removed");
    let refs = String::from_utf8(
        Command::new("ostree")
            .arg(format!("--repo={}", root.join("ostree/repo").display()))
            .arg("refs")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        refs.lines()
            .filter(|l| l.starts_with("ostree/container/image/"))
            .count(),
        2,
        "{refs}"
    );
    assert!(
        Command::new("ostree")
            .arg(format!("--repo={}", root.join("ostree/repo").display()))
            .args(["cat", &c1, "/usr/lib/os-release"])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0),
        "v1's commit was pruned"
    );
    ostree_fsck(root);
    check_host(root, &v3, &format!("{}:os3", oci.display()), "oci");
    bootc_reads(root);
    // set-unified composefs records the binding in ostree/repo/config and
    // changes nothing else (the mtimes of ostree/repo, where the config is
    // replaced, and of ostree/, where libostree's lock file comes and goes).
    let mut before = snapshot(root);
    run_ok(cmd(root, None).args(["image", "set-unified", "composefs"]));
    let mut after = snapshot(root);
    for s in [&mut before, &mut after] {
        s.remove(Path::new("ostree/repo/config"));
        s.remove(Path::new("ostree/repo"));
        s.remove(Path::new("ostree"));
    }
    assert_snapshots_equal(&before, &after, "set-unified composefs");
    assert!(
        std::fs::read_to_string(root.join("ostree/repo/config"))
            .unwrap()
            .contains("[composefs]\nunified=true")
    );
    let gc: Value =
        serde_json::from_str(&run_ok(cmd(root, None).args(["internals", "gc", "--json"]))).unwrap();
    assert_eq!(
        gc["objects_removed"], 0,
        "a second gc has nothing to do: {gc}"
    );

    // v2 leaves the boot menu through the real `ostree admin undeploy`: its
    // image ref still holds its commit, so its objects are garbage only our
    // gc removes; df shows the space come back (XFS frees in the background).
    let st = status(root);
    let c2 = checksum(&st, "rollback");
    assert!(
        Command::new("ostree")
            .args(["admin", "undeploy"])
            .arg(format!("--sysroot={}", root.display()))
            .arg("1")
            .status()
            .unwrap()
            .success()
    );
    assert!(!admin_status(root).contains(&c2));
    fs.sync();
    let free_before = fs.free_bytes();
    let gc: Value =
        serde_json::from_str(&run_ok(cmd(root, None).args(["internals", "gc", "--json"]))).unwrap();
    assert_eq!(gc["tags_removed"].as_array().unwrap().len(), 1, "{gc}");
    let freed = gc["object_bytes"].as_u64().unwrap();
    assert!(freed > 0, "{gc}");
    let mut free_after = fs.free_bytes();
    for _ in 0..100 {
        if free_after >= free_before + freed / 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs.sync();
        free_after = fs.free_bytes();
    }
    assert!(
        free_after >= free_before + freed / 2,
        "df: {free_before} -> {free_after}, report says {freed} freed"
    );
    ostree_fsck(root);
    check_host(root, &v3, &format!("{}:os3", oci.display()), "oci");
    run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
    // bootc's own GC then removes nothing live, and ours stays happy.
    bootc_reads_and_prunes(root);
}

/// Registry and `oci:`, ext4 and XFS: the same image gives the same commit
/// everywhere; each host passes every check.
#[test]
fn ostree_install_from_registry_and_oci_on_ext4_and_xfs_gives_the_same_commit() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", 1);
    let reg = Registry::start().unwrap();
    let pushed = reg.push_oci(&oci, "v1", "testos").unwrap();
    let layout = format!("oci:{}:v1", oci.display());
    let mut commits = vec![];
    let mut hosts = vec![];
    for (kind, src) in [
        (FsKind::Ext4, &pushed),
        (FsKind::Xfs, &pushed),
        (FsKind::Ext4, &layout),
        (FsKind::Xfs, &layout),
    ] {
        let fs = LoopFs::new(kind, 1024).unwrap();
        run_ok(&mut install_cmd(fs.path(), src, Some(&reg), &[]));
        let (name, transport) = match src.strip_prefix("docker://") {
            Some(n) => (n.to_string(), "registry"),
            None => (src.trim_start_matches("oci:").to_string(), "oci"),
        };
        commits.push(check_host(fs.path(), &img, &name, transport));
        hosts.push(fs);
    }
    assert!(commits.iter().all(|c| *c == commits[0]), "{commits:?}");

    // A switch from the registry on the ext4 host; a gc dry run then finds
    // nothing to do and changes nothing.
    let root = hosts[0].path();
    let img2 = image(&oci, "v2", 2);
    let src2 = reg.push_oci(&oci, "v2", "testos2").unwrap();
    run_ok(cmd(root, Some(&reg)).args(["switch", &src2]));
    assert_eq!(
        digest(&status(root), "booted").as_deref(),
        Some(img2.manifest_digest.as_str())
    );
    ostree_fsck(root);
    let before = snapshot(root);
    let dry: Value = serde_json::from_str(&run_ok(cmd(root, None).args([
        "internals",
        "gc",
        "--dry-run",
        "--json",
    ])))
    .unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["objects_removed"], 0, "{dry}");
    assert_snapshots_equal(&before, &snapshot(root), "gc --dry-run");
}

/// A disk that fills up, in the pull and in the commit: one clear error,
/// the root as it was.
#[test]
fn ostree_full_disk_is_a_clear_error_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    for (mib, payload) in [(96, 150), (128, 56)] {
        let fs = LoopFs::new(FsKind::Ext4, mib).unwrap();
        let oci = work.path().join(format!("oci{payload}"));
        let opts = TestImageOpts {
            payload_mib: payload,
            ..Default::default()
        };
        build_test_image(&oci, "v1", &opts).unwrap();
        let before = snapshot(fs.path());
        run_fails(
            &mut install_cmd(fs.path(), &format!("oci:{}:v1", oci.display()), None, &[]),
            "space",
        );
        assert_snapshots_equal(
            &before,
            &snapshot(fs.path()),
            &format!("{mib} MiB, {payload} MiB payload"),
        );
    }
}

#[test]
fn ostree_bad_inputs_leave_root_unchanged() {
    let Setup {
        fs,
        work,
        oci,
        v1: _,
    } = setup(FsKind::Xfs, 1024, "v1");
    let root = fs.path();
    let before = snapshot(root);
    let install = |src: &str, needle: &str| {
        run_fails(&mut install_cmd(root, src, None, &[]), needle);
        assert_snapshots_equal(&before, &snapshot(root), src);
    };
    install("ftp:/nowhere", "unknown transport");
    install(&format!("oci:{}:nosuchtag", oci.display()), "nosuchtag");

    let nok = work.path().join("nokernel");
    build_test_image(
        &nok,
        "v1",
        &TestImageOpts {
            with_kernel: false,
            ..Default::default()
        },
    )
    .unwrap();
    install(&format!("oci:{}:v1", nok.display()), "no kernel");

    let bad = work.path().join("corrupt");
    build_test_image(&bad, "v1", &TestImageOpts::default()).unwrap();
    unistore_fixtures::image::corrupt_first_layer_blob(&bad).unwrap();
    install(&format!("oci:{}:v1", bad.display()), "digest");

    unistore_fixtures::image::add_hostile_layer(&oci, "v1", "hostile", "../../escape").unwrap();
    run_fails(
        &mut install_cmd(root, &format!("oci:{}:hostile", oci.display()), None, &[]),
        "",
    );
    assert_snapshots_equal(&before, &snapshot(root), "hostile tar path");
    assert!(!root.parent().unwrap().join("escape").exists());

    // A FIFO or a device node outside /dev: an ostree commit cannot hold them.
    unistore_fixtures::image::add_special_layer(
        &oci,
        "v1",
        "fifo",
        &[("/usr/lib/a-fifo", tar::EntryType::Fifo)],
    )
    .unwrap();
    install(&format!("oci:{}:fifo", oci.display()), "FIFO");
    unistore_fixtures::image::add_special_layer(
        &oci,
        "v1",
        "dev",
        &[("/usr/lib/null", tar::EntryType::Char)],
    )
    .unwrap();
    install(&format!("oci:{}:dev", oci.display()), "device node");
    // A bad stateroot is refused before anything; a unified install that
    // fails removes its composefs repository and store too.
    run_fails(
        unistore()
            .args([
                "install",
                "to-filesystem",
                "--backend",
                "ostree",
                "--stateroot",
                "../x",
                "--source-imgref",
            ])
            .arg(format!("oci:{}:v1", oci.display()))
            .arg(root),
        "stateroot",
    );
    run_fails(
        unistore()
            .args([
                "install",
                "to-filesystem",
                "--backend",
                "ostree",
                "--unified",
                "enabled",
                "--source-imgref",
            ])
            .arg(format!("oci:{}:nosuchtag", oci.display()))
            .arg(root),
        "nosuchtag",
    );
    assert_snapshots_equal(&before, &snapshot(root), "bad options");

    // Device nodes under /dev are dropped with a note; the install works.
    unistore_fixtures::image::add_special_layer(
        &oci,
        "v1",
        "devnull",
        &[("/dev/null", tar::EntryType::Char)],
    )
    .unwrap();
    let out = run(&mut install_cmd(
        root,
        &format!("oci:{}:devnull", oci.display()),
        None,
        &[],
    ));
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/dev: 1 entries left out"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ostree_fsck(root);

    // An ostree repository in another mode than bare.
    let other = LoopFs::new(FsKind::Xfs, 512).unwrap();
    let repo = other.path().join("ostree/repo");
    std::fs::create_dir_all(&repo).unwrap();
    assert!(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["init", "--mode=archive"])
            .status()
            .unwrap()
            .success()
    );
    let before = snapshot(other.path());
    run_fails(
        &mut install_cmd(
            other.path(),
            &format!("oci:{}:v1", oci.display()),
            None,
            &[],
        ),
        "not bare",
    );
    assert_snapshots_equal(&before, &snapshot(other.path()), "archive repo");
}

#[test]
fn ostree_kills_leave_the_old_deployment_booting() {
    let Setup {
        fs,
        work: _work,
        oci,
        v1,
    } = setup(FsKind::Xfs, 1536, "os");
    let root = fs.path();
    let src = format!("oci:{}:os", oci.display());

    // Install killed after the commit and after the deploy: no host yet;
    // running it again completes.
    for point in [
        "ostree-install:after-pull",
        "ostree-install:after-commit",
        "ostree-install:after-deploy",
    ] {
        run_killed(install_cmd(root, &src, None, &[]), point);
        assert!(
            !root
                .join("boot/loader/entries/ostree-1-default.conf")
                .exists(),
            "{point}"
        );
    }
    run_ok(&mut install_cmd(root, &src, None, &[]));
    let c1 = check_host(root, &v1, &format!("{}:os", oci.display()), "oci");

    let v2 = image(&oci, "os", 2);
    for point in [
        "ostree-upgrade:after-pull",
        "ostree-upgrade:after-commit",
        "ostree-upgrade:after-deploy",
    ] {
        let mut c = cmd(root, None);
        c.arg("upgrade");
        run_killed(c, point);
        let st = status(root);
        assert_eq!(
            digest(&st, "booted").as_deref(),
            Some(v1.manifest_digest.as_str()),
            "{point}"
        );
        assert_eq!(checksum(&st, "booted"), c1, "{point}");
        ostree_fsck(root);
        let fsck = run(cmd(root, None).args(["internals", "fsck"]));
        assert!(fsck.status.success(), "{point}: fsck");
    }
    run_ok(cmd(root, None).arg("upgrade"));
    assert_eq!(
        digest(&status(root), "booted").as_deref(),
        Some(v2.manifest_digest.as_str())
    );
    // What the kills left is garbage the gc removes; a second gc is a no-op.
    run_ok(cmd(root, None).args(["internals", "gc"]));
    run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
    assert!(!root.join("ostree/unistore-staging").exists());
    ostree_fsck(root);
    let _: PathBuf = root.to_path_buf();
}

/// Rewrites the image `tag` of the `oci:` layout at `oci` without `created`
/// in its config; returns the new manifest digest.
fn strip_created(oci: &Path, tag: &str) -> String {
    use sha2::{Digest, Sha256};
    let blob = |d: &str| {
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let read = |d: &Value| -> Value {
        serde_json::from_slice(&std::fs::read(blob(d.as_str().unwrap())).unwrap()).unwrap()
    };
    let put = |v: &Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        std::fs::write(blob(&d), &bytes).unwrap();
        (d, bytes.len())
    };
    let index_path = oci.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let mut manifest = read(&entry["digest"]);
    let mut config = read(&manifest["config"]["digest"]);
    assert!(config.as_object_mut().unwrap().remove("created").is_some());
    let (d, n) = put(&config);
    manifest["config"]["digest"] = d.into();
    manifest["config"]["size"] = n.into();
    let (d, n) = put(&manifest);
    entry["digest"] = d.clone().into();
    entry["size"] = n.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    d
}

/// An image whose config has no `created`: its commit is dated by its
/// newest file (the fixtures' files: 2023-11-14 22:13:20), never epoch 0,
/// and the same image still gives the same commit on every host. Status
/// shows no timestamp, as bootc.
#[test]
fn ostree_commit_of_an_image_without_created_is_dated_by_its_newest_file() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    let manifest = strip_created(&oci, "v1");
    let layout = format!("oci:{}:v1", oci.display());
    let mut commits = vec![];
    for kind in [FsKind::Ext4, FsKind::Xfs] {
        let fs = LoopFs::new(kind, 1024).unwrap();
        let root = fs.path();
        run_ok(&mut install_cmd(root, &layout, None, &[]));
        let st = status(root);
        assert_eq!(digest(&st, "booted").as_deref(), Some(manifest.as_str()));
        assert!(
            st["status"]["booted"]["image"]["timestamp"].is_null(),
            "{st}"
        );
        let commit = checksum(&st, "booted");
        let shown = run_ok(
            Command::new("ostree")
                .arg(format!("--repo={}", root.join("ostree/repo").display()))
                .args(["show", &commit]),
        );
        assert!(
            shown.contains("Date:  2023-11-14 22:13:20 +0000"),
            "{shown}"
        );
        ostree_fsck(root);
        commits.push(commit);
    }
    assert_eq!(commits[0], commits[1]);
}

/// An ostree install that fails after libostree deployed (an image with no
/// os-release: libostree cannot write the boot entries) removes what it
/// created, the deployment libostree marked immutable included, so the
/// root is empty again and a second install fails the same way, not on
/// leftovers.
#[test]
fn failed_ostree_install_leaves_nothing_and_can_be_retried() {
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    let kdir = rootfs.join("usr/lib/modules/6.1.0-test");
    std::fs::create_dir_all(&kdir).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(kdir.join("vmlinuz"), "kernel").unwrap();
    std::fs::write(kdir.join("initramfs.img"), "initrd").unwrap();
    let oci = work.path().join("oci");
    unistore_fixtures::image::build_from_rootfs(&rootfs, &oci, "v1", "1.0").unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 600).unwrap();
    let src = format!("oci:{}:v1", oci.display());
    let install_from = |src: &str| {
        let mut c = unistore();
        c.env("NO_COLOR", "1")
            .args([
                "install",
                "to-filesystem",
                "--backend",
                "ostree",
                "--root-mount-spec",
                "",
            ])
            .args(["--source-imgref", src])
            .arg(fs.path());
        c
    };
    let install = || install_from(&src);
    let first = run_fails(&mut install(), "os-release");
    let left: Vec<_> = std::fs::read_dir(fs.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let second = run_fails(&mut install(), "os-release");
    assert_eq!(first, second);
    let out = run(&mut install());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a file: {stderr:?}"
    );
    assert!(!stderr.contains("Operation not permitted"), "{stderr}");
    // Then a good image installs on the same root.
    std::fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
    std::fs::write(
        rootfs.join("usr/lib/os-release"),
        "ID=testos\nVERSION_ID=1.0\n",
    )
    .unwrap();
    let oci2 = work.path().join("oci2");
    unistore_fixtures::image::build_from_rootfs(&rootfs, &oci2, "v2", "2.0").unwrap();
    run_ok(&mut install_from(&format!("oci:{}:v2", oci2.display())));
    ostree_fsck(fs.path());
}
