//! Issue 26: zstd:chunked partial pulls. Two images pushed to a real
//! registry as zstd:chunked, the second rebuilding the large layer with 1%
//! of its files changed: an upgrade fetches the table of contents and the
//! changed files only (counted in the registry's access log), on a plain
//! and a unified composefs host and on a bound ostree host, and ends with
//! the same repository, store and boot image as a host installed from v2
//! directly. A table of contents that lies, or a blob that returns other
//! bytes, fails the upgrade with one line naming the layer and the file,
//! and leaves the host as it was.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};

const FILES: usize = 400;

/// The v1 and v2 images in an OCI layout, and what changed.
struct Images {
    oci: PathBuf,
    /// Paths (in the image) of the changed files.
    changed: Vec<String>,
}

/// A root filesystem of `FILES` payload files under /usr (text and random,
/// 1 to 60 KiB), `cat` and its libraries, a kernel and os-release.
fn rootfs(dir: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    for (p, data) in unistore_fixtures::image::host_executable_files("/usr/bin/cat").unwrap() {
        w(p.trim_start_matches('/'), &data);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir.join(p.trim_start_matches('/')), mode).unwrap();
    }
    w(
        "usr/lib/os-release",
        b"NAME=partial\nID=partial\nVERSION_ID=1\n",
    );
    w("usr/lib/modules/6.1.0-test/vmlinuz", b"kernel 6.1.0-test\n");
    w("usr/lib/modules/6.1.0-test/initramfs.img", b"initramfs\n");
    for i in 0..FILES {
        let len = 1024 + (i * 7919) % (60 << 10);
        let data = if i % 2 == 0 {
            unistore_fixtures::rng::pseudo_random_bytes(&format!("f{i}"), len)
        } else {
            format!("line {i} of a text file\n")
                .repeat(len / 24)
                .into_bytes()
        };
        w(&format!("usr/share/payload/d{}/f{i}", i % 20), &data);
    }
    for l in ["lib", "lib64", "bin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), dir.join(l)).unwrap();
    }
    for d in ["sysroot", "boot", "var", "tmp", "run", "proc", "sys", "dev"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/hostname"), "partial\n").unwrap();
}

fn build(work: &Path) -> Images {
    let root = work.join("rootfs");
    rootfs(&root);
    let oci = work.join("oci");
    unistore_fixtures::image::build_from_rootfs(&root, &oci, "v1", "1.0").unwrap();
    // 1% of the payload files change; the others keep their bytes and times.
    let mut changed = vec![];
    // Random (incompressible) and text files alike.
    for i in (0..FILES).step_by(100).flat_map(|i| [i, i + 1]) {
        let rel = format!("usr/share/payload/d{}/f{i}", i % 20);
        let p = root.join(&rel);
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        let mut data = std::fs::read(&p).unwrap();
        data.extend_from_slice(b"changed in v2\n");
        std::fs::write(&p, data).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        changed.push(rel);
    }
    unistore_fixtures::image::build_from_rootfs(&root, &oci, "v2", "2.0").unwrap();
    Images { oci, changed }
}

/// The large layer of `tag`: (digest, size, table of contents length),
/// and the table's entries.
fn big_layer(reg: &Registry, repo: &str, tag: &str) -> (String, u64, u64, Vec<Value>) {
    let (_, raw) = reg.raw_manifest(repo, tag).unwrap();
    let m: Value = serde_json::from_slice(&raw).unwrap();
    let l = &m["layers"][0];
    let digest = l["digest"].as_str().unwrap().to_string();
    let pos = l["annotations"]["io.containers.zstd-chunked.manifest-position"]
        .as_str()
        .unwrap_or_else(|| panic!("not zstd:chunked: {l}"));
    let n: Vec<u64> = pos.split(':').map(|x| x.parse().unwrap()).collect();
    let blob = std::fs::read(reg.blob_file(&digest)).unwrap();
    let toc = zstd::decode_all(&blob[n[0] as usize..(n[0] + n[1]) as usize]).unwrap();
    let toc: Value = serde_json::from_slice(&toc).unwrap();
    let entries = toc["entries"].as_array().unwrap().clone();
    (digest, l["size"].as_u64().unwrap(), n[1], entries)
}

