//! Hostile input beyond bad tar paths: symlinks planted in the root, a
//! gzip bomb, registry blobs with wrong or missing bytes, a manifest with
//! thousands of layers, very long names, hard links out of the layer,
//! duplicate tar entries. Each gets one clear `error:` line (or, where the
//! input is legal, a host the checker finds whole), ROOT as it was, and
//! nothing written outside ROOT. Every case prints a `HOSTILE |` line.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::checker::outside;
use common::*;
use unistore_fixtures::env::{FsKind, LoopFs, Registry};
use unistore_fixtures::image::{BuiltImage, TestImageOpts, add_raw_layer, build_test_image};

fn image(dir: &Path, tag: &str, v: u32) -> BuiltImage {
    let opts = TestImageOpts {
        version: format!("{v}.0"),
        variant: v,
        ..Default::default()
    };
    build_test_image(dir, tag, &opts).unwrap()
}

fn install(src: &str, root: &Path, extra: &[&str]) -> Command {
    let mut c = unistore();
    c.args(["install", "to-filesystem", "--source-imgref", src])
        .args(extra)
        .arg(root);
    c
}

fn sysroot(root: &Path) -> Command {
    let mut c = unistore();
    c.arg("--sysroot").arg(root);
    c
}

/// A directory outside ROOT the hostile input points at.
struct Decoy(tempfile::TempDir);

impl Decoy {
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("keep"), "keep\n").unwrap();
        Self(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn listing(&self) -> BTreeMap<PathBuf, (bool, u64)> {
        outside(&[self.path()])
    }
}

/// Runs `c`, which must fail with one error line containing `needle`, with
/// ROOT and the decoy unchanged; prints and returns the error line.
fn refused(case: &str, c: &mut Command, root: &Path, decoy: &Decoy, needle: &str) -> String {
    let before = snapshot(root);
    let outside_before = decoy.listing();
    let e = run_fails(c, needle);
    assert_snapshots_equal(&before, &snapshot(root), case);
    assert_eq!(outside_before, decoy.listing(), "{case}: outside ROOT");
    eprintln!("HOSTILE | {case} | {e}");
    e
}

/// One tar entry (GNU header; long names through PAX would need the
/// extension header, so names here stay within what the header holds
/// unless `pax_path` is given).
fn entry(name: &str, ty: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    let mut out = vec![];
    let mut b = tar::Builder::new(&mut out);
    match link {
        Some(l) => b.append_link(&mut h, name, l).unwrap(),
        None => b.append_data(&mut h, name, data).unwrap(),
    }
    b.into_inner().unwrap();
    // Drop the end-of-archive blocks the builder adds: the caller
    // concatenates entries.
    out.truncate(out.len() - 1024);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut raw: Vec<u8> = entries.concat();
    raw.extend_from_slice(&[0u8; 1024]);
    raw
}

