//! The crash walk: every crash point of `unistore::crashpoint::ALL`, two
//! ways to die at each (SIGKILL; a power cut: the filesystem shut down
//! without a log flush, then unmounted and mounted again so the log
//! replays), each from the same prepared host (saved once per scenario and
//! put back before each point). After each: the shared checker
//! (`common::checker`), then the interrupted command run again must
//! complete (an install whose host already exists must refuse clearly),
//! the checker again, and a GC leaves nothing to collect.
//!
//! Each scenario is its own test (they run two at a time); a scenario of
//! `ALL` without a test here fails `every_scenario_is_walked`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::checker::{check_host, outside};
use common::*;
use unistore::crashpoint::{self, Scenario};
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, TestImageOpts, build_test_image};

/// The scenarios walked by the tests below.
const WALKED: &[Scenario] = &[
    Scenario::Install,
    Scenario::InstallUnified,
    Scenario::InstallUnifiedCopy,
    Scenario::Upgrade,
    Scenario::Switch,
    Scenario::Finalize,
    Scenario::Rollback,
    Scenario::Gc,
    Scenario::Migrate,
    Scenario::SetUnified,
    Scenario::FsckRepair,
    Scenario::OstreeInstall,
    Scenario::OstreeUpgrade,
    Scenario::OstreeRollback,
    Scenario::OstreeGc,
    Scenario::OstreeSetUnified,
    Scenario::OstreeMigrate,
    Scenario::InstallEsp,
    Scenario::ToDisk,
];

#[test]
fn every_scenario_is_walked() {
    for c in crashpoint::ALL {
        assert!(
            WALKED.contains(&c.scenario),
            "crash point {} ({:?}) is in no walked scenario",
            c.name,
            c.scenario
        );
    }
    assert!(crashpoint::ALL.len() >= 50);
}

struct World {
    work: tempfile::TempDir,
    reg: Registry,
    imgs: Vec<(PathBuf, BuiltImage)>,
    fs: LoopFs,
    /// The host boots through systemd-boot from an ESP directory,
    /// `ROOT/boot/efi` (on the same filesystem, so the power cut and the
    /// saved state cover it too).
    esp: bool,
}

/// The host's systemd-boot, put in every image (for the ESP hosts).
const HOST_LOADER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

fn world(kind: FsKind) -> World {
    let work = tempfile::tempdir().unwrap();
    let mut imgs = vec![];
    for v in 1..=3u32 {
        let dir = work.path().join(format!("v{v}"));
        let mut extra_files =
            unistore_fixtures::image::host_executable_files("/usr/bin/cat").unwrap();
        extra_files.push(("/usr/share/walk".into(), vec![b'x'; 64 * 1024]));
        extra_files.push((HOST_LOADER.into(), std::fs::read(HOST_LOADER).unwrap()));
        let opts = TestImageOpts {
            version: format!("{v}.0"),
            variant: v,
            extra_files,
            etc_files: vec![(
                "/etc/changed.conf".into(),
                format!("version {v}\n").into_bytes(),
            )],
            ..Default::default()
        };
        let img = build_test_image(&dir, "latest", &opts).unwrap();
        imgs.push((dir, img));
    }
    std::fs::create_dir(work.path().join("outside")).unwrap();
    std::fs::write(work.path().join("outside/keep"), "keep\n").unwrap();
    World {
        reg: Registry::start().unwrap(),
        fs: LoopFs::new(kind, if kind == FsKind::Xfs { 600 } else { 700 }).unwrap(),
        work,
        imgs,
        esp: false,
    }
}

impl World {
    fn root(&self) -> &Path {
        self.fs.path()
    }
    fn push(&self, v: usize, name: &str) -> String {
        self.reg
            .push_oci(&self.imgs[v - 1].0, "latest", name)
            .unwrap()
    }
    fn cmd(&self) -> Command {
        let mut c = unistore();
        c.env("CONTAINERS_REGISTRIES_CONF", self.reg.registries_conf());
        c.arg("--sysroot").arg(self.root());
        c
    }
    fn install_cmd(&self, src: &str, extra: &[&str]) -> Command {
        let mut c = unistore();
        c.env("CONTAINERS_REGISTRIES_CONF", self.reg.registries_conf());
        c.args(["install", "to-filesystem", "--source-imgref", src])
            .args(extra);
        if self.esp {
            let esp = self.root().join("boot/efi");
            std::fs::create_dir_all(&esp).unwrap();
            c.arg("--esp").arg(esp);
        }
        c.arg(self.root());
        c
    }
    fn ok(&self, args: &[&str]) {
        run_ok(self.cmd().args(args));
    }
    fn outside(&self) -> BTreeMap<PathBuf, (bool, u64)> {
        outside(&[
            &self.work.path().join("outside"),
            Path::new("/run/composefs"),
            self.fs.path().parent().unwrap(),
        ])
        .into_iter()
        .filter(|(p, _)| !p.starts_with(self.fs.path()))
        .collect()
    }
}

