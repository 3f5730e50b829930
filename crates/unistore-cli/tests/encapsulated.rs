//! End-to-end: ostree-encapsulated images (issue 22), made by the real
//! `ostree commit` and ostree-ext 0.15.3's own `container encapsulate`
//! (the test-only peer), installed on both backends from an `oci:` layout
//! and a real registry on real XFS loop filesystems.
//!
//! The deployed tree must be the embedded commit's: every entry of an
//! `ostree checkout` of the source commit (owner, mode, content, xattrs:
//! `security.capability`, `user.*`, a directory's) is compared with the
//! mounted deployment; `/sysroot/ostree/repo` is not in it. On an ostree
//! host the first layer's blob ref is the embedded commit itself, `ostree
//! diff` between it and the deployment's commit is empty, the real `ostree
//! fsck` passes, and released bootc (ostree-ext 0.15.3) reads the host and
//! finds v1 present and v1's layer stored for v2.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::ostree::*;
use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::encapsulated::{self as encap, EncapsulatedImage};
use unistore_fixtures::image::synthetic::CAP_NET_RAW_EP;

/// The peer binary (`OSTREE_EXT_PEER`, else the crate's own build).
fn peer_path() -> PathBuf {
    PathBuf::from(peer().get_program())
}

/// v1 (encapsulated) and v2 (v1 + a plain layer) in `work/oci`.
struct Images {
    work: tempfile::TempDir,
    oci: PathBuf,
    v1: EncapsulatedImage,
    v2_digest: String,
    checkout: PathBuf,
}

fn images() -> Images {
    images_chunked(0)
}

/// [`images`], v1 chunked into `chunks` components when > 0.
fn images_chunked(chunks: usize) -> Images {
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    let v1 = encap::build_encapsulated_image_chunked(
        &peer_path(),
        work.path(),
        &oci,
        "v1",
        "1.0",
        chunks,
    )
    .unwrap();
    let v2_digest = encap::add_derived_layer(&oci, "v1", "v2").unwrap();
    let checkout = work.path().join("checkout");
    run_ok(
        Command::new("ostree")
            .arg(format!("--repo={}", v1.source_repo.display()))
            .args(["checkout", &v1.commit])
            .arg(&checkout),
    );
    Images {
        work,
        oci,
        v1,
        v2_digest,
        checkout,
    }
}

fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap();
    let mut out = vec![];
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, name.as_str(), &mut v).unwrap();
        out.push((name, v[..len].to_vec()));
    }
    out.sort();
    out
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs_of(p)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// What a comparison saw.
#[derive(Debug, Default)]
struct Compared {
    entries: usize,
    xattrs: usize,
}

/// Compares every entry of the checkout `want` with the tree at `got`
/// (type, owner, mode, size, content, symlink target, every xattr), except
/// below `skip` (paths relative to the root, no leading `/`).
fn compare_with_checkout(want: &Path, got: &Path, skip: &[&str]) -> Compared {
    let mut c = Compared::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(want.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if skip.iter().any(|s| r == Path::new(s)) {
                continue;
            }
            let (w, g) = (want.join(&r), got.join(&r));
            let wm = std::fs::symlink_metadata(&w).unwrap();
            let gm = std::fs::symlink_metadata(&g)
                .unwrap_or_else(|err| panic!("/{}: {err}", r.display()));
            assert_eq!(wm.file_type(), gm.file_type(), "type of /{}", r.display());
            assert_eq!(
                (wm.uid(), wm.gid()),
                (gm.uid(), gm.gid()),
                "owner of /{}",
                r.display()
            );
            if !wm.file_type().is_symlink() {
                assert_eq!(
                    wm.mode() & 0o7777,
                    gm.mode() & 0o7777,
                    "mode of /{}",
                    r.display()
                );
            }
            if wm.is_file() {
                assert_eq!(wm.len(), gm.len(), "size of /{}", r.display());
                assert_eq!(
                    sha256_file(&w),
                    sha256_file(&g),
                    "content of /{}",
                    r.display()
                );
            }
            if wm.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&w).unwrap(),
                    std::fs::read_link(&g).unwrap()
                );
            }
            let wx = xattrs_of(&w);
            assert_eq!(wx, xattrs_of(&g), "xattrs of /{}", r.display());
            c.entries += 1;
            c.xattrs += wx.len();
            if wm.is_dir() {
                stack.push(r);
            }
        }
    }
    c
}