/// Hard links to paths outside the layer, duplicate entries, very long
/// names: the layer tars composefs and the store reader take apart.
#[test]
fn hostile_layers() {
    let fs = LoopFs::new(FsKind::Xfs, 600).unwrap();
    let root = fs.path();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    let decoy = Decoy::new();
    let src = |tag: &str| format!("oci:{}:{tag}", oci.display());
    let d = decoy.path().join("keep");
    let d = d.to_str().unwrap();

    // Hard links out of the layer: to a path outside ROOT, climbing out,
    // and to a name the layer does not hold.
    for (i, target) in [d, "../../../../etc/passwd", "usr/not-in-the-layer"]
        .iter()
        .enumerate()
    {
        let tag = format!("hl{i}");
        let raw = tar_of(&[entry(
            "usr/share/hl",
            tar::EntryType::Link,
            Some(target),
            b"",
        )]);
        add_raw_layer(&oci, "v1", &tag, &raw, "hardlink").unwrap();
        refused(
            &format!("hard link to {target}"),
            &mut install(&src(&tag), root, &[]),
            root,
            &decoy,
            "",
        );
    }

    // A name longer than a file name may be (NAME_MAX 255), and a path of
    // 5000 bytes.
    for (case, name) in [
        (
            "a 300-byte file name",
            format!("usr/share/{}", "n".repeat(300)),
        ),
        (
            "a 5000-byte path",
            format!("usr/{}", vec!["d".repeat(200); 25].join("/")),
        ),
    ] {
        let tag = format!("long{}", name.len());
        let raw = tar_of(&[entry(&name, tar::EntryType::Regular, None, b"long\n")]);
        add_raw_layer(&oci, "v1", &tag, &raw, "long").unwrap();
        let out = run(&mut install(&src(&tag), root, &[]));
        if out.status.success() {
            // composefs stores any name; the host must check clean.
            run_ok(sysroot(root).args(["internals", "fsck"]));
            eprintln!("HOSTILE | {case} | installed");
            wipe(root);
        } else {
            let e = String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{case}: {e}");
            eprintln!("HOSTILE | {case} | {}", errors[0]);
        }
        assert!(decoy.listing().len() == 2);
    }

    // Duplicate entries: legal in tar, where the last one wins (as podman
    // unpacks it). Either refused as ambiguous, or installed with the last.
    let raw = tar_of(&[
        entry("usr/share/dup", tar::EntryType::Regular, None, b"first\n"),
        entry("usr/share/dup", tar::EntryType::Regular, None, b"second\n"),
    ]);
    add_raw_layer(&oci, "v1", "dup", &raw, "dup").unwrap();
    let before = snapshot(root);
    let out = run(&mut install(&src("dup"), root, &[]));
    if out.status.success() {
        let mnt = tempfile::tempdir().unwrap();
        run_ok(sysroot(root).args(["internals", "mount"]).arg(mnt.path()));
        let got = std::fs::read_to_string(mnt.path().join("usr/share/dup"));
        umount_all(mnt.path());
        assert_eq!(got.unwrap(), "second\n", "the last entry wins");
        run_ok(sysroot(root).args(["internals", "fsck"]));
        eprintln!("HOSTILE | duplicate tar entries | installed, the last entry wins");
    } else {
        let e = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{e}");
        assert!(errors[0].contains("twice"), "{e}");
        assert_snapshots_equal(&before, &snapshot(root), "duplicate entries");
        eprintln!("HOSTILE | duplicate tar entries | {}", errors[0]);
    }
}

