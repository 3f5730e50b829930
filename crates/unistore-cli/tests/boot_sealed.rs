//! End-to-end, sealed: this machine's kernel has no fs-verity, the guest's
//! (6.12) has. `scripts/boot --sealed --filesystem ext4` boots the bootable
//! image as a live system with a blank second disk and runs `unistore
//! install to-disk` there; the new disk then boots through firmware with
//! `composefs=<id>` (no `?`), composefs-setup-root requiring fs-verity and
//! overlayfs mounting the image with `verity=require`. Then the tamper
//! tests, each failing the way composefs promises:
//! - a byte of the EROFS image flipped on the raw disk: the initramfs
//!   refuses the root and says why;
//! - a byte of a `/usr` file's object flipped: reading the file in the
//!   booted host gives EIO, the kernel names the file, fsck finds it;
//! - an entry whose `composefs=` names another image: refused.
//!
//! Bytes are found on the raw disk with `debugfs` (e2fsprogs reads the
//! ext4 without mounting it: this kernel could not use its verity files).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::*;
use common::*;
use composefs::fsverity::{FsVerityHashValue, Sha512HashValue, compute_verity};
use unistore_fixtures::env::vm::{self, VmOpts, VmRun};

const READ: &str = "/usr/share/common-licenses/GPL-3";

fn sh(cmd: &mut Command) -> String {
    run_ok(cmd)
}

fn partition(disk: &Path, name: &str) -> (u64, u64) {
    let j: serde_json::Value =
        serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(disk))).unwrap();
    let p = j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} partition"));
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

/// The byte offset on `disk` of byte `at` of `path` in the root ext4.
fn disk_offset(disk: &Path, path: &str, at: u64) -> u64 {
    let (off, size) = partition(disk, "root");
    let dev = sh(Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(format!("--offset={off}"))
        .arg(format!("--sizelimit={size}"))
        .arg(disk))
    .trim()
    .to_string();
    let out = Command::new("debugfs")
        .args(["-R", &format!("blocks {path}"), &dev])
        .output()
        .unwrap();
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    let blocks = String::from_utf8_lossy(&out.stdout);
    let first: u64 = blocks
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("debugfs found no blocks of {path}: {out:?}"));
    // mkfs.ext4 on a partition of this size: 4 KiB blocks.
    off + first * 4096 + at
}

fn flip(disk: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

fn esp_entry(disk: &Path) -> (String, String) {
    let (off, _) = partition(disk, "EFI-SYSTEM");
    let img = format!("{}@@{off}", disk.display());
    let list = sh(Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args([
        "-b",
        "-i",
        &img,
        "::/loader/entries",
    ]));
    let name = list
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap().to_string())
        .find(|n| n.ends_with("-1.conf"))
        .expect("a primary entry");
    let text = sh(Command::new("mtype").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &img,
        &format!("::/loader/entries/{name}"),
    ]));
    (name, text)
}

fn put_esp_entry(disk: &Path, name: &str, text: &str, dir: &Path) {
    let (off, _) = partition(disk, "EFI-SYSTEM");
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i", &format!("{}@@{off}", disk.display())])
        .arg(&f)
        .arg(format!("::/loader/entries/{name}")));
}

/// The test disk of the boots after the install: the sealed run.sh, which
/// reads `READ` and runs fsck on a sealed host.
fn test_disk(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        repo.join("scripts/boot-image/sealed-run.sh"),
        content.join("run.sh"),
    )
    .unwrap();
    std::fs::write(content.join("read"), READ).unwrap();
    let img = dir.join("test.img");
    vm::ext4_disk_from_dir(&content, "UNISTORE-TEST", &img).unwrap();
    img
}

fn boot(disk: &Path, tdisk: &Path, logs: &Path, name: &str) -> VmRun {
    let mut opts = VmOpts::new(&logs.join(format!("{name}.log")));
    opts.timeout = BOOT_TIMEOUT;
    if name.contains("image") || name.contains("entry") {
        // Refused in the initramfs, which reboots (panic=1 in the entry):
        // QEMU exits within a minute.
        opts.timeout = std::time::Duration::from_secs(300);
    }
    opts.extra_disks = vec![tdisk.to_path_buf()];
    let r = vm::boot_uefi(disk, &opts).unwrap();
    eprintln!(
        "{name}: {:.0} s, console in {}",
        r.elapsed.as_secs_f64(),
        r.log.display()
    );
    r
}

fn value<'a>(out: &'a [String], key: &str, r: &VmRun) -> &'a str {
    out.iter()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| fail_with(r, &format!("the test script printed no {key}=")))
}

