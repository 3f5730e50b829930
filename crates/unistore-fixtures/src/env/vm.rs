//! Booting an installed disk image in QEMU (TCG), playing the boot loader:
//! the primary BLS Type 1 entry of the installed root gives the kernel, the
//! initrd and the kernel command line (docs/boot.md).
//!
//! The entry is read here with its own small parser (not unistore's), so a
//! boot checks what unistore wrote the way a boot loader would read it.

use super::cmd::run;
use anyhow::{Context, Result, bail};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a boot loader takes from the primary entry.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The entry's file name under `boot/loader/entries/`.
    pub entry_file: String,
    /// The kernel, copied out of the disk.
    pub kernel: PathBuf,
    /// The initrd, copied out of the disk.
    pub initrd: PathBuf,
    /// The entry's `options`.
    pub options: Vec<String>,
}

impl BootSpec {
    /// The `composefs=` id of the options (without a `?`).
    pub fn composefs_id(&self) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix("composefs="))
            .map(|v| v.trim_start_matches('?'))
    }
}

/// One entry file's keys.
#[derive(Debug, Default)]
struct Entry {
    file: String,
    sort_key: String,
    version: String,
    linux: String,
    initrd: String,
    options: Vec<String>,
}

fn parse_entry(file: &str, text: &str) -> Entry {
    let mut e = Entry {
        file: file.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        let (k, v) = line
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((line, ""));
        let v = v.trim();
        match k {
            "sort-key" => e.sort_key = v.to_string(),
            "version" => e.version = v.to_string(),
            "linux" => e.linux = v.to_string(),
            "initrd" => e.initrd = v.to_string(),
            "options" => e.options.extend(v.split_whitespace().map(str::to_string)),
            _ => {}
        }
    }
    e
}

/// Compares two strings as versions (runs of digits by value), as the Boot
/// Loader Specification orders `version` fields and file names.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = vec![];
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let o = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

/// The order a BLS boot loader shows entries in: entries with a sort-key
/// first, by sort-key; then by version, highest first; then by file name,
/// highest version first (libostree's `ostree-<N>-<os>.conf`, whose primary
/// has the highest N and `version`, have no sort-key).
fn bls_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    a.sort_key
        .is_empty()
        .cmp(&b.sort_key.is_empty())
        .then_with(|| a.sort_key.cmp(&b.sort_key))
        .then_with(|| version_cmp(&b.version, &a.version))
        .then_with(|| version_cmp(&b.file, &a.file))
}

/// Reads the primary entry of the root mounted at `root` (the one a BLS boot
/// loader shows first, [`bls_order`]) and copies its kernel and initrd into
/// `out_dir`.
pub fn primary_entry(root: &Path, out_dir: &Path) -> Result<BootSpec> {
    let dir = root.join("boot/loader/entries");
    let mut entries = vec![];
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") {
            entries.push(parse_entry(&name, &std::fs::read_to_string(e.path())?));
        }
    }
    entries.sort_by(bls_order);
    let Some(e) = entries.into_iter().next() else {
        bail!("no boot entry in {}", dir.display());
    };
    if e.linux.is_empty() || e.initrd.is_empty() {
        bail!("boot entry {} has no linux or no initrd line", e.file);
    }
    std::fs::create_dir_all(out_dir)?;
    // Paths are the boot file system's: the root when they start with
    // /boot (one file system, as unistore writes them), else /boot as its
    // own partition would be (libostree without `sysroot.bootprefix`).
    let copy = |p: &str, name: &str| -> Result<PathBuf> {
        let rel = p.trim_start_matches('/');
        let src = if rel.starts_with("boot/") {
            root.join(rel)
        } else {
            root.join("boot").join(rel)
        };
        let dst = out_dir.join(name);
        std::fs::copy(&src, &dst)
            .with_context(|| format!("boot entry {}: copying {}", e.file, src.display()))?;
        Ok(dst)
    };
    Ok(BootSpec {
        kernel: copy(&e.linux, "vmlinuz")?,
        initrd: copy(&e.initrd, "initrd")?,
        options: e.options.clone(),
        entry_file: e.file,
    })
}

/// How to run one boot.
#[derive(Debug, Clone)]
pub struct VmOpts {
    /// Guest memory.
    pub memory_mib: u32,
    /// Virtual CPUs (TCG runs one host thread per CPU).
    pub cpus: u32,
    /// Kill the VM after this long.
    pub timeout: Duration,
    /// Extra disks after the root disk (raw images, `/dev/vdb`, ...).
    pub extra_disks: Vec<PathBuf>,
    /// Arguments appended after the entry's options, `console=ttyS0` and
    /// `panic=1` (the initramfs reboots, and so QEMU exits, on a failure).
    pub extra_append: Vec<String>,
    /// Where the serial console goes (created or truncated).
    pub log: PathBuf,
    /// Serial console on this process's stdin/stdout instead of `log`.
    pub interactive: bool,
}

