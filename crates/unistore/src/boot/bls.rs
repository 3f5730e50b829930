//! BLS Type 1 boot entries and the kernel/initrd pairs they name.
//!
//! Entries are the truth of a host: a deployment exists for the boot menu
//! exactly when an entry names it with `composefs=<id>` in its options.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cap_std_ext::cap_std::fs::Dir;
use composefs::tree::RegularFile;
use sha2::{Digest, Sha256};

use crate::fs::reflink::Tally;
use crate::stores::composefs_repo::{ObjectId, Repo};
use crate::sysroot::{KERNEL_DIR_PREFIX, Sysroot};
use crate::util;

/// One BLS Type 1 entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    /// File name under `loader/entries/`.
    pub file_name: String,
    /// `title`.
    pub title: String,
    /// `version`.
    pub version: String,
    /// `sort-key`.
    pub sort_key: Option<String>,
    /// `linux` path as the boot loader sees it.
    pub linux: String,
    /// `initrd` path as the boot loader sees it.
    pub initrd: String,
    /// Kernel arguments.
    pub options: Vec<String>,
}

impl BlsEntry {
    /// Parses an entry file.
    pub fn parse(file_name: &str, text: &str) -> Result<Self> {
        let mut e = BlsEntry {
            file_name: file_name.to_string(),
            title: String::new(),
            version: String::new(),
            sort_key: None,
            linux: String::new(),
            initrd: String::new(),
            options: vec![],
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let v = v.trim();
            match k {
                "title" => e.title = v.into(),
                "version" => e.version = v.into(),
                "sort-key" => e.sort_key = Some(v.into()),
                "linux" => e.linux = v.into(),
                "initrd" => e.initrd = v.into(),
                "options" => e.options.extend(v.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        if e.linux.is_empty() {
            bail!("boot entry {file_name} has no linux line");
        }
        Ok(e)
    }

    /// Renders the entry file.
    pub fn render(&self) -> String {
        let mut s = format!("title {}\nversion {}\n", self.title, self.version);
        if let Some(k) = &self.sort_key {
            s.push_str(&format!("sort-key {k}\n"));
        }
        s.push_str(&format!(
            "linux {}\ninitrd {}\noptions {}\n",
            self.linux,
            self.initrd,
            self.options.join(" ")
        ));
        s
    }

    /// The deployment id named by `composefs=<id>` or `composefs=?<id>`.
    pub fn deployment_id(&self) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix("composefs="))
            .map(|v| v.trim_start_matches('?'))
    }

    /// Whether the entry allows a missing fs-verity (`composefs=?<id>`).
    pub fn missing_verity_allowed(&self) -> bool {
        self.options.iter().any(|o| o.starts_with("composefs=?"))
    }

    /// Whether this is the primary (default) entry.
    pub fn is_primary(&self) -> bool {
        match &self.sort_key {
            Some(k) => k.ends_with("-0"),
            None => self.file_name.ends_with("-1.conf"),
        }
    }

    /// The kernel directory under `boot/` this entry uses, if it follows
    /// the `<prefix>/<dir>/vmlinuz` shape.
    pub fn kernel_dir(&self) -> Option<&str> {
        let p = self.linux.trim_end_matches("/vmlinuz");
        p.rsplit('/').next().filter(|s| !s.is_empty())
    }
}

impl BlsEntry {
    /// The same entry moved to the primary or the secondary position: the
    /// `-1.conf`/`-0.conf` file name suffix and the `-0`/`-1` sort-key
    /// suffix follow.
    pub fn at_position(&self, primary: bool) -> Self {
        let mut e = self.clone();
        let stem = e.file_name.trim_end_matches(".conf");
        let stem = stem
            .strip_suffix("-1")
            .or_else(|| stem.strip_suffix("-0"))
            .unwrap_or(stem);
        e.file_name = format!("{stem}-{}.conf", if primary { 1 } else { 0 });
        if let Some(k) = &e.sort_key {
            let base = k
                .strip_suffix("-0")
                .or_else(|| k.strip_suffix("-1"))
                .unwrap_or(k);
            e.sort_key = Some(format!("{base}-{}", if primary { 0 } else { 1 }));
        }
        e
    }
}

/// Writes `entries` (first = primary) as the complete content of the loader
/// directory `rel_dir` (relative to the sysroot), atomically: a new
/// directory is filled and fsynced beside it, then exchanged with the old
/// one (or renamed into place), then the old one is removed.
pub fn replace_entries_dir(sysroot: &Sysroot, rel_dir: &str, entries: &[BlsEntry]) -> Result<()> {
    let dir = sysroot.boot_root();
    let tmp = format!("{rel_dir}.tmp");
    util::remove_all(dir, &tmp)?;
    dir.create_dir_all(&tmp)?;
    for (i, e) in entries.iter().enumerate() {
        let e = e.at_position(i == 0);
        util::atomic_write(dir, format!("{tmp}/{}", e.file_name), e.render().as_bytes())?;
    }
    util::fsync_dir(dir, Some(Path::new(&tmp)))?;
    if dir.try_exists(rel_dir)? {
        exchange(dir, &tmp, rel_dir)?;
        util::remove_all(dir, &tmp)?;
    } else {
        dir.rename(&tmp, dir, rel_dir)?;
    }
    let parent = Path::new(rel_dir).parent();
    util::fsync_dir(dir, parent)?;
    Ok(())
}

/// Atomically exchanges two paths below `dir` (renameat2 EXCHANGE; vfat
/// has it since Linux 6.0, so an ESP's entries swap as atomically as on
/// XFS).
pub fn exchange(dir: &Dir, a: &str, b: &str) -> Result<()> {
    rustix::fs::renameat_with(dir, a, dir, b, rustix::fs::RenameFlags::EXCHANGE)
        .with_context(|| format!("exchanging {a} and {b}"))?;
    Ok(())
}

/// `bootc_<os_id>-<version>-<1|0>.conf` ('-' in the os id written '_').
pub fn entry_file_name(os_id: &str, version: &str, primary: bool) -> String {
    let os = os_id.replace('-', "_");
    let version = version.replace(['/', ' '], "_");
    format!("bootc_{os}-{version}-{}.conf", if primary { 1 } else { 0 })
}

/// `bootc-<os_id>-<0|1>`: the primary sorts first.
pub fn sort_key(os_id: &str, primary: bool) -> String {
    format!("bootc-{os_id}-{}", if primary { 0 } else { 1 })
}

/// Reads every entry of a loader entries directory (relative to the
/// sysroot's boot root), primary first.
pub fn read_entries(sysroot: &Sysroot, rel_dir: &str) -> Result<Vec<BlsEntry>> {
    let mut out = vec![];
    for name in util::list_names(sysroot.boot_root(), rel_dir)? {
        if !name.ends_with(".conf") {
            continue;
        }
        let path = Path::new(rel_dir).join(&name);
        let text = sysroot
            .boot_root()
            .read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        out.push(BlsEntry::parse(&name, &text)?);
    }
    out.sort_by(|a, b| {
        (!a.is_primary(), &a.sort_key, &b.file_name).cmp(&(
            !b.is_primary(),
            &b.sort_key,
            &a.file_name,
        ))
    });
    Ok(out)
}

/// The kernel directory name of a deployment under `boot/`.
pub fn kernel_dir_name(id: &str) -> String {
    format!("{KERNEL_DIR_PREFIX}{id}")
}

/// The kernel and initrd of an image.
pub struct KernelPair {
    /// Kernel version (directory name under `/usr/lib/modules`).
    pub kver: String,
    vmlinuz: RegularFile<ObjectId>,
    initrd: RegularFile<ObjectId>,
}

/// Finds the kernel and initrd under `/usr/lib/modules/<kver>/` of an image.
pub fn find_kernel(fs: &composefs::tree::FileSystem<ObjectId>) -> Result<KernelPair> {
    let found = composefs_boot::bootloader::UsrLibModulesVmlinuz::load_all(fs)
        .context("looking for /usr/lib/modules/<kver>/vmlinuz")?;
    let mut with_initrd = found.into_iter().filter(|k| k.initramfs.is_some());
    let Some(k) = with_initrd.next() else {
        bail!("the image has no kernel: no /usr/lib/modules/<kver>/vmlinuz with an initramfs.img");
    };
    if with_initrd.next().is_some() {
        tracing::warn!("image has several kernels; using {}", k.kver);
    }
    Ok(KernelPair {
        kver: k.kver.to_string(),
        vmlinuz: k.vmlinuz,
        initrd: k.initramfs.expect("filtered"),
    })
}

/// Hex SHA-256 of the kernel followed by the initrd, as the origin records it.
pub fn boot_digest(pair: &KernelPair, repo: &Repo) -> Result<String> {
    let mut h = Sha256::new();
    for f in [&pair.vmlinuz, &pair.initrd] {
        let mut r = crate::stores::composefs_repo::open_file_content(f, repo)?;
        std::io::copy(&mut r, &mut HashWriter(&mut h))?;
    }
    Ok(hex::encode(h.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `boot/<dir_name>/{vmlinuz,initrd}` through a temporary directory
/// renamed into place, so a kernel dir either is whole or is absent.
///
/// Each file is a reflink of the composefs object holding its content when
/// `boot` is on the repository's filesystem and that filesystem has
/// reflinks (no data written: the file shares the object's extents, and
/// copy-on-write keeps the two independent), else a copy (a separate ESP,
/// ext4). Counts what it did in `tally`.
pub fn write_kernel_dir(
    boot: &Dir,
    dir_name: &str,
    pair: &KernelPair,
    repo: &Repo,
    tally: &mut Tally,
) -> Result<()> {
    if boot.try_exists(dir_name)? {
        return Ok(());
    }
    let tmp = format!(".tmp-{dir_name}");
    util::remove_all(boot, &tmp)?;
    boot.create_dir_all(&tmp)?;
    for (name, f) in [("vmlinuz", &pair.vmlinuz), ("initrd", &pair.initrd)] {
        let out = boot.create(format!("{tmp}/{name}"))?.into_std();
        crate::stores::composefs_repo::write_file_content(f, repo, &out, tally)
            .with_context(|| format!("writing {name}"))?;
        out.sync_all()?;
    }
    util::fsync_dir(boot, Some(Path::new(&tmp)))?;
    boot.rename(&tmp, boot, dir_name)?;
    util::fsync_dir(boot, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_id() {
        let e = BlsEntry {
            file_name: entry_file_name("test-os", "1.0", true),
            title: "Test OS 1.0".into(),
            version: "1.0".into(),
            sort_key: Some(sort_key("test-os", true)),
            linux: "/boot/bootc_composefs-abc/vmlinuz".into(),
            initrd: "/boot/bootc_composefs-abc/initrd".into(),
            options: vec!["composefs=?abc".into(), "rw".into()],
        };
        assert_eq!(e.file_name, "bootc_test_os-1.0-1.conf");
        let p = BlsEntry::parse(&e.file_name, &e.render()).unwrap();
        assert_eq!(p, e);
        assert_eq!(p.deployment_id(), Some("abc"));
        assert!(p.missing_verity_allowed());
        assert!(p.is_primary());
        assert_eq!(p.kernel_dir(), Some("bootc_composefs-abc"));
    }

    #[test]
    fn positions() {
        let e = BlsEntry::parse(
            "bootc_x-1.0-1.conf",
            "title x\nversion 1\nsort-key bootc-x-0\nlinux /a/vmlinuz\ninitrd /a/initrd\noptions composefs=?ab\n",
        )
        .unwrap();
        let s = e.at_position(false);
        assert_eq!(s.file_name, "bootc_x-1.0-0.conf");
        assert_eq!(s.sort_key.as_deref(), Some("bootc-x-1"));
        assert!(!s.is_primary());
        assert_eq!(s.at_position(true), e);
        let odd = BlsEntry {
            file_name: "old.conf".into(),
            sort_key: None,
            ..e.clone()
        };
        assert_eq!(odd.at_position(true).file_name, "old-1.conf");
    }

    #[test]
    fn entry_without_linux_is_an_error() {
        assert!(BlsEntry::parse("x.conf", "title x\n").is_err());
    }
}