fn cmd(reg: &Registry, root: &Path) -> std::process::Command {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .arg("--sysroot")
        .arg(root);
    c
}

fn install(reg: &Registry, root: &Path, src: &str, extra: &[&str]) {
    let mut c = unistore();
    c.env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
        .args(["install", "to-filesystem"])
        .args(extra)
        .args(["--source-imgref", src])
        .arg(root);
    run_ok(&mut c);
}

/// `status --json` of the host at `root`.
fn status(root: &Path) -> Value {
    common::ostree::status(root)
}

/// The bytes the registry sent of blob `digest` since `mark`.
fn blob_sent(reg: &Registry, mark: usize, digest: &str) -> u64 {
    reg.blob_bytes_since(mark)
        .get(digest)
        .map_or(0, |(_, b)| *b)
}

/// The fs-verity id of a layer's splitstream in the repository.
fn layer_stream(root: &Path, diff_id: &str) -> Option<PathBuf> {
    std::fs::read_link(root.join(format!("composefs/streams/oci-layer-{diff_id}"))).ok()
}

fn diff_ids(oci: &Path, tag: &str) -> Vec<String> {
    let out = run_ok(std::process::Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{}:{tag}", oci.display()),
    ]));
    let c: Value = serde_json::from_str(&out).unwrap();
    c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// The store's record of the layer `diff_id` and its tar-split, as bytes.
fn store_layer(root: &Path, diff_id: &str) -> (Value, Vec<u8>) {
    let store = root.join(common::stores::STORE);
    let layers: Value =
        serde_json::from_slice(&std::fs::read(store.join("overlay-layers/layers.json")).unwrap())
            .unwrap();
    let l = layers
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["diff-digest"] == diff_id)
        .unwrap_or_else(|| panic!("no store layer {diff_id}"))
        .clone();
    let split = std::fs::read(store.join(format!(
        "overlay-layers/{}.tar-split.gz",
        l["id"].as_str().unwrap()
    )))
    .unwrap();
    let keep = [
        "diff-digest",
        "diff-size",
        "compressed-diff-digest",
        "compressed-size",
        "uidset",
        "gidset",
    ];
    let fields = keep
        .iter()
        .map(|k| (k.to_string(), l[*k].clone()))
        .collect();
    (Value::Object(fields), split)
}

/// The two images, built and pushed as zstd:chunked to a new registry
/// (`os:v1`, `os:v2`).
fn setup() -> (tempfile::TempDir, Images, Registry, String, String) {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let imgs = build(work.path());
    let reg = Registry::start().unwrap();
    let v1 = reg.push_oci_zstd_chunked(&imgs.oci, "v1", "os").unwrap();
    let v2 = reg.push_oci_zstd_chunked(&imgs.oci, "v2", "os").unwrap();
    (work, imgs, reg, v1, v2)
}

