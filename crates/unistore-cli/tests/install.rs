//! End-to-end: `install to-filesystem`, `status`, `internals mount` on real
//! loop-mounted XFS and ext4, from `oci:` and from a real registry.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, TestImageOpts, build_test_image};

fn image(dir: &Path, tag: &str, version: &str) -> BuiltImage {
    let opts = TestImageOpts {
        version: version.into(),
        ..Default::default()
    };
    build_test_image(dir, tag, &opts).unwrap()
}

fn status_json(root: &Path) -> Value {
    let out = run_ok(
        unistore()
            .args(["--sysroot"])
            .arg(root)
            .args(["status", "--json"]),
    );
    serde_json::from_str(&out).unwrap()
}

/// Checks an installed root: status, boot entry, mounted tree.
fn check_installed(root: &Path, img: &BuiltImage, image_name: &str, transport: &str) {
    let st = status_json(root);
    let booted = &st["status"]["booted"];
    assert_eq!(st["kind"], "BootcHost");
    assert_eq!(st["apiVersion"], "org.containers.bootc/v1");
    assert_eq!(booted["image"]["image"]["image"], image_name);
    assert_eq!(booted["image"]["image"]["transport"], transport);
    assert_eq!(booted["image"]["imageDigest"], img.manifest_digest.as_str());
    assert_eq!(booted["image"]["architecture"], "amd64");
    assert_eq!(booted["image"]["version"], "1.0");
    assert!(st["status"]["rollback"].is_null());
    let id = booted["composefs"]["verity"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 128, "SHA-512 verity id");
    assert!(
        booted["composefs"]["missingVerityAllowed"]
            .as_bool()
            .unwrap()
    );
    // bootc 1.16.9's spellings and the fields it has on a composefs host.
    assert_eq!(booted["composefs"]["bootType"], "Bls", "{st}");
    assert_eq!(booted["composefs"]["bootloader"], "grub", "{st}");
    assert!(booted["composefs"]["bootDigest"].is_string(), "{st}");
    assert!(st["status"]["type"].is_null(), "only ostree hosts: {st}");
    assert!(booted["store"].is_null(), "{st}");
    assert!(booted["ostree"].is_null(), "{st}");
    assert_fresh_bootc_fields(&st);
    assert_eq!(st["status"]["rollbackQueued"], false, "{st}");
    assert!(
        st["status"].get("otherDeployments").is_none(),
        "left out when empty, as bootc: {st}"
    );
    assert_eq!(st["spec"]["image"], booted["image"]["image"], "{st}");
    assert_eq!(st["spec"]["bootOrder"], "default", "{st}");

    // The bootc layout.
    assert!(root.join(format!("composefs/images/{id}")).exists());
    assert_eq!(
        std::fs::read_link(root.join("ostree/bootc")).unwrap(),
        Path::new("../composefs/bootc"),
        "bootc's compatibility link"
    );
    assert!(root.join("composefs/bootc").is_dir());
    // GRUB's directory, without which bootc fails every command.
    let grub = std::fs::symlink_metadata(root.join("boot/grub2")).unwrap();
    assert!(grub.is_dir());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&grub.permissions()) & 0o7777,
        0o755
    );
    let tag = format!("localhost%2Fbootc-{}", img.manifest_digest);
    assert!(
        root.join("composefs/streams/refs/oci").join(&tag).exists(),
        "tag {tag}"
    );
    let state = root.join(format!("state/deploy/{id}"));
    assert!(state.join("etc/hostname").is_file());
    assert_eq!(
        std::fs::read_link(state.join("var"))
            .unwrap()
            .to_str()
            .unwrap(),
        "../../os/default/var"
    );
    let origin = std::fs::read_to_string(state.join(format!("{id}.origin"))).unwrap();
    assert!(
        origin.contains(&format!("manifest_digest={}", img.manifest_digest)),
        "{origin}"
    );

    // The boot entry points at files that exist and carry the image's kernel.
    let entries: Vec<_> = std::fs::read_dir(root.join("boot/loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    let entry = std::fs::read_to_string(&entries[0]).unwrap();
    assert!(entry.contains(&format!("composefs=?{id}")), "{entry}");
    assert!(entry.contains("rw"));
    for key in ["linux", "initrd"] {
        let line = entry.lines().find(|l| l.starts_with(key)).unwrap();
        let p = line.split_whitespace().nth(1).unwrap();
        let f = root.join(p.trim_start_matches('/'));
        assert!(f.is_file(), "{key} {p} does not exist");
    }
    let vmlinuz = root.join(format!("boot/bootc_composefs-{id}/vmlinuz"));
    let want = img
        .expected
        .iter()
        .find(|e| e.path.ends_with("/vmlinuz"))
        .expect("fixture has a kernel");
    let unistore_fixtures::image::EntryKind::File { size, .. } = &want.kind else {
        panic!()
    };
    assert_eq!(std::fs::metadata(&vmlinuz).unwrap().len(), *size);

    // Mount it as the initramfs would and compare every file.
    let mnt = tempfile::tempdir().unwrap();
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(root)
            .args(["internals", "mount"])
            .arg(mnt.path()),
    );
    let checked = std::panic::catch_unwind(|| compare_tree(mnt.path(), &img.expected));
    // The deployment's /etc is what is mounted over /etc.
    let hostname_ok = std::fs::read(mnt.path().join("etc/hostname")).ok()
        == std::fs::read(state.join("etc/hostname")).ok();
    let ro = std::fs::write(mnt.path().join("usr/should-fail"), b"x").is_err();
    umount_all(mnt.path());
    let checked = checked.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(checked > 20, "only {checked} entries compared");
    assert!(hostname_ok);
    assert!(ro, "the mounted image must be read-only");
}