/// The xattrs the fixture sets, as the booted system must see them.
fn check_fixture_xattrs(mnt: &Path) {
    let at = |p: &str| mnt.join(p.trim_start_matches('/'));
    assert_eq!(
        xattr(&at(encap::PING), "security.capability").as_deref(),
        Some(&CAP_NET_RAW_EP[..]),
        "security.capability of {}",
        encap::PING
    );
    assert_eq!(
        xattr(&at(encap::TAGGED), "user.test").as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        xattr(&at(encap::EMPTY_TAGGED), "user.test").as_deref(),
        Some(&b"empty"[..])
    );
    assert_eq!(
        xattr(&at(encap::TAGGED_DIR), "user.dir").as_deref(),
        Some(&b"d"[..])
    );
}

/// Mounts the booted deployment (`internals mount`) and runs `f` on it.
fn with_mounted<T>(root: &Path, f: impl FnOnce(&Path) -> T + std::panic::UnwindSafe) -> T {
    let mnt = tempfile::tempdir().unwrap();
    run_ok(cmd(root, None).args(["internals", "mount"]).arg(mnt.path()));
    let p = mnt.path().to_path_buf();
    let r = std::panic::catch_unwind(move || f(&p));
    umount_all(mnt.path());
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The mounted v1 tree is the commit's: every entry but `/etc` (the
/// deployment's own, checked apart) and what the boot image empties.
fn check_v1_tree(root: &Path, imgs: &Images, boot_emptied: bool) -> Compared {
    let checkout = imgs.checkout.clone();
    let c = with_mounted(root, move |mnt| {
        let mut skip = vec!["usr/etc"];
        if boot_emptied {
            skip.extend(["sysroot", "boot"]);
        }
        let c = compare_with_checkout(&checkout, mnt, &skip);
        check_fixture_xattrs(mnt);
        assert!(
            !mnt.join("sysroot/ostree/repo").exists(),
            "/sysroot/ostree/repo is deployed"
        );
        assert_eq!(std::fs::read_dir(mnt.join("sysroot")).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_to_string(mnt.join("etc/encap.conf")).unwrap(),
            "version=1.0\n"
        );
        c
    });
    eprintln!("v1 tree: {c:?}");
    assert!(c.entries >= 25, "{c:?}");
    assert!(c.xattrs >= 4, "{c:?}");
    c
}

/// The mounted v2 tree: v1's plus the derived layer.
fn check_v2_tree(root: &Path) {
    with_mounted(root, |mnt| {
        let at = |p: &str| mnt.join(p.trim_start_matches('/'));
        assert_eq!(
            xattr(&at(encap::PING), "security.capability").as_deref(),
            Some(&CAP_NET_RAW_EP[..])
        );
        assert_eq!(
            xattr(&at(encap::TAGGED_DIR), "user.dir").as_deref(),
            Some(&b"d"[..])
        );
        // The derived layer's own xattrs as any OCI layer's: the allowlist.
        assert_eq!(
            xattrs_of(&at(encap::DERIVED_FILE)),
            vec![("security.capability".to_string(), CAP_NET_RAW_EP.to_vec())]
        );
        assert_eq!(std::fs::read(at(encap::TAGGED)).unwrap(), b"tagged v2\n");
        assert_eq!(xattr(&at(encap::TAGGED), "user.test"), None);
        assert!(at(encap::TWINS[0]).is_file());
        assert!(!at(encap::TWINS[1]).exists(), "whiteout not applied");
        assert!(!mnt.join("sysroot/ostree/repo").exists());
    });
}

fn fsck_ok(root: &Path) {
    let f: Value = serde_json::from_str(&run_ok(cmd(root, None).args([
        "internals",
        "fsck",
        "--json",
    ])))
    .unwrap();
    assert_eq!(f["ok"], true, "internals fsck: {f:#}");
}

fn composefs_install(root: &Path, src: &str, reg: Option<&Registry>) -> Value {
    composefs_install_with(root, src, reg, &[])
}

fn composefs_install_with(root: &Path, src: &str, reg: Option<&Registry>, extra: &[&str]) -> Value {
    let mut c = unistore();
    if let Some(r) = reg {
        c.env("CONTAINERS_REGISTRIES_CONF", r.registries_conf());
    }
    c.args(["install", "to-filesystem", "--json", "--source-imgref", src])
        .args(extra)
        .arg(root);
    serde_json::from_str(&run_ok(&mut c)).unwrap()
}

/// The store's copies of `path` (one per layer holding it) below `store`.
fn store_copies(store: &Path, path: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(store.join("overlay"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .join("diff")
                .join(path.trim_start_matches('/'))
        })
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    out.sort();
    out
}

/// The host containers-storage of a unified host holds the ostree layer
/// as its tar has it (object store included), its files with their xattrs.
fn check_store_xattrs(store: &Path, imgs: &Images) -> usize {
    let ping = store_copies(store, encap::PING);
    assert_eq!(ping.len(), 1, "{ping:?}");
    let diff = ping[0].ancestors().nth(3).unwrap().to_path_buf();
    assert!(
        diff.join("sysroot/ostree/repo/objects").is_dir(),
        "the layer as its tar has it"
    );
    check_fixture_xattrs(&diff);
    // Every checkout path of the layer carries its commit's xattrs.
    let c = compare_xattrs_only(&imgs.checkout, &diff);
    eprintln!("store layer: {c} entries with xattrs");
    c
}

/// Counts the entries of `want` with xattrs, asserting `got` has the same.
fn compare_xattrs_only(want: &Path, got: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(want.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let layer_rel = match r.strip_prefix("usr/etc") {
                Ok(rest) => Path::new("etc").join(rest),
                Err(_) => r.clone(),
            };
            let wx = xattrs_of(&want.join(&r));
            let g = got.join(&layer_rel);
            if g.symlink_metadata().is_err() {
                // Directories the ostree writer adds to no layer.
                continue;
            }
            let mut gx = xattrs_of(&g);
            gx.retain(|(k, _)| !k.starts_with("trusted.overlay."));
            assert_eq!(wx, gx, "xattrs of /{} in the store", r.display());
            n += usize::from(!wx.is_empty());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            }
        }
    }
    n
}