#[test]
fn upgrades_fetch_only_the_changed_files_and_match_a_fresh_install() {
    let (_work, imgs, reg, v1, v2) = setup();
    let (digest, size, toc_len, entries) = big_layer(&reg, "os", "v2");
    let changed: u64 = entries
        .iter()
        .filter(|e| e["type"] == "reg" && imgs.changed.iter().any(|c| e["name"] == c.as_str()))
        .map(|e| e["endOffset"].as_u64().unwrap() - e["offset"].as_u64().unwrap())
        .sum();
    assert!(changed > 0, "the changed files are not in the table");
    // The tar headers between contents: what a host without the headers of
    // v1 (an ostree host bound to composefs, before its first upgrade)
    // fetches besides.
    let contents: u64 = entries
        .iter()
        .filter(|e| e["type"] == "reg" && e["endOffset"].is_u64())
        .map(|e| e["endOffset"].as_u64().unwrap() - e["offset"].as_u64().unwrap())
        .sum();
    let headers = size - toc_len - 56 - contents;
    let ids = diff_ids(&imgs.oci, "v2");
    for mode in ["plain", "unified", "ostree-bound"] {
        let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        let root = fs.path();
        let extra: &[&str] = match mode {
            "unified" => &["--unified", "enabled"],
            "ostree-bound" => &["--backend", "ostree"],
            _ => &[],
        };
        install(&reg, root, &v1, extra);
        if mode == "ostree-bound" {
            run_ok(cmd(&reg, root).args(["image", "set-unified", "composefs"]));
        }
        let mark = reg.log_mark();
        let out = run(cmd(&reg, root).args(["switch", &v2]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("Layer 1 of 2: zstd:chunked, fetched"))
            .unwrap_or_else(|| panic!("{mode}: no partial pull said: {err}"));
        assert!(
            line.contains(&format!("({} of ", imgs.changed.len())),
            "{mode}: {line}"
        );
        let sent = reg.blob_bytes_since(mark);
        let (requests, bytes) = sent.get(&digest).copied().unwrap_or_default();
        eprintln!(
            "{mode}: {bytes} bytes in {requests} requests of a {size}-byte layer; changed files {changed} bytes compressed, table {toc_len}"
        );
        assert!(
            requests > 0,
            "{mode}: the large layer was not fetched at all: {sent:?}"
        );
        let more = if mode == "ostree-bound" { headers } else { 0 };
        assert!(
            (bytes as f64) <= 1.2 * changed as f64 + (toc_len + more) as f64 + 4096.0,
            "{mode}: {bytes} bytes fetched for {changed} bytes of changed files, a {toc_len}-byte table and {more} bytes of headers"
        );
        assert!(bytes < size / 5, "{mode}: {bytes} of {size}");
        // The same steps with whole layers write the same: the layers'
        // splitstreams, the deployment (boot image or ostree commit), the
        // store's layers.
        let whole = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        install(&reg, whole.path(), &v1, extra);
        if mode == "ostree-bound" {
            run_ok(cmd(&reg, whole.path()).args(["image", "set-unified", "composefs"]));
        }
        let mark = reg.log_mark();
        let out = run_ok(
            cmd(&reg, whole.path())
                .env("UNISTORE_WHOLE_LAYERS", "1")
                .args(["switch", &v2]),
        );
        let _ = out;
        let whole_bytes = blob_sent(&reg, mark, &digest);
        eprintln!("{mode}: whole layers: {whole_bytes} bytes of the large layer");
        assert!(
            whole_bytes >= size,
            "{mode}: the whole pull fetched {whole_bytes} of {size}"
        );
        for d in &ids {
            let (a, b) = (layer_stream(root, d), layer_stream(whole.path(), d));
            assert!(a.is_some(), "{mode}: no splitstream of {d}");
            assert_eq!(
                a, b,
                "{mode}: the splitstream of {d} differs from a whole pull's"
            );
        }
        let (st, st_whole) = (status(root), status(whole.path()));
        let ours = &st["status"]["staged"];
        let theirs = &st_whole["status"]["staged"];
        assert_eq!(
            ours["image"]["imageDigest"], theirs["image"]["imageDigest"],
            "{mode}"
        );
        if mode != "ostree-bound" {
            assert_eq!(
                ours["composefs"]["verity"], theirs["composefs"]["verity"],
                "{mode}: the boot image differs from a whole pull's"
            );
            // And from a host installed from v2 directly.
            let fresh = LoopFs::new(FsKind::Xfs, 1024).unwrap();
            install(&reg, fresh.path(), &v2, extra);
            let booted = &status(fresh.path())["status"]["booted"];
            assert_eq!(
                ours["composefs"]["verity"], booted["composefs"]["verity"],
                "{mode}"
            );
            for d in &ids {
                assert_eq!(
                    layer_stream(root, d),
                    layer_stream(fresh.path(), d),
                    "{mode}: {d}"
                );
            }
        } else {
            assert_eq!(
                ours["ostree"]["checksum"], theirs["ostree"]["checksum"],
                "{mode}"
            );
            common::ostree::ostree_fsck(root);
        }
        if mode == "unified" {
            for d in &ids {
                assert_eq!(
                    store_layer(root, d),
                    store_layer(whole.path(), d),
                    "{mode}: store layer {d}"
                );
            }
            let podman = common::stores::Podman::new(root);
            let o = run_ok(
                podman
                    .cmd()
                    .args([
                        "run",
                        "--rm",
                        "--net=none",
                        v2.trim_start_matches("docker://"),
                    ])
                    .args(["/usr/bin/cat", &format!("/{}", imgs.changed[1])]),
            );
            assert!(o.ends_with("changed in v2\n"), "{mode}: podman reads {o:?}");
        }
        run_ok(cmd(&reg, root).args(["internals", "fsck", "--verify-content"]));
        run_ok(cmd(&reg, root).args(["internals", "gc", "--assert-no-op"]));
    }
}

/// Rewrites the large layer of `tag` in the OCI layout `oci` (zstd:chunked)
/// with its table of contents changed by `lie`, as a new tag `out_tag`.
fn lying_image(oci: &Path, tag: &str, out_tag: &str, lie: impl Fn(&mut Vec<Value>)) {
    use sha2::Digest;
    let mut lay = common::layout::Layout::open(oci);
    let (desc, mut manifest) = lay.manifest(tag);
    let l = &mut manifest["layers"][0];
    let key = "io.containers.zstd-chunked.manifest-position";
    let n: Vec<u64> = l["annotations"][key]
        .as_str()
        .unwrap()
        .split(':')
        .map(|x| x.parse().unwrap())
        .collect();
    let data = lay.read(l["digest"].as_str().unwrap());
    let table = zstd::decode_all(&data[n[0] as usize..(n[0] + n[1]) as usize]).unwrap();
    let mut toc: Value = serde_json::from_slice(&table).unwrap();
    lie(toc["entries"].as_array_mut().unwrap());
    let json = serde_json::to_vec(&toc).unwrap();
    let z = zstd::encode_all(&json[..], 3).unwrap();
    // The tar frames, the table in a skippable frame, the footer.
    let mut out = data[..(n[0] - 8) as usize].to_vec();
    let offset = out.len() as u64 + 8;
    let skippable = 0x184D2A50u32.to_le_bytes();
    out.extend_from_slice(&skippable);
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend_from_slice(&z);
    out.extend_from_slice(&skippable);
    out.extend_from_slice(&40u32.to_le_bytes());
    for v in [offset, z.len() as u64, json.len() as u64, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"GnUlInUx");
    let (d, size) = lay.put(&out);
    l["digest"] = d.into();
    l["size"] = size.into();
    l["annotations"][key] = format!("{offset}:{}:{}:1", z.len(), json.len()).into();
    l["annotations"]["io.containers.zstd-chunked.manifest-checksum"] =
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&z))).into();
    lay.tag(&desc, &manifest, out_tag);
}

