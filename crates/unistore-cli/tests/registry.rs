//! End-to-end: images a real registry serves in Docker's format (schema 2),
//! and Docker manifest lists, on every install path (plain and unified on
//! XFS, unified with copies on ext4, the ostree backend), upgraded and
//! checked like OCI images; the registry's digest stays their identity.
//! A panic reaches the user as one error line and leaves nothing behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, TestImageOpts, build_test_image};

fn image(dir: &Path, tag: &str, v: u32) -> BuiltImage {
    let opts = TestImageOpts {
        version: format!("{v}.0"),
        variant: v,
        // `cat` and its libraries: podman runs the image from the host store.
        extra_files: unistore_fixtures::image::host_executable_files("/usr/bin/cat").unwrap(),
        ..Default::default()
    };
    build_test_image(dir, tag, &opts).unwrap()
}

/// `podman run IMAGE cat /usr/lib/os-release` on the host store of `root`.
fn podman_run_os_release(root: &Path, work: &Path, runroot: &Path, image: &str) -> String {
    common::stores::Podman::with_dirs(root, work.join("podman-conf"), runroot.to_path_buf())
        .cat_os_release(image)
}

fn cmd(reg: &Registry) -> Command {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf());
    c
}

fn install(reg: &Registry, root: &Path, src: &str, extra: &[&str]) -> std::process::Output {
    run(cmd(reg)
        .args(["install", "to-filesystem"])
        .args(extra)
        .args(["--source-imgref", src])
        .arg(root))
}

fn status(root: &Path) -> Value {
    serde_json::from_str(&run_ok(
        unistore()
            .arg("--sysroot")
            .arg(root)
            .args(["status", "--json"]),
    ))
    .unwrap()
}

fn booted_digest(root: &Path) -> String {
    status(root)["status"]["booted"]["image"]["imageDigest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn fsck_ok(root: &Path) {
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(root)
            .args(["internals", "fsck"]),
    );
}

/// Every path of the issue: the Docker image installs, says the
/// registry's digest, is checked clean, and its files are the image's.
#[test]
fn docker_schema2_images_install_on_every_path() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", 1);
    let reg = Registry::start().unwrap();
    let src = reg.push_oci_docker(&oci, "v1", "os").unwrap();
    let (digest, raw) = reg.raw_manifest("os", "v1").unwrap();
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_ne!(
        digest, img.manifest_digest,
        "the registry holds a Docker manifest"
    );

    for (kind, flags, what) in [
        (FsKind::Xfs, &[][..], "plain on XFS"),
        (FsKind::Xfs, &["--unified", "enabled"][..], "unified on XFS"),
        (
            FsKind::Ext4,
            &["--unified", "enabled-with-copy"][..],
            "unified with copies on ext4",
        ),
        (
            FsKind::Xfs,
            &["--backend", "ostree"][..],
            "ostree backend on XFS",
        ),
    ] {
        let fs = LoopFs::new(kind, 1024).unwrap();
        let out = install(&reg, fs.path(), &src, flags);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            booted_digest(fs.path()),
            digest,
            "{what}: the registry's digest"
        );
        fsck_ok(fs.path());
        // Its files are the image's.
        assert!(mount_and_compare(fs.path(), &img.expected) > 20, "{what}");
        // No new digest: no update.
        let check = run_ok(
            cmd(&reg)
                .arg("--sysroot")
                .arg(fs.path())
                .args(["upgrade", "--check", "--json"]),
        );
        assert!(check.contains("no-change"), "{what}: {check}");
        if flags.contains(&"--unified") {
            let store = fs.path().join("composefs/bootc/storage");
            let out = Command::new("podman")
                .arg("--root")
                .arg(&store)
                .arg("--runroot")
                .arg(work.path().join(format!("rr-{}", what.len())))
                .args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}"])
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&out.stdout);
            // The store keeps the registry's name and manifest, as
            // `podman pull` would, and podman runs the image from it.
            assert!(
                names.contains(&format!("{} {digest}", src.trim_start_matches("docker://"))),
                "{what}: {names}"
            );
            let osr = podman_run_os_release(
                fs.path(),
                work.path(),
                &work.path().join(format!("rr-{}", what.len())),
                src.trim_start_matches("docker://"),
            );
            assert!(osr.contains("VERSION_ID=1.0"), "{what}: {osr}");
        }
        if flags.contains(&"ostree") {
            let st = status(fs.path());
            let commit = st["status"]["booted"]["ostree"]["checksum"]
                .as_str()
                .unwrap()
                .to_string();
            let meta = Command::new("ostree")
                .arg(format!(
                    "--repo={}",
                    fs.path().join("ostree/repo").display()
                ))
                .args([
                    "show",
                    "--print-metadata-key=ostree.manifest-digest",
                    &commit,
                ])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&meta.stdout).contains(&digest),
                "{what}: the commit records the registry's digest"
            );
        }
    }
}

