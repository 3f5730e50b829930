//! End-to-end: hosts installed by `unistore install to-filesystem` boot for
//! real in QEMU (TCG), with the upstream composefs initramfs helper, from
//! the bootable sample image (scripts/build-boot-image; docs/boot.md).
//!
//! The test plays the boot loader: the primary BLS entry's kernel, initrd
//! and options (+ `console=ttyS0 panic=1 unistore.test=<phase>`). Inside the
//! VM a unit prints one line saying what the boot is (`UNISTORE-BOOT-OK
//! id=... image=... version=... rollback=... staged=...` or
//! `UNISTORE-BOOT-FAIL: <reason>`), a test agent runs `run.sh <phase>` from a
//! disk labelled UNISTORE-TEST and powers off. Serial logs are kept under
//! /var/tmp/unistore-boot-logs/<test>/; a failure prints their end.
//!
//! These tests need root, loop devices, qemu-system-x86 and the Debian
//! archive (once, for the image); they never skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::boot::*;
use common::*;
use unistore_fixtures::env::vm::{self, BootSpec, VmOpts, VmRun};
use unistore_fixtures::env::{FsKind, LoopFs};

/// An installed host on a raw XFS disk image, booted as often as asked.
struct Host {
    fs: LoopFs,
    work: tempfile::TempDir,
    logs: PathBuf,
    boots: usize,
}

impl Host {
    /// Installs `oci:<boot image>:<tag>` with `extra` install arguments.
    fn install(test: &str, tag: &str, extra: &[&str]) -> Host {
        let oci = boot_image();
        let fs = LoopFs::new(FsKind::Xfs, 4096).unwrap();
        run_ok(
            unistore()
                .args(["install", "to-filesystem", "--source-imgref"])
                .arg(format!("oci:{}:{tag}", oci.display()))
                .args(extra)
                .arg(fs.path()),
        );
        let logs = Path::new("/var/tmp/unistore-boot-logs").join(test);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();
        Host {
            fs,
            work: tempfile::tempdir().unwrap(),
            logs,
            boots: 0,
        }
    }

    /// The primary entry as the boot loader reads it now.
    fn entry(&self) -> BootSpec {
        vm::primary_entry(self.fs.path(), &self.work.path().join("kernel")).unwrap()
    }

    /// Boots the primary entry (options edited by `edit`) with
    /// `unistore.test=<phase>`, the test disk `test_disk` if any; the
    /// filesystem is detached meanwhile and mounted again afterwards.
    fn boot_with(
        &mut self,
        phase: &str,
        test_disk: Option<&Path>,
        edit: impl FnOnce(&mut BootSpec),
    ) -> VmRun {
        let mut spec = self.entry();
        edit(&mut spec);
        self.boots += 1;
        let mut opts = VmOpts::new(&self.logs.join(format!("boot{}-{phase}.log", self.boots)));
        opts.timeout = BOOT_TIMEOUT;
        opts.extra_append = vec![format!("unistore.test={phase}")];
        opts.extra_disks = test_disk.map(Path::to_path_buf).into_iter().collect();
        self.fs.detach().unwrap();
        let r = vm::boot(&self.fs.image(), &spec, &opts);
        self.fs.attach().unwrap();
        let r = r.unwrap();
        eprintln!(
            "boot {} ({phase}): {:.0} s, {}, console in {}",
            self.boots,
            r.elapsed.as_secs_f64(),
            if r.exited { "powered off" } else { "TIMED OUT" },
            r.log.display()
        );
        r
    }

    fn boot(&mut self, phase: &str, test_disk: Option<&Path>) -> VmRun {
        self.boot_with(phase, test_disk, |_| {})
    }
}

/// The UUID blkid reads from a disk image's filesystem.
fn fs_uuid(image: &Path) -> String {
    let out = run_ok(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(image),
    );
    out.trim().to_string()
}

#[test]
fn composefs_host_boots_and_says_so() {
    let mut host = Host::install("composefs_host_boots_and_says_so", "v1", &[]);
    let spec = host.entry();
    let id = spec.composefs_id().unwrap().to_string();
    // root= names the target filesystem by UUID, as bootc's install does.
    let uuid = fs_uuid(&host.fs.image());
    assert!(!uuid.is_empty());
    assert!(
        spec.options.contains(&format!("root=UUID={uuid}")),
        "{:?}",
        spec.options
    );

    let r = host.boot("check", None);
    let ok = boot_ok(&r);
    assert_eq!(ok["backend"], "composefs");
    assert_eq!(ok["id"], id);
    assert_eq!(ok["image"], format!("oci:{}:v1", boot_image().display()));
    assert_eq!(ok["version"], "1.0");
    assert_eq!(ok["rollback"], "none");
    assert_eq!(ok["staged"], "none");
    assert!(
        !r.lines_with("UNISTORE-INITRAMFS: composefs root mounted")
            .is_empty(),
        "the initramfs script did not say it mounted the root"
    );
    // The finalize unit ran at shutdown (nothing was staged).
    if r.lines_with("No staged deployment.").is_empty() {
        fail_with(&r, "the finalize unit did not run at shutdown");
    }
}