#[test]
fn lying_tables_and_blobs_fail_naming_the_layer_and_the_file() {
    let (work, imgs, reg, v1, v2) = setup();
    // The pushed layout, zstd:chunked, to rewrite.
    let z = work.path().join("z");
    run_ok(
        std::process::Command::new("skopeo")
            .env("CONTAINERS_REGISTRIES_CONF", reg.registries_conf())
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &v2,
                &format!("oci:{}:v2", z.display()),
            ]),
    );
    let target = imgs.changed[1].clone();
    let t = target.clone();
    lying_image(&z, "v2", "digest", |es| {
        let e = es.iter_mut().find(|e| e["name"] == t.as_str()).unwrap();
        e["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    });
    let t = target.clone();
    lying_image(&z, "v2", "offset", |es| {
        let e = es.iter_mut().find(|e| e["name"] == t.as_str()).unwrap();
        let o = e["offset"].as_u64().unwrap();
        e["offset"] = (o + 3).into();
    });
    let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
    let root = fs.path();
    install(&reg, root, &v1, &[]);
    let before = status(root);
    for lie in ["digest", "offset"] {
        let src = reg.push_oci(&z, lie, "os").unwrap();
        let line = run_fails(cmd(&reg, root).args(["switch", &src]), "layer 1 of 2");
        assert!(
            line.contains("layer 1 of 2") && line.contains(&format!("{target:?}")),
            "{lie}: {line}"
        );
        eprintln!("{lie}: {line}");
    }
    // A blob that returns other bytes for a changed file.
    let (digest, _, _, entries) = big_layer(&reg, "os", "v2");
    let e = entries
        .iter()
        .find(|e| e["name"] == target.as_str())
        .unwrap();
    let path = reg.blob_file(&digest);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let at = e["offset"].as_u64().unwrap() as usize + 10;
    bad[at] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let out = run(cmd(&reg, root).args(["switch", &v2]));
    std::fs::write(&path, &good).unwrap();
    assert!(!out.status.success(), "other bytes: the upgrade passed");
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = errors[0];
    assert!(
        line.contains("layer 1 of 2") && line.contains(&format!("{target:?}")),
        "{line}"
    );
    // Nothing changed: no staged deployment, no new layer, nothing to collect.
    assert_eq!(status(root)["status"], before["status"]);
    for d in diff_ids(&imgs.oci, "v2").iter().take(1) {
        assert!(
            layer_stream(root, d).is_none(),
            "a layer of v2 was left behind"
        );
    }
    run_ok(cmd(&reg, root).args(["internals", "gc", "--assert-no-op"]));
    run_ok(cmd(&reg, root).args(["internals", "fsck"]));
    // The good image still upgrades, partially.
    let out = run(cmd(&reg, root).args(["switch", &v2]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("zstd:chunked, fetched"),
        "{err}"
    );
}

/// What the proxy in front of the registry does.
#[derive(Clone, Copy)]
enum Twist {
    /// Drops `Range` headers: a registry that serves no byte ranges.
    NoRanges,
    /// Cuts the body of every byte range that starts before this offset
    /// (the table of contents' offset: file contents) in half.
    Cut(u64),
}

/// A plain HTTP proxy on 127.0.0.1 in front of `upstream`, one request per
/// connection; its address.
fn proxy(upstream: String, twist: Twist) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut r = BufReader::new(client.try_clone()?);
                let mut head = vec![];
                let mut range_start = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    let lower = line.to_ascii_lowercase();
                    if line == "\r\n" {
                        break;
                    }
                    if lower.starts_with("connection:") {
                        continue;
                    }
                    if let Some(v) = lower.strip_prefix("range: bytes=") {
                        range_start = v
                            .split('-')
                            .next()
                            .and_then(|s| s.trim().parse::<u64>().ok());
                        if matches!(twist, Twist::NoRanges) {
                            continue;
                        }
                    }
                    head.push(line);
                }
                let mut up = std::net::TcpStream::connect(&upstream)?;
                up.write_all(format!("{}Connection: close\r\n\r\n", head.concat()).as_bytes())?;
                let mut ur = BufReader::new(up);
                let mut resp = String::new();
                let mut status = String::new();
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if ur.read_line(&mut line)? == 0 || line == "\r\n" {
                        break;
                    }
                    if status.is_empty() {
                        status = line.clone();
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse::<usize>().ok();
                    }
                    if !lower.starts_with("connection:") {
                        resp.push_str(&line);
                    }
                }
                let mut body = vec![];
                match len {
                    Some(n) => {
                        body.resize(n, 0);
                        ur.read_exact(&mut body)?;
                    }
                    None => {
                        ur.read_to_end(&mut body)?;
                    }
                }
                if let (Twist::Cut(limit), Some(s)) = (twist, range_start)
                    && status.contains(" 206 ")
                    && s < limit
                {
                    body.truncate(body.len() / 2);
                }
                let mut c = client;
                c.write_all(format!("{resp}Connection: close\r\n\r\n").as_bytes())?;
                c.write_all(&body)?;
                c.flush()?;
                Ok(())
            });
        }
    });
    addr
}

