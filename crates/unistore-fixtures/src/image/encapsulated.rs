//! Ostree-encapsulated images (issue 22), made the way Fedora's and
//! CentOS's bootc bases are: a root tree committed with the real `ostree
//! commit` (which records the tree's owners, modes and xattrs), then
//! encapsulated by ostree-ext 0.15.3's own `container encapsulate` (the
//! test-only peer binary, `crates/ostree-ext-peer`).
//!
//! The tree is bootable-looking for unistore (kernel and initramfs under
//! `/usr/lib/modules/6.1.0-test`, os-release, `/usr/etc`, `/sysroot`,
//! `/ostree -> sysroot/ostree`) and carries the xattrs the tests look for:
//! `security.capability` on [`PING`], `user.test` on [`TAGGED`] and on the
//! empty file [`EMPTY_TAGGED`] (ostree-ext writes empty files as plain
//! files, not links to their object), `user.dir` on the directory
//! [`TAGGED_DIR`]. [`add_derived_layer`] puts a plain OCI layer on top (v2).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::layer::{LayerTar, Meta};
use super::oci::add_raw_layer;
use super::synthetic::{CAP_NET_RAW_EP, TEST_KVER};

/// A file with `security.capability` (`cap_net_raw=ep`).
pub const PING: &str = "/usr/bin/ping";
/// A file with `user.test=hi`.
pub const TAGGED: &str = "/usr/bin/tagged";
/// An empty file with `user.test=empty`.
pub const EMPTY_TAGGED: &str = "/usr/lib/empty-tagged";
/// A directory with `user.dir=d`.
pub const TAGGED_DIR: &str = "/usr/share/tagged-dir";
/// A file big enough to be a composefs object.
pub const BIG: &str = "/usr/lib/libbig.so";
/// Two paths with the same content and metadata (one ostree object).
pub const TWINS: [&str; 2] = ["/usr/lib/twin-a", "/usr/lib/twin-b"];
/// A file owned 1000:1000, mode 0640.
pub const OWNED: &str = "/usr/share/owned.txt";
/// A file in `/usr/etc` (the image's `/etc`).
pub const ETC_FILE: &str = "/usr/etc/encap.conf";

/// What [`build_encapsulated_image`] made.
#[derive(Debug, Clone)]
pub struct EncapsulatedImage {
    /// The embedded commit (the `ostree.commit` label).
    pub commit: String,
    /// `sha256:` of the manifest.
    pub manifest_digest: String,
    /// `sha256:` of each layer blob, bottom first.
    pub layer_digests: Vec<String>,
    /// The source ostree repository (bare) holding the commit.
    pub source_repo: PathBuf,
}

fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn write(root: &Path, path: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap())?;
    std::fs::write(&p, data)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(p)
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> Result<()> {
    rustix::fs::lsetxattr(p, OsStr::new(name), value, rustix::fs::XattrFlags::empty())
        .with_context(|| format!("setting {name} on {}", p.display()))
}