#[test]
fn encapsulated_on_unified_hosts() {
    let imgs = images();
    let layout = format!("oci:{}:v1", imgs.oci.display());
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    composefs_install_with(root, &layout, None, &["--unified", "enabled"]);
    check_v1_tree(root, &imgs, true);
    assert!(check_store_xattrs(&root.join("composefs/bootc/storage"), &imgs) >= 4);
    fsck_ok(root);

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(
        root,
        &layout,
        None,
        &["--unified", "enabled"],
    ));
    check_ostree_v1(root, &imgs);
    assert!(check_store_xattrs(&root.join("ostree/bootc/storage"), &imgs) >= 4);
    drop(imgs.work);
}

/// How many entries of the first layer lie below `sysroot/ostree/repo`
/// (what a plain tar reader would deploy).
fn object_store_entries(imgs: &Images) -> usize {
    let blob =
        unistore_fixtures::image::oci::blob_path(&imgs.oci, &imgs.v1.layer_digests[0]).unwrap();
    let list = run_ok(Command::new("tar").arg("-tzf").arg(blob));
    list.lines()
        .filter(|l| l.starts_with("sysroot/ostree/repo"))
        .count()
}

#[test]
fn encapsulated_on_composefs_hosts() {
    let imgs = images();
    let n = object_store_entries(&imgs);
    eprintln!("the ostree layer holds {n} entries below sysroot/ostree/repo");
    assert!(n > 256, "{n}");
    let reg = Registry::start().unwrap();
    let pushed = reg.push_oci(&imgs.oci, "v1", "encap").unwrap();
    let layout = format!("oci:{}:v1", imgs.oci.display());
    let mut ids = vec![];
    for src in [&layout, &pushed] {
        let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        let root = fs.path();
        let r = composefs_install(root, src, Some(&reg));
        assert_eq!(r["manifest_digest"], imgs.v1.manifest_digest.as_str());
        let id = r["deployment_id"].as_str().unwrap().to_string();
        assert!(root.join(format!("composefs/images/{id}")).is_file());
        check_v1_tree(root, &imgs, true);
        // The deployment's /etc is the commit's usr/etc.
        let etc = root.join(format!("state/deploy/{id}/etc"));
        assert_eq!(
            std::fs::read_to_string(etc.join("encap.conf")).unwrap(),
            "version=1.0\n"
        );
        fsck_ok(root);
        run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "the same image gives the same deployment");

    // v2 (a plain layer on top) from the layout, as an upgrade of v1.
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    composefs_install(root, &layout, None);
    let src2 = format!("oci:{}:v2", imgs.oci.display());
    run_ok(cmd(root, None).args(["switch", &src2]));
    run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
    let st = status(root);
    assert_eq!(
        st["status"]["booted"]["image"]["imageDigest"],
        imgs.v1.manifest_digest.as_str()
    );
    let fs2 = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let r = composefs_install(fs2.path(), &src2, None);
    assert_eq!(r["manifest_digest"], imgs.v2_digest.as_str());
    check_v2_tree(fs2.path());
    fsck_ok(fs2.path());
    fsck_ok(root);
    drop(imgs.work);
}

