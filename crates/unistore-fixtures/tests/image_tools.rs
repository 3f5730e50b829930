//! Generated images checked with the real container tools (skopeo, umoci) and the binary.
//! Needs root (umoci preserves owners only as root).

mod common;

use common::{sh, umoci_unpack};
use std::process::Command;
use unistore_fixtures::env::require_root;
use unistore_fixtures::image::{
    CompareOpts, EntryKind, TestImageOpts, XattrCheck, build_from_rootfs, build_test_image,
    compare_tree, corrupt_first_layer_blob,
};

#[test]
fn skopeo_sees_labels_platform_and_layers() {
    let td = tempfile::tempdir().unwrap();
    let oci = td.path().join("oci");
    let opts = TestImageOpts {
        version: "4.2".into(),
        ..Default::default()
    };
    let built = build_test_image(&oci, "v4", &opts).unwrap();
    let out = sh("skopeo", &["inspect", &format!("oci:{}:v4", oci.display())]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["Digest"], built.manifest_digest.as_str());
    assert_eq!(j["Labels"]["org.opencontainers.image.version"], "4.2");
    assert_eq!(j["Architecture"], "amd64");
    assert_eq!(j["Os"], "linux");
    assert_eq!(j["Created"], "2024-01-01T00:00:00Z");
    assert_eq!(j["Layers"].as_array().unwrap().len(), 3);
}

#[test]
fn umoci_unpack_matches_expected_tree() {
    require_root();
    let td = tempfile::tempdir().unwrap();
    let oci = td.path().join("oci");
    let built = build_test_image(&oci, "v1", &TestImageOpts::default()).unwrap();
    let rootfs = umoci_unpack(&oci, "v1", &td.path().join("bundle"));
    let opts = CompareOpts {
        xattrs: XattrCheck::Layer,
        ..Default::default()
    };
    let diffs = compare_tree(&rootfs, &built.expected, &opts).unwrap();
    assert!(
        diffs.is_empty(),
        "umoci tree differs:\n{}",
        diffs.join("\n")
    );
    let osr = std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap();
    assert!(
        osr.contains("ID=testos\n") && osr.contains("VERSION_ID=1.0\n"),
        "{osr}"
    );
}

#[test]
fn from_rootfs_round_trips_through_umoci() {
    require_root();
    let td = tempfile::tempdir().unwrap();
    // Make a rootfs from the unpacked test image, then pack it again.
    let oci = td.path().join("oci");
    build_test_image(&oci, "src", &TestImageOpts::default()).unwrap();
    let src = umoci_unpack(&oci, "src", &td.path().join("src"));
    std::fs::write(src.join("dev/not-packed"), b"x").unwrap();
    let repacked = build_from_rootfs(&src, &oci, "repacked", "7").unwrap();
    assert_eq!(repacked.diff_ids.len(), 2);
    assert!(repacked.entry("/dev").is_some());
    assert!(repacked.entry("/dev/not-packed").is_none());
    std::fs::remove_file(src.join("dev/not-packed")).unwrap();
    // Packing preserved everything the source tree has (hard links, modes, xattrs...).
    let opts = CompareOpts {
        xattrs: XattrCheck::Layer,
        ..Default::default()
    };
    let diffs = compare_tree(&src, &repacked.expected, &opts).unwrap();
    assert!(diffs.is_empty(), "repacked differs:\n{}", diffs.join("\n"));
    // And a tool unpacking it sees the same.
    let out = umoci_unpack(&oci, "repacked", &td.path().join("out"));
    let diffs = compare_tree(&out, &repacked.expected, &opts).unwrap();
    assert!(diffs.is_empty(), "unpacked differs:\n{}", diffs.join("\n"));
    let hl = repacked
        .entry("/usr/share/unistore-test/hardlink-b")
        .unwrap();
    assert!(matches!(hl.kind, EntryKind::Hardlink { .. }), "{hl:?}");
}

#[test]
fn corrupted_layer_is_rejected_by_skopeo() {
    let td = tempfile::tempdir().unwrap();
    let oci = td.path().join("oci");
    build_test_image(&oci, "v1", &TestImageOpts::default()).unwrap();
    corrupt_first_layer_blob(&oci).unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", oci.display()))
        .arg(format!("dir:{}", td.path().join("copy").display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "skopeo accepted a corrupt blob");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("digest"), "{err}");
}

#[test]
fn binary_is_deterministic_and_agrees_with_library() {
    let td = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_unistore-fixture");
    let dir = td.path().join("cli");
    let out = sh(
        bin,
        &[
            "test-image",
            "--out",
            dir.to_str().unwrap(),
            "--tag",
            "v2",
            "--version",
            "2.0",
            "--variant",
            "2",
            "--no-kernel",
        ],
    );
    let lib = build_test_image(
        &td.path().join("lib"),
        "v2",
        &TestImageOpts {
            version: "2.0".into(),
            variant: 2,
            with_kernel: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(out.trim(), lib.manifest_digest);

    // from-rootfs through the binary.
    let root = td.path().join("root");
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::write(root.join("usr/lib/os-release"), b"ID=x\n").unwrap();
    let out = sh(
        bin,
        &[
            "from-rootfs",
            root.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--tag",
            "r",
            "--version",
            "5",
        ],
    );
    assert!(out.trim().starts_with("sha256:"), "{out}");
    let j = sh("skopeo", &["inspect", &format!("oci:{}:r", dir.display())]);
    assert!(
        j.contains("\"org.opencontainers.image.version\": \"5\""),
        "{j}"
    );
}