/// A registry that serves no byte ranges: the layer comes whole, and the
/// progress says why; one that cuts ranges short fails the upgrade naming
/// the file, the host unchanged.
#[test]
fn registries_without_ranges_or_cutting_them_short() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let imgs = build(work.path());
    let reg = Registry::start().unwrap();
    reg.push_oci_zstd_chunked(&imgs.oci, "v1", "os").unwrap();
    reg.push_oci_zstd_chunked(&imgs.oci, "v2", "os").unwrap();
    let (digest, size, toc_len, entries) = big_layer(&reg, "os", "v2");
    let toc_offset = size - toc_len - 48;
    let target = imgs.changed[1].clone();
    assert!(entries.iter().any(|e| e["name"] == target.as_str()));
    for (twist, name) in [
        (Twist::NoRanges, "no-ranges"),
        (Twist::Cut(toc_offset), "cut"),
    ] {
        let addr = proxy(reg.addr(), twist);
        let conf = work.path().join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!("[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"),
        )
        .unwrap();
        let via = |c: &mut std::process::Command| {
            c.env("CONTAINERS_REGISTRIES_CONF", &conf);
        };
        let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        let root = fs.path();
        let mut c = unistore();
        via(&mut c);
        run_ok(
            c.args([
                "install",
                "to-filesystem",
                "--source-imgref",
                &format!("docker://{addr}/os:v1"),
            ])
            .arg(root),
        );
        let before = status(root);
        let mark = reg.log_mark();
        let mut c = unistore();
        via(&mut c);
        let out = run(c
            .arg("--sysroot")
            .arg(root)
            .args(["switch", &format!("docker://{addr}/os:v2")]));
        let err = String::from_utf8_lossy(&out.stderr);
        match twist {
            Twist::NoRanges => {
                assert!(out.status.success(), "{err}");
                assert!(
                    err.contains("Layer 1 of 2: zstd:chunked, fetched whole: the registry does not serve byte ranges"),
                    "{err}"
                );
                let bytes = blob_sent(&reg, mark, &digest);
                assert!(bytes >= size, "{bytes} of {size}");
                run_ok(cmd(&reg, root).args(["internals", "fsck", "--verify-content"]));
            }
            Twist::Cut(_) => {
                assert!(!out.status.success(), "a cut range passed: {err}");
                let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
                assert_eq!(errors.len(), 1, "{err}");
                let line = errors[0];
                // Whichever cut range fails first: a changed file's.
                assert!(
                    line.contains("layer 1 of 2")
                        && imgs
                            .changed
                            .iter()
                            .any(|c| line.contains(&format!("file {c:?}"))),
                    "{line}"
                );
                assert_eq!(status(root)["status"], before["status"]);
                run_ok(cmd(&reg, root).args(["internals", "gc", "--assert-no-op"]));
                eprintln!("cut: {line}");
            }
        }
    }
}

