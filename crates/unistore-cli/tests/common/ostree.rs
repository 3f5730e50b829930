//! Helpers of the ostree-host tests: the commands, the real `ostree fsck`
//! and `ostree admin status`, the status fields of an ostree deployment.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use unistore_fixtures::env::Registry;

use super::{run_ok, unistore};

/// `unistore install to-filesystem --backend ostree --json` of `src` onto
/// `root`, with `extra` options.
pub fn install_cmd(root: &Path, src: &str, reg: Option<&Registry>, extra: &[&str]) -> Command {
    let mut c = unistore();
    if let Some(r) = reg {
        c.env("CONTAINERS_REGISTRIES_CONF", r.registries_conf());
    }
    c.args([
        "install",
        "to-filesystem",
        "--backend",
        "ostree",
        "--json",
        "--source-imgref",
        src,
    ])
    .args(extra)
    .arg(root);
    c
}

/// `unistore --sysroot ROOT`, with the registry's registries.conf.
pub fn cmd(root: &Path, reg: Option<&Registry>) -> Command {
    let mut c = unistore();
    if let Some(r) = reg {
        c.env("CONTAINERS_REGISTRIES_CONF", r.registries_conf());
    }
    c.arg("--sysroot").arg(root);
    c
}

/// `status --json`.
pub fn status(root: &Path) -> Value {
    serde_json::from_str(&run_ok(cmd(root, None).args(["status", "--json"]))).unwrap()
}

/// The real `ostree fsck` must pass.
pub fn ostree_fsck(root: &Path) {
    let out = Command::new("ostree")
        .arg(format!("--repo={}", root.join("ostree/repo").display()))
        .arg("fsck")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ostree fsck failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no errors found"), "{text}");
}

/// `ostree admin status` lines `<stateroot> <commit>.<serial>`.
pub fn admin_status(root: &Path) -> String {
    let out = Command::new("ostree")
        .args(["admin", "status"])
        .arg(format!("--sysroot={}", root.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The commit of the `which` deployment.
pub fn checksum(st: &Value, which: &str) -> String {
    st["status"][which]["ostree"]["checksum"]
        .as_str()
        .unwrap()
        .to_string()
}