impl VmOpts {
    /// Defaults for a TCG boot logging to `log`.
    pub fn new(log: &Path) -> Self {
        VmOpts {
            memory_mib: 2048,
            cpus: 2,
            timeout: Duration::from_secs(600),
            extra_disks: vec![],
            extra_append: vec![],
            log: log.to_path_buf(),
            interactive: false,
        }
    }
}

/// How a boot ended.
#[derive(Debug)]
pub struct VmRun {
    /// The serial console, whole.
    pub console: String,
    /// QEMU exited by itself (the guest powered off or rebooted) before the
    /// timeout.
    pub exited: bool,
    /// From QEMU's start to its exit (or to the kill).
    pub elapsed: Duration,
    /// The serial log file (kept).
    pub log: PathBuf,
}

impl VmRun {
    /// The last `n` lines of the console.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The lines of the console that start with `prefix` (after any
    /// systemd/kernel noise before it on the same line).
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.console
            .lines()
            .filter_map(|l| l.find(prefix).map(|i| l[i..].trim_end().to_string()))
            .collect()
    }

    /// The guest kernel oopsed or panicked before it ran `/init`.
    pub fn crashed_before_init(&self) -> bool {
        let upto = self
            .console
            .find("Run /init as init process")
            .unwrap_or(self.console.len());
        let early = &self.console[..upto];
        early.contains("Kernel panic") || early.contains("Oops:")
    }
}

/// The kernel command line a boot of `spec` gets.
pub fn append_line(spec: &BootSpec, opts: &VmOpts) -> String {
    let mut args = spec.options.clone();
    args.extend(["console=ttyS0".to_string(), "panic=1".to_string()]);
    args.extend(opts.extra_append.iter().cloned());
    args.join(" ")
}

/// Boots `disk` (raw, the first virtio disk) with `spec` in
/// `qemu-system-x86_64 -accel tcg` and waits for QEMU to exit or for the
/// timeout. Errors only when QEMU cannot run; how the guest fared is in
/// the returned console.
///
/// QEMU 7.2's TCG now and then crashes the guest kernel in early boot (an
/// `int3` Oops in `sched_clock_cpu`, docs/boot.md). Before `/init` runs
/// nothing has read or written the disk, and a kernel that cannot boot
/// crashes again: such a boot is run once more, its console kept beside
/// the log as `<log>.crashed`.
pub fn boot(disk: &Path, spec: &BootSpec, opts: &VmOpts) -> Result<VmRun> {
    boot_how(disk, Some(spec), opts)
}

/// OVMF's code (read-only) and the template of its variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store template (each boot gets its own copy).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Boots `disk` through firmware, as a real machine: QEMU q35 with OVMF
/// (package ovmf), no `-kernel`: the firmware finds the ESP's
/// `EFI/BOOT/BOOTX64.EFI` (no boot variables: a fresh copy of the variable
/// store), systemd-boot picks the entry. `opts.extra_append` cannot apply
/// (the entry's options are what the kernel gets) and must be empty.
pub fn boot_uefi(disk: &Path, opts: &VmOpts) -> Result<VmRun> {
    if !opts.extra_append.is_empty() {
        bail!(
            "a boot through firmware takes the entry's kernel arguments; extra ones cannot be appended"
        );
    }
    boot_how(disk, None, opts)
}

fn boot_how(disk: &Path, spec: Option<&BootSpec>, opts: &VmOpts) -> Result<VmRun> {
    let first = boot_once(disk, spec, opts)?;
    if !first.crashed_before_init() {
        return Ok(first);
    }
    let kept = first.log.with_extension("log.crashed");
    std::fs::rename(&first.log, &kept)?;
    eprintln!(
        "the guest kernel crashed before /init (console in {}): booting again",
        kept.display()
    );
    boot_once(disk, spec, opts)
}