/// Empties ROOT for the next case.
fn wipe(root: &Path) {
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// A layer of zeros that decompresses past the free space (a gzip bomb):
/// the install fails on the full disk, ROOT as it was.
#[test]
fn gzip_bomb() {
    let fs = LoopFs::new(FsKind::Xfs, 400).unwrap();
    let root = fs.path();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    let size = 600u64 << 20;
    let mut raw = entry("usr/share/bomb", tar::EntryType::Regular, None, b"");
    // The header says `size`; the content follows as zeros.
    {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("usr/share/bomb").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        raw.clear();
        raw.extend_from_slice(h.as_bytes());
    }
    raw.resize(raw.len() + size as usize, 0);
    raw.extend_from_slice(&[0u8; 1024]);
    add_raw_layer(&oci, "v1", "bomb", &raw, "bomb").unwrap();
    drop(raw);
    let blob = unistore_fixtures::image::layer_blobs(&oci, "bomb").unwrap();
    let gz = std::fs::metadata(blob.last().unwrap()).unwrap().len();
    eprintln!("bomb: {gz} bytes of gzip for {size} bytes");
    assert!(gz < size / 100);
    let decoy = Decoy::new();
    refused(
        "gzip bomb (600 MiB of zeros in a <1 MiB blob, 400 MiB filesystem)",
        &mut install(&format!("oci:{}:bomb", oci.display()), root, &[]),
        root,
        &decoy,
        "",
    );
}

struct RegWorld {
    fs: LoopFs,
    work: tempfile::TempDir,
    reg: Registry,
    decoy: Decoy,
}

fn reg_world() -> RegWorld {
    let work = tempfile::tempdir().unwrap();
    image(&work.path().join("oci"), "v1", 1);
    RegWorld {
        fs: LoopFs::new(FsKind::Xfs, 600).unwrap(),
        reg: Registry::start().unwrap(),
        decoy: Decoy::new(),
        work,
    }
}

impl RegWorld {
    fn install(&self, src: &str) -> Command {
        let mut c = install(src, self.fs.path(), &[]);
        c.env("CONTAINERS_REGISTRIES_CONF", self.reg.registries_conf());
        c
    }
    /// Pushes an image whose top layer the registry then serves damaged:
    /// one byte flipped, or cut at half.
    fn push_damaged(&self, tag: &str, cut: bool) -> String {
        let oci = self.work.path().join("oci");
        let raw = tar_of(&[entry(
            &format!("usr/share/{tag}"),
            tar::EntryType::Regular,
            None,
            &vec![b'b'; 200_000],
        )]);
        add_raw_layer(&oci, "v1", tag, &raw, "bad").unwrap();
        let src = self.reg.push_oci(&oci, tag, tag).unwrap();
        let layer = unistore_fixtures::image::layer_blobs(&oci, tag)
            .unwrap()
            .pop()
            .unwrap();
        let f = self.reg.blob_file(&format!(
            "sha256:{}",
            layer.file_name().unwrap().to_str().unwrap()
        ));
        let mut bytes = std::fs::read(&f).unwrap();
        if cut {
            bytes.truncate(bytes.len() / 2);
        } else {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
        }
        std::fs::write(&f, &bytes).unwrap();
        src
    }
}

/// A registry that serves a blob whose bytes do not match its digest.
#[test]
fn registry_blob_with_wrong_bytes() {
    let w = reg_world();
    let src = w.push_damaged("bad", false);
    refused(
        "a registry blob whose bytes do not match its digest",
        &mut w.install(&src),
        w.fs.path(),
        &w.decoy,
        "",
    );
}

/// An image whose config names a diff-id its layer's tar stream does not
/// have (the blob itself is as the manifest says): refused before the
/// layer is stored under that diff-id, as `podman pull` refuses it.
#[test]
fn registry_layer_whose_diff_id_lies() {
    let w = reg_world();
    let oci = w.work.path().join("oci");
    let raw = tar_of(&[entry(
        "usr/share/liar",
        tar::EntryType::Regular,
        None,
        &vec![b'l'; 300_000],
    )]);
    let lie = format!("sha256:{}", "ab".repeat(32));
    unistore_fixtures::image::add_raw_layer_claiming(&oci, "v1", "liar", &raw, "liar", Some(&lie))
        .unwrap();
    let src = w.reg.push_oci(&oci, "liar", "liar").unwrap();
    let e = refused(
        "a layer whose diff-id the config misstates",
        &mut w.install(&src),
        w.fs.path(),
        &w.decoy,
        "not the diff-id",
    );
    assert!(e.contains(&lie), "{e}");
}

/// Runs `c` (with the stall timeout at 10 s), which must fail within 60 s
/// with exactly one `error:` line containing `needle` and leave ROOT as it
/// was; returns that line and how long it took.
fn fails_in_time(
    case: &str,
    c: &mut Command,
    root: &Path,
    needle: &str,
) -> (String, std::time::Duration) {
    let before = snapshot(root);
    let mut child = c
        .env("UNISTORE_STALL_TIMEOUT_SECS", "10")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{case}: the install still runs after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let took = t.elapsed();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{case}");
    let e = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{case}: {e}");
    assert!(errors[0].contains(needle), "{case}: {e}");
    eprintln!("HOSTILE | {case} | {}", errors[0]);
    assert_snapshots_equal(&before, &snapshot(root), case);
    (errors[0].to_string(), took)
}

/// A registry that serves half a blob: skopeo's digest check fails, and the
/// pull says so at once (composefs-oci's own reader waited for the rest for
/// ever, until the stall timeout, `UNISTORE_STALL_TIMEOUT_SECS`, 10 s here,
/// gave it up): one error line naming the damaged blob, within the minute,
/// the root as it was.
#[test]
fn registry_blob_served_halfway() {
    let w = reg_world();
    let src = w.push_damaged("half", true);
    let case = "a blob served halfway";
    let (_, took) = fails_in_time(case, &mut w.install(&src), w.fs.path(), "corrupted blob");
    assert!(
        took < std::time::Duration::from_secs(10),
        "refused only after {took:?}"
    );
}

/// A TCP proxy in front of `upstream` that passes each connection's
/// requests on, and the answers until `after` bytes of a connection, then
/// holds the connection open and sends nothing more: a registry that stops
/// sending in the middle of a blob. Returns its address.
fn stalling_proxy(upstream: String, after: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let up = upstream.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(&up) else {
                    return;
                };
                let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                });
                let (mut sent, mut buf) = (0usize, vec![0u8; 8192]);
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n.min(after - sent),
                    };
                    if n == 0 {
                        // Stalled: keep both ends open, send nothing.
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                        return;
                    }
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    sent += n;
                }
            });
        }
    });
    addr
}

