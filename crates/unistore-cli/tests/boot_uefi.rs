//! End-to-end, as a real machine: `unistore install to-disk --via-loopback`
//! makes a disk image (GPT, a FAT ESP with systemd-boot from the image, an
//! XFS root), QEMU boots it through firmware (q35 + OVMF, no `-kernel`),
//! systemd-boot picks the entry by its sort key. Inside, the host's commands
//! work with the ESP mounted at /boot: upgrade stages onto it, finalize
//! swaps its entries at shutdown, rollback reorders them. The direct-kernel
//! boots of `boot.rs` stay the fast path; this is the real chain.
//!
//! The kernel arguments are the entry's (a loader cannot be told more), so
//! the install adds `unistore.test=uefi` and the test disk's `run.sh` reads
//! what to do from the booted state. Serial logs are kept under
//! /var/tmp/unistore-boot-logs/<test>/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::*;
use common::*;
use unistore_fixtures::env::vm::{self, VmOpts, VmRun};

fn sh(cmd: &mut Command) -> String {
    run_ok(cmd)
}

/// The disk's ESP byte offset.
fn esp_offset(disk: &Path) -> u64 {
    let j: serde_json::Value =
        serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(disk))).unwrap();
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "EFI-SYSTEM")
        .map(|p| p["start"].as_u64().unwrap() * 512)
        .expect("an EFI-SYSTEM partition")
}

/// `loader/entries/` of the disk's ESP: (file name, content), read with mtools.
fn esp_entries(disk: &Path) -> Vec<(String, String)> {
    let img = format!("{}@@{}", disk.display(), esp_offset(disk));
    let list = sh(Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args([
        "-b",
        "-i",
        &img,
        "::/loader/entries",
    ]));
    let mut out: Vec<(String, String)> = list
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap().to_string())
        .filter(|n| n.ends_with(".conf"))
        .map(|n| {
            let text = sh(Command::new("mtype").env("MTOOLS_SKIP_CHECK", "1").args([
                "-i",
                &img,
                &format!("::/loader/entries/{n}"),
            ]));
            (n, text)
        })
        .collect();
    out.sort();
    out
}

/// The `composefs=` id of the entry systemd-boot boots first (smallest
/// sort key).
fn primary_id(disk: &Path) -> String {
    let mut e: Vec<(String, String)> = esp_entries(disk)
        .into_iter()
        .map(|(_, t)| {
            let key = t
                .lines()
                .find_map(|l| l.strip_prefix("sort-key "))
                .unwrap_or("")
                .to_string();
            let id = t
                .split_whitespace()
                .find_map(|w| w.strip_prefix("composefs="))
                .unwrap()
                .trim_start_matches('?')
                .to_string();
            (key, id)
        })
        .collect();
    e.sort();
    e.first().expect("an entry").1.clone()
}

fn boot(disk: &Path, test_disk: &Path, logs: &Path, n: usize) -> VmRun {
    let mut opts = VmOpts::new(&logs.join(format!("boot{n}.log")));
    opts.timeout = BOOT_TIMEOUT;
    opts.extra_disks = vec![test_disk.to_path_buf()];
    let r = vm::boot_uefi(disk, &opts).unwrap();
    eprintln!(
        "boot {n}: {:.0} s, {}, console in {}",
        r.elapsed.as_secs_f64(),
        if r.exited { "powered off" } else { "TIMED OUT" },
        r.log.display()
    );
    r
}

/// The test disk: `run.sh` and the image's v2 as `oci/:latest`.
fn test_disk(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    sh(Command::new("skopeo").args(["copy", "--quiet"]).args([
        format!("oci:{}:v2", boot_image().display()),
        format!("oci:{}:latest", content.join("oci").display()),
    ]));
    std::fs::write(
        content.join("run.sh"),
        r#"set -e
say() { echo "$1=$2"; }
say esp "$(findmnt -n -o FSTYPE /boot)"
v=$(unistore status --json | jq -r .status.booted.image.version)
if [ "$v" = 2.0 ]; then
    say edit "$(cat /etc/unistore-test-edit)"
    say release "$(cat /etc/unistore-sample/release)"
    unistore rollback
    say entries "$(ls /boot/loader/entries | tr '\n' ,)"
elif [ ! -e /etc/unistore-test-edit ]; then
    echo edited-in-v1 >/etc/unistore-test-edit
    unistore upgrade
    say staged "$(unistore status --json | jq -r .status.staged.composefs.verity)"
    say staged_entries "$(ls /boot/loader/entries.staged | tr '\n' ,)"
    say kernels "$(ls /boot/EFI/Linux | wc -l)"
else
    say fsck "$(unistore internals fsck --json | jq -r .ok)"
fi
"#,
    )
    .unwrap();
    let img = dir.join("test-disk.img");
    vm::ext4_disk_from_dir(&content, "UNISTORE-TEST", &img).unwrap();
    img
}

