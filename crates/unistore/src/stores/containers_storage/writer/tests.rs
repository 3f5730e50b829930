//! Tests of the native writer against real podman stores.

use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;

use composefs::repository::RepositoryConfig;
use unistore_fixtures::env::PodmanStore;
use unistore_fixtures::image::{TestImageOpts, build_test_image};

/// A composefs repository holding the test image; returns it with the
/// image's description.
fn repo_with_image(dir: &Path) -> (Arc<Repo>, unistore_fixtures::image::BuiltImage, PathBuf) {
    let oci = dir.join("oci");
    let built = build_test_image(&oci, "t", &TestImageOpts::default()).unwrap();
    let (repo, _) = Repo::init_path(
        rustix::fs::CWD,
        dir.join("repo"),
        RepositoryConfig::new(composefs::fsverity::Algorithm::SHA512).set_insecure(),
    )
    .unwrap();
    let repo = Arc::new(repo);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(composefs_oci::pull(
        &repo,
        &format!("oci:{}:t", oci.display()),
        None,
        Default::default(),
    ))
    .unwrap();
    (repo, built, oci)
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    content: Option<String>,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    mtime: Option<(i64, i64)>,
}

/// Every path of a `diff` tree. The mtimes of directories created on
/// the fly (now, not from the tar) and of whiteouts are left out.
fn scan(root: &Path) -> BTreeMap<PathBuf, Node> {
    let recent = chrono::Utc::now().timestamp() - 86400;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        let mut xattrs = BTreeMap::new();
        let mut names = vec![0u8; 65536];
        let n = rustix::fs::llistxattr(&p, &mut names).unwrap();
        for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let k = String::from_utf8_lossy(k).into_owned();
            let mut v = vec![0u8; 65536];
            let vn = rustix::fs::lgetxattr(&p, k.as_str(), &mut v).unwrap();
            xattrs.insert(k, v[..vn].to_vec());
        }
        let whiteout = ft.is_char_device() && m.rdev() == 0;
        let mtime = (!whiteout && m.mtime() < recent).then(|| (m.mtime(), m.mtime_nsec()));
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            Node {
                kind: format!("{ft:?}"),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                rdev: m.rdev(),
                content: ft
                    .is_file()
                    .then(|| fmt::sha256_digest(&std::fs::read(&p).unwrap())),
                target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                xattrs,
                mtime,
            },
        );
    }
    out
}

fn layers_by_id(store: &Path) -> BTreeMap<String, Value> {
    fmt::read_json_array(&store.join(LAYERS_JSON))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|l| (entry_id(&l).to_string(), l))
        .collect()
}

/// The writer's store matches, layer by layer, what podman writes from
/// the same image: the same ids, trees, tar-split records and JSON
/// records; each layer exports back to its diff-id; skopeo reads it.
#[test]
fn writes_what_podman_writes() {
    unistore_fixtures::env::require_root();
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    let (repo, built, oci) = repo_with_image(td.path());
    let store = td.path().join("store");
    let name = "localhost/unistore-test:w".to_string();
    let stats = write_image(&repo, &built.manifest_digest, &store, &copying_opts(&name)).unwrap();
    assert_eq!(
        stats.image_id,
        built.config_digest.trim_start_matches("sha256:")
    );
    assert_eq!(stats.layers_written.len(), built.diff_ids.len());
    assert!(stats.files_reflinked + stats.files_copied >= 4, "{stats:?}");

    // The reference: podman (skopeo into containers-storage).
    let podman = PodmanStore::new().unwrap();
    podman.import_oci(&oci, "t", &name).unwrap();
    let theirs = podman.root();
    let ids = fmt::chain_ids(&built.diff_ids).unwrap();
    let (ours_l, theirs_l) = (layers_by_id(&store), layers_by_id(&theirs));
    for (id, diff_id) in ids.iter().zip(&built.diff_ids) {
        let (o, t) = (&ours_l[id], &theirs_l[id]);
        for k in [
            "parent",
            "diff-digest",
            "diff-size",
            "compressed-diff-digest",
            "compressed-size",
            "compression",
            "uidset",
            "gidset",
        ] {
            assert_eq!(o.get(k), t.get(k), "layer {id}: {k}");
        }
        let diff = store.join(OVERLAY_DIR).join(id).join("diff");
        let (o_tree, t_tree) = (
            scan(&diff),
            scan(&theirs.join(OVERLAY_DIR).join(id).join("diff")),
        );
        assert_eq!(
            o_tree.keys().collect::<Vec<_>>(),
            t_tree.keys().collect::<Vec<_>>(),
            "layer {id}"
        );
        for (p, n) in &o_tree {
            assert_eq!(n, &t_tree[p], "layer {id}: /{}", p.display());
        }
        let o_split = fmt::read_tar_split(&store.join(fmt::tar_split_path(id))).unwrap();
        let t_split = fmt::read_tar_split(&theirs.join(fmt::tar_split_path(id))).unwrap();
        assert_eq!(o_split, t_split, "tar-split of layer {id}");
        let (digest, _) = fmt::assemble_layer(&diff, &o_split, &mut fmt::Sink).unwrap();
        assert_eq!(&digest, diff_id);
        assert!(layer_problem(&store, o, diff_id, true).is_none());
        // The overlay directory: link, lower, work, merged (empty).
        let dir = store.join(OVERLAY_DIR).join(id);
        let link = std::fs::read_to_string(dir.join("link")).unwrap();
        assert_eq!(link.len(), 26);
        assert_eq!(
            std::fs::read_link(store.join(LINK_DIR).join(&link)).unwrap(),
            PathBuf::from(format!("../{id}/diff"))
        );
        assert!(!dir.join(UNRECORDED_MARKER).exists());
        let tdir = theirs.join(OVERLAY_DIR).join(id);
        for f in ["work", "merged", "empty", "lower"] {
            assert_eq!(dir.join(f).exists(), tdir.join(f).exists(), "{f} of {id}");
        }
    }
    let img = |s: &Path| fmt::read_json_array(&s.join(IMAGES_JSON)).unwrap().unwrap()[0].clone();
    let (oi, ti) = (img(&store), img(&theirs));
    for k in [
        "id",
        "digest",
        "names",
        "layer",
        "big-data-names",
        "big-data-sizes",
        "big-data-digests",
        "metadata",
        "created",
    ] {
        assert_eq!(oi.get(k), ti.get(k), "image {k}");
    }
    let names = |s: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(s.join(IMAGES_DIR).join(&stats.image_id))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&store), names(&theirs));

    // skopeo exports each layer with its diff-id, from our store.
    let out = td.path().join("out");
    let runroot = td.path().join("runroot");
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!(
            "containers-storage:[overlay@{}+{}]{name}",
            store.display(),
            runroot.display()
        ))
        .arg(format!("dir:{}", out.display()))
        .status()
        .unwrap();
    assert!(st.success());
    for d in &built.diff_ids {
        let blob = out.join(d.trim_start_matches("sha256:"));
        assert_eq!(&fmt::sha256_digest(&std::fs::read(&blob).unwrap()), d);
    }
    unistore_fixtures::env::unmount_all_under(&runroot);

    // A second write reuses every layer.
    let again = write_image(
        &repo,
        &built.manifest_digest,
        &store,
        &WriteOptions {
            verify_reused: true,
            check_reused_files: true,
            ..copying_opts(&name)
        },
    )
    .unwrap();
    assert!(again.layers_written.is_empty());
    assert_eq!(again.layers_reused, built.diff_ids.len());
}