#[test]
fn sealed_ext4_host_boots_enforced_and_refuses_tampering() {
    let oci = boot_image();
    let test = "sealed_ext4_host_boots_enforced_and_refuses_tampering";
    let logs = Path::new("/var/tmp/unistore-boot-logs").join(test);
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = work.path().join("sealed.raw");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The script, as a user runs it (its image is the one built above).
    let out = Command::new(repo.join("scripts/boot"))
        .args(["--sealed", "--filesystem", "ext4", "--disk"])
        .arg(&disk)
        .arg("--log")
        .arg(logs.join("boot1.log"))
        .env("UNISTORE_BIN", env!("CARGO_BIN_EXE_unistore"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "scripts/boot --sealed failed: {stderr}"
    );
    let _ = oci;

    // The entry on the ESP requires verity.
    let (name, entry) = esp_entry(&disk);
    let id = entry
        .split_whitespace()
        .find_map(|w| w.strip_prefix("composefs="))
        .unwrap()
        .to_string();
    assert!(!id.starts_with('?'), "{entry}");
    let console = std::fs::read_to_string(logs.join("boot1.log")).unwrap_or_default();
    let ok = console
        .lines()
        .find_map(|l| l.find("UNISTORE-BOOT-OK").map(|i| l[i..].to_string()))
        .expect("a boot check line");
    assert!(ok.contains(&format!(" id={id} ")), "{ok}");
    assert!(ok.contains(" verity=enforced"), "{ok}");
    assert!(ok.contains(&format!(" entry={name}")), "{ok}");
    assert!(
        console.contains("UNISTORE-TEST: read=ok"),
        "the untouched file reads"
    );

    let tdisk = test_disk(work.path());
    // A /usr file's object, one byte flipped: EIO on read, the kernel names
    // it, fsck finds it.
    let data = std::fs::read(
        oci.join("../base/rootfs")
            .join(READ.trim_start_matches('/')),
    )
    .unwrap();
    let hex = compute_verity::<Sha512HashValue>(&data).to_hex();
    let object = format!("/composefs/objects/{}/{}", &hex[..2], &hex[2..]);
    let at = disk_offset(&disk, &object, 10);
    flip(&disk, at);
    let r = boot(&disk, &tdisk, &logs, "boot2-object");
    let ok = boot_ok(&r);
    assert_eq!(ok["verity"], "enforced");
    let out = agent_ok(&r);
    let read = value(&out, "read", &r);
    assert!(read.contains("Input/output error"), "{read}");
    let kernel: Vec<&String> = out.iter().filter(|l| l.starts_with("kernel: ")).collect();
    assert!(
        kernel.iter().any(|l| l.contains("verity")
            && (l.contains(&hex[..16])
                || l.contains("GPL-3")
                || l.contains("corrupted")
                || l.contains("CORRUPTED"))),
        "{kernel:?}"
    );
    let fsck = value(&out, "fsck", &r);
    assert!(fsck.contains("\"ok\":false"), "{fsck}");
    flip(&disk, at);

    // The EROFS image, one byte of its superblock flipped: the initramfs
    // refuses the root.
    // `images/<id>` links to the object named by the image's digest.
    let image = format!("/composefs/objects/{}/{}", &id[..2], &id[2..]);
    let at = disk_offset(&disk, &image, 1024 + 8);
    flip(&disk, at);
    let r = boot(&disk, &tdisk, &logs, "boot3-image");
    if !r.lines_with("UNISTORE-BOOT-OK").is_empty() {
        fail_with(&r, "a tampered EROFS image booted");
    }
    let fails = r.lines_with("UNISTORE-INITRAMFS-FAIL");
    let Some(line) = fails.first() else {
        fail_with(&r, "no UNISTORE-INITRAMFS-FAIL line");
    };
    assert!(line.contains("the root is not composefs"), "{line}");
    assert!(r.exited, "the refused boot did not end (panic=1)");
    flip(&disk, at);

    // An entry naming another image: refused.
    let other: String = id
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    // Only `composefs=` changes: the kernel and initrd paths (named after
    // the id too) stay valid, or systemd-boot would drop the entry.
    let forged = entry.replace(&format!("composefs={id}"), &format!("composefs={other}"));
    assert_ne!(forged, entry);
    put_esp_entry(&disk, &name, &forged, work.path());
    let r = boot(&disk, &tdisk, &logs, "boot4-entry");
    let fails = r.lines_with("UNISTORE-INITRAMFS-FAIL");
    let Some(line) = fails.first() else {
        fail_with(
            &r,
            "an entry naming another image booted or failed silently",
        );
    };
    assert!(
        line.contains(&other[..16]) || line.contains("no composefs image"),
        "{line}"
    );
}
