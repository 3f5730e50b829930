//! The generated test image: small, deterministic, bootable-looking, multi-layer.
//!
//! Layer plan (so that upgrade tests see realistic sharing):
//! 1. `base` — independent of every option: the root skeleton (`/usr /boot /sysroot /etc
//!    /var /tmp /run ...`, merged-usr symlinks), small/empty/odd-mode/odd-owner files, a
//!    5 MiB pseudo-random file, hard links, symlinks, an empty dir, a sticky dir, xattrs,
//!    and the content that later layers delete (whiteout) or hide (opaque dir).
//!    Its digest is the same for every image built by this module.
//! 2. `kernel` — depends on `variant` and `with_kernel`: `/usr/lib/modules/6.1.0-test/
//!    {vmlinuz,initramfs.img}`, a variant marker, and a 9 MiB file whose content is the
//!    same for every variant (so objects are shared even when layers are not).
//! 3. `config` — depends on `version`, `os_id`, `variant`, `etc_files`: os-release, a
//!    whiteout, an opaque directory, an overwritten file, `/etc/unistore-test.conf`.
//! 4. `extra` — only when `extra_files` is non-empty or `payload_mib` is set.

use super::BuiltImage;
use super::layer::{LayerTar, Meta};
use super::oci::ImageWriter;
use crate::rng::PseudoRandom;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The kernel version directory of generated images.
pub const TEST_KVER: &str = "6.1.0-test";

/// Directory holding most generated test content.
pub const TEST_DATA_DIR: &str = "/usr/share/unistore-test";

/// A valid `security.capability` value (VFS_CAP_REVISION_2): `cap_net_raw=ep`.
pub const CAP_NET_RAW_EP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic: revision 2, effective
    0x00, 0x20, 0x00, 0x00, // permitted (low): bit 13 = CAP_NET_RAW
    0x00, 0x00, 0x00, 0x00, // inheritable (low)
    0x00, 0x00, 0x00, 0x00, // permitted (high)
    0x00, 0x00, 0x00, 0x00, // inheritable (high)
];

const MIB: u64 = 1024 * 1024;

/// Where [`TestImageOpts::payload_mib`] files go.
pub const PAYLOAD_DIR: &str = "/usr/share/unistore-payload";
const PAYLOAD_CHUNK_MIB: u64 = 8;

/// Options of [`build_test_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImageOpts {
    /// Goes to `VERSION_ID` and the `org.opencontainers.image.version` label.
    pub version: String,
    /// Goes to `ID` in os-release.
    pub os_id: String,
    /// Whether `/usr/lib/modules/6.1.0-test/{vmlinuz,initramfs.img}` exist.
    pub with_kernel: bool,
    /// Changes the kernel, initramfs and a few small files, so two variants differ.
    pub variant: u32,
    /// Extra regular files `(absolute path, content)` in a last layer of their own; missing
    /// parent directories are created (0755 root). Content starting with `\x7fELF` or `#!`
    /// gets mode 0755, anything else 0644.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// Files under `/etc` (`"name"`, `"sub/name"` or `"/etc/name"`), mode 0644, in the
    /// config layer.
    pub etc_files: Vec<(String, Vec<u8>)>,
    /// MiB of pseudo-random payload in the last layer, as 8 MiB files
    /// `/usr/share/unistore-payload/blob-NNN.bin` (streamed, the same for every variant);
    /// 0 for none. For benchmark-sized images.
    pub payload_mib: u64,
}

impl Default for TestImageOpts {
    fn default() -> Self {
        Self {
            version: "1.0".into(),
            os_id: "testos".into(),
            with_kernel: true,
            variant: 1,
            extra_files: Vec::new(),
            etc_files: Vec::new(),
            payload_mib: 0,
        }
    }
}