/// A registry that stops sending in the middle of a blob (the connection
/// stays open): the pull gives up once nothing arrives for the stall
/// timeout (`UNISTORE_STALL_TIMEOUT_SECS`, 10 s here; 300 s by default):
/// one error line, within the minute, the root as it was.
#[test]
fn registry_that_stops_sending() {
    let w = reg_world();
    let oci = w.work.path().join("oci");
    // 400 kB that gzip cannot shrink: the blob the proxy cuts.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let raw = tar_of(&[entry(
        "usr/share/noise",
        tar::EntryType::Regular,
        None,
        &noise,
    )]);
    add_raw_layer(&oci, "v1", "stall", &raw, "noise").unwrap();
    w.reg.push_oci(&oci, "stall", "stall").unwrap();
    let proxy = stalling_proxy(w.reg.addr(), 64 * 1024);
    let conf = w.work.path().join("registries-stall.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{proxy}\"\ninsecure = true\n"),
    )
    .unwrap();
    let mut c = install(&format!("docker://{proxy}/stall:stall"), w.fs.path(), &[]);
    c.env("CONTAINERS_REGISTRIES_CONF", &conf);
    let case = "a registry that stops sending";
    fails_in_time(case, &mut c, w.fs.path(), "nothing received for 10 s");
}

/// A manifest with 3000 layers (its last layer repeated), from an OCI
/// layout.
#[test]
fn manifest_with_thousands_of_layers() {
    let w = reg_world();
    let oci = w.work.path().join("oci");
    let tag = many_layers(&oci, "v1", 3000);
    // From the layout: a registry push of 3000 layers takes minutes.
    let src = format!("oci:{}:{tag}", oci.display());
    let root = w.fs.path();
    let out = run(&mut w.install(&src));
    if out.status.success() {
        run_ok(sysroot(root).args(["internals", "fsck"]));
        eprintln!("HOSTILE | a manifest with 3000 layers | installed, fsck clean");
    } else {
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            e.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{e}"
        );
        eprintln!("HOSTILE | a manifest with 3000 layers | {}", e.trim());
    }
}

/// Retags `tag` as `many` with its last layer repeated to `n` layers.
fn many_layers(oci: &Path, tag: &str, n: usize) -> String {
    let mut l = common::layout::Layout::open(oci);
    let (desc, mut m) = l.manifest(tag);
    let mut c = l.json(m["config"]["digest"].as_str().unwrap());
    let last_layer = m["layers"].as_array().unwrap().last().unwrap().clone();
    let last_diff = c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    while m["layers"].as_array().unwrap().len() < n {
        m["layers"].as_array_mut().unwrap().push(last_layer.clone());
        c["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(last_diff.clone());
    }
    c["history"] = serde_json::Value::Array(vec![]);
    l.put_json(&c, &mut m["config"]);
    l.tag(&desc, &m, "many");
    "many".into()
}

/// Symlinks planted in the root pointing outside it: a deployment's etc,
/// boot/, the host store, ostree/repo. Nothing is written through them.
#[test]
fn planted_symlinks() {
    let fs = LoopFs::new(FsKind::Xfs, 600).unwrap();
    let root = fs.path();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    image(&oci, "v1", 1);
    image(&oci, "v2", 2);
    let decoy = Decoy::new();
    let src = |t: &str| format!("oci:{}:{t}", oci.display());
    let plant = |rel: &str| {
        let p = root.join(rel);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            let _ = std::fs::remove_file(&p);
        }
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(decoy.path(), &p).unwrap();
    };

    // boot/ and ostree/repo planted before an install.
    for (rel, extra) in [
        ("boot", &[][..]),
        ("ostree/repo", &["--backend", "ostree"][..]),
    ] {
        plant(rel);
        refused(
            &format!("{rel} -> outside ROOT, then install"),
            &mut install(&src("v1"), root, extra),
            root,
            &decoy,
            "",
        );
        wipe(root);
    }

    // The host store planted before set-unified full.
    run_ok(&mut install(&src("v1"), root, &[]));
    plant("composefs/bootc/storage");
    refused(
        "composefs/bootc/storage -> outside ROOT, then set-unified full",
        sysroot(root).args(["image", "set-unified", "full"]),
        root,
        &decoy,
        "",
    );
    let _ = std::fs::remove_file(root.join("composefs/bootc/storage"));

    // The booted deployment's etc planted before an upgrade and finalize.
    let st: serde_json::Value =
        serde_json::from_str(&run_ok(sysroot(root).args(["status", "--json"]))).unwrap();
    let id = st["status"]["booted"]["composefs"]["verity"]
        .as_str()
        .unwrap()
        .to_string();
    plant(&format!("state/deploy/{id}/etc"));
    let out = run(sysroot(root).args(["switch", &src("v2")]));
    eprintln!(
        "switch with a planted etc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(
        "the booted deployment's etc -> outside ROOT, then switch and finalize",
        sysroot(root).args(["internals", "finalize-staged"]),
        root,
        &decoy,
        "",
    );
}