/// An unreadable `layers.json` stops the writer before it changes
/// anything; a missing diff directory is rebuilt in place.
#[test]
fn refuses_unreadable_json_and_rebuilds_a_missing_diff() {
    unistore_fixtures::env::require_root();
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    let (repo, built, _) = repo_with_image(td.path());
    let store = td.path().join("store");
    let opts = copying_opts("localhost/x:y");
    write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
    let ids = fmt::chain_ids(&built.diff_ids).unwrap();

    let json = store.join(LAYERS_JSON);
    let good = std::fs::read(&json).unwrap();
    std::fs::write(&json, &good[..good.len() / 2]).unwrap();
    std::fs::remove_dir_all(store.join(OVERLAY_DIR).join(&ids[1]).join("diff")).unwrap();
    let before = std::process::Command::new("find")
        .arg(&store)
        .args(["-printf", "%p %m %s %T@\\n"])
        .output()
        .unwrap()
        .stdout;
    let err = write_image(&repo, &built.manifest_digest, &store, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
    let after = std::process::Command::new("find")
        .arg(&store)
        .args(["-printf", "%p %m %s %T@\\n"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&after)
    );

    std::fs::write(&json, &good).unwrap();
    let layers = layers_by_id(&store);
    assert!(layer_problem(&store, &layers[&ids[1]], &built.diff_ids[1], true).is_some());
    let link_before =
        std::fs::read_to_string(store.join(OVERLAY_DIR).join(&ids[1]).join("link")).unwrap();
    let stats = write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
    assert_eq!(stats.layers_written, vec![ids[1].clone()]);
    let layers = layers_by_id(&store);
    assert!(layer_problem(&store, &layers[&ids[1]], &built.diff_ids[1], true).is_none());
    // Children still find it by its short name.
    let link_after =
        std::fs::read_to_string(store.join(OVERLAY_DIR).join(&ids[1]).join("link")).unwrap();
    assert_eq!(link_before, link_after);
    assert_eq!(layers.len(), ids.len());
}

/// A file missing from a recorded layer: a pull trusts the store's record
/// (as podman does) and reuses the layer; fsck's repair checks every file
/// and rebuilds it.
#[test]
fn missing_file_is_rebuilt_only_when_files_are_checked() {
    unistore_fixtures::env::require_root();
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    let (repo, built, _) = repo_with_image(td.path());
    let store = td.path().join("store");
    let mut opts = copying_opts("localhost/x:y");
    write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
    let ids = fmt::chain_ids(&built.diff_ids).unwrap();
    let diff = store.join(OVERLAY_DIR).join(&ids[0]).join("diff");
    let victim = walk_files(&diff)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("a non-empty file in the base layer");
    std::fs::remove_file(&victim).unwrap();
    let layers = layers_by_id(&store);
    assert!(layer_problem(&store, &layers[&ids[0]], &built.diff_ids[0], false).is_none());
    let p = layer_problem(&store, &layers[&ids[0]], &built.diff_ids[0], true).unwrap();
    assert!(
        p.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{p}"
    );

    let stats = write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
    assert!(stats.layers_written.is_empty());
    assert!(!victim.exists());
    opts.check_reused_files = true;
    let stats = write_image(&repo, &built.manifest_digest, &store, &opts).unwrap();
    assert!(
        stats.layers_written.contains(&ids[0]),
        "{:?}",
        stats.layers_written
    );
    assert!(victim.exists());
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(walk_files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// Options of a plain write under `name`: copies allowed, reused layers
/// judged by their record.
fn copying_opts(name: &str) -> WriteOptions {
    WriteOptions {
        names: vec![name.to_string()],
        allow_copy: true,
        verify_reused: false,
        check_reused_files: false,
        manifest: None,
    }
}