/// Build the test image into `oci_dir` (created if needed) under `tag`.
pub fn build_test_image(oci_dir: &Path, tag: &str, opts: &TestImageOpts) -> Result<BuiltImage> {
    let mut w = ImageWriter::new(
        oci_dir,
        &opts.version,
        &[("containers.bootc", "1")],
        flate2::Compression::fast(),
    )?;
    let mut dirs = add_base_layers(&mut w, opts)?;
    if !opts.extra_files.is_empty() || opts.payload_mib > 0 {
        w.add_layer("unistore-fixture: extra files", |t| {
            extra_layer(t, opts, &mut dirs)
        })?;
    }
    w.finish(tag)
}

/// The first three layers of the test image (base, kernel, config) on `w`; returns the
/// directories they emitted, for [`ensure_dirs`] in later layers.
pub(crate) fn add_base_layers(w: &mut ImageWriter, opts: &TestImageOpts) -> Result<Known> {
    let mut dirs = Known::new();
    w.add_layer("unistore-fixture: base", |t| base_layer(t, &mut dirs))?;
    w.add_layer("unistore-fixture: kernel", |t| kernel_layer(t, opts))?;
    w.add_layer("unistore-fixture: config", |t| {
        config_layer(t, opts, &mut dirs)
    })?;
    Ok(dirs)
}

pub(crate) type Tar<'a> = LayerTar<&'a mut dyn Write>;

fn xattr(name: &str, value: &[u8]) -> (String, Vec<u8>) {
    (name.to_string(), value.to_vec())
}

fn random_file(t: &mut Tar, path: &str, seed: &str, size: u64) -> Result<()> {
    t.file_from_reader(
        path,
        Meta::root(0o644),
        size,
        PseudoRandom::new(seed, size),
        &[],
    )
}

/// Paths the generator has emitted so far: `true` for directories, `false` for symlinks.
pub(crate) type Known = BTreeMap<String, bool>;

/// Emit `dir` (0755 root) and its missing ancestors, remembering them in `dirs`.
pub(crate) fn ensure_dirs(t: &mut Tar, dirs: &mut Known, dir: &str) -> Result<()> {
    let mut cur = String::new();
    for comp in dir.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(comp);
        match dirs.get(&cur) {
            Some(true) => {}
            Some(false) => {
                anyhow::bail!("{dir}: {cur} is a symlink in the image; use the path it points to")
            }
            None => {
                dirs.insert(cur.clone(), true);
                t.dir(&cur, Meta::root(0o755))?;
            }
        }
    }
    Ok(())
}

