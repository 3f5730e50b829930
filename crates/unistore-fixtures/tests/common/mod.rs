//! Helpers shared by the integration tests (which need root and the host tools).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use unistore_fixtures::env::cmd::run;

/// Run a command given as program + args; panics with its stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    run(Command::new(program).args(args)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A host executable plus the shared libraries it needs (see
/// [`unistore_fixtures::image::host_executable_files`]).
pub fn host_executable_files(bin: &str) -> Vec<(String, Vec<u8>)> {
    unistore_fixtures::image::host_executable_files(bin).unwrap()
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
