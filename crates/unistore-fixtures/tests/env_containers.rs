//! The loopback registry and podman, for real. Needs root.

mod common;

use common::host_executable_files;
use std::path::Path;
use std::process::Command;
use unistore_fixtures::env::cmd::run;
use unistore_fixtures::env::{PodmanStore, Registry, require_root};
use unistore_fixtures::image::{
    CompareOpts, TestImageOpts, XattrCheck, build_test_image, compare_tree,
};

#[test]
fn registry_push_inspect_and_pull() {
    require_root();
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    let oci = td.path().join("oci");
    let built = build_test_image(&oci, "v1", &TestImageOpts::default()).unwrap();
    let reg = Registry::start().unwrap();
    let addr = reg.addr();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let conf = std::fs::read_to_string(reg.registries_conf()).unwrap();
    assert!(conf.contains(&format!("location = \"{addr}\"")) && conf.contains("insecure = true"));

    let r = reg.push_oci(&oci, "v1", "unistore/test").unwrap();
    assert_eq!(r, format!("docker://{addr}/unistore/test:v1"));
    let out = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(&r))
    .unwrap();
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The OCI manifest goes up unchanged.
    assert_eq!(j["Digest"], built.manifest_digest.as_str());
    assert_eq!(j["Labels"]["org.opencontainers.image.version"], "1.0");

    // podman pulls over plain HTTP thanks to the registries.conf.
    let mut store = PodmanStore::new().unwrap();
    store.set_env(
        "CONTAINERS_REGISTRIES_CONF",
        reg.registries_conf().to_str().unwrap(),
    );
    let name = format!("{addr}/unistore/test:v1");
    store.run(&["pull", "-q", &name]).unwrap();
    let digest = store
        .run(&["image", "inspect", "--format", "{{.Digest}}", &name])
        .unwrap();
    assert_eq!(digest.trim(), built.manifest_digest);

    // Stopping the registry closes the port and removes its storage.
    drop(reg);
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn podman_runs_a_test_image_and_stores_the_expected_tree() {
    require_root();
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    let oci = td.path().join("oci");
    let opts = TestImageOpts {
        extra_files: host_executable_files("/usr/bin/cat"),
        ..Default::default()
    };
    let built = build_test_image(&oci, "run", &opts).unwrap();
    let store = PodmanStore::new().unwrap();
    let store_dir = store.root().parent().unwrap().to_owned();
    let image = "localhost/unistore-test:run";
    store.import_oci(&oci, "run", image).unwrap();
    let out = store
        .run(&[
            "run",
            "--rm",
            "--network=none",
            image,
            "/usr/bin/cat",
            "/etc/os-release",
            "/usr/share/unistore-test/opaque/new-1",
        ])
        .unwrap();
    assert!(out.contains("ID=testos\n"), "{out}");
    assert!(out.ends_with("new 1\n"), "{out}");

    // The image as stored by containers-storage equals the expected tree.
    let mnt = store.run(&["image", "mount", image]).unwrap();
    let diffs = compare_tree(
        Path::new(mnt.trim()),
        &built.expected,
        &CompareOpts {
            xattrs: XattrCheck::Layer,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        diffs.is_empty(),
        "podman tree differs:\n{}",
        diffs.join("\n")
    );
    // Leave the image mounted: dropping the store must clean up anyway.
    drop(store);
    assert!(unistore_fixtures::env::mounts::mounts_under(&store_dir).is_empty());
    assert!(!store_dir.exists());
}