fn base_layer(t: &mut Tar, dirs: &mut Known) -> Result<()> {
    let d = TEST_DATA_DIR;
    for p in [
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib/modules",
        "/usr/share",
        d,
        "/boot",
        "/sysroot",
        "/etc",
        "/var",
        "/var/lib",
        "/run",
        "/dev",
        "/proc",
        "/sys",
        "/root",
    ] {
        ensure_dirs(t, dirs, p)?;
    }
    for p in ["/tmp", "/var/tmp"] {
        dirs.insert(p.to_string(), true);
        t.dir(p, Meta::root(0o1777))?;
    }
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        dirs.insert(link.to_string(), false);
        t.symlink(link, target)?;
    }

    // /etc content.
    t.symlink("/etc/os-release", "../usr/lib/os-release")?;
    t.file("/etc/hostname", Meta::root(0o644), b"unistore-test\n")?;
    t.file(
        "/etc/passwd",
        Meta::root(0o644),
        b"root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/var/home/tester:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    t.file(
        "/etc/group",
        Meta::root(0o644),
        b"root:x:0:\ntester:x:1000:\nnogroup:x:65534:\n",
    )?;
    t.file(
        "/etc/shadow",
        Meta::root(0o600),
        b"root:*:19000:0:99999:7:::\n",
    )?;

    // Small files and odd modes.
    t.file(&format!("{d}/empty"), Meta::root(0o644), b"")?;
    t.file(&format!("{d}/small.txt"), Meta::root(0o644), b"hello\n")?;
    t.file(&format!("{d}/readonly-0444"), Meta::root(0o444), b"ro\n")?;
    t.file(&format!("{d}/private-0600"), Meta::root(0o600), b"secret\n")?;
    t.file(&format!("{d}/empty-0600"), Meta::root(0o600), b"")?;
    t.file(
        "/usr/bin/setuid-tool",
        Meta::root(0o4755),
        b"#!/bin/false\n# setuid\n",
    )?;
    t.file(
        "/usr/bin/setgid-tool",
        Meta::root(0o2755).owned(0, 65534),
        b"#!/bin/false\n# setgid\n",
    )?;

    // Owners.
    t.dir(&format!("{d}/owned"), Meta::root(0o750).owned(1000, 1000))?;
    t.file(
        &format!("{d}/owned/by-1000"),
        Meta::root(0o640).owned(1000, 1000),
        b"mine\n",
    )?;
    t.file(
        &format!("{d}/owned/by-nobody"),
        Meta::root(0o644).owned(65534, 65534),
        b"nobody's\n",
    )?;

    // Directories: empty, sticky.
    t.dir(&format!("{d}/empty-dir"), Meta::root(0o755))?;
    t.dir(&format!("{d}/sticky-1777"), Meta::root(0o1777))?;

    // A large pseudo-random file.
    random_file(t, &format!("{d}/large-5m.bin"), "large-5m", 5 * MIB)?;

    // Hard links: three names for one file, one of them in another directory.
    t.file(
        &format!("{d}/hardlink-a"),
        Meta::root(0o644),
        b"one inode, three names\n",
    )?;
    t.hardlink(
        &format!("{d}/hardlink-b"),
        &format!("{d}/hardlink-a"),
        Meta::root(0o644),
    )?;
    t.hardlink(
        "/usr/bin/hardlink-c",
        &format!("{d}/hardlink-a"),
        Meta::root(0o644),
    )?;

    // Symlinks: relative, absolute, to a directory, dangling.
    t.symlink(&format!("{d}/link-relative"), "small.txt")?;
    t.symlink(&format!("{d}/link-absolute"), &format!("{d}/small.txt"))?;
    t.symlink(&format!("{d}/link-dir"), "empty-dir")?;
    t.symlink(&format!("{d}/link-dangling"), "does-not-exist")?;

    // Xattrs: a capability (kept by composefs) and user.* ones (dropped by composefs).
    t.file_from_reader(
        "/usr/bin/cap-tool",
        Meta::root(0o755),
        22,
        &b"#!/bin/false\n# caps  \n"[..],
        &[
            xattr("security.capability", &CAP_NET_RAW_EP),
            xattr("user.unistore.test", b"cap-tool"),
        ],
    )?;
    t.file_from_reader(
        &format!("{d}/xattr-user"),
        Meta::root(0o644),
        6,
        &b"xattr\n"[..],
        &[
            xattr("user.unistore.a", b"alpha"),
            xattr("user.unistore.b", b"\x00binary\xff"),
        ],
    )?;

    // Content that the config layer deletes, hides or overwrites.
    t.file(
        &format!("{d}/doomed"),
        Meta::root(0o644),
        b"whited out later\n",
    )?;
    t.dir(&format!("{d}/doomed-dir"), Meta::root(0o755))?;
    t.file(
        &format!("{d}/doomed-dir/inner"),
        Meta::root(0o644),
        b"gone with its dir\n",
    )?;
    t.dir(&format!("{d}/opaque"), Meta::root(0o755))?;
    t.file(&format!("{d}/opaque/old-1"), Meta::root(0o644), b"old 1\n")?;
    t.file(&format!("{d}/opaque/old-2"), Meta::root(0o644), b"old 2\n")?;
    t.dir(&format!("{d}/opaque/old-sub"), Meta::root(0o755))?;
    t.file(
        &format!("{d}/opaque/old-sub/deep"),
        Meta::root(0o644),
        b"deep\n",
    )?;
    t.file(&format!("{d}/overwritten"), Meta::root(0o644), b"old\n")?;
    Ok(())
}

