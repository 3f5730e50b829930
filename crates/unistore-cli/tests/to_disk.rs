//! End-to-end: `install to-disk --via-loopback` onto a sparse disk image
//! file (real sfdisk, mkfs, loop devices, mkfs.fat and mtools), the disk
//! read back as a firmware and a boot loader would, the host's commands on
//! it (the ESP copied out: this kernel has no vfat), and every refusal
//! leaving the disk untouched. The boot through OVMF is in `boot.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;
use unistore_fixtures::image::{BuiltImage, TestImageOpts, build_test_image};

const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const BIOS_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
const HOST_LOADER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image(
    dir: &Path,
    tag: &str,
    variant: u32,
    loader: bool,
    extra: Vec<(String, Vec<u8>)>,
) -> BuiltImage {
    let mut extra_files = extra;
    if loader {
        extra_files.push((
            HOST_LOADER.into(),
            std::fs::read(HOST_LOADER).expect("systemd-boot-efi (scripts/setup)"),
        ));
    }
    let opts = TestImageOpts {
        version: format!("{variant}.0"),
        variant,
        extra_files,
        ..Default::default()
    };
    build_test_image(dir, tag, &opts).unwrap()
}

fn new_disk(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    sh(Command::new("truncate").args(["-s", size]).arg(&p));
    p
}

fn to_disk(disk: &Path, src: &str, extra: &[&str]) -> Command {
    let mut c = unistore();
    c.args(["install", "to-disk", "--via-loopback"])
        .args(extra)
        .args(["--source-imgref", src])
        .arg(disk);
    c
}

fn partitions(disk: &Path) -> Vec<Value> {
    let j: Value = serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(disk))).unwrap();
    assert_eq!(j["partitiontable"]["label"], "gpt");
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

fn part<'a>(parts: &'a [Value], ty: &str) -> &'a Value {
    parts
        .iter()
        .find(|p| p["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty}: {parts:?}"))
}

fn offset(p: &Value) -> u64 {
    p["start"].as_u64().unwrap() * 512
}

fn blkid(disk: &Path, off: u64, tag: &str) -> String {
    sh(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag, "-O", &off.to_string()])
        .arg(disk))
    .trim()
    .to_string()
}