/// A Docker image upgraded to another Docker image (same tag), on a plain
/// composefs host: the new registry digest is staged, then booted.
#[test]
fn docker_schema2_upgrade() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    image(&oci, "v2", 2);
    let reg = Registry::start().unwrap();
    let src = reg.push_oci_docker(&oci, "v1", "os").unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    assert!(install(&reg, fs.path(), &src, &[]).status.success());
    // v2 under the same tag, in Docker's format.
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
        ])
        .arg(format!("oci:{}:v2", oci.display()))
        .arg(&src)
        .status()
        .unwrap();
    assert!(out.success());
    let (d2, _) = reg.raw_manifest("os", "v1").unwrap();
    let check = run_ok(
        cmd(&reg)
            .arg("--sysroot")
            .arg(fs.path())
            .args(["upgrade", "--check", "--json"]),
    );
    assert!(
        check.contains("update-available") && check.contains(&d2),
        "{check}"
    );
    let up: Value = serde_json::from_str(&run_ok(
        cmd(&reg)
            .arg("--sysroot")
            .arg(fs.path())
            .args(["upgrade", "--json"]),
    ))
    .unwrap();
    assert_eq!(up["result"], "staged");
    assert_eq!(up["manifest_digest"], d2.as_str());
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(fs.path())
            .args(["internals", "finalize-staged"]),
    );
    assert_eq!(booted_digest(fs.path()), d2);
    fsck_ok(fs.path());
    let again = run_ok(
        cmd(&reg)
            .arg("--sysroot")
            .arg(fs.path())
            .args(["upgrade", "--json"]),
    );
    assert!(again.contains("no-change"), "{again}");

    // switch to another Docker image (v1, pushed under another name).
    let other = reg.push_oci_docker(&oci, "v1", "other").unwrap();
    let (d1, _) = reg.raw_manifest("other", "v1").unwrap();
    let sw: Value = serde_json::from_str(&run_ok(
        cmd(&reg)
            .arg("--sysroot")
            .arg(fs.path())
            .args(["switch", "--json", &other]),
    ))
    .unwrap();
    assert_eq!(sw["result"], "staged", "{sw}");
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(fs.path())
            .args(["internals", "finalize-staged"]),
    );
    assert_eq!(booted_digest(fs.path()), d1);

    // set-unified full brings both images into the host store; a store
    // image removed behind unistore's back is rebuilt by fsck --repair.
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(fs.path())
            .args(["image", "set-unified", "full"]),
    );
    let images = || {
        run_ok(unistore().arg("--sysroot").arg(fs.path()).args([
            "internals",
            "fsck",
            "images",
            "--json",
        ]))
    };
    let r: Value = serde_json::from_str(&images()).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["inContainersStorage"] == true),
        "{r}"
    );
    let rr = work.path().join("rr");
    let podman = |args: &[&str]| {
        Command::new("podman")
            .envs(unistore_fixtures::env::podman_env(
                &work.path().join("conf"),
            ))
            .arg("--root")
            .arg(fs.path().join("composefs/bootc/storage"))
            .arg("--runroot")
            .arg(&rr)
            .args(args)
            .output()
            .unwrap()
    };
    // The store holds the registry's manifests, as podman pull would.
    let digests = || {
        String::from_utf8(podman(&["images", "--no-trunc", "--format", "{{.Digest}}"]).stdout)
            .unwrap()
    };
    let all = digests();
    assert!(
        all.contains(&d1) && all.contains(&d2),
        "{all} lacks {d1} or {d2}"
    );
    // The store image id is the config digest.
    let id = r["images"][0]["configDigest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let rmi = podman(&["rmi", "-f", id.trim()]);
    assert!(
        rmi.status.success(),
        "{}",
        String::from_utf8_lossy(&rmi.stderr)
    );
    let broken =
        run(unistore()
            .arg("--sysroot")
            .arg(fs.path())
            .args(["internals", "fsck", "images"]));
    assert!(
        !broken.status.success(),
        "fsck sees the missing store image"
    );
    let repaired = run_ok(unistore().arg("--sysroot").arg(fs.path()).args([
        "internals",
        "fsck",
        "images",
        "--repair",
    ]));
    assert!(repaired.contains("[REPAIRED]"), "{repaired}");
    let r: Value = serde_json::from_str(&images()).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let all = digests();
    assert!(
        all.contains(&d1) && all.contains(&d2),
        "after the repair: {all}"
    );
    // The repaired image runs from the store.
    let osr = podman_run_os_release(fs.path(), work.path(), &rr, &id);
    assert!(osr.contains("ID=testos"), "{osr}");
}