/// The root tree of the image, written below `root` (as root).
fn write_tree(root: &Path, version: &str) -> Result<()> {
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/etc",
        "usr/share",
        "sysroot",
        "boot",
        "var",
        "tmp",
        "run",
        "dev",
        "proc",
        "sys",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for (link, target) in [
        ("ostree", "sysroot/ostree"),
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("usr/etc/os-release", "../lib/os-release"),
    ] {
        std::fs::create_dir_all(root.join(link).parent().unwrap())?;
        std::os::unix::fs::symlink(target, root.join(link))?;
    }
    let kdir = format!("/usr/lib/modules/{TEST_KVER}");
    write(
        root,
        &format!("{kdir}/vmlinuz"),
        format!("encap kernel {version}\n").as_bytes(),
        0o644,
    )?;
    write(
        root,
        &format!("{kdir}/initramfs.img"),
        format!("encap initramfs {version}\n").as_bytes(),
        0o644,
    )?;
    write(
        root,
        "/usr/lib/os-release",
        format!("NAME=\"Encapsulated Test OS\"\nID=encaptest\nVERSION_ID={version}\n").as_bytes(),
        0o644,
    )?;
    // Bigger than composefs inlines (64 bytes): an object, reflinked into
    // ostree with its capability.
    let ping = format!("#!/bin/sh\n# {}\necho ping\n", "x".repeat(200));
    let p = write(root, PING, ping.as_bytes(), 0o755)?;
    setxattr(&p, "security.capability", &CAP_NET_RAW_EP)?;
    let p = write(root, TAGGED, b"tagged\n", 0o644)?;
    setxattr(&p, "user.test", b"hi")?;
    let p = write(root, EMPTY_TAGGED, b"", 0o644)?;
    setxattr(&p, "user.test", b"empty")?;
    let d = root.join(TAGGED_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&d)?;
    setxattr(&d, "user.dir", b"d")?;
    write(root, &format!("{TAGGED_DIR}/inside"), b"inside\n", 0o644)?;
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(root, BIG, &big, 0o755)?;
    for t in TWINS {
        write(root, t, b"twin content, one ostree object\n", 0o644)?;
    }
    let p = write(root, OWNED, b"owned\n", 0o640)?;
    std::os::unix::fs::chown(&p, Some(1000), Some(1000))?;
    write(
        root,
        ETC_FILE,
        format!("version={version}\n").as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Commits the test tree (version `version`) into a bare repository under
/// `work` with the real `ostree`, and encapsulates it with the peer
/// `peer` into the layout `oci_dir` under `tag` (one layer).
pub fn build_encapsulated_image(
    peer: &Path,
    work: &Path,
    oci_dir: &Path,
    tag: &str,
    version: &str,
) -> Result<EncapsulatedImage> {
    build_encapsulated_image_chunked(peer, work, oci_dir, tag, version, 0)
}

/// [`build_encapsulated_image`], chunked as rpm-ostree chunks Fedora's
/// images when `chunks` > 0: ostree-ext's `--contentmeta` puts the content
/// objects round-robin into `chunks` components (at least 3), so the image
/// has the commit layer, one layer per component, and a last (empty)
/// ostree layer, `ostree.final-diffid`.
pub fn build_encapsulated_image_chunked(
    peer: &Path,
    work: &Path,
    oci_dir: &Path,
    tag: &str,
    version: &str,
    chunks: usize,
) -> Result<EncapsulatedImage> {
    let repo = work.join("encap-src-repo");
    if !repo.join("config").exists() {
        std::fs::create_dir_all(&repo)?;
        run(Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["init", "--mode=bare"]))?;
    }
    let root = work.join(format!("encap-rootfs-{tag}"));
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    write_tree(&root, version)?;
    let commit = run(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["commit", "--branch=encap/test", "-s"])
        .arg(format!("encapsulated test {version}"))
        .arg(format!("--add-metadata-string=version={version}"))
        .arg("--add-metadata=ostree.bootable=true")
        .arg("--timestamp=2024-01-01 00:00:00 UTC")
        .arg(&root))?
    .trim()
    .to_string();
    std::fs::create_dir_all(oci_dir)?;
    let mut enc = Command::new(peer);
    enc.args(["cli", "container", "encapsulate", "--repo"])
        .arg(&repo);
    if chunks > 0 {
        let meta = work.join(format!("encap-contentmeta-{tag}.json"));
        std::fs::write(&meta, contentmeta(&repo, &commit, chunks)?)?;
        enc.arg("--contentmeta").arg(meta);
    }
    run(enc
        .arg(&commit)
        .arg(format!("oci:{}:{tag}", oci_dir.display())))?;
    let (manifest_digest, layer_digests) = manifest_of(oci_dir, tag)?;
    Ok(EncapsulatedImage {
        commit,
        manifest_digest,
        layer_digests,
        source_repo: repo,
    })
}