fn ostree_cmd(root: &Path) -> Command {
    let mut c = Command::new("ostree");
    c.arg(format!("--repo={}", root.join("ostree/repo").display()));
    c
}

fn rev_parse(root: &Path, r: &str) -> String {
    run_ok(ostree_cmd(root).args(["rev-parse", r]))
        .trim()
        .to_string()
}

fn blob_ref(digest: &str) -> String {
    format!(
        "ostree/container/blob/sha256_3A_{}",
        digest.trim_start_matches("sha256:")
    )
}

/// An ostree host of v1: the embedded commit is the first layer's, the
/// deployment's tree is exactly it.
fn check_ostree_v1(root: &Path, imgs: &Images) -> String {
    ostree_fsck(root);
    let m = checksum(&status(root), "booted");
    assert_eq!(
        rev_parse(root, &blob_ref(&imgs.v1.layer_digests[0])),
        imgs.v1.commit
    );
    let diff = run_ok(ostree_cmd(root).args(["diff", &imgs.v1.commit, &m]));
    assert_eq!(diff.trim(), "", "ostree diff embedded merge");
    // The same root dirtree and dirmeta.
    let show = |c: &str| run_ok(ostree_cmd(root).args(["ls", "-d", "-C", c, "/"]));
    assert_eq!(show(&imgs.v1.commit), show(&m));
    let ls = run_ok(ostree_cmd(root).args(["ls", "-R", &m]));
    assert!(!ls.contains("/sysroot/ostree"), "{ls}");
    check_v1_tree(root, imgs, false);
    fsck_ok(root);
    bootc_reads(root);
    m
}

#[test]
fn encapsulated_on_ostree_hosts() {
    let imgs = images();
    let reg = Registry::start().unwrap();
    let pushed = reg.push_oci(&imgs.oci, "v1", "encap").unwrap();
    let pushed2 = reg.push_oci(&imgs.oci, "v2", "encap").unwrap();
    let layout = format!("oci:{}:v1", imgs.oci.display());

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    run_ok(&mut install_cmd(fs.path(), &layout, None, &[]));
    check_ostree_v1(fs.path(), &imgs);
    run_ok(cmd(fs.path(), None).args(["internals", "gc", "--assert-no-op"]));

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(root, &pushed, Some(&reg), &[]));
    check_ostree_v1(root, &imgs);
    let repo = root.join("ostree/repo");
    let repo = repo.to_str().unwrap();
    let name = pushed.trim_start_matches("docker://");
    let p1 = peer_json(&[
        "prepare",
        "--repo",
        repo,
        "--imgref",
        &format!("ostree-unverified-registry:{name}"),
        "--insecure",
    ]);
    assert_eq!(p1["result"], "AlreadyPresent", "{p1}");
    let name2 = pushed2.trim_start_matches("docker://");
    let p2 = peer_json(&[
        "prepare",
        "--repo",
        repo,
        "--imgref",
        &format!("ostree-unverified-registry:{name2}"),
        "--insecure",
    ]);
    assert_eq!(p2["result"], "Ready", "{p2}");
    let stored = p2["stored"].as_array().unwrap();
    assert_eq!(stored.len(), 1, "{p2}");
    assert_eq!(stored[0]["commit"], imgs.v1.commit.as_str(), "{p2}");

    // v2 by a switch: the ostree layer is v1's, the derived layer on top.
    run_ok(cmd(root, Some(&reg)).args(["switch", &pushed2]));
    ostree_fsck(root);
    let m2 = checksum(&status(root), "booted");
    let (_, layers2) = encap::manifest_of(&imgs.oci, "v2").unwrap();
    assert_eq!(layers2[0], imgs.v1.layer_digests[0]);
    assert_eq!(rev_parse(root, &blob_ref(&layers2[0])), imgs.v1.commit);
    rev_parse(root, &blob_ref(&layers2[1]));
    let diff = run_ok(ostree_cmd(root).args(["diff", &imgs.v1.commit, &m2]));
    let mut lines: Vec<&str> = diff.lines().map(str::trim).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "A    /usr/bin/derived",
            "A    /usr/etc/derived.conf",
            "D    /usr/lib/twin-b",
            "M    /usr/bin/tagged",
        ],
        "{diff}"
    );
    check_v2_tree(root);
    fsck_ok(root);
    run_ok(cmd(root, None).args(["internals", "gc", "--assert-no-op"]));
    bootc_reads_and_prunes(root);
    drop(imgs.work);
}