/// The disk image holds no partition table and no filesystem, and takes no
/// space: untouched since `truncate`.
fn assert_untouched(disk: &Path, size: u64) {
    let m = std::fs::metadata(disk).unwrap();
    assert_eq!(m.len(), size);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.blocks(), 0, "{} was written to", disk.display());
    let leftovers: Vec<_> = std::fs::read_dir(disk.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("unistore-new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A loop device on the root partition, mounted; unmounted on drop.
struct RootMount {
    mnt: tempfile::TempDir,
    dev: String,
}

impl RootMount {
    fn new(disk: &Path, root: &Value) -> Self {
        let mnt = tempfile::tempdir_in("/var/tmp").unwrap();
        let dev = sh(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(format!("--offset={}", offset(root)))
            .arg(format!(
                "--sizelimit={}",
                root["size"].as_u64().unwrap() * 512
            ))
            .arg(disk))
        .trim()
        .to_string();
        sh(Command::new("mount").arg(&dev).arg(mnt.path()));
        RootMount { mnt, dev }
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        umount_all(self.mnt.path());
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn to_disk_writes_bootcs_disk_and_every_command_works_on_it() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let oci = work.path().join("oci");
    let v1 = image(&oci, "v1", 1, true, vec![]);
    let _v2 = image(&oci, "v2", 2, true, vec![]);
    let src1 = format!("oci:{}:v1", oci.display());
    let src2 = format!("oci:{}:v2", oci.display());
    let disk = new_disk(work.path(), "disk.raw", "8G");
    let out = run_ok(&mut to_disk(
        &disk,
        &src1,
        &["--filesystem", "xfs", "--json"],
    ));
    let r: Value = serde_json::from_str(&out).unwrap();
    let id = r["install"]["deployment_id"].as_str().unwrap().to_string();
    assert_eq!(r["install"]["manifest_digest"], v1.manifest_digest.as_str());

    // The GPT, as a firmware reads it.
    let parts = partitions(&disk);
    assert_eq!(parts.len(), 3);
    let (bios, esp, root) = (
        part(&parts, BIOS_TYPE),
        part(&parts, ESP_TYPE),
        part(&parts, ROOT_TYPE),
    );
    assert_eq!(bios["name"], "BIOS-BOOT");
    assert_eq!(bios["size"].as_u64().unwrap() * 512, 1 << 20);
    assert_eq!(esp["name"], "EFI-SYSTEM");
    assert!(esp["size"].as_u64().unwrap() * 512 >= 1 << 30, "{esp}");
    assert_eq!(root["name"], "root");
    let root_end = (root["start"].as_u64().unwrap() + root["size"].as_u64().unwrap()) * 512;
    assert!(
        root_end > (8u64 << 30) - (2 << 20),
        "root takes the rest: {root}"
    );

    // The filesystems.
    let uuid = blkid(&disk, offset(root), "UUID");
    assert_eq!(uuid, r["root_uuid"].as_str().unwrap());
    assert_eq!(blkid(&disk, offset(root), "LABEL"), "root");
    assert_eq!(blkid(&disk, offset(root), "TYPE"), "xfs");
    assert_eq!(blkid(&disk, offset(esp), "TYPE"), "vfat");
    assert_eq!(blkid(&disk, offset(esp), "LABEL"), "EFI-SYSTEM");
    let esp_uuid = blkid(&disk, offset(esp), "UUID");
    assert_eq!(esp_uuid, r["esp_uuid"].as_str().unwrap());

    // The ESP, as systemd-boot reads it.
    let loader = std::fs::read(HOST_LOADER).unwrap();
    let got = work.path().join("esp-copy");
    std::fs::create_dir(&got).unwrap();
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-i"])
        .arg(format!("{}@@{}", disk.display(), offset(esp)))
        .args(["::/EFI", "::/loader"])
        .arg(&got));
    assert_eq!(
        std::fs::read(got.join("EFI/BOOT/BOOTX64.EFI")).unwrap(),
        loader
    );
    assert_eq!(
        std::fs::read(got.join("EFI/systemd/systemd-bootx64.efi")).unwrap(),
        loader
    );
    assert_eq!(
        std::fs::read_to_string(got.join("loader/entries.srel")).unwrap(),
        "type1\n"
    );
    let entries: Vec<String> = std::fs::read_dir(got.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["bootc_testos-1.0-1.conf".to_string()]);
    let entry = std::fs::read_to_string(got.join("loader/entries").join(&entries[0])).unwrap();
    let kdir = format!("bootc_composefs-{id}");
    assert!(entry.contains("sort-key bootc-testos-0\n"), "{entry}");
    assert!(
        entry.contains(&format!("linux /EFI/Linux/{kdir}/vmlinuz\n")),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("initrd /EFI/Linux/{kdir}/initrd\n")),
        "{entry}"
    );
    let options = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap();
    let opts: Vec<&str> = options.split_whitespace().collect();
    assert!(
        opts.contains(&format!("root=UUID={uuid}").as_str()),
        "{entry}"
    );
    assert!(opts.contains(&"rw"), "{entry}");
    assert!(
        opts.contains(&format!("composefs=?{id}").as_str()),
        "{entry}"
    );
    for f in ["vmlinuz", "initrd"] {
        assert!(
            got.join("EFI/Linux")
                .join(&kdir)
                .join(f)
                .metadata()
                .unwrap()
                .len()
                > 0
        );
    }

    // The root: the host, its /etc/fstab mounting the ESP at /boot, no
    // entries under boot/ (they are on the ESP).
    {
        let m = RootMount::new(&disk, root);
        let root_dir = m.mnt.path();
        let fstab =
            std::fs::read_to_string(root_dir.join(format!("state/deploy/{id}/etc/fstab"))).unwrap();
        assert!(
            fstab.contains(&format!("UUID={esp_uuid} /boot vfat ")),
            "{fstab}"
        );
        assert!(!root_dir.join("boot/loader/entries").exists());

        // Every command, on the root with the ESP (a copy: no vfat here).
        let cmd = |args: &[&str]| -> Value {
            let out = run_ok(
                unistore()
                    .arg("--sysroot")
                    .arg(root_dir)
                    .arg("--esp")
                    .arg(&got)
                    .args(args)
                    .arg("--json"),
            );
            serde_json::from_str(&out).unwrap_or(Value::Null)
        };
        let st = cmd(&["status"]);
        assert_eq!(
            st["status"]["booted"]["composefs"]["verity"],
            id.as_str(),
            "{st}"
        );
        assert_eq!(
            st["status"]["booted"]["composefs"]["bootloader"], "systemd",
            "{st}"
        );
        // XFS, no fs-verity here: not sealed, and status says so.
        let c = &st["status"]["booted"]["composefs"];
        assert_eq!(c["verityEnforced"], false, "{st}");
        assert_eq!(c["missingVerityAllowed"], true, "{st}");
        let up = cmd(&["switch", &src2]);
        let id2 = up["deployment_id"].as_str().unwrap_or_default().to_string();
        assert!(!id2.is_empty() && id2 != id, "{up}");
        assert!(
            got.join(format!("EFI/Linux/bootc_composefs-{id2}/vmlinuz"))
                .is_file()
        );
        let staged: Vec<_> = std::fs::read_dir(got.join("loader/entries.staged"))
            .unwrap()
            .collect();
        assert_eq!(staged.len(), 2);
        cmd(&["internals", "finalize-staged"]);
        assert!(!got.join("loader/entries.staged").exists());
        let primary =
            std::fs::read_to_string(got.join("loader/entries/bootc_testos-2.0-1.conf")).unwrap();
        assert!(primary.contains(&format!("composefs=?{id2}")), "{primary}");
        assert!(
            primary.contains(&format!("root=UUID={uuid}")),
            "kargs carried: {primary}"
        );
        let old =
            std::fs::read_to_string(got.join("loader/entries/bootc_testos-1.0-0.conf")).unwrap();
        assert!(old.contains("sort-key bootc-testos-1"), "{old}");
        // A third deployment drops the first; gc removes its kernel dir.
        cmd(&["rollback"]);
        let st = cmd(&["status"]);
        assert_eq!(
            st["status"]["rollback"]["composefs"]["verity"],
            id2.as_str(),
            "{st}"
        );
        let fsck = cmd(&["internals", "fsck"]);
        assert_eq!(fsck["ok"], true, "{fsck}");
        // gc finds nothing to collect while both live.
        let gc = cmd(&["internals", "gc"]);
        assert!(
            gc["kernel_dirs"].as_array().is_none_or(|a| a.is_empty()),
            "{gc}"
        );
        std::fs::create_dir_all(got.join("EFI/Linux/bootc_composefs-dead")).unwrap();
        let gc = cmd(&["internals", "gc", "--dry-run"]);
        assert_eq!(
            gc["kernel_dirs"],
            serde_json::json!(["bootc_composefs-dead"]),
            "{gc}"
        );
        assert!(got.join("EFI/Linux/bootc_composefs-dead").exists());
        let gc = cmd(&["internals", "gc"]);
        assert_eq!(
            gc["kernel_dirs"],
            serde_json::json!(["bootc_composefs-dead"]),
            "{gc}"
        );
        assert!(!got.join("EFI/Linux/bootc_composefs-dead").exists());
        assert!(got.join(format!("EFI/Linux/{kdir}")).is_dir());
    }

    // A disk with partitions: refused without --wipe, untouched.
    let before = partitions(&disk);
    run_fails(
        &mut to_disk(&disk, &src1, &["--filesystem", "xfs"]),
        "Detected existing partitions",
    );
    assert_eq!(partitions(&disk), before);
    assert_eq!(blkid(&disk, offset(root), "UUID"), uuid);
    // With --wipe: a new install (new root UUID), the same table.
    let out = run_ok(&mut to_disk(
        &disk,
        &src2,
        &["--filesystem", "xfs", "--wipe", "--json"],
    ));
    let r2: Value = serde_json::from_str(&out).unwrap();
    assert_ne!(r2["root_uuid"], r["root_uuid"]);
    assert_eq!(
        blkid(&disk, offset(root), "UUID"),
        r2["root_uuid"].as_str().unwrap()
    );
}

#[test]
fn to_disk_refuses_bad_targets_and_images_leaving_the_disk_untouched() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let oci = work.path().join("oci");
    image(&oci, "loader", 1, true, vec![]);
    image(&oci, "noloader", 1, false, vec![]);
    let src = format!("oci:{}:loader", oci.display());
    let size = 8u64 << 30;
    let disk = new_disk(work.path(), "disk.raw", "8G");

    // An image without systemd-boot, when systemd-boot is asked for.
    let line = run_fails(
        &mut to_disk(
            &disk,
            &format!("oci:{}:noloader", oci.display()),
            &["--filesystem", "xfs"],
        ),
        "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
    );
    assert!(line.contains("--bootloader none"), "{line}");
    assert_untouched(&disk, size);

    // Too small: says how much is needed.
    let small = new_disk(work.path(), "small.raw", "1G");
    let line = run_fails(
        &mut to_disk(&small, &src, &["--filesystem", "xfs"]),
        "too small",
    );
    assert!(line.contains("needs at least"), "{line}");
    assert_untouched(&small, 1 << 30);

    // The ostree backend.
    run_fails(
        &mut to_disk(&disk, &src, &["--filesystem", "xfs", "--backend", "ostree"]),
        "composefs hosts only",
    );
    // A regular file without --via-loopback, and a missing one.
    let mut c = unistore();
    c.args([
        "install",
        "to-disk",
        "--filesystem",
        "xfs",
        "--source-imgref",
        &src,
    ])
    .arg(&disk);
    run_fails(&mut c, "--via-loopback");
    run_fails(
        &mut to_disk(
            &work.path().join("nope.raw"),
            &src,
            &["--filesystem", "xfs"],
        ),
        "truncate -s",
    );
    // A file in use by a loop device.
    let dev = sh(Command::new("losetup").args(["-f", "--show"]).arg(&disk))
        .trim()
        .to_string();
    let r = run(&mut to_disk(&disk, &src, &["--filesystem", "xfs"]));
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("in use by loop device"));
    // A filesystem, not a partition table.
    let fsdisk = new_disk(work.path(), "fs.raw", "2G");
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fsdisk));
    run_fails(
        &mut to_disk(&fsdisk, &src, &["--filesystem", "xfs"]),
        "existing ext4 filesystem",
    );
    // No --filesystem and an image that names none.
    run_fails(
        &mut to_disk(&disk, &src, &[]),
        "--filesystem xfs|ext4|btrfs",
    );
    // Bad flag values.
    run_fails(
        &mut to_disk(&disk, &src, &["--filesystem", "zfs"]),
        "xfs, ext4 or btrfs",
    );
    run_fails(
        &mut to_disk(&disk, &src, &["--filesystem", "xfs", "--root-size", "12Q"]),
        "unit",
    );
    run_fails(
        &mut to_disk(&disk, &src, &["--filesystem", "xfs", "--root-size", "100M"]),
        "too small",
    );
    run_fails(
        &mut to_disk(
            &disk,
            &src,
            &["--filesystem", "xfs", "--bootloader", "grub"],
        ),
        "blscfg",
    );
    assert_untouched(&disk, size);
}