/// ostree-ext's content meta (`RawMeta`, version 1): every content object
/// of `commit` (from `ostree ls -R -C`) mapped round-robin to `chunks`
/// components.
fn contentmeta(repo: &Path, commit: &str, chunks: usize) -> Result<String> {
    let ls = run(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["ls", "-R", "-C", commit]))?;
    let mut layers = serde_json::Map::new();
    for i in 0..chunks {
        layers.insert(format!("c{i}"), format!("component {i}").into());
    }
    let mut mapping = serde_json::Map::new();
    for (i, l) in ls.lines().filter(|l| !l.starts_with('d')).enumerate() {
        let csum = l
            .split_whitespace()
            .nth(4)
            .with_context(|| format!("unexpected `ostree ls` line {l:?}"))?;
        mapping.insert(csum.to_string(), format!("c{}", i % chunks).into());
    }
    Ok(serde_json::json!({"version": 1, "layers": layers, "mapping": mapping}).to_string())
}

/// The manifest digest and layer digests of `tag` in the layout `oci_dir`.
pub fn manifest_of(oci_dir: &Path, tag: &str) -> Result<(String, Vec<String>)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci_dir.join("index.json"))?)?;
    let m = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no tag {tag} in {}", oci_dir.display()))?;
    let digest = m["digest"]
        .as_str()
        .context("a manifest without a digest")?
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(super::oci::blob_path(oci_dir, &digest)?)?)?;
    let layers = manifest["layers"]
        .as_array()
        .context("a manifest without layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_string))
        .collect();
    Ok((digest, layers))
}

/// Paths the derived layer of [`add_derived_layer`] touches.
pub const DERIVED_FILE: &str = "/usr/bin/derived";
/// An `/etc` file the derived layer adds.
pub const DERIVED_ETC: &str = "/etc/derived.conf";

/// Puts a plain OCI layer on top of `tag` and tags the result `new_tag`
/// (the labels stay: still encapsulated, the new layer above
/// `ostree.final-diffid`): a file with `security.capability` and a
/// `user.derived` xattr (which composefs-oci's allowlist drops), an `/etc`
/// file, [`TAGGED`] replaced (its `user.test` gone with the old file), a
/// whiteout of the second of [`TWINS`]. Returns the new manifest digest.
pub fn add_derived_layer(oci_dir: &Path, tag: &str, new_tag: &str) -> Result<String> {
    let mut t = LayerTar::new(Vec::new());
    t.dir("usr", Meta::root(0o755))?;
    t.dir("usr/bin", Meta::root(0o755))?;
    t.file_from_reader(
        DERIVED_FILE,
        Meta::root(0o755),
        8,
        &b"derived\n"[..],
        &[
            ("security.capability".to_string(), CAP_NET_RAW_EP.to_vec()),
            ("user.derived".to_string(), b"x".to_vec()),
        ],
    )?;
    t.file(TAGGED, Meta::root(0o644), b"tagged v2\n")?;
    t.dir("usr/lib", Meta::root(0o755))?;
    t.whiteout(TWINS[1])?;
    t.dir("etc", Meta::root(0o755))?;
    t.file(DERIVED_ETC, Meta::root(0o644), b"derived=1\n")?;
    let raw = t.finish()?;
    add_raw_layer(
        oci_dir,
        tag,
        new_tag,
        &raw,
        "encapsulated test: derived layer",
    )
}

