//! Issue 25: one image, one tree. Crafted layers (empty and overlay xattrs,
//! hard links with their own headers, parents no layer declares, odd
//! whiteouts, hostile names) and generated ones, installed plain, unified on
//! XFS and on ostree hosts, compared file by file across the host's composefs
//! mount, the host store under podman, podman's own pull of the same image
//! and the ostree deployment. The differences allowed are the documented
//! ones (docs/differential.md): the host keeps only `security.capability`
//! of the xattrs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::stores::{Podman, image};
use common::trees::{E, Mounted, Node, diff, layer_tar, tree};
use common::*;
use unistore_fixtures::env::{FsKind, LoopFs};
use unistore_fixtures::image::add_raw_layer;

/// What the host (composefs) keeps of the xattrs.
fn host_xattr(k: &str) -> bool {
    k == "security.capability"
}

/// Every xattr but those a store adds itself (SELinux labels).
fn any_xattr(k: &str) -> bool {
    !k.starts_with("security.selinux")
}

/// The trees below `subs` of one image across the host mount, the host
/// store and podman's own pull; panics with every difference.
fn compare_everywhere(case: &str, root: &Path, src: &str, subs: &[&str]) -> BTreeMap<String, Node> {
    let host = Mounted::host(root);
    let store = Podman::new(root);
    let ids = store.images();
    let id = ids[0]["Id"].as_str().unwrap().to_string();
    let in_store = Mounted::podman(&store, &id);
    // podman's own pull of the same image into a scratch store.
    let scratch_dir = tempfile::tempdir().unwrap();
    let scratch = Podman {
        dir: tempfile::tempdir().unwrap(),
        store: scratch_dir.path().join("storage"),
        dirs: None,
    };
    let out = scratch.cmd().args(["pull", "-q", src]).output().unwrap();
    assert!(
        out.status.success(),
        "{case}: podman pull {src}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let pulled = Mounted::podman(&scratch, &pulled_id);

    let mut problems = vec![];
    let mut host_tree = BTreeMap::new();
    for sub in subs {
        let h = tree(&host.path, sub, &host_xattr);
        let s = tree(&in_store.path, sub, &any_xattr);
        let p = tree(&pulled.path, sub, &any_xattr);
        let s_host = tree(&in_store.path, sub, &host_xattr);
        problems.extend(diff("store", &s, "podman's pull", &p));
        problems.extend(diff("host", &h, "store", &s_host));
        host_tree.extend(h);
    }
    assert!(
        problems.is_empty(),
        "{case}: the trees differ:\n{}",
        problems.join("\n")
    );
    host_tree
}

fn fs_root(fs: &LoopFs, name: &str) -> PathBuf {
    let r = fs.path().join(name);
    std::fs::create_dir_all(&r).unwrap();
    r
}

fn install(src: &str, root: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = unistore();
    c.args(["install", "to-filesystem", "--source-imgref", src])
        .args(extra)
        .arg(root);
    c
}

fn gc_is_no_op(root: &Path) {
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(root)
            .args(["gc", "--assert-no-op"]),
    );
}

/// The crafted layer of the first items.
fn crafted() -> Vec<u8> {
    layer_tar(&[
        E::dir("gen/", 0o755),
        // An empty overlay xattr beside a real one, an empty whiteout
        // xattr, user xattrs (one empty).
        E::file("gen/meta", 0o644, b"metacopy\n")
            .xattr("trusted.overlay.metacopy", b"")
            .xattr("trusted.overlay.redirect", b"/elsewhere"),
        E::file("gen/wo", 0o644, b"whiteout\n").xattr("trusted.overlay.whiteout", b""),
        E::file("gen/user", 0o600, b"user\n")
            .xattr("user.kept", b"v")
            .xattr("user.empty", b""),
        // A hard link whose header says 0644 to a 0755 file.
        E::file("gen/hello", 0o755, b"#!/bin/sh\necho hello\n"),
        E::hardlink("gen/hello2", "gen/hello", 0o644),
        // setuid, sticky, an owner, an empty file, a symlink.
        E::file("gen/suid", 0o4755, b"suid\n"),
        E::dir("gen/sticky/", 0o1777),
        E::file("gen/owned", 0o640, b"owned\n").owner(1000, 1001),
        E::file("gen/empty", 0o644, b""),
        E::symlink("gen/link", "hello"),
        // Parents no layer declares.
        E::file("gen2/a/b/file", 0o644, b"deep\n"),
        E::dir("gen3/tmp/", 0o1777),
    ])
}