/// Every blob ref of the repository at `repo` with its commit.
fn blob_refs(repo: &Path) -> Vec<(String, String)> {
    let mut c = Command::new("ostree");
    c.arg(format!("--repo={}", repo.display()));
    let names = run_ok(c.args(["refs", "--list", "ostree/container/blob"]));
    names
        .lines()
        .filter(|l| !l.is_empty())
        .map(|n| {
            let c = run_ok(
                Command::new("ostree")
                    .arg(format!("--repo={}", repo.display()))
                    .args(["rev-parse", n]),
            );
            (n.to_string(), c.trim().to_string())
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// A chunked image (the commit layer, four component layers, the last
/// ostree layer), as rpm-ostree builds Fedora's: the same tree on both
/// backends, and on an ostree host the same layer commits as ostree-ext's
/// own import of the image (the commit layer's is the embedded commit, the
/// others its synthetic object-set commits).
#[test]
fn encapsulated_chunked_on_both_backends() {
    let imgs = images_chunked(4);
    assert_eq!(
        imgs.v1.layer_digests.len(),
        6,
        "{:?}",
        imgs.v1.layer_digests
    );
    let layout = format!("oci:{}:v1", imgs.oci.display());

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    composefs_install(fs.path(), &layout, None);
    check_v1_tree(fs.path(), &imgs, true);
    fsck_ok(fs.path());

    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    run_ok(&mut install_cmd(root, &layout, None, &[]));
    check_ostree_v1(root, &imgs);

    // ostree-ext's own import of the same image, into a fresh repository.
    let theirs = imgs.work.path().join("peer-repo");
    run_ok(
        Command::new("ostree")
            .arg(format!("--repo={}", theirs.display()))
            .args(["init", "--mode=bare"]),
    );
    run_ok(
        peer()
            .args(["cli", "container", "image", "pull", "--quiet"])
            .arg(&theirs)
            .arg(format!("ostree-unverified-image:{layout}")),
    );
    let theirs = blob_refs(&theirs);
    assert_eq!(theirs.len(), 6, "{theirs:?}");
    assert_eq!(blob_refs(&root.join("ostree/repo")), theirs);
    drop(imgs.work);
}

/// Images that lie about their commit are refused before anything is
/// deployed: a content object whose content is not what its name says (on
/// an ostree host, where every object is verified), a dirtree object
/// (either backend: the tree comes from the commit's objects).
#[test]
fn encapsulated_lies_are_refused() {
    let imgs = images();
    let bad_file = encap::tamper_first_layer(
        &imgs.oci,
        "v1",
        "bad-file",
        encap::Tamper::ObjectOf(encap::BIG),
    )
    .unwrap();
    let bad_tree = encap::tamper_first_layer(
        &imgs.oci,
        "v1",
        "bad-tree",
        encap::Tamper::FirstObject(".dirtree"),
    )
    .unwrap();
    assert_ne!(bad_file, bad_tree);
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    let before = snapshot(root);
    let src = format!("oci:{}:bad-file", imgs.oci.display());
    run_fails(&mut install_cmd(root, &src, None, &[]), "checksum");
    assert_snapshots_equal(&before, &snapshot(root), "a refused install");
    let src = format!("oci:{}:bad-tree", imgs.oci.display());
    run_fails(&mut install_cmd(root, &src, None, &[]), "checksum");
    assert_snapshots_equal(&before, &snapshot(root), "a refused install");
    let mut c = unistore();
    c.args(["install", "to-filesystem", "--source-imgref", &src])
        .arg(root);
    run_fails(&mut c, "checksum");
    drop(imgs.work);
}