#[test]
fn to_disk_takes_the_filesystem_from_the_images_install_config() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let oci = work.path().join("oci");
    let cfg = b"[install.filesystem.root]\ntype = \"ext4\"\n".to_vec();
    image(
        &oci,
        "v1",
        1,
        true,
        vec![("/usr/lib/bootc/install/50-fs.toml".into(), cfg)],
    );
    let disk = new_disk(work.path(), "disk.raw", "6G");
    let out = run(&mut to_disk(
        &disk,
        &format!("oci:{}:v1", oci.display()),
        &["--root-size", "3G", "--json"],
    ));
    assert!(out.status.success());
    // bootc's rule: ext4 wants fs-verity; this kernel has none: one line
    // says so and the host is not sealed.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fs-verity is required on ext4"))
        .collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(
        warned[0].contains("this kernel has no fs-verity"),
        "{stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["filesystem"], "ext4");
    let parts = partitions(&disk);
    let root = part(&parts, ROOT_TYPE);
    assert_eq!(root["size"].as_u64().unwrap() * 512, 3 << 30);
    assert_eq!(blkid(&disk, offset(root), "TYPE"), "ext4");
    // ext4 always with the verity feature (bootc's mkfs -O verity).
    let m = RootMount::new(&disk, root);
    let feats = sh(Command::new("dumpe2fs").args(["-h"]).arg(&m.dev));
    assert!(feats.contains(" verity"), "{feats}");
    assert!(m.mnt.path().join("composefs/meta.json").is_file());
}

#[test]
fn allow_missing_verity_says_nothing_more() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1, true, vec![]);
    let disk = new_disk(work.path(), "disk.raw", "4G");
    let out = run(&mut to_disk(
        &disk,
        &format!("oci:{}:v1", oci.display()),
        &["--filesystem", "ext4", "--allow-missing-verity"],
    ));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("fs-verity is required"), "{stderr}");
}