/// Makes the host look like an older version wrote it: kernel directories
/// without the `bootc_composefs-` prefix.
fn make_old(root: &Path) {
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
}

/// Makes an ostree host look like one an older version wrote: image refs
/// with every `/` escaped, no layer commits.
fn make_old_ostree(root: &Path) {
    let ostree = |args: &[&str]| {
        let out = Command::new("ostree")
            .arg(format!("--repo={}", root.join("ostree/repo").display()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ostree {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for n in ostree(&["refs", "--list", "ostree/container/blob"]).lines() {
        ostree(&["refs", "--delete", n]);
    }
    for n in ostree(&["refs", "--list", "ostree/container/image"]).lines() {
        let c = ostree(&["rev-parse", n]);
        let old = n
            .replacen("ostree/container/image/", "", 1)
            .replace('/', "_2F_");
        ostree(&[
            "refs",
            "--create",
            &format!("ostree/container/image/{old}"),
            c.trim(),
        ]);
        ostree(&["refs", "--delete", n]);
    }
}

/// Damages a unified host: one composefs object gone (its content is in
/// the store) and the store image's data (manifest, config) gone.
fn damage_unified(root: &Path) {
    use composefs::fsverity::{FsVerityHashValue, Sha512HashValue, compute_verity};
    let data = vec![b'x'; 64 * 1024];
    let hex = compute_verity::<Sha512HashValue>(&data).to_hex();
    let obj = root.join(format!("composefs/objects/{}/{}", &hex[..2], &hex[2..]));
    std::fs::remove_file(&obj).unwrap();
    let images = root.join("composefs/bootc/storage/overlay-images/images.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&images).unwrap()).unwrap();
    for i in v.as_array().unwrap() {
        let id = i["id"].as_str().unwrap();
        std::fs::remove_dir_all(images.parent().unwrap().join(id)).unwrap();
    }
}

/// Prepares the host of `s` and returns the command that reaches its points
/// (as argument lists: `None` = install with these extra arguments).
fn prepare(w: &World, s: Scenario) -> (Vec<String>, bool) {
    let src = w.push(1, "os");
    let install = |extra: &[&str]| run_ok(&mut w.install_cmd(&src, extra));
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let inst = |a: &[&str]| {
        let mut x = vec!["install".to_string(), src.clone()];
        x.extend(v(a));
        x
    };
    match s {
        Scenario::Install | Scenario::InstallEsp => (inst(&[]), true),
        Scenario::ToDisk => unreachable!("walked by walk_to_disk"),
        Scenario::InstallUnified => (inst(&["--unified", "enabled"]), true),
        Scenario::InstallUnifiedCopy => (inst(&["--unified", "enabled-with-copy"]), true),
        Scenario::OstreeInstall => (inst(&["--backend", "ostree", "--unified", "enabled"]), true),
        Scenario::Upgrade => {
            install(&[]);
            w.push(2, "os");
            (v(&["upgrade"]), false)
        }
        Scenario::Switch => {
            install(&[]);
            let other = w.push(1, "other");
            (v(&["switch", &other]), false)
        }
        Scenario::Finalize => {
            install(&[]);
            w.push(2, "os");
            w.ok(&["upgrade"]);
            (v(&["internals", "finalize-staged"]), false)
        }
        Scenario::Rollback => {
            install(&[]);
            w.push(2, "os");
            w.ok(&["upgrade"]);
            w.ok(&["internals", "finalize-staged"]);
            (v(&["rollback"]), false)
        }
        Scenario::Gc => {
            install(&[]);
            for n in [2, 3] {
                w.push(n, "os");
                w.ok(&["upgrade"]);
                w.ok(&["internals", "finalize-staged"]);
            }
            (v(&["internals", "gc"]), false)
        }
        Scenario::Migrate => {
            install(&[]);
            w.push(2, "os");
            w.ok(&["upgrade"]);
            w.ok(&["internals", "finalize-staged"]);
            make_old(w.root());
            (v(&["internals", "gc"]), false)
        }
        Scenario::SetUnified => {
            install(&[]);
            (v(&["image", "set-unified", "full"]), false)
        }
        Scenario::FsckRepair => {
            install(&["--unified", "enabled"]);
            damage_unified(w.root());
            (v(&["internals", "fsck", "images", "--repair"]), false)
        }
        Scenario::OstreeUpgrade => {
            install(&["--backend", "ostree"]);
            w.push(2, "os");
            (v(&["upgrade"]), false)
        }
        Scenario::OstreeRollback => {
            install(&["--backend", "ostree"]);
            w.push(2, "os");
            w.ok(&["upgrade"]);
            (v(&["rollback"]), false)
        }
        Scenario::OstreeGc => {
            // Unified: the gc has a composefs repository to collect too.
            install(&["--backend", "ostree", "--unified", "enabled"]);
            for n in [2, 3] {
                w.push(n, "os");
                w.ok(&["upgrade"]);
            }
            (v(&["internals", "gc"]), false)
        }
        Scenario::OstreeSetUnified => {
            install(&["--backend", "ostree"]);
            (v(&["image", "set-unified", "full"]), false)
        }
        Scenario::OstreeMigrate => {
            // Unified: the layers are on the host, so the migration writes
            // the layer commits.
            install(&["--backend", "ostree", "--unified", "enabled"]);
            make_old_ostree(w.root());
            (v(&["internals", "gc"]), false)
        }
    }
}

fn command(w: &World, args: &[String]) -> Command {
    if args[0] == "install" {
        let extra: Vec<&str> = args[2..].iter().map(String::as_str).collect();
        w.install_cmd(&args[1], &extra)
    } else {
        let mut c = w.cmd();
        c.args(args);
        c
    }
}

#[derive(Clone, Copy, Debug)]
enum Way {
    Kill,
    PowerCut,
}

fn walk(s: Scenario) {
    walk_with(s, s == Scenario::InstallEsp)
}

/// Walks `s`; with `esp`, on a host that boots through systemd-boot from
/// an ESP (entries, kernels, the staged entries there).
fn walk_with(s: Scenario, esp: bool) {
    let kind = if s == Scenario::InstallUnifiedCopy {
        FsKind::Ext4
    } else {
        FsKind::Xfs
    };
    let mut w = world(kind);
    w.esp = esp;
    let t0 = Instant::now();
    let (args, is_install) = prepare(&w, s);
    let snap = w.work.path().join("base.img");
    w.fs.save(&snap).unwrap();
    let before_outside = w.outside();
    let owned: Vec<BuiltImage> = w.imgs.iter().map(|(_, i)| i.clone()).collect();
    let images: BTreeMap<String, &BuiltImage> = owned
        .iter()
        .map(|i| (i.manifest_digest.clone(), i))
        .collect();
    let mut lines = vec![];
    for point in crashpoint::of(s) {
        for way in [Way::Kill, Way::PowerCut] {
            let t = Instant::now();
            w.fs.restore(&snap).unwrap();
            eprintln!("=== {s:?} {point} {way:?}");
            let mut c = command(&w, &args);
            match way {
                Way::Kill => c.env(crashpoint::ENV, point),
                Way::PowerCut => c
                    .env(crashpoint::ENV, format!("powercut:{point}"))
                    .env(crashpoint::POWERCUT_FS_ENV, w.root()),
            };
            let out = c.output().unwrap();
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{point} {way:?}: not reached (the command ended {:?}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            if let Way::PowerCut = way {
                w.fs.remount().unwrap();
            }
            let after = check_host(w.root(), &images, is_install);
            // The interrupted command again.
            let again = run(&mut command(&w, &args));
            let rerun = if again.status.success() {
                "completes"
            } else {
                let err = String::from_utf8_lossy(&again.stderr);
                assert!(
                    is_install && !after.empty && err.contains("already holds a deployment"),
                    "{point} {way:?}: running it again fails: {err}"
                );
                "refused (host exists)"
            };
            let end = check_host(w.root(), &images, false);
            run_ok(w.cmd().args(["internals", "gc"]));
            run_ok(w.cmd().args(["internals", "gc", "--assert-no-op"]));
            assert_eq!(before_outside, w.outside(), "{point} {way:?}: outside ROOT");
            let line = format!(
                "CRASHWALK | {point} | {way:?} | {} | fsck {} | again: {rerun}, {} deployments whole | {:.1}s",
                if after.empty {
                    "no host yet".to_string()
                } else {
                    format!("{} deployments whole", after.mounted)
                },
                if after.repaired.is_empty() {
                    "clean"
                } else {
                    "repaired"
                },
                end.mounted,
                t.elapsed().as_secs_f64()
            );
            eprintln!("{line}");
            lines.push(line);
        }
    }
    let summary = lines.join("\n");
    eprintln!(
        "{summary}\nCRASHWALK {s:?}: {} runs in {:.0}s",
        lines.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Ok(dir) = std::env::var("CRASHWALK_RESULTS") {
        std::fs::write(Path::new(&dir).join(format!("{s:?}.txt")), summary + "\n").unwrap();
    }
}

macro_rules! walks {
    ($($name:ident => $s:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                walk(Scenario::$s);
            }
        )*
    };
}

walks! {
    walk_install => Install,
    walk_install_unified => InstallUnified,
    walk_install_unified_copy => InstallUnifiedCopy,
    walk_upgrade => Upgrade,
    walk_switch => Switch,
    walk_finalize => Finalize,
    walk_rollback => Rollback,
    walk_gc => Gc,
    walk_migrate => Migrate,
    walk_set_unified => SetUnified,
    walk_fsck_repair => FsckRepair,
    walk_ostree_install => OstreeInstall,
    walk_ostree_upgrade => OstreeUpgrade,
    walk_ostree_rollback => OstreeRollback,
    walk_ostree_gc => OstreeGc,
    walk_ostree_set_unified => OstreeSetUnified,
    walk_ostree_migrate => OstreeMigrate,
    walk_install_esp => InstallEsp,
}

// The lifecycle again on hosts whose entries and kernels are on an ESP.
#[test]
fn walk_esp_upgrade() {
    walk_with(Scenario::Upgrade, true);
}
#[test]
fn walk_esp_finalize() {
    walk_with(Scenario::Finalize, true);
}
#[test]
fn walk_esp_rollback() {
    walk_with(Scenario::Rollback, true);
}
#[test]
fn walk_esp_gc() {
    walk_with(Scenario::Gc, true);
}

/// `install to-disk --via-loopback`, killed at each of its points: the
/// target disk image is untouched (the new image is another file, renamed
/// over it last), running it again completes and removes what the killed
/// run left (its loop device, mount and file). No power cut: the disk image
/// under construction is a file of this machine's filesystem, which a
/// power cut leaves either without the new file or with a partial one the
/// next run removes; the target is renamed over only when whole.
#[test]
fn walk_to_disk() {
    let w = world(FsKind::Xfs);
    let src = format!("oci:{}:latest", w.imgs[0].0.display());
    let disk = w.work.path().join("disk.raw");
    let size = 6u64 << 30;
    let to_disk = || {
        let mut c = unistore();
        c.args([
            "install",
            "to-disk",
            "--via-loopback",
            "--filesystem",
            "xfs",
        ])
        .args(["--source-imgref", &src])
        .arg(&disk);
        c
    };
    let mut lines = vec![];
    for point in crashpoint::of(Scenario::ToDisk) {
        let _ = std::fs::remove_file(&disk);
        run_ok(
            Command::new("truncate")
                .arg(format!("--size={size}"))
                .arg(&disk),
        );
        let out = to_disk().env(crashpoint::ENV, point).output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: not reached: {out:?}"
        );
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&disk).unwrap();
        assert_eq!(
            (m.len(), m.blocks()),
            (size, 0),
            "{point}: the target was written"
        );
        let out = run_ok(to_disk().arg("--json"));
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(r["install"]["deployment_id"].is_string(), "{r}");
        let left: Vec<_> = std::fs::read_dir(w.work.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("unistore-new"))
            .collect();
        assert!(left.is_empty(), "{point}: {left:?}");
        let attached = run_ok(Command::new("losetup").arg("-a"));
        assert!(
            !attached.contains(&w.work.path().display().to_string()),
            "{point}: {attached}"
        );
        let line = format!(
            "CRASHWALK | {point} | Kill | target untouched | again: completes, leftovers removed"
        );
        eprintln!("{line}");
        lines.push(line);
    }
    if let Ok(dir) = std::env::var("CRASHWALK_RESULTS") {
        std::fs::write(Path::new(&dir).join("ToDisk.txt"), lines.join("\n") + "\n").unwrap();
    }
}