#[test]
fn crafted_layers_agree_across_host_store_and_podman() {
    let fs = LoopFs::new(FsKind::Xfs, 1200).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "1.0", 1, 0, None);
    add_raw_layer(&oci, "latest", "crafted", &crafted(), "crafted").unwrap();
    let src = format!("oci:{}:crafted", oci.display());

    // Unified on XFS: host, store and podman's pull agree.
    let root = fs_root(&fs, "unified");
    run_ok(&mut install(&src, &root, &["--unified", "enabled"]));
    gc_is_no_op(&root);
    run_ok(
        unistore()
            .arg("--sysroot")
            .arg(&root)
            .args(["fsck", "images", "--verify-content"]),
    );
    let host = compare_everywhere("unified", &root, &src, &["/gen", "/gen2", "/gen3"]);
    // The rules, spelled out.
    assert_eq!(host["/gen/hello"].mode, 0o644, "the link's header wins");
    assert_eq!(host["/gen/hello"].links, ["/gen/hello2"]);
    assert_eq!(host["/gen2"].mode, 0o755);
    assert_eq!((host["/gen2/a"].uid, host["/gen2/a"].mode), (0, 0o755));
    assert_eq!(host["/gen3/tmp"].mode, 0o1777);
    assert_eq!(host["/gen/suid"].mode, 0o4755);
    assert_eq!((host["/gen/owned"].uid, host["/gen/owned"].gid), (1000, 1001));
    // podman reads the files with overlay xattrs straight from the store.
    let store = Podman::new(&root);
    let id = store.images()[0]["Id"].as_str().unwrap().to_string();
    for f in ["/gen/meta", "/gen/wo"] {
        let out = store
            .cmd()
            .args(["run", "--rm", "--network=none", &id, "cat", f])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman run cat {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta_in_store = tree(
        &Mounted::podman(&store, &id).path,
        "/gen/meta",
        &any_xattr,
    );
    let x = &meta_in_store["/gen/meta"].xattrs;
    assert!(!x.contains_key("trusted.overlay.metacopy"), "{x:?}");
    assert_eq!(x["trusted.overlay.redirect"], b"/elsewhere");
    drop(store);

    // Plain: the same host tree.
    let plain = fs_root(&fs, "plain");
    run_ok(&mut install(&src, &plain, &[]));
    gc_is_no_op(&plain);
    let plain_host = Mounted::host(&plain);
    for sub in ["/gen", "/gen2", "/gen3"] {
        let t = tree(&plain_host.path, sub, &host_xattr);
        let want: BTreeMap<String, Node> = host
            .iter()
            .filter(|(k, _)| k.starts_with(sub))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let d = diff("plain host", &t, "unified host", &want);
        assert!(d.is_empty(), "{}", d.join("\n"));
    }
    drop(plain_host);

    // An ostree host: its deployment has the same tree.
    let ost = fs_root(&fs, "ostree");
    run_ok(&mut common::ostree::install_cmd(&ost, &src, None, &[]));
    let deploy = find_deployment(&ost);
    for sub in ["/gen", "/gen2", "/gen3"] {
        let t = tree(&deploy, sub, &host_xattr);
        let want: BTreeMap<String, Node> = host
            .iter()
            .filter(|(k, _)| k.starts_with(sub))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let d = diff("ostree deployment", &t, "composefs host", &want);
        assert!(d.is_empty(), "{}", d.join("\n"));
    }
}

/// The deployment directory of an ostree host (its only one).
fn find_deployment(root: &Path) -> PathBuf {
    let base = root.join("ostree/deploy");
    for st in std::fs::read_dir(&base).unwrap() {
        let d = st.unwrap().path().join("deploy");
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                return p;
            }
        }
    }
    panic!("no deployment under {}", base.display());
}

/// Odd whiteouts and a hostile path: refused the same way, with one line
/// naming the layer and the entry, in every mode; ROOT as it was.
#[test]
fn odd_whiteouts_are_refused_the_same_way_everywhere() {
    let fs = LoopFs::new(FsKind::Xfs, 1200).unwrap();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "1.0", 1, 0, None);
    let cases: [(&str, &str); 4] = [
        ("gen/.wh.", "empty name"),
        ("gen/.wh..", "\".\""),
        ("gen/.wh...", "\"..\""),
        ("../../escape", "leaves the image's root"),
    ];
    for (i, (name, why)) in cases.iter().enumerate() {
        let tag = format!("odd{i}");
        let raw = layer_tar(&[E::dir("gen/", 0o755), E::file(name, 0o644, b"")]);
        add_raw_layer(&oci, "latest", &tag, &raw, "odd").unwrap();
        let src = format!("oci:{}:{tag}", oci.display());
        for (mode, extra) in [
            ("plain", vec![]),
            ("unified", vec!["--unified", "enabled"]),
            ("ostree", vec!["--backend", "ostree"]),
        ] {
            let root = fs_root(&fs, &format!("{tag}-{mode}"));
            let before = snapshot(&root);
            let e = run_fails(&mut install(&src, &root, &extra), why);
            let entry = name.trim_start_matches("../..");
            assert!(e.contains(entry), "{mode} {name}: {e}");
            assert!(e.contains("layer 2 of 2"), "{mode} {name}: {e}");
            assert!(!e.contains("LeafId"), "{mode} {name}: {e}");
            assert_snapshots_equal(&before, &snapshot(&root), &format!("{mode} {name}"));
            eprintln!("ONE-TREE | {mode} | {name} | {e}");
        }
    }
}
