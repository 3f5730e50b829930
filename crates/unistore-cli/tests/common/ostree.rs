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

/// The released bootc library (ostree-ext 0.15.3) as a test-only binary:
/// `crates/ostree-ext-peer`, built by `scripts/test` (its own workspace;
/// `OSTREE_EXT_PEER` may name another build). Missing is a failure, never
/// a skip.
pub fn peer() -> Command {
    let path = std::env::var_os("OSTREE_EXT_PEER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ostree-ext-peer/target/debug/ostree-ext-peer")
        });
    assert!(
        path.is_file(),
        "the ostree-ext 0.15.3 peer {} is missing: build it with `cargo build --manifest-path crates/ostree-ext-peer/Cargo.toml` (scripts/test does)",
        path.display()
    );
    Command::new(path)
}

/// Runs the peer; its JSON, or a panic with its error chain.
pub fn peer_json(args: &[&str]) -> Value {
    let out = super::run(peer().args(args));
    assert!(
        out.status.success(),
        "ostree-ext 0.15.3 `{}` fails: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The deployments of a host's status: (which, commit, origin reference,
/// image digest).
fn deployments(st: &Value) -> Vec<(String, String, String)> {
    let mut out = vec![];
    let s = &st["status"];
    let mut entries: Vec<(&str, &Value)> = ["booted", "staged", "rollback"]
        .iter()
        .map(|w| (*w, &s[*w]))
        .collect();
    if let Some(o) = s["otherDeployments"].as_array() {
        entries.extend(o.iter().map(|e| ("other", e)));
    }
    for (w, e) in entries {
        if e.is_null() {
            continue;
        }
        let c = e["ostree"]["checksum"].as_str().unwrap().to_string();
        let d = e["image"]["imageDigest"].as_str().unwrap_or("").to_string();
        out.push((w.to_string(), c, d));
    }
    out
}

/// What released bootc does when it reads the host (`bootc status`, an
/// update check, its GC's view), read-only: every image listed; every
/// deployment's commit read back by `query_image_commit` with the digest
/// our status shows and a stored commit for each of its layers (one blob
/// ref per layer); the booted origin's reference found by `query_image`.
pub fn bootc_reads(root: &Path) {
    let repo = root.join("ostree/repo");
    let repo = repo.to_str().unwrap();
    let st = status(root);
    let list = peer_json(&["list-images", "--repo", repo]);
    let images = list["images"].as_array().unwrap();
    assert!(!images.is_empty(), "ostree-ext sees no image: {list}");
    for (which, commit, digest) in deployments(&st) {
        let q = peer_json(&["query-image-commit", "--repo", repo, "--commit", &commit]);
        let s = &q["state"];
        assert_eq!(s["merge_commit"], commit.as_str(), "{which}: {q}");
        assert_eq!(s["manifest_digest"], digest.as_str(), "{which}: {q}");
        let layers = s["layers"].as_array().unwrap();
        assert!(!layers.is_empty(), "{which}: {q}");
        for l in layers {
            assert!(
                l["commit"].is_string(),
                "{which}: layer {} has no commit (ref {}): {q}",
                l["digest"],
                l["ref"]
            );
        }
        assert_eq!(s["base_commit"], layers[0]["commit"], "{which}: {q}");
    }
    let booted = checksum(&st, "booted");
    let serial = st["status"]["booted"]["ostree"]["deploySerial"]
        .as_i64()
        .unwrap();
    let stateroot = st["status"]["booted"]["ostree"]["stateroot"]
        .as_str()
        .unwrap();
    let origin = std::fs::read_to_string(root.join(format!(
        "ostree/deploy/{stateroot}/deploy/{booted}.{serial}.origin"
    )))
    .unwrap();
    let imgref = origin
        .lines()
        .find_map(|l| l.strip_prefix("container-image-reference="))
        .unwrap()
        .trim();
    let q = peer_json(&["query-image", "--repo", repo, "--imgref", imgref]);
    assert_eq!(q["present"], true, "query_image({imgref}): {q}");
    // The image ref follows the reference's newest image (after a rollback
    // to an older image of the same tag, that is another deployment's).
    let deployed: Vec<String> = deployments(&st).into_iter().map(|(_, c, _)| c).collect();
    assert!(
        deployed
            .iter()
            .any(|c| Some(c.as_str()) == q["state"]["merge_commit"].as_str()),
        "query_image({imgref}) names no deployment {deployed:?}: {q}"
    );
    assert!(
        images
            .iter()
            .any(|i| Some(i.as_str().unwrap()) == q["image"].as_str()),
        "list_images {list} lacks {}",
        q["image"]
    );
}

/// [`bootc_reads`], then bootc's GC (`container::deploy::prune`) on the
/// host: it must remove nothing live (every deployment still reads back),
/// and our `status`, `fsck` and `gc --assert-no-op` pass after it.
pub fn bootc_reads_and_prunes(root: &Path) {
    bootc_reads(root);
    let before = status(root);
    let p = peer_json(&["prune", "--sysroot", root.to_str().unwrap()]);
    eprintln!("bootc's prune: {p}");
    let after = status(root);
    assert_eq!(
        deployments(&before),
        deployments(&after),
        "bootc's prune changed the deployments"
    );
    bootc_reads(root);
    ostree_fsck(root);
    let f: Value = serde_json::from_str(&super::run_ok(cmd(root, None).args([
        "internals",
        "fsck",
        "--json",
    ])))
    .unwrap();
    assert_eq!(f["ok"], true, "our fsck after bootc's prune: {f:#}");
    super::run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
}