#[test]
fn a_root_that_is_not_composefs_fails_with_the_reason() {
    let mut host = Host::install(
        "a_root_that_is_not_composefs_fails_with_the_reason",
        "v1",
        &[],
    );
    let id = host.entry().composefs_id().unwrap().to_string();

    // A composefs= id naming no image: the initramfs stops the boot and
    // says why (and QEMU exits: panic=1 reboots, -no-reboot).
    let wrong: String = id
        .chars()
        .rev()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let r = host.boot_with("check", None, |s| {
        for o in &mut s.options {
            if o.starts_with("composefs=") {
                *o = format!("composefs=?{wrong}");
            }
        }
    });
    expect_initramfs_failure(&r, &format!("no composefs image found (tried: {wrong})"));

    // A damaged EROFS image: its superblock overwritten.
    let image = host.fs.path().join(format!("composefs/images/{id}"));
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[1024..1024 + 128].fill(0xA5);
    std::fs::write(&image, bytes).unwrap();
    host.fs.sync();
    let r = host.boot("check", None);
    expect_initramfs_failure(&r, "Failed to mount composefs image");
}

/// The boot stopped in the initramfs with the one line naming the reason,
/// and never reached the booted system.
fn expect_initramfs_failure(r: &VmRun, reason: &str) {
    if !r.lines_with("UNISTORE-BOOT-OK").is_empty() {
        fail_with(r, "the boot succeeded; it must not");
    }
    let fails = r.lines_with("UNISTORE-INITRAMFS-FAIL");
    let Some(line) = fails.first() else {
        fail_with(r, "no UNISTORE-INITRAMFS-FAIL line on the console");
    };
    assert!(
        line.contains("the root is not composefs") && line.contains(reason),
        "the failure line {line:?} does not say {reason:?}"
    );
    if !r.exited {
        fail_with(r, "the failed boot did not end (panic=1 should reboot)");
    }
}

/// The test disk: `run.sh` and the image's v2 as `oci/:latest`.
fn test_disk(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    run_ok(Command::new("skopeo").args(["copy", "--quiet"]).args([
        format!("oci:{}:v2", boot_image().display()),
        format!("oci:{}:latest", content.join("oci").display()),
    ]));
    std::fs::write(
        content.join("run.sh"),
        r#"set -e
say() { echo "$1=$2"; }
case "$1" in
upgrade)
    echo edited-in-v1 >/etc/unistore-test-edit
    unistore upgrade
    say staged "$(unistore status --json | jq -r .status.staged.composefs.verity)"
    ;;
rollback)
    say edit "$(cat /etc/unistore-test-edit)"
    say release "$(cat /etc/unistore-sample/release)"
    unistore rollback
    ;;
ostree-upgrade)
    echo edited-in-v1 >/etc/unistore-test-edit
    unistore upgrade
    say staged "$(unistore status --json | jq -r .status.staged.ostree.checksum)"
    ;;
*)
    echo "unknown phase $1"
    exit 1
    ;;
esac
"#,
    )
    .unwrap();
    let img = dir.join("test-disk.img");
    vm::ext4_disk_from_dir(&content, "UNISTORE-TEST", &img).unwrap();
    img
}

#[test]
fn upgrade_finalize_and_rollback_across_reboots() {
    let mut host = Host::install(
        "upgrade_finalize_and_rollback_across_reboots",
        "v1",
        // The host follows the layout on the test disk, whose latest is v2.
        &["--target-imgref", "oci:/run/unistore-test/oci:latest"],
    );
    let disk = test_disk(host.work.path());
    let v1 = host.entry().composefs_id().unwrap().to_string();

    // Boot 1: v1; /etc edited, the upgrade staged; finalized at shutdown.
    let r = host.boot("upgrade", Some(&disk));
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], v1);
    assert_eq!(ok["image"], "oci:/run/unistore-test/oci:latest");
    assert_eq!(ok["version"], "1.0");
    let out = agent_ok(&r);
    let staged = out
        .iter()
        .find_map(|l| l.strip_prefix("staged="))
        .unwrap_or_else(|| fail_with(&r, "the upgrade printed no staged id"))
        .to_string();
    assert_eq!(staged.len(), 128, "{out:?}");
    assert_ne!(staged, v1);
    if r.lines_with("Finalized").is_empty() {
        fail_with(&r, "the staged deployment was not finalized at shutdown");
    }
    assert_eq!(host.entry().composefs_id(), Some(staged.as_str()));

    // Boot 2: v2 with the /etc edit, v1 as rollback; roll back.
    let r = host.boot("rollback", Some(&disk));
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], staged);
    assert_eq!(ok["version"], "2.0");
    assert_eq!(ok["rollback"], v1);
    let out = agent_ok(&r);
    assert!(out.contains(&"edit=edited-in-v1".to_string()), "{out:?}");
    assert!(out.contains(&"release=v2".to_string()), "{out:?}");
    assert_eq!(host.entry().composefs_id(), Some(v1.as_str()));

    // Boot 3: v1 again, v2 as rollback.
    let r = host.boot("check", None);
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], v1);
    assert_eq!(ok["version"], "1.0");
    assert_eq!(ok["rollback"], staged);
}