/// Copies image `tag` of layout `oci` as `new_tag` with one byte of the
/// tar header of `name` (in the first layer) spelled differently but
/// meaning the same: the mode's leading `0` as a space. The entry's
/// metadata is unchanged, its header bytes are not.
fn respell_header(oci: &Path, tag: &str, new_tag: &str, name: &str) {
    use sha2::Digest;
    use std::io::{Read, Write};
    let mut lay = common::layout::Layout::open(oci);
    let (desc, mut manifest) = lay.manifest(tag);
    let mut config = lay.json(manifest["config"]["digest"].as_str().unwrap());
    let gz = lay.read(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut tar = vec![];
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar)
        .unwrap();
    let octal = |b: &[u8]| -> u64 {
        let s = String::from_utf8_lossy(b);
        u64::from_str_radix(s.trim_matches(|c| c == ' ' || c == '\0'), 8).unwrap_or(0)
    };
    let mut pos = 0;
    let mut found = false;
    while pos + 512 <= tar.len() && tar[pos] != 0 {
        let h = &tar[pos..pos + 512];
        let n = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let size = octal(&h[124..136]);
        if &h[..n] == name.as_bytes() && matches!(h[156], b'0' | 0) {
            let h = &mut tar[pos..pos + 512];
            assert_eq!(h[100], b'0', "mode field {:?}", &h[100..108]);
            h[100] = b' ';
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|b| *b as u64).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            found = true;
        }
        pos += 512 + size.next_multiple_of(512) as usize;
    }
    assert!(found, "no header of {name}");
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
    let mut enc = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    let (d, size) = lay.put(&enc.finish().unwrap());
    manifest["layers"][0]["digest"] = d.into();
    manifest["layers"][0]["size"] = size.into();
    config["rootfs"]["diff_ids"][0] = diff_id.into();
    lay.put_json(&config, &mut manifest["config"]);
    lay.tag(&desc, &manifest, new_tag);
}

