//! The VM boot tests' shared parts: the bootable image, reading the boot
//! check line and the test agent's output from the serial console.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use unistore_fixtures::env::require_root;
use unistore_fixtures::env::vm::VmRun;

/// One TCG boot here takes about a minute (docs/boot.md); a boot that
/// upgrades inside the VM takes longer.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// The bootable image's OCI layout (tags v1, v2), built or reused once per
/// test binary.
pub fn boot_image() -> &'static Path {
    static OCI: OnceLock<PathBuf> = OnceLock::new();
    OCI.get_or_init(|| {
        require_root();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let unistore = PathBuf::from(env!("CARGO_BIN_EXE_unistore"));
        let mut cmd = Command::new(repo.join("scripts/build-boot-image"));
        cmd.env("UNISTORE_BIN", &unistore);
        // The workspace's unistore-fixture beside it (scripts/test builds
        // every target); else the script builds one.
        let fixture = unistore.with_file_name("unistore-fixture");
        if fixture.is_file() {
            cmd.env("UNISTORE_FIXTURE", &fixture);
        }
        let out = cmd.output().expect("running scripts/build-boot-image");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stderr}");
        assert!(
            out.status.success(),
            "scripts/build-boot-image failed: {stderr}"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Fails the test with `what` and the end of the serial console.
pub fn fail_with(r: &VmRun, what: &str) -> ! {
    panic!(
        "{what}\n--- last 60 lines of the serial console ({}) ---\n{}\n---",
        r.log.display(),
        r.tail(60)
    );
}

/// The boot-check line of a boot that must have succeeded and powered off,
/// as key=value pairs.
pub fn boot_ok(r: &VmRun) -> BTreeMap<String, String> {
    if let Some(f) = r.lines_with("UNISTORE-BOOT-FAIL").first() {
        fail_with(r, &format!("the booted system is not right: {f}"));
    }
    if let Some(f) = r.lines_with("UNISTORE-INITRAMFS-FAIL").first() {
        fail_with(r, &format!("the initramfs did not mount the root: {f}"));
    }
    let oks = r.lines_with("UNISTORE-BOOT-OK");
    let Some(line) = oks.first() else {
        fail_with(
            r,
            if r.exited {
                "the VM stopped without the boot-check line"
            } else {
                "no boot-check line before the timeout"
            },
        );
    };
    assert_eq!(oks.len(), 1, "one boot-check line per boot: {oks:?}");
    if !r.exited {
        fail_with(r, "the VM did not power off before the timeout");
    }
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `UNISTORE-TEST:` lines of the test agent; the run must have ended
/// with status 0.
pub fn agent_ok(r: &VmRun) -> Vec<String> {
    let end = r.lines_with("UNISTORE-TEST-END");
    if end.first().map(String::as_str) != Some("UNISTORE-TEST-END rc=0") {
        fail_with(r, &format!("the test script inside the VM failed: {end:?}"));
    }
    r.lines_with("UNISTORE-TEST: ")
        .into_iter()
        .map(|l| l["UNISTORE-TEST: ".len()..].to_string())
        .collect()
}