/// An ostree host boots from the deployment `ostree=` names; inside it,
/// `unistore upgrade` stages through libostree, the deployment is finalized
/// at shutdown, the next boot is v2 with the /etc edit kept, and `unistore
/// rollback` brings v1 back at the boot after.
#[test]
fn ostree_host_boots_upgrades_and_rolls_back_across_reboots() {
    // The entry has `rw` (without it the initramfs mounts the root
    // read-only and nothing remounts it: /etc would not be writable).
    let mut host = Host::install(
        "ostree_host_boots_upgrades_and_rolls_back_across_reboots",
        "v1",
        // Unified (bound, with the store): the upgrade pulls only the
        // layer v2 changes into composefs (a classic host would import the
        // whole image again: minutes under TCG).
        &[
            "--backend",
            "ostree",
            "--unified",
            "enabled",
            "--target-imgref",
            "oci:/run/unistore-test/oci:latest",
        ],
    );
    let disk = test_disk(host.work.path());
    let spec = host.entry();
    let uuid = fs_uuid(&host.fs.image());
    assert!(
        spec.options.contains(&format!("root=UUID={uuid}")),
        "{:?}",
        spec.options
    );
    assert!(spec.options.iter().any(|o| o == "rw"), "{:?}", spec.options);
    let commit = entry_commit(&host);

    // Boot 1: v1; /etc edited; the upgrade staged by libostree; finalized
    // at shutdown.
    let r = host.boot("ostree-upgrade", Some(&disk));
    let ok = boot_ok(&r);
    assert_eq!(ok["backend"], "ostree");
    assert_eq!(ok["id"], commit);
    assert_eq!(ok["stateroot"], "default");
    assert_eq!(ok["image"], "oci:/run/unistore-test/oci:latest");
    assert_eq!(ok["version"], "1.0");
    assert!(
        !r.lines_with("UNISTORE-INITRAMFS: ostree deployment mounted")
            .is_empty(),
        "the initramfs script did not say it prepared the ostree root"
    );
    let out = agent_ok(&r);
    let staged = out
        .iter()
        .find_map(|l| l.strip_prefix("staged="))
        .unwrap_or_else(|| fail_with(&r, "the upgrade printed no staged commit"))
        .to_string();
    assert_eq!(staged.len(), 64, "{out:?}");
    assert_ne!(staged, commit);
    assert_eq!(entry_commit(&host), staged, "finalized at shutdown");

    // Boot 2: v2 with the /etc edit, v1 as rollback; roll back.
    let r = host.boot("rollback", Some(&disk));
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], staged);
    assert_eq!(ok["version"], "2.0");
    assert_eq!(ok["rollback"], commit);
    let out = agent_ok(&r);
    assert!(out.contains(&"edit=edited-in-v1".to_string()), "{out:?}");
    assert!(out.contains(&"release=v2".to_string()), "{out:?}");
    assert_eq!(entry_commit(&host), commit);

    // Boot 3: v1 again, v2 as rollback.
    let r = host.boot("check", None);
    let ok = boot_ok(&r);
    assert_eq!(ok["id"], commit);
    assert_eq!(ok["version"], "1.0");
    assert_eq!(ok["rollback"], staged);
}

/// The commit of the deployment the primary entry's `ostree=` leads to
/// (`/ostree/boot.N/<stateroot>/<boot checksum>/<serial>` -> the
/// deployment `<commit>.<serial>`).
fn entry_commit(host: &Host) -> String {
    let spec = host.entry();
    let arg = spec
        .options
        .iter()
        .find_map(|o| o.strip_prefix("ostree="))
        .expect("an ostree= argument")
        .to_string();
    let deploy = std::fs::canonicalize(host.fs.path().join(arg.trim_start_matches('/'))).unwrap();
    deploy
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap()
        .to_string()
}