/// Which entry of the first layer [`tamper_first_layer`] changes.
#[derive(Debug, Clone, Copy)]
pub enum Tamper<'a> {
    /// The content object the checkout path (absolute) is a hard link to.
    ObjectOf(&'a str),
    /// The first object whose name ends with this (`.dirtree`, ...).
    FirstObject(&'a str),
}

/// An image that lies: `tag` with one entry of its first layer changed
/// (its first byte flipped), the config naming the new layer's diff-id,
/// labels kept; tagged `new_tag`. Returns the new manifest digest.
pub fn tamper_first_layer(
    oci_dir: &Path,
    tag: &str,
    new_tag: &str,
    what: Tamper<'_>,
) -> Result<String> {
    use ocidir::oci_spec::image::{ImageConfiguration, ImageManifest};
    use ocidir::prelude::*;
    use std::io::Read;
    let (digest, layers) = manifest_of(oci_dir, tag)?;
    let blob = super::oci::blob_path(oci_dir, &layers[0])?;
    let mut entries: Vec<(tar::Header, String, Option<String>, Vec<u8>)> = vec![];
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&blob)?));
    for e in a.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let link = e.link_name()?.map(|l| l.to_string_lossy().into_owned());
        let mut data = vec![];
        e.read_to_end(&mut data)?;
        entries.push((e.header().clone(), path, link, data));
    }
    let victim = match what {
        Tamper::ObjectOf(p) => {
            let p = p.trim_start_matches('/');
            entries
                .iter()
                .find(|(_, path, _, _)| path == p)
                .and_then(|(_, _, l, _)| l.clone())
                .with_context(|| format!("{p} is not a hard link in the layer"))?
        }
        Tamper::FirstObject(suffix) => entries
            .iter()
            .find(|(_, path, _, d)| path.ends_with(suffix) && !d.is_empty())
            .map(|(_, p, _, _)| p.clone())
            .with_context(|| format!("no object *{suffix} in the layer"))?,
    };
    let mut b = tar::Builder::new(Vec::new());
    for (mut h, path, link, mut data) in entries {
        if path == victim {
            data[0] ^= 0xff;
        }
        match link {
            Some(l) if h.entry_type().is_hard_link() || h.entry_type().is_symlink() => {
                b.append_link(&mut h, &path, &l)?
            }
            _ => b.append_data(&mut h, &path, &data[..])?,
        }
    }
    let raw = b.into_inner()?;
    let oci = super::oci::open_oci_dir(oci_dir)?;
    let mut manifest: ImageManifest =
        serde_json::from_slice(&std::fs::read(super::oci::blob_path(oci_dir, &digest)?)?)?;
    let mut config: ImageConfiguration = oci.read_json_blob(manifest.config())?;
    let mut w = oci.create_gzip_layer(None)?;
    std::io::Write::write_all(&mut w, &raw)?;
    let layer = w.complete()?;
    let mut rootfs = config.rootfs().clone();
    let old = rootfs.diff_ids()[0].clone();
    let new = layer.uncompressed_sha256_as_digest().to_string();
    rootfs.diff_ids_mut()[0] = new.clone();
    config.set_rootfs(rootfs);
    // `ostree.final-diffid` follows the layer (config label and manifest
    // annotation), so only the object lies.
    let key = "ostree.final-diffid";
    let follow = |v: &mut String| {
        if *v == old {
            *v = new.clone();
        }
    };
    if let Some(mut c) = config.config().clone() {
        if let Some(l) = c.labels_mut().as_mut().and_then(|l| l.get_mut(key)) {
            follow(l);
        }
        config.set_config(Some(c));
    }
    if let Some(a) = manifest
        .annotations_mut()
        .as_mut()
        .and_then(|a| a.get_mut(key))
    {
        follow(a);
    }
    let mut descs = manifest.layers().clone();
    descs[0] = layer.descriptor().build()?;
    manifest.set_layers(descs);
    manifest.set_config(oci.write_config(config)?);
    let platform = ocidir::oci_spec::image::PlatformBuilder::default()
        .architecture(ocidir::oci_spec::image::Arch::Amd64)
        .os(ocidir::oci_spec::image::Os::Linux)
        .build()?;
    Ok(oci
        .insert_manifest(manifest, Some(new_tag), platform)?
        .digest()
        .to_string())
}