fn kernel_layer(t: &mut Tar, opts: &TestImageOpts) -> Result<()> {
    let v = opts.variant;
    if opts.with_kernel {
        let kdir = format!("/usr/lib/modules/{TEST_KVER}");
        t.dir(&kdir, Meta::root(0o755))?;
        random_file(
            t,
            &format!("{kdir}/vmlinuz"),
            &format!("vmlinuz-{v}"),
            3 * MIB,
        )?;
        random_file(
            t,
            &format!("{kdir}/initramfs.img"),
            &format!("initramfs-{v}"),
            4 * MIB,
        )?;
        t.file(
            &format!("{kdir}/modules.dep"),
            Meta::root(0o644),
            format!("# variant {v}\n").as_bytes(),
        )?;
    }
    let d = TEST_DATA_DIR;
    random_file(t, &format!("{d}/large-9m.bin"), "large-9m", 9 * MIB)?;
    t.file(
        &format!("{d}/variant"),
        Meta::root(0o644),
        format!("{v}\n").as_bytes(),
    )?;
    Ok(())
}

/// The os-release text of a generated image.
pub fn os_release(opts: &TestImageOpts) -> String {
    format!(
        "NAME=\"Unistore Test OS\"\nID={id}\nVERSION_ID={ver}\nVERSION=\"{ver}\"\nPRETTY_NAME=\"Unistore Test OS {ver}\"\n",
        id = opts.os_id,
        ver = opts.version,
    )
}