/// A tar header of an unchanged file spelled differently in v2: the header
/// the host predicts from v1 is not the blob's, the diff-id check says so,
/// the headers are fetched after all and the result is a whole pull's.
#[test]
fn headers_the_host_predicts_wrongly_are_fetched_after_all() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let imgs = build(work.path());
    respell_header(&imgs.oci, "v2", "v2-respelled", "usr/share/payload/d5/f5");
    let reg = Registry::start().unwrap();
    let v1 = reg.push_oci_zstd_chunked(&imgs.oci, "v1", "os").unwrap();
    let v2 = reg
        .push_oci_zstd_chunked(&imgs.oci, "v2-respelled", "os")
        .unwrap();
    let ids = diff_ids(&imgs.oci, "v2-respelled");
    let (digest, size, toc_len, _) = big_layer(&reg, "os", "v2-respelled");
    let mut roots = vec![];
    for whole in [false, true] {
        let fs = LoopFs::new(FsKind::Xfs, 1024).unwrap();
        install(&reg, fs.path(), &v1, &[]);
        let mark = reg.log_mark();
        let mut c = cmd(&reg, fs.path());
        if whole {
            c.env("UNISTORE_WHOLE_LAYERS", "1");
        }
        let out = run(c.args(["switch", &v2]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        if !whole {
            assert!(
                err.contains("zstd:chunked, fetched")
                    && err.contains("tar headers fetched after all"),
                "{err}"
            );
            let bytes = blob_sent(&reg, mark, &digest);
            eprintln!("respelled: {bytes} bytes of {size} (table {toc_len})");
            assert!(bytes < size / 4, "{bytes} of {size}");
        }
        run_ok(cmd(&reg, fs.path()).args(["internals", "fsck", "--verify-content"]));
        roots.push(fs);
    }
    for d in &ids {
        assert!(layer_stream(roots[0].path(), d).is_some());
        assert_eq!(
            layer_stream(roots[0].path(), d),
            layer_stream(roots[1].path(), d),
            "{d}"
        );
    }
    let v = |r: &LoopFs| status(r.path())["status"]["staged"]["composefs"]["verity"].clone();
    assert_eq!(v(&roots[0]), v(&roots[1]));
}