/// A Docker manifest list whose first entry is another architecture: the
/// host's is installed. A list without the host's platform is one clear
/// error, the root unchanged.
#[test]
fn docker_manifest_lists_pick_the_host_platform() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    image(&oci, "v2", 2);
    let reg = Registry::start().unwrap();
    reg.push_oci_docker(&oci, "v1", "os").unwrap();
    reg.push_oci_docker(&oci, "v2", "os").unwrap();
    let (d_amd64, m1) = reg.raw_manifest("os", "v1").unwrap();
    let (d_other, m2) = reg.raw_manifest("os", "v2").unwrap();
    let entry = |d: &str, m: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": m.len(), "digest": d,
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let list = |entries: Vec<Value>| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": entries,
        }))
        .unwrap()
    };
    const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    reg.put_manifest(
        "os",
        "multi",
        LIST,
        &list(vec![
            entry(&d_other, &m2, "arm64"),
            entry(&d_amd64, &m1, "amd64"),
        ]),
    )
    .unwrap();
    reg.put_manifest(
        "os",
        "armonly",
        LIST,
        &list(vec![entry(&d_other, &m2, "arm64")]),
    )
    .unwrap();

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let before = snapshot(fs.path());
    let base = reg.push_oci(&oci, "v1", "unused").unwrap();
    let host = base
        .trim_start_matches("docker://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    run_fails(
        cmd(&reg)
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(format!("docker://{host}/os:armonly"))
            .arg(fs.path()),
        "no entry for linux/amd64",
    );
    assert_snapshots_equal(&before, &snapshot(fs.path()), "a list without the host");
    let out = install(&reg, fs.path(), &format!("docker://{host}/os:multi"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(booted_digest(fs.path()), d_amd64);
    fsck_ok(fs.path());

    // The same with OCI manifests in an OCI index.
    reg.push_oci(&oci, "v1", "oos").unwrap();
    reg.push_oci(&oci, "v2", "oos").unwrap();
    let (o_amd64, om1) = reg.raw_manifest("oos", "v1").unwrap();
    let (o_other, om2) = reg.raw_manifest("oos", "v2").unwrap();
    let oentry = |d: &str, m: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": m.len(), "digest": d,
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = |entries: Vec<Value>| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap()
    };
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    reg.put_manifest(
        "oos",
        "multi",
        INDEX,
        &index(vec![
            oentry(&o_other, &om2, "arm64"),
            oentry(&o_amd64, &om1, "amd64"),
        ]),
    )
    .unwrap();
    reg.put_manifest(
        "oos",
        "armonly",
        INDEX,
        &index(vec![oentry(&o_other, &om2, "arm64")]),
    )
    .unwrap();
    let fs2 = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let before = snapshot(fs2.path());
    run_fails(
        cmd(&reg)
            .args(["install", "to-filesystem", "--source-imgref"])
            .arg(format!("docker://{host}/oos:armonly"))
            .arg(fs2.path()),
        "amd64",
    );
    assert_snapshots_equal(&before, &snapshot(fs2.path()), "an index without the host");
    let out = install(&reg, fs2.path(), &format!("docker://{host}/oos:multi"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(booted_digest(fs2.path()), o_amd64);
    fsck_ok(fs2.path());
}

/// A panic in the middle of an install (a test crash point that panics):
/// one `error:` line, no backtrace, and the root as it was.
#[test]
fn a_panic_is_one_error_line_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    let src = format!("oci:{}:v1", oci.display());
    for (point, flags) in [
        (
            "unified:after-composefs-pull",
            &["--unified", "enabled"][..],
        ),
        ("ostree-install:after-commit", &["--backend", "ostree"][..]),
    ] {
        let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        let before = snapshot(fs.path());
        let line = run_fails(
            unistore()
                .env("UNISTORE_CRASHPOINT", format!("panic:{point}"))
                .args(["install", "to-filesystem"])
                .args(flags)
                .args(["--source-imgref", &src])
                .arg(fs.path()),
            "internal failure",
        );
        assert!(line.contains(point), "{line}");
        let out = unistore()
            .env("UNISTORE_CRASHPOINT", format!("panic:{point}"))
            .args(["install", "to-filesystem"])
            .args(flags)
            .args(["--source-imgref", &src])
            .arg(fs.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked at") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
        assert_snapshots_equal(&before, &snapshot(fs.path()), point);
    }
}

/// Removes a file when dropped (a credentials file written where the host
/// looks for it).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A registry behind TLS (its own CA) with an htpasswd login: the CA is
/// taken from `/etc/containers/certs.d/HOST:PORT/`, credentials from
/// `--authfile`, `REGISTRY_AUTH_FILE`, the containers tools' own
/// `$XDG_RUNTIME_DIR/containers/auth.json` and bootc's
/// `/etc/ostree/auth.json`; an unknown CA or a wrong password is one clear
/// error and changes nothing; the host store (podman's pull without
/// reflinks) gets the same credentials.
#[test]
fn registry_with_login_behind_tls() {
    use unistore_fixtures::env::RegistryOpts;
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", 1);
    let reg = Registry::start_with(RegistryOpts {
        tls_login: Some(("tester".into(), "s3cret".into())),
        ..Default::default()
    })
    .unwrap();
    let src = reg.push_oci(&oci, "v1", "os").unwrap();
    let good = work.path().join("good.json");
    reg.write_auth_json(&good, "tester", "s3cret").unwrap();
    let bad = work.path().join("bad.json");
    reg.write_auth_json(&bad, "tester", "wrong").unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    let before = snapshot(root);
    let install_with = |authfile: &Path| {
        let mut c = cmd(&reg);
        c.arg("--authfile")
            .arg(authfile)
            .args(["install", "to-filesystem", "--source-imgref", &src])
            .arg(root);
        c
    };
    // The CA is not trusted yet.
    run_fails(&mut install_with(&good), "certificate");
    assert_snapshots_equal(&before, &snapshot(root), "unknown CA");
    let _ca = reg.trust_ca().unwrap();
    run_fails(&mut install_with(&bad), "unauthorized");
    assert_snapshots_equal(&before, &snapshot(root), "wrong password");
    run_fails(
        cmd(&reg)
            .args(["install", "to-filesystem", "--source-imgref", &src])
            .arg(root),
        "unauthorized",
    );
    assert_snapshots_equal(&before, &snapshot(root), "no credentials");
    run_ok(&mut install_with(&good));
    assert_eq!(booted_digest(root), img.manifest_digest);
    fsck_ok(root);

    // Each place credentials come from, through an upgrade check.
    let check = |c: &mut Command| {
        let out = run_ok(
            c.arg("--sysroot")
                .arg(root)
                .args(["upgrade", "--check", "--json"]),
        );
        assert!(out.contains("no-change"), "{out}");
    };
    check(cmd(&reg).env("REGISTRY_AUTH_FILE", &good));
    let xdg = work.path().join("xdg");
    reg.write_auth_json(&xdg.join("containers/auth.json"), "tester", "s3cret")
        .unwrap();
    check(cmd(&reg).env("XDG_RUNTIME_DIR", &xdg));
    let ostree_auth = Path::new("/etc/ostree/auth.json");
    assert!(
        !ostree_auth.exists(),
        "this test writes {} and would lose the host's",
        ostree_auth.display()
    );
    let _guard = RemoveOnDrop(ostree_auth.to_path_buf());
    reg.write_auth_json(ostree_auth, "tester", "s3cret")
        .unwrap();
    check(&mut cmd(&reg));
    drop(_guard);

    // Without reflinks the host store is pulled by podman: same credentials.
    let ext4 = LoopFs::new(FsKind::Ext4, 1024).unwrap();
    let out = run(cmd(&reg)
        .env("REGISTRY_AUTH_FILE", &good)
        .args([
            "install",
            "to-filesystem",
            "--unified",
            "enabled-with-copy",
            "--source-imgref",
            &src,
        ])
        .arg(ext4.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(booted_digest(ext4.path()), img.manifest_digest);
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(ext4.path())
            .args(["internals", "fsck", "images"]),
    );
    let osr = podman_run_os_release(
        ext4.path(),
        work.path(),
        &work.path().join("rr-tls"),
        src.trim_start_matches("docker://"),
    );
    assert!(osr.contains("VERSION_ID=1.0"), "{osr}");
}

/// A pull-through mirror in registries.conf serves installs and upgrades
/// while the origin keeps the canonical reference; with the mirror down,
/// the source registry is used.
#[test]
fn mirrors_serve_pulls_and_fall_back_to_the_source() {
    use unistore_fixtures::env::RegistryOpts;
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", 1);
    let source = Registry::start().unwrap();
    let src = source.push_oci(&oci, "v1", "os").unwrap();
    let mut mirror = Registry::start_with(RegistryOpts {
        mirror_of: Some(format!("http://{}", source.addr())),
        ..Default::default()
    })
    .unwrap();
    let conf = source.registries_conf_with_mirror(&mirror).unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    run_ok(
        unistore()
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(["install", "to-filesystem", "--source-imgref", &src])
            .arg(root),
    );
    assert!(
        mirror.log_text().contains("/v2/os/manifests/v1"),
        "the mirror served the install: {}",
        mirror.log_text()
    );
    let st = status(root);
    assert_eq!(
        st["status"]["booted"]["image"]["image"]["image"],
        src.trim_start_matches("docker://"),
        "the origin keeps the canonical reference"
    );
    assert_eq!(booted_digest(root), img.manifest_digest);
    mirror.stop();
    let out = run_ok(
        unistore()
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .arg("--sysroot")
            .arg(root)
            .args(["upgrade", "--check", "--json"]),
    );
    assert!(
        out.contains("no-change"),
        "the source answers with the mirror down: {out}"
    );
    fsck_ok(root);
}

/// `--enforce-container-sigpolicy` with a `containers-policy.json` that
/// requires a GPG signature (`signedBy`) from a test key for the registry:
/// an accept-anything policy is refused, an unsigned image is refused before
/// anything is written, a signed one installs.
#[test]
fn signature_policy_is_enforced_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    let reg = Registry::start().unwrap();
    let addr = reg.addr();
    // v1 is pushed signed, v2 (another manifest: no signature) unsigned.
    // A signing key of the test's own.
    let gnupg = work.path().join("gnupg");
    std::fs::create_dir(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .arg("--batch")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "unistore test <test@unistore.invalid>",
        "default",
        "default",
        "never",
    ]);
    let listing = String::from_utf8(gpg(&["--list-keys", "--with-colons"])).unwrap();
    let fpr = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .unwrap()
        .split(':')
        .nth(9)
        .unwrap()
        .to_string();
    let key = work.path().join("key.gpg");
    std::fs::write(&key, gpg(&["--export"])).unwrap();
    // Signatures go to a lookaside directory the containers tools find
    // through registries.d (one file for this registry's port).
    let sigs = work.path().join("sigs");
    let regd = Path::new("/etc/containers/registries.d");
    std::fs::create_dir_all(regd).unwrap();
    let regd_file = regd.join(format!("unistore-test-{}.yaml", addr.replace(':', "-")));
    let _regd_guard = RemoveOnDrop(regd_file.clone());
    std::fs::write(
        &regd_file,
        format!(
            "docker:\n  {addr}:\n    lookaside: file://{0}\n    lookaside-staging: file://{0}\n",
            sigs.display()
        ),
    )
    .unwrap();
    image(&oci, "v2", 2);
    let push = |from: &str, tag: &str, sign: bool| {
        let mut c = Command::new("skopeo");
        c.env("GNUPGHOME", &gnupg)
            .args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if sign {
            c.args(["--sign-by", &fpr]);
        }
        let out = c
            .arg(format!("oci:{}:{from}", oci.display()))
            .arg(format!("docker://{addr}/os:{tag}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "push {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    push("v1", "signed", true);
    push("v2", "unsigned", false);
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {addr.clone(): [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": key}]}},
        })
        .to_string(),
    )
    .unwrap();
    let lax = work.path().join("lax.json");
    std::fs::write(&lax, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    let before = snapshot(root);
    let install = |policy: &Path, tag: &str| {
        let mut c = cmd(&reg);
        c.args(["--enforce-container-sigpolicy", "--signature-policy"])
            .arg(policy)
            .args([
                "install",
                "to-filesystem",
                "--source-imgref",
                &format!("docker://{addr}/os:{tag}"),
            ])
            .arg(root);
        c
    };
    run_fails(&mut install(&lax, "signed"), "accepts any image");
    assert_snapshots_equal(&before, &snapshot(root), "an accept-anything policy");
    run_fails(
        &mut install(&policy, "unsigned"),
        "a signature was required",
    );
    assert_snapshots_equal(&before, &snapshot(root), "an unsigned image");
    let out = run(&mut install(&policy, "signed"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fsck_ok(root);
    // The upgrade check applies the policy too.
    let check = run_ok(
        cmd(&reg)
            .args(["--enforce-container-sigpolicy", "--signature-policy"])
            .arg(&policy)
            .arg("--sysroot")
            .arg(root)
            .args(["upgrade", "--check", "--json"]),
    );
    assert!(check.contains("no-change"), "{check}");
}

/// A Docker image podman pulled into a store, installed from
/// `containers-storage:`: the store's (the registry's) manifest digest is
/// the image's identity; its files are the image's.
#[test]
fn docker_schema2_from_containers_storage() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", 1);
    let reg = Registry::start().unwrap();
    let src = reg.push_oci_docker(&oci, "v1", "os").unwrap();
    let (digest, _) = reg.raw_manifest("os", "v1").unwrap();
    let store = unistore_fixtures::env::PodmanStore::new().unwrap();
    let name = src.trim_start_matches("docker://");
    store
        .run(&["pull", "-q", "--tls-verify=false", name])
        .unwrap();
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let out = install(&reg, fs.path(), &store.storage_ref(name), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(booted_digest(fs.path()), digest);
    fsck_ok(fs.path());
    assert!(mount_and_compare(fs.path(), &img.expected) > 20);
}

/// Layers in zstd and in zstd:chunked (several zstd frames and a
/// skippable table of contents), from a registry: installed plain and
/// unified, the files are the image's, fsck is clean.
#[test]
fn zstd_and_zstd_chunked_layers() {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let img = image(&oci, "v1", 1);
    let reg = Registry::start().unwrap();
    for format in ["zstd", "zstd:chunked"] {
        let z = work.path().join(format.replace(':', "-"));
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-compress",
                "--dest-compress-format",
                format,
            ])
            .arg(format!("oci:{}:v1", oci.display()))
            .arg(format!("oci:{}:v1", z.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let repo = format!("z{}", format.replace(':', ""));
        let src = reg.push_oci(&z, "v1", &repo).unwrap();
        let (_, raw) = reg.raw_manifest(&repo, "v1").unwrap();
        let m: Value = serde_json::from_slice(&raw).unwrap();
        for l in m["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
                "{format}"
            );
            if format == "zstd:chunked" {
                assert!(
                    l["annotations"]["io.containers.zstd-chunked.manifest-position"].is_string(),
                    "{l}"
                );
            }
        }
        for flags in [&[][..], &["--unified", "enabled"][..]] {
            let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
            let out = install(&reg, fs.path(), &src, flags);
            assert!(
                out.status.success(),
                "{format} {flags:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            fsck_ok(fs.path());
            assert!(mount_and_compare(fs.path(), &img.expected) > 20, "{format}");
        }
    }
}