#[test]
fn install_from_oci_on_xfs() {
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", "1.0");
    let src = format!("oci:{}:v1", oci.display());
    let out = run_ok(
        unistore()
            .args([
                "install",
                "to-filesystem",
                "--json",
                "--karg",
                "console=ttyS0",
                "--source-imgref",
            ])
            .arg(&src)
            .arg(fs.path()),
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["manifest_digest"], img.manifest_digest.as_str());
    check_installed(fs.path(), &img, &format!("{}:v1", oci.display()), "oci");
    let entry = std::fs::read_dir(fs.path().join("boot/loader/entries"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        std::fs::read_to_string(entry)
            .unwrap()
            .contains("console=ttyS0")
    );

    // Human status says what "booted" means here.
    let human = run_ok(unistore().arg("--sysroot").arg(fs.path()).arg("status"));
    assert!(human.contains("not the running system"), "{human}");
    assert!(human.contains(&img.manifest_digest));

    // Status reads only.
    let before = snapshot(fs.path());
    status_json(fs.path());
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(fs.path())
            .args(["status", "--format", "yaml"]),
    );
    assert_eq!(before, snapshot(fs.path()), "status changed the root");

    // A second install onto the same root is refused and changes nothing.
    run_fails(
        unistore()
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(&src)
            .arg(fs.path()),
        "already holds a deployment",
    );
    assert_eq!(before, snapshot(fs.path()));
}

#[test]
fn install_from_registry_on_ext4() {
    let fs = LoopFs::new(FsKind::Ext4, 1024).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", "1.0");
    let reg = Registry::start().unwrap();
    let src = reg.push_oci(&oci, "v1", "testos").unwrap();
    run_ok(
        unistore()
            .env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(&src)
            .arg(fs.path()),
    );
    check_installed(
        fs.path(),
        &img,
        src.trim_start_matches("docker://"),
        "registry",
    );
}