fn boot_once(disk: &Path, spec: Option<&BootSpec>, opts: &VmOpts) -> Result<VmRun> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // Without CMPXCHG16B: Debian 12's QEMU 7.2 TCG runs the 6.12 kernel's
    // SLUB fast path (cmpxchg16b with a %gs prefix) into a double fault at
    // boot, with the default CPU model and with `max` alike (docs/boot.md).
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max,-cx16",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .args(["-m", &opts.memory_mib.to_string()])
    .args(["-smp", &opts.cpus.to_string()]);
    match spec {
        Some(spec) => {
            cmd.arg("-kernel")
                .arg(&spec.kernel)
                .arg("-initrd")
                .arg(&spec.initrd)
                .args(["-append", &append_line(spec, opts)]);
        }
        None => {
            let vars = opts.log.with_extension("ovmf-vars.fd");
            std::fs::copy(OVMF_VARS, &vars).with_context(|| {
                format!("copying {OVMF_VARS} (is ovmf installed? scripts/setup)")
            })?;
            cmd.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
        }
    }
    for d in std::iter::once(disk).chain(opts.extra_disks.iter().map(PathBuf::as_path)) {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", d.display()));
    }
    if opts.interactive {
        cmd.args(["-nographic", "-serial", "mon:stdio"]);
    } else {
        cmd.args(["-display", "none", "-monitor", "none", "-serial"])
            .arg(format!("file:{}", opts.log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (is qemu-system-x86 installed? scripts/setup)")?;
    let exited = loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("qemu-system-x86_64 failed ({status}): {}", err.trim());
            }
            break true;
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let elapsed = start.elapsed();
    let console = if opts.interactive {
        String::new()
    } else {
        read_lossy(&opts.log)?
    };
    Ok(VmRun {
        console,
        exited,
        elapsed,
        log: opts.log.clone(),
    })
}

fn read_lossy(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    f.seek(SeekFrom::Start(0))?;
    let mut b = vec![];
    f.read_to_end(&mut b)?;
    Ok(String::from_utf8_lossy(&b).replace('\r', ""))
}

/// A raw ext4 disk image labelled `label` holding a copy of `content`
/// (mkfs.ext4 -d: no mount needed), sized for it.
pub fn ext4_disk_from_dir(content: &Path, label: &str, image: &Path) -> Result<()> {
    let du = run(Command::new("du").args(["-sm"]).arg(content))?;
    let mib: u64 = du
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("du printed no size")?;
    let size = mib + mib / 4 + 64;
    let _ = std::fs::remove_file(image);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(content)
        .arg(image)
        .arg(format!("{size}M")))?;
    Ok(())
}

/// Reads the primary entry of a disk image (mounted read-only for the
/// moment on a loop device) and copies its kernel and initrd to `out_dir`.
pub fn primary_entry_of_image(image: &Path, out_dir: &Path) -> Result<BootSpec> {
    let mnt = tempfile::Builder::new()
        .prefix("unistore-vm-")
        .tempdir_in("/var/tmp")?;
    let dev = run(Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(image))?;
    let dev = dev.trim().to_string();
    let r = run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(&dev)
        .arg(mnt.path()))
    .and_then(|_| {
        let spec = primary_entry(mnt.path(), out_dir);
        run(Command::new("umount").arg(mnt.path()))?;
        spec
    });
    let _ = run(Command::new("losetup").arg("-d").arg(&dev));
    r
}

#[cfg(test)]
mod bls_tests {
    use super::*;

    #[test]
    fn entries_sort_as_a_bls_boot_loader_shows_them() {
        let e = |file: &str, sort_key: &str, version: &str| Entry {
            file: file.into(),
            sort_key: sort_key.into(),
            version: version.into(),
            ..Default::default()
        };
        // libostree: no sort-key, the primary has the highest N.
        let mut v = [
            e("ostree-1-default.conf", "", "1"),
            e("ostree-2-default.conf", "", "2"),
        ];
        v.sort_by(bls_order);
        assert_eq!(v[0].file, "ostree-2-default.conf");
        // composefs (bootc): sort-keys, smallest first, before key-less ones.
        let mut v = [
            e("z.conf", "", "9"),
            e("bootc_os-2-1.conf", "bootc-os-1", "2"),
            e("bootc_os-1-1.conf", "bootc-os-0", "1"),
        ];
        v.sort_by(bls_order);
        assert_eq!(v[0].file, "bootc_os-1-1.conf");
        assert_eq!(v[2].file, "z.conf");
        assert_eq!(version_cmp("10", "9"), std::cmp::Ordering::Greater);
        assert_eq!(
            version_cmp("ostree-10-a", "ostree-9-a"),
            std::cmp::Ordering::Greater
        );
    }
}

#[cfg(test)]
mod boot_tests {
    use super::*;

    /// Only a crash before `/init` is booted again: a panic after it (a
    /// root the initramfs refuses, `panic=1`) is the boot's own result.
    #[test]
    fn only_an_early_kernel_crash_is_booted_again() {
        let run = |console: &str| VmRun {
            console: console.to_string(),
            exited: true,
            elapsed: Duration::from_secs(1),
            log: PathBuf::from("/dev/null"),
        };
        assert!(
            run("[2.86] Oops: int3: 0000 [#1]\n[2.87] Kernel panic - not syncing\n")
                .crashed_before_init()
        );
        assert!(!run(
            "[8.1] Run /init as init process\n[9.0] Kernel panic - not syncing: Attempted to kill init!\n"
        )
        .crashed_before_init());
        assert!(!run("[8.1] Run /init as init process\nUNISTORE-BOOT-OK\n").crashed_before_init());
    }
}
