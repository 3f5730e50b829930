//! Finding and removing mounts below a directory (podman's overlay graph-root mounts,
//! chroot bind mounts...), so test directories can be deleted.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Decode the octal escapes (`\040` for space...) of a mountinfo path field.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let s = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(s, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in `mountinfo` text, deepest first.
fn mounts_under_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    v
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    mounts_under_in(&info, &dir)
}

/// Unmount everything at or below `dir` (lazily when busy); errors are printed, not
/// returned, since this runs in cleanup paths.
pub fn unmount_all_under(dir: &Path) {
    for m in mounts_under(dir) {
        let ok = Command::new("umount")
            .arg(&m)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let info = "22 27 0:21 / /proc rw - proc proc rw\n\
                    90 27 254:0 / /var/tmp/x/root/overlay rw - ext4 /dev/vda rw\n\
                    91 90 0:50 / /var/tmp/x/root/overlay/abc/merged rw - overlay overlay rw\n\
                    92 27 0:51 / /var/tmp/x\\040y rw - tmpfs tmpfs rw\n\
                    93 27 0:52 / /var/tmp/xy rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts_under_in(info, Path::new("/var/tmp/x")),
            vec![
                PathBuf::from("/var/tmp/x/root/overlay/abc/merged"),
                PathBuf::from("/var/tmp/x/root/overlay")
            ]
        );
        assert_eq!(
            mounts_under_in(info, Path::new("/var/tmp/x y")),
            vec![PathBuf::from("/var/tmp/x y")]
        );
        assert_eq!(unescape("a\\134b"), "a\\b");
    }
}