/// Each bad input: one clear error line, non-zero exit, root unchanged.
#[test]
fn bad_inputs_leave_root_unchanged() {
    let fs = LoopFs::new(FsKind::Xfs, 512).unwrap();
    let root = fs.path();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", "1.0");
    let before = snapshot(root);
    let install = |src: &str, needle: &str| {
        run_fails(
            unistore()
                .args(["install", "to-filesystem", "--source-imgref", src])
                .arg(root),
            needle,
        );
        assert_eq!(before, snapshot(root), "root changed after {src}");
    };

    install("ftp:/nowhere", "unknown transport");
    install(
        &format!("oci:{}/missing:v1", work.path().display()),
        "missing",
    );
    install(&format!("oci:{}:nosuchtag", oci.display()), "nosuchtag");

    // An image without a kernel.
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

    // A blob whose digest does not match its descriptor.
    let bad = work.path().join("corrupt");
    build_test_image(&bad, "v1", &TestImageOpts::default()).unwrap();
    unistore_fixtures::image::corrupt_first_layer_blob(&bad).unwrap();
    install(&format!("oci:{}:v1", bad.display()), "digest");

    // A root that is not a directory.
    let file = work.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    run_fails(
        unistore()
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(format!("oci:{}:v1", oci.display()))
            .arg(&file),
        "not a directory",
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// `containers-storage:[overlay@ROOT+RUNROOT]NAME`, read natively from a
/// store podman's tools wrote, on XFS.
#[test]
fn install_from_containers_storage() {
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", "1.0");
    let store = unistore_fixtures::env::PodmanStore::new().unwrap();
    store.import_oci(&oci, "v1", "localhost/testos:v1").unwrap();
    let src = store.storage_ref("localhost/testos:v1");
    run_ok(
        unistore()
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(&src)
            .arg(fs.path()),
    );
    let st = status_json(fs.path());
    assert_eq!(
        st["status"]["booted"]["image"]["image"]["transport"],
        "containers-storage"
    );
    // The store may rewrite the manifest (skopeo copy into it can), so the
    // digest recorded is the one the store holds; the content must match.
    let digest = st["status"]["booted"]["image"]["imageDigest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut img = img;
    img.manifest_digest = digest;
    check_installed(
        fs.path(),
        &img,
        src.trim_start_matches("containers-storage:"),
        "containers-storage",
    );
}

/// `oci-archive:FILE[:TAG]` on ext4.
#[test]
fn install_from_oci_archive() {
    let fs = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", "1.0");
    let archive = work.path().join("image.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let src = format!("oci-archive:{}:v1", archive.display());
    run_ok(
        unistore()
            .args(["install", "to-filesystem", "--source-imgref", &src])
            .arg(fs.path()),
    );
    check_installed(
        fs.path(),
        &img,
        &format!("{}:v1", archive.display()),
        "oci-archive",
    );
}

/// A full disk: a clear error, and nothing left that looks like a deployment.
#[test]
fn full_disk_is_a_clear_error_and_leaves_nothing() {
    let fs = LoopFs::new(FsKind::Ext4, 96).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let opts = TestImageOpts {
        payload_mib: 150,
        ..Default::default()
    };
    build_test_image(&oci, "v1", &opts).unwrap();
    let before = snapshot(fs.path());
    run_fails(
        unistore()
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(format!("oci:{}:v1", oci.display()))
            .arg(fs.path()),
        "no space left",
    );
    assert_eq!(before, snapshot(fs.path()));
}

/// A layer whose tar names climb out of the root (`../../escape`): nothing
/// is written outside ROOT, the import refuses the layer with an error that
/// names the entry, and the root is as it was.
#[test]
fn hostile_tar_paths_stay_inside() {
    let fs = LoopFs::new(FsKind::Xfs, 512).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", "1.0");
    let canary_dir = fs.path().parent().unwrap().to_path_buf();
    for (i, name) in ["../../escape-a", "./../escape-b", "usr/../../escape-c"]
        .iter()
        .enumerate()
    {
        let tag = format!("hostile{i}");
        unistore_fixtures::image::add_hostile_layer(&oci, "v1", &tag, name).unwrap();
        let base = name.rsplit('/').next().unwrap();
        let before = snapshot(fs.path());
        let out = run(unistore()
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(format!("oci:{}:{tag}", oci.display()))
            .arg(fs.path()));
        for outside in [
            canary_dir.join(base),
            Path::new("/").join(base),
            work.path().join(base),
        ] {
            assert!(
                !outside.exists(),
                "{name}: {} was written",
                outside.display()
            );
        }
        // The layer is refused, naming the entry; the root is as it was.
        assert!(!out.status.success(), "{name}: accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(base), "{}", errors[0]);
        assert_eq!(before, snapshot(fs.path()), "{name}: root changed");
    }
}

/// The composefs object holding the same bytes as `p` (named by their
/// fs-verity SHA-512 digest), and those bytes.
fn object_of(root: &Path, p: &Path) -> (std::path::PathBuf, Vec<u8>) {
    use composefs::fsverity::{FsVerityHashValue, Sha512HashValue, compute_verity};
    let data = std::fs::read(p).unwrap();
    let hex = compute_verity::<Sha512HashValue>(&data).to_hex();
    let obj = root.join(format!("composefs/objects/{}/{}", &hex[..2], &hex[2..]));
    assert!(obj.is_file(), "{} has no composefs object", p.display());
    (obj, data)
}

/// Whether the content of the object at `obj` still has the digest it is
/// named by.
fn object_intact(obj: &Path) -> bool {
    use composefs::fsverity::{FsVerityHashValue, Sha512HashValue, compute_verity};
    let hex = compute_verity::<Sha512HashValue>(&std::fs::read(obj).unwrap()).to_hex();
    let name = format!(
        "{}{}",
        obj.parent().unwrap().file_name().unwrap().to_str().unwrap(),
        obj.file_name().unwrap().to_str().unwrap()
    );
    hex == name
}

/// Regular files of at least `min` bytes below `dir`.
fn files_at_least(dir: &Path, min: u64) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = files_under(dir)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() >= min)
        .collect();
    out.sort();
    out
}

/// Overwrites 16 bytes in the middle of `p` in place and syncs it.
fn scribble(p: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(p).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(b"edited by a test").unwrap();
    f.sync_all().unwrap();
}

/// The kernel, initrd and `/etc` files of a deployment are written from the
/// composefs objects: reflinks on XFS (they share the objects' extents, and
/// editing them leaves the objects intact), plain copies with the same bytes
/// on ext4. The install result counts which.
#[test]
fn deployment_files_reflink_objects_on_xfs_and_copy_on_ext4() {
    use unistore_fixtures::env::shared_extents;
    use unistore_fixtures::rng::PseudoRandom;
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let random = |seed: &str, len: u64| {
        let mut v = vec![];
        std::io::Read::read_to_end(&mut PseudoRandom::new(seed, len), &mut v).unwrap();
        v
    };
    let opts = TestImageOpts {
        etc_files: vec![
            ("big.conf".into(), random("etc-big", 300_000)),
            ("sub/page".into(), random("etc-page", 4096)),
            ("sub/odd".into(), random("etc-odd", 5001)),
            ("sub/small".into(), random("etc-small", 700)),
        ],
        ..Default::default()
    };
    let img = build_test_image(&oci, "v1", &opts).unwrap();
    let src = format!("oci:{}:v1", oci.display());

    for kind in [FsKind::Xfs, FsKind::Ext4] {
        let xfs = kind == FsKind::Xfs;
        let fs = LoopFs::new(kind, 1024).unwrap();
        let root = fs.path();
        let out = run_ok(
            unistore()
                .args(["install", "to-filesystem", "--json", "--source-imgref"])
                .arg(&src)
                .arg(root),
        );
        let r: Value = serde_json::from_str(&out).unwrap();
        check_installed(root, &img, &format!("{}:v1", oci.display()), "oci");
        // Objects keep XFS's post-EOF preallocation for a while: not data,
        // but FIEMAP would list it as an extent the copy does not share.
        if xfs {
            trim_prealloc(root);
        }
        let id = r["deployment_id"].as_str().unwrap();
        let kdir = root.join(format!("boot/bootc_composefs-{id}"));
        let etc = root.join(format!("state/deploy/{id}/etc"));
        let mut files = vec![kdir.join("vmlinuz"), kdir.join("initrd")];
        let etc_files = files_at_least(&etc, 4096);
        for name in ["big.conf", "sub/page", "sub/odd"] {
            assert!(etc_files.contains(&etc.join(name)), "{name}: {etc_files:?}");
        }
        files.extend(etc_files);
        let mut bytes = 0;
        for f in &files {
            let (obj, data) = object_of(root, f);
            assert_eq!(std::fs::read(&obj).unwrap(), data);
            assert_eq!(
                shared_extents(f, &obj).unwrap(),
                xfs,
                "{} on {kind:?}: shares extents with {}",
                f.display(),
                obj.display()
            );
            bytes += data.len() as u64;
        }
        // Every file here has an object: XFS reflinks them all; what is
        // copied there is inline content only (at most 64 bytes a file).
        let t = &r["deployment_files"];
        let n = |k: &str| t[k].as_u64().unwrap();
        if xfs {
            assert!(n("reflinked_bytes") >= bytes, "{t}");
            assert!(n("reflinked_files") >= files.len() as u64, "{t}");
            assert!(n("copied_bytes") <= 64 * n("copied_files"), "{t}");
            // The small file is a reflink too (one shared block).
            let (obj, _) = object_of(root, &etc.join("sub/small"));
            assert!(shared_extents(&etc.join("sub/small"), &obj).unwrap());
        } else {
            assert_eq!(n("reflinked_files"), 0, "{t}");
            assert!(n("copied_bytes") >= bytes, "{t}");
        }

        // Copy-on-write: editing the deployment's files leaves the objects
        // as they were.
        for f in [
            kdir.join("initrd"),
            etc.join("big.conf"),
            etc.join("sub/odd"),
        ] {
            let (obj, before) = object_of(root, &f);
            scribble(&f);
            fs.sync();
            let after = std::fs::read(&f).unwrap();
            assert_ne!(after, before, "{} was not edited", f.display());
            assert_eq!(std::fs::read(&obj).unwrap(), before, "{}", obj.display());
            assert!(object_intact(&obj), "{} changed", obj.display());
            assert!(!shared_extents(&f, &obj).unwrap());
        }
    }
}

/// The boot entry's `root=`: `UUID=<uuid of the target filesystem>` by
/// default (what blkid reads from the device), `--root-mount-spec` as given,
/// empty for none; a root on a filesystem without a device is a clear error.
#[test]
fn root_mount_spec_in_the_boot_entry() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", "1.0");
    let src = format!("oci:{}:v1", oci.display());
    let options = |root: &Path| -> Vec<String> {
        let dir = root.join("boot/loader/entries");
        let e = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let line = text.lines().find(|l| l.starts_with("options ")).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    for (spec, want) in [
        (None, None),
        (Some("/dev/vda2"), Some("root=/dev/vda2")),
        (Some(""), Some("")),
    ] {
        let fs = LoopFs::new(FsKind::Ext4, 512).unwrap();
        let mut cmd = unistore();
        cmd.args(["install", "to-filesystem", "--source-imgref", &src]);
        if let Some(s) = spec {
            cmd.args(["--root-mount-spec", s]);
        }
        run_ok(cmd.arg(fs.path()));
        let roots: Vec<String> = options(fs.path())
            .into_iter()
            .filter(|o| o.starts_with("root="))
            .collect();
        match want {
            None => {
                let uuid = run_ok(std::process::Command::new("blkid").args([
                    "-p",
                    "-o",
                    "value",
                    "-s",
                    "UUID",
                    fs.device(),
                ]));
                assert_eq!(roots, vec![format!("root=UUID={}", uuid.trim())]);
            }
            Some("") => assert!(roots.is_empty(), "{roots:?}"),
            Some(w) => assert_eq!(roots, vec![w.to_string()]),
        }
    }
    // A tmpfs has no device, so no UUID: say so, and name the way out.
    let tmp = work.path().join("tmpfs");
    std::fs::create_dir(&tmp).unwrap();
    run_ok(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&tmp),
    );
    let before = snapshot(&tmp);
    run_fails(
        unistore()
            .args(["install", "to-filesystem", "--source-imgref", &src])
            .arg(&tmp),
        "--root-mount-spec",
    );
    assert_eq!(before, snapshot(&tmp));
    umount_all(&tmp);
}

/// No XFS speculative preallocation is left behind: the space `df` shows
/// right after an install (and after an upgrade) is what stays once XFS has
/// settled (unmount and mount drop any left).
#[test]
fn df_right_after_install_is_what_stays() {
    let work = tempfile::tempdir().unwrap();
    let opts = TestImageOpts {
        payload_mib: 64,
        ..Default::default()
    };
    build_test_image(&work.path().join("oci"), "v1", &opts).unwrap();
    let opts2 = TestImageOpts {
        version: "2.0".into(),
        variant: 2,
        payload_mib: 72,
        ..Default::default()
    };
    build_test_image(&work.path().join("oci"), "v2", &opts2).unwrap();
    let mut fs = LoopFs::new(FsKind::Xfs, 2048).unwrap();
    let settled = |fs: &mut LoopFs| {
        fs.detach().unwrap();
        fs.attach().unwrap();
        fs.free_bytes()
    };
    let total = settled(&mut fs);
    for (what, args) in [
        (
            "install",
            vec![
                "install".to_string(),
                "to-filesystem".into(),
                "--unified".into(),
                "enabled".into(),
                "--source-imgref".into(),
                format!("oci:{}:v1", work.path().join("oci").display()),
                fs.path().display().to_string(),
            ],
        ),
        (
            "switch",
            vec![
                "--sysroot".to_string(),
                fs.path().display().to_string(),
                "switch".into(),
                format!("oci:{}:v2", work.path().join("oci").display()),
            ],
        ),
    ] {
        run_ok(unistore().args(&args));
        fs.sync();
        let right_after = total - fs.free_bytes();
        let stays = total - settled(&mut fs);
        eprintln!("{what}: {right_after} bytes used right after, {stays} once settled");
        assert!(
            right_after as f64 <= stays as f64 * 1.02 + 4.0 * 1024.0 * 1024.0,
            "{what}: df shows {right_after} bytes right after, {stays} once settled"
        );
    }
}