fn etc_path(name: &str) -> Result<String> {
    let rel = match name.strip_prefix("/etc/") {
        Some(rel) => rel,
        None if name.starts_with('/') => anyhow::bail!("etc file {name:?} is not under /etc"),
        None => name,
    };
    anyhow::ensure!(!rel.is_empty(), "empty etc file name {name:?}");
    Ok(format!("/etc/{rel}"))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn config_layer(t: &mut Tar, opts: &TestImageOpts, dirs: &mut Known) -> Result<()> {
    let d = TEST_DATA_DIR;
    t.file(
        "/usr/lib/os-release",
        Meta::root(0o644),
        os_release(opts).as_bytes(),
    )?;
    t.whiteout(&format!("{d}/doomed"))?;
    t.whiteout(&format!("{d}/doomed-dir"))?;
    t.dir(&format!("{d}/opaque"), Meta::root(0o755))?;
    t.opaque(&format!("{d}/opaque"))?;
    t.file(&format!("{d}/opaque/new-1"), Meta::root(0o644), b"new 1\n")?;
    t.file(
        &format!("{d}/overwritten"),
        Meta::root(0o644),
        format!("new, variant {}\n", opts.variant).as_bytes(),
    )?;
    t.file(
        "/etc/unistore-test.conf",
        Meta::root(0o644),
        format!(
            "# unistore test image\nversion = \"{}\"\nvariant = {}\n",
            opts.version, opts.variant
        )
        .as_bytes(),
    )?;
    for (name, content) in &opts.etc_files {
        let path = etc_path(name)?;
        ensure_dirs(t, dirs, parent(&path))?;
        t.file(&path, Meta::root(0o644), content)?;
    }
    Ok(())
}

fn extra_layer(t: &mut Tar, opts: &TestImageOpts, dirs: &mut Known) -> Result<()> {
    for (path, content) in &opts.extra_files {
        anyhow::ensure!(
            path.starts_with('/'),
            "extra file {path:?} must be absolute"
        );
        ensure_dirs(t, dirs, parent(path))?;
        let exec = content.starts_with(b"\x7fELF") || content.starts_with(b"#!");
        let mode = if exec { 0o755 } else { 0o644 };
        t.file(path, Meta::root(mode), content)
            .with_context(|| format!("extra file {path}"))?;
    }
    let (mut left, mut i) = (opts.payload_mib, 0);
    if left > 0 {
        ensure_dirs(t, dirs, PAYLOAD_DIR)?;
    }
    while left > 0 {
        let mib = left.min(PAYLOAD_CHUNK_MIB);
        let path = format!("{PAYLOAD_DIR}/blob-{i:03}.bin");
        random_file(t, &path, &format!("payload-{i}"), mib * MIB)?;
        left -= mib;
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_paths() {
        assert_eq!(etc_path("a").unwrap(), "/etc/a");
        assert_eq!(etc_path("a/b").unwrap(), "/etc/a/b");
        assert_eq!(etc_path("/etc/x").unwrap(), "/etc/x");
        assert!(etc_path("/usr/x").is_err());
        assert!(etc_path("").is_err());
        assert_eq!(parent("/etc/a/b"), "/etc/a");
        assert_eq!(parent("/etc"), "");
    }

    #[test]
    fn extra_files_may_not_cross_symlinks() {
        let td = tempfile::tempdir().unwrap();
        let opts = TestImageOpts {
            with_kernel: false,
            extra_files: vec![("/lib/x86_64-linux-gnu/libfoo.so".into(), b"x".to_vec())],
            ..Default::default()
        };
        let err = build_test_image(td.path(), "t", &opts).unwrap_err();
        assert!(format!("{err:#}").contains("/lib is a symlink"), "{err:#}");
    }

    #[test]
    fn os_release_fields() {
        let o = TestImageOpts {
            version: "2.5".into(),
            os_id: "foo".into(),
            ..Default::default()
        };
        let s = os_release(&o);
        assert!(s.contains("\nID=foo\n"));
        assert!(s.contains("\nVERSION_ID=2.5\n"));
        assert!(s.contains("PRETTY_NAME="));
    }

    fn sha(data: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(data))
    }

    #[test]
    fn full_image_contents() {
        use crate::image::EntryKind;
        let td = tempfile::tempdir().unwrap();
        let opts = TestImageOpts {
            etc_files: vec![("sub/extra.conf".into(), b"e\n".to_vec())],
            extra_files: vec![("/usr/local/bin/tool".into(), b"#!/bin/sh\n".to_vec())],
            ..Default::default()
        };
        let b = build_test_image(td.path(), "t", &opts).unwrap();
        assert_eq!(b.diff_ids.len(), 4);
        let get = |p: &str| b.entry(p).unwrap_or_else(|| panic!("{p} missing"));
        for d in ["/usr", "/boot", "/sysroot", "/etc", "/var", "/tmp", "/run"] {
            assert_eq!(get(d).kind, EntryKind::Dir, "{d}");
        }
        assert_eq!(get("/tmp").mode, 0o1777);
        let osr = os_release(&opts);
        assert_eq!(
            get("/usr/lib/os-release").kind,
            EntryKind::File {
                sha256: sha(osr.as_bytes()),
                size: osr.len() as u64
            }
        );
        assert_eq!(
            get("/etc/os-release").kind,
            EntryKind::Symlink {
                target: "../usr/lib/os-release".into()
            }
        );
        let k = format!("/usr/lib/modules/{TEST_KVER}");
        assert!(matches!(
            get(&format!("{k}/vmlinuz")).kind,
            EntryKind::File { size, .. } if size == 3 * MIB
        ));
        assert!(get(&format!("{k}/initramfs.img")).is_file_like());
        // Whiteouts and the opaque directory were applied; no marker files remain.
        let d = TEST_DATA_DIR;
        assert!(b.entry(&format!("{d}/doomed")).is_none());
        assert!(b.entry(&format!("{d}/doomed-dir")).is_none());
        assert!(b.entry(&format!("{d}/doomed-dir/inner")).is_none());
        assert!(b.entry(&format!("{d}/opaque/old-1")).is_none());
        assert!(b.entry(&format!("{d}/opaque/old-sub")).is_none());
        assert!(b.entry(&format!("{d}/opaque/new-1")).is_some());
        assert!(b.expected.iter().all(|e| !e.path.contains(".wh.")));
        assert_eq!(
            get(&format!("{d}/overwritten")).kind,
            EntryKind::File {
                sha256: sha(b"new, variant 1\n"),
                size: 15
            }
        );
        // Modes, owners, hard links, xattrs.
        assert_eq!(get("/usr/bin/setuid-tool").mode, 0o4755);
        assert_eq!(get(&format!("{d}/readonly-0444")).mode, 0o444);
        assert_eq!(get(&format!("{d}/sticky-1777")).mode, 0o1777);
        let o = get(&format!("{d}/owned/by-nobody"));
        assert_eq!((o.uid, o.gid), (65534, 65534));
        assert_eq!(
            get(&format!("{d}/hardlink-a")).kind,
            EntryKind::Hardlink {
                to: "/usr/bin/hardlink-c".into()
            }
        );
        let cap = get("/usr/bin/cap-tool");
        assert_eq!(
            cap.xattrs,
            vec![("security.capability".to_string(), CAP_NET_RAW_EP.to_vec())]
        );
        assert_eq!(cap.layer_xattrs.len(), 2);
        let xu = get(&format!("{d}/xattr-user"));
        assert!(xu.xattrs.is_empty());
        assert_eq!(xu.layer_xattrs.len(), 2);
        // etc and extra files, with their new parent directories.
        assert_eq!(get("/etc/sub").kind, EntryKind::Dir);
        assert!(get("/etc/sub/extra.conf").is_file_like());
        assert!(get("/etc/unistore-test.conf").is_file_like());
        assert_eq!(get("/usr/local").kind, EntryKind::Dir);
        assert_eq!(get("/usr/local/bin/tool").mode, 0o755);
        // The list is sorted.
        assert!(b.expected.windows(2).all(|w| w[0].path < w[1].path));
    }

    #[test]
    fn deterministic_and_variants_share_the_base_layer() {
        let td = tempfile::tempdir().unwrap();
        let v1 = build_test_image(td.path(), "v1", &TestImageOpts::default()).unwrap();
        let again =
            build_test_image(&td.path().join("other"), "v1", &TestImageOpts::default()).unwrap();
        assert_eq!(v1, again);
        let v2 = build_test_image(
            td.path(),
            "v2",
            &TestImageOpts {
                version: "2.0".into(),
                variant: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_ne!(v1.manifest_digest, v2.manifest_digest);
        assert_eq!(v1.diff_ids[0], v2.diff_ids[0]);
        assert_ne!(v1.diff_ids[1], v2.diff_ids[1]);
        assert_ne!(v1.diff_ids[2], v2.diff_ids[2]);
        let k = format!("/usr/lib/modules/{TEST_KVER}/vmlinuz");
        assert_ne!(v1.entry(&k).unwrap().kind, v2.entry(&k).unwrap().kind);
        let big = format!("{TEST_DATA_DIR}/large-9m.bin");
        assert_eq!(v1.entry(&big).unwrap().kind, v2.entry(&big).unwrap().kind);

        let with_payload = build_test_image(
            td.path(),
            "p",
            &TestImageOpts {
                payload_mib: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(with_payload.diff_ids.len(), 4);
        let sizes: Vec<u64> = with_payload
            .expected
            .iter()
            .filter(|e| e.path.starts_with(PAYLOAD_DIR))
            .filter_map(|e| match e.kind {
                crate::image::EntryKind::File { size, .. } => Some(size),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, vec![8 * MIB, 2 * MIB]);

        let nk = build_test_image(
            td.path(),
            "nk",
            &TestImageOpts {
                with_kernel: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(nk.entry(&k).is_none());
        assert!(nk.entry("/usr/lib/modules").is_some());
    }
}
