//! Shared helpers of the end-to-end tests: run the real binary, compare a
//! mounted tree against the fixture's expected tree, snapshot a root.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod boot;
pub mod checker;
pub mod layout;
pub mod ostree;
pub mod random_tree;
pub mod stores;
pub mod trees;

use sha2::{Digest, Sha256};
use unistore_fixtures::image::{EntryKind, ExpectedEntry};

/// The binary under test.
pub fn unistore() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unistore"));
    c.env_remove("UNISTORE_LOG");
    c
}

/// Runs and returns the output, printing it for failed-test diagnosis.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawning unistore");
    eprintln!(
        "$ {:?}\n  status: {}\n  stdout: {}\n  stderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs and asserts success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "command failed: {cmd:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and asserts failure with exactly one `error:` line on stderr that
/// contains `needle`; returns that line.
pub fn run_fails(cmd: &mut Command, needle: &str) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded: {cmd:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "error line {:?} does not mention {needle:?}",
        errors[0]
    );
    errors[0].to_string()
}

/// Every path below `root` with its type, mode, size and mtime.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, i64)> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (u32, u64, i64, i64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (m.mode(), m.len(), m.mtime(), m.mtime_nsec()),
            );
            if m.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Asserts two snapshots are equal, listing every path that differs.
pub fn assert_snapshots_equal(
    before: &BTreeMap<PathBuf, (u32, u64, i64, i64)>,
    after: &BTreeMap<PathBuf, (u32, u64, i64, i64)>,
    what: &str,
) {
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
        .collect();
    assert!(
        changed.is_empty(),
        "{what} changed the root:\n{}",
        changed.join("\n")
    );
}

/// Hex sha256 of a file's content.
pub fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Every regular file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn syncfs(mountpoint: &Path) {
    let d = std::fs::File::open(mountpoint).unwrap();
    rustix::fs::syncfs(&d).unwrap();
}

/// Drops XFS speculative preallocation on the filesystem mounted at
/// `mountpoint`: post-EOF blocks XFS gives to files being written
/// (composefs objects written through O_TMPFILE keep them until XFS
/// reclaims them by itself a few minutes later). They are not data, but
/// they count as used space and FIEMAP lists them as unshared extents.
pub fn trim_prealloc(mountpoint: &Path) {
    syncfs(mountpoint);
    let fstype = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(mountpoint)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&fstype.stdout).trim() != "xfs" {
        return;
    }
    let st = Command::new("xfs_spaceman")
        .args(["-c", "prealloc -m 0"])
        .arg(mountpoint)
        .status()
        .unwrap();
    assert!(st.success());
    syncfs(mountpoint);
}

/// Paths the boot transform empties (`/boot`, `/sysroot`, `/run`): their
/// contents are not in the boot image.
pub fn boot_transformed(path: &str) -> bool {
    ["/boot/", "/sysroot/", "/run/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Compares the tree mounted at `mnt` with `expected`; returns the number of
/// entries checked.
pub fn compare_tree(mnt: &Path, expected: &[ExpectedEntry]) -> usize {
    let mut checked = 0;
    for e in expected {
        if boot_transformed(&e.path) {
            continue;
        }
        let p = mnt.join(e.path.trim_start_matches('/'));
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        assert_eq!(m.uid(), e.uid, "uid of {}", e.path);
        assert_eq!(m.gid(), e.gid, "gid of {}", e.path);
        match &e.kind {
            EntryKind::Dir => assert!(m.is_dir(), "{} is not a dir", e.path),
            EntryKind::File { sha256, size } => {
                assert!(m.is_file(), "{} is not a file", e.path);
                assert_eq!(m.len(), *size, "size of {}", e.path);
                assert_eq!(&sha256_file(&p), sha256, "content of {}", e.path);
            }
            EntryKind::Symlink { target } => {
                assert!(m.file_type().is_symlink(), "{} is not a symlink", e.path);
                assert_eq!(
                    std::fs::read_link(&p).unwrap().to_str().unwrap(),
                    target,
                    "target of {}",
                    e.path
                );
            }
            EntryKind::Hardlink { to } => {
                let other =
                    std::fs::symlink_metadata(mnt.join(to.trim_start_matches('/'))).unwrap();
                assert_eq!(m.ino(), other.ino(), "{} is not a hardlink of {to}", e.path);
                assert!(m.nlink() >= 2);
            }
            EntryKind::CharDev { .. } | EntryKind::BlockDev { .. } | EntryKind::Fifo => {}
        }
        if !m.file_type().is_symlink() {
            assert_eq!(
                m.permissions().mode() & 0o7777,
                e.mode,
                "mode of {} ({:o} vs {:o})",
                e.path,
                m.permissions().mode() & 0o7777,
                e.mode
            );
        }
        for (k, v) in &e.xattrs {
            let mut buf = vec![0u8; 4096];
            let n = rustix::fs::lgetxattr(&p, k.as_str(), &mut buf)
                .unwrap_or_else(|err| panic!("xattr {k} of {}: {err}", e.path));
            assert_eq!(&buf[..n], &v[..], "xattr {k} of {}", e.path);
        }
        checked += 1;
    }
    checked
}

/// Unmounts everything below `mnt`.
pub fn umount_all(mnt: &Path) {
    let _ = Command::new("umount").arg("-R").arg(mnt).status();
}

/// Runs `c` with `UNISTORE_CRASHPOINT=point` and asserts it was killed
/// there (SIGKILL).
pub fn run_killed(mut c: Command, point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = c.env("UNISTORE_CRASHPOINT", point).output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "expected a kill at {point}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mounts the booted deployment of `root` (`internals mount`), compares
/// its tree with `expected` (minus what lives under `/run` and `/tmp`,
/// which hosts keep empty), unmounts; returns the entries compared.
pub fn mount_and_compare(root: &Path, expected: &[ExpectedEntry]) -> usize {
    let mnt = tempfile::tempdir().unwrap();
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(root)
            .args(["internals", "mount"])
            .arg(mnt.path()),
    );
    let expected: Vec<_> = expected
        .iter()
        .filter(|e| !e.path.starts_with("/run/") && !e.path.starts_with("/tmp/"))
        .cloned()
        .collect();
    let r = std::panic::catch_unwind(|| compare_tree(mnt.path(), &expected));
    umount_all(mnt.path());
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// bootc's fields that a freshly installed host has the same on both kinds
/// of host: the image's creation time (the fixtures'), no cached update,
/// none of the entry's flags, no `/usr` overlay, a writable root.
pub fn assert_fresh_bootc_fields(st: &serde_json::Value) {
    let b = &st["status"]["booted"];
    assert_eq!(
        b["image"]["timestamp"],
        unistore_fixtures::image::oci::FIXED_CREATED,
        "{st}"
    );
    assert!(b["cachedUpdate"].is_null(), "no update check ran: {st}");
    for k in [
        "incompatible",
        "pinned",
        "softRebootCapable",
        "downloadOnly",
    ] {
        assert_eq!(b[k], false, "{k}: {st}");
    }
    assert!(st["status"]["usrOverlay"].is_null(), "{st}");
    assert_eq!(st["status"]["readOnly"], false, "{st}");
}
