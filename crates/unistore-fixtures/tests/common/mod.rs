//! Helpers shared by the integration tests (which need root and the host tools).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use unistore_fixtures::env::cmd::run;

/// Run a command given as program + args; panics with its stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    run(Command::new(program).args(args)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A host executable plus the shared libraries it needs, as `extra_files` for a test image
/// whose `/lib` and `/lib64` are symlinks into `/usr` (so library paths are mapped there).
pub fn host_executable_files(bin: &str) -> Vec<(String, Vec<u8>)> {
    let to_usr = |p: &str| -> String {
        if p.starts_with("/usr/") {
            p.to_string()
        } else {
            format!("/usr{p}")
        }
    };
    let mut files = vec![(to_usr(bin), std::fs::read(bin).unwrap())];
    for line in sh("ldd", &[bin]).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let real = std::fs::canonicalize(p).unwrap();
            files.push((to_usr(p), std::fs::read(real).unwrap()));
        }
    }
    files
}

/// `umoci unpack` the image `oci:<dir>:<tag>` into `bundle`; returns the rootfs path.
pub fn umoci_unpack(dir: &Path, tag: &str, bundle: &Path) -> std::path::PathBuf {
    sh(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", dir.display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}