fn value<'a>(out: &'a [String], key: &str, r: &VmRun) -> &'a str {
    out.iter()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| fail_with(r, &format!("the test script printed no {key}=")))
}

#[test]
fn to_disk_boots_through_firmware_upgrades_and_rolls_back_across_reboots() {
    let test = "to_disk_boots_through_firmware_upgrades_and_rolls_back_across_reboots";
    let oci = boot_image();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let logs = Path::new("/var/tmp/unistore-boot-logs").join(test);
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let disk = work.path().join("disk.raw");
    sh(Command::new("truncate").args(["-s", "8G"]).arg(&disk));
    sh(unistore()
        .args([
            "install",
            "to-disk",
            "--via-loopback",
            "--filesystem",
            "xfs",
        ])
        .args(["--source-imgref", &format!("oci:{}:v1", oci.display())])
        // The host follows the layout on the test disk, whose latest is v2.
        .args(["--target-imgref", "oci:/run/unistore-test/oci:latest"])
        .args(["--karg", "unistore.test=uefi"])
        .arg(&disk));
    let tdisk = test_disk(work.path());
    let entries = esp_entries(&disk);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0, "bootc_debian-1.0-1.conf");
    let v1 = primary_id(&disk);

    // Boot 1: v1 through systemd-boot; /etc edited; the upgrade staged on
    // the ESP; finalized at shutdown.
    let r = boot(&disk, &tdisk, &logs, 1);
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], v1);
    assert_eq!(ok["version"], "1.0");
    assert_eq!(ok["loader"], "systemd-boot", "{ok:?}");
    assert_eq!(ok["entry"], "bootc_debian-1.0-1.conf", "{ok:?}");
    let out = agent_ok(&r);
    assert_eq!(value(&out, "esp", &r), "vfat");
    let v2 = value(&out, "staged", &r).to_string();
    assert_eq!(v2.len(), 128, "{out:?}");
    assert_ne!(v2, v1);
    assert_eq!(
        value(&out, "staged_entries", &r),
        "bootc_debian-1.0-0.conf,bootc_debian-2.0-1.conf,"
    );
    // v2 has v1's kernel and initrd: its entry reuses v1's directory (vfat
    // has no links to share them otherwise).
    assert_eq!(value(&out, "kernels", &r), "1", "{out:?}");
    if r.lines_with("Finalized").is_empty() {
        fail_with(&r, "the staged deployment was not finalized at shutdown");
    }
    assert_eq!(primary_id(&disk), v2, "{:?}", esp_entries(&disk));

    // Boot 2: v2 with the /etc edit, v1 as rollback; roll back.
    let r = boot(&disk, &tdisk, &logs, 2);
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], v2);
    assert_eq!(ok["version"], "2.0");
    assert_eq!(ok["rollback"], v1);
    assert_eq!(ok["entry"], "bootc_debian-2.0-1.conf", "{ok:?}");
    let out = agent_ok(&r);
    assert_eq!(value(&out, "edit", &r), "edited-in-v1");
    assert_eq!(value(&out, "release", &r), "v2");
    assert_eq!(
        value(&out, "entries", &r),
        "bootc_debian-1.0-1.conf,bootc_debian-2.0-0.conf,"
    );
    assert_eq!(primary_id(&disk), v1);

    // Boot 3: v1 again, v2 as rollback, fsck clean inside.
    let r = boot(&disk, &tdisk, &logs, 3);
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], v1);
    assert_eq!(ok["rollback"], v2);
    assert_eq!(ok["entry"], "bootc_debian-1.0-1.conf", "{ok:?}");
    let out = agent_ok(&r);
    assert_eq!(value(&out, "fsck", &r), "true");
}
