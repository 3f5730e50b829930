//! The on-disk formats of a containers-storage overlay store, as podman 4.3
//! (containers/storage) writes them, for unistore's native reader and
//! writer. Checked against stores podman wrote on Debian 12:
//!
//! * `overlay-layers/layers.json`, `overlay-images/images.json`: JSON arrays,
//!   replaced atomically (`.tmp-<name><random>` in the same directory, mode
//!   0600, then `rename`). Entries are kept as JSON values so that fields
//!   unistore does not know survive a rewrite.
//! * `layers.lock`, `images.lock`: whole-file POSIX record locks
//!   (`fcntl(F_SETLKW)`, not `flock`). A writer records its write by
//!   replacing the 64 bytes at offset 0 with a new "last writer" token
//!   (8 bytes of time, 8 of counter, 4 of pid, the rest random): readers
//!   that cache the JSON reload when the token changes.
//! * Layer ids: the base layer's id is its diff-id hex; each next one is
//!   `sha256("<parent id>+<diff-id hex>")` (checked against podman's ids).
//! * `overlay-layers/<id>.tar-split.gz`: gzip'd JSON lines, one object per
//!   line: `{"type":2,"payload":<base64>,"position":N}` for raw tar bytes
//!   (the padding of the previous file, then the headers of the next entry,
//!   or the end-of-archive blocks), `{"type":1,"name":"usr/bin/","size":N,
//!   "payload":<base64 of the big-endian CRC-64/ISO of the content, or
//!   null for an empty file>,"position":N}` for an entry whose content is
//!   read from `overlay/<id>/diff/<name>`. Names that are not UTF-8 go to
//!   `name_raw` (base64). `size` is omitted when 0. The stream ends with
//!   the trailer segment and then an empty one.
//! * Image big data: `overlay-images/<id>/<key>` when the key is made of
//!   `[.0-9a-z]` only (`manifest`), else `=` + base64 of the key.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::prelude::*;
use rustix::fs::{FlockOperation, Mode, OFlags};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `overlay-layers/layers.json`.
pub const LAYERS_JSON: &str = "overlay-layers/layers.json";
/// `overlay-layers/layers.lock`.
pub const LAYERS_LOCK: &str = "overlay-layers/layers.lock";
/// `overlay-images/images.json`.
pub const IMAGES_JSON: &str = "overlay-images/images.json";
/// `overlay-images/images.lock`.
pub const IMAGES_LOCK: &str = "overlay-images/images.lock";
/// The overlay driver's directory.
pub const OVERLAY_DIR: &str = "overlay";
/// Short links to layers' `diff` directories.
pub const LINK_DIR: &str = "overlay/l";
/// Layers' tar-split files live here.
pub const LAYERS_DIR: &str = "overlay-layers";
/// Images' big-data directories live here.
pub const IMAGES_DIR: &str = "overlay-images";

/// A running CRC-64 with the ISO polynomial, as Go's `hash/crc64` computes
/// it (tar-split's per-file checksum); `crc-fast` uses the CPU's carry-less
/// multiply, several times faster than a table.
pub fn crc64_digest() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso)
}

/// The CRC-64/ISO of `bytes` (see [`crc64_digest`]).
pub fn crc64(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64GoIso, bytes)
}

/// containers/storage's `compression` values.
pub mod compression {
    pub const UNCOMPRESSED: u64 = 0;
    pub const GZIP: u64 = 2;
    pub const ZSTD: u64 = 4;
}

/// The layer ids of a chain of diff-ids (`sha256:<hex>`), base first: the
/// base layer's id is its diff-id hex, each next one the hex sha256 of
/// `"<parent id>+<diff-id hex>"`.
pub fn chain_ids(diff_ids: &[impl AsRef<str>]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let d = d.as_ref();
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("diff id {d} is not a sha256 digest"))?;
        ensure!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "bad diff id {d}"
        );
        let id = match out.last() {
            None => hex.to_string(),
            Some(parent) => hex::encode(Sha256::digest(format!("{parent}+{hex}"))),
        };
        out.push(id);
    }
    Ok(out)
}

/// `overlay-layers/<id>.tar-split.gz`.
pub fn tar_split_path(id: &str) -> String {
    format!("{LAYERS_DIR}/{id}.tar-split.gz")
}

/// The file name containers/storage gives an image's big-data item `key`.
pub fn big_data_file_name(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase());
    if plain {
        key.to_string()
    } else {
        format!("={}", BASE64_STANDARD.encode(key.as_bytes()))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A lock file of the store, held with a POSIX record lock as
/// containers/storage does. Released on drop (closing the only descriptor
/// of the file this process has open: POSIX locks are per process and
/// file, so never open a held lock file twice).
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Takes the exclusive lock, creating the file (0644) if needed.
    pub fn exclusive(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc_cloexec())
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        rustix::fs::fcntl_lock(file.as_fd(), FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the shared lock if the file exists; never creates it (a
    /// read-only check must not change the store). `None` when absent.
    pub fn shared_if_exists(path: &Path) -> Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        rustix::fs::fcntl_lock(file.as_fd(), FlockOperation::LockShared)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Some(Self {
            file,
            path: path.to_path_buf(),
        }))
    }

    /// Records a write: a new "last writer" token at offset 0, so that
    /// containers/storage users reload the JSON this lock guards.
    pub fn record_write(&self) -> Result<()> {
        let mut token = [0u8; 64];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        token[..8].copy_from_slice(&now.to_le_bytes());
        token[8..16].copy_from_slice(&1u64.to_le_bytes());
        token[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        random_bytes(&mut token[20..])?;
        rustix::io::pwrite(&self.file, &token, 0)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

fn libc_cloexec() -> i32 {
    OFlags::CLOEXEC.bits() as i32
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// A new short link name: 26 characters of base32, as the overlay driver
/// makes them.
pub fn new_link_name() -> Result<String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut b = [0u8; 26];
    random_bytes(&mut b)?;
    Ok(b.iter()
        .map(|x| ALPHABET[(x & 31) as usize] as char)
        .collect())
}

/// Opens `path` for reading without updating its access time where the
/// kernel allows it (`O_NOATIME`: owner or CAP_FOWNER), so that a check
/// leaves even atimes alone.
pub fn open_noatime(path: &Path) -> std::io::Result<File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NOATIME.bits() as i32)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            File::open(path)
        }
        r => r,
    }
}

/// [`open_noatime`] of `rel` below the directory `dir` (its last component
/// not followed when a symlink): no path walk from the root per file.
pub fn open_noatime_at(dir: &impl std::os::fd::AsFd, rel: &Path) -> std::io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = match rustix::fs::openat(dir, rel, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, rel, flags, Mode::empty()),
        r => r,
    }?;
    Ok(File::from(fd))
}

/// Reads a whole file with [`open_noatime`].
pub fn read_noatime(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = vec![];
    open_noatime(path)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Reads a JSON array file of the store. `Ok(None)` when the file does not
/// exist; an error (naming the file) when it cannot be parsed.
pub fn read_json_array(path: &Path) -> Result<Option<Vec<Value>>> {
    let bytes = match read_noatime(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse_value_array(&bytes, &path.display().to_string()).map(Some)
}

/// Parses the bytes of a JSON array file of the store (named `what` in
/// errors); an empty file is an empty array.
pub fn parse_value_array(bytes: &[u8], what: &str) -> Result<Vec<Value>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![]);
    }
    let v: Value =
        serde_json::from_slice(bytes).with_context(|| format!("{what} is not valid JSON"))?;
    match v {
        Value::Array(a) => Ok(a),
        _ => bail!("{what} is not a JSON array"),
    }
}

/// Replaces `path` atomically with `bytes` the way containers/storage does:
/// a `.tmp-<name><random>` file (0600) in the same directory, synced, then
/// renamed over it.
pub fn atomic_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    let name = path
        .file_name()
        .context("no file name")?
        .to_string_lossy()
        .into_owned();
    let mut r = [0u8; 5];
    random_bytes(&mut r)?;
    let tmp = dir.join(format!(
        ".tmp-{name}{}",
        u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], 0, 0, 0]) % 10_000_000_000
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a JSON array file of the store atomically (compact, as Go's
/// `json.Marshal` writes it).
pub fn write_json_array(path: &Path, items: &[Value]) -> Result<()> {
    let bytes = serde_json::to_vec(items)?;
    atomic_replace(path, &bytes)
}

/// One record of a tar-split file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarSplitEntry {
    /// Raw tar bytes.
    Segment(Vec<u8>),
    /// An entry whose content (`size` bytes) is read from the layer's
    /// `diff/<name>`; `crc` is the CRC-64/ISO of that content.
    File {
        name: Vec<u8>,
        size: u64,
        crc: Option<u64>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RawEntry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_raw: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    position: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Writes a tar-split stream: gzip'd JSON lines.
pub struct TarSplitWriter<W: Write> {
    out: flate2::write::GzEncoder<W>,
    position: u64,
}

impl<W: Write> TarSplitWriter<W> {
    /// A writer into `out`. Compressed at the fast level: the sample
    /// image's big layer (8.2 MiB of JSON lines) gives 438 KiB at level 6
    /// and 542 KiB at level 1, in 98 ms and 61 ms (system zlib; less with
    /// zlib-ng), on the writer's own thread.
    pub fn new(out: W) -> Self {
        Self {
            out: flate2::write::GzEncoder::new(out, flate2::Compression::fast()),
            position: 0,
        }
    }

    fn put(&mut self, e: &RawEntry) -> Result<()> {
        serde_json::to_writer(&mut self.out, e)?;
        self.out.write_all(b"\n")?;
        self.position += 1;
        Ok(())
    }

    /// Raw tar bytes.
    pub fn segment(&mut self, bytes: &[u8]) -> Result<()> {
        self.put(&RawEntry {
            kind: 2,
            name: None,
            name_raw: None,
            size: 0,
            payload: Some(BASE64_STANDARD.encode(bytes)),
            position: self.position,
        })
    }

    /// An entry; `crc` of its content when `size > 0`.
    pub fn file(&mut self, name: &[u8], size: u64, crc: Option<u64>) -> Result<()> {
        let (name, name_raw) = match std::str::from_utf8(name) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(BASE64_STANDARD.encode(name))),
        };
        self.put(&RawEntry {
            kind: 1,
            name,
            name_raw,
            size,
            payload: crc.map(|c| BASE64_STANDARD.encode(c.to_be_bytes())),
            position: self.position,
        })
    }

    /// Finishes the gzip stream and returns the inner writer.
    pub fn finish(self) -> Result<W> {
        Ok(self.out.finish()?)
    }
}

/// Reads a whole tar-split file.
pub fn read_tar_split(path: &Path) -> Result<Vec<TarSplitEntry>> {
    let f = open_noatime(path).with_context(|| format!("opening {}", path.display()))?;
    parse_tar_split(f, path)
}

/// Parses a tar-split stream (gzip'd JSON lines) read from `input`;
/// errors name `path`.
pub fn parse_tar_split(input: impl Read, path: &Path) -> Result<Vec<TarSplitEntry>> {
    let r = BufReader::new(flate2::read::GzDecoder::new(input));
    let mut out = vec![];
    for (n, line) in r.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let e: RawEntry = serde_json::from_slice(&line)
            .with_context(|| format!("{} line {}: bad entry", path.display(), n + 1))?;
        let decode = |s: &str| {
            BASE64_STANDARD
                .decode(s)
                .with_context(|| format!("{} line {}: bad base64", path.display(), n + 1))
        };
        out.push(match e.kind {
            2 => TarSplitEntry::Segment(match &e.payload {
                Some(p) => decode(p)?,
                None => vec![],
            }),
            1 => {
                let name = match (&e.name, &e.name_raw) {
                    (_, Some(raw)) => decode(raw)?,
                    (Some(n), None) => n.as_bytes().to_vec(),
                    (None, None) => vec![],
                };
                let crc = match &e.payload {
                    Some(p) => {
                        let b = decode(p)?;
                        ensure!(b.len() == 8, "{}: bad checksum length", path.display());
                        Some(u64::from_be_bytes(b.try_into().expect("8 bytes")))
                    }
                    None => None,
                };
                TarSplitEntry::File {
                    name,
                    size: e.size,
                    crc,
                }
            }
            k => bail!("{} line {}: unknown entry type {k}", path.display(), n + 1),
        });
    }
    Ok(out)
}

/// Rebuilds a layer tar from its tar-split records and its `diff`
/// directory, as `podman save`/`skopeo copy` do, checking every file's
/// CRC. Returns the sha256 digest (`sha256:<hex>`) and size of the tar.
pub fn assemble_layer(
    diff: &Path,
    entries: &[TarSplitEntry],
    out: &mut dyn Write,
) -> Result<(String, u64)> {
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for e in entries {
        match e {
            TarSplitEntry::Segment(b) => {
                sha.update(b);
                out.write_all(b)?;
                size += b.len() as u64;
            }
            TarSplitEntry::File { size: 0, .. } => {}
            TarSplitEntry::File { name, size: n, crc } => {
                let rel = crate::stores::tar_walk::normalize(name)?;
                let p = diff.join(crate::stores::tar_walk::as_os_str(&rel));
                let mut f = open_noatime(&p).with_context(|| format!("opening {}", p.display()))?;
                let mut digest = crc64_digest();
                let mut left = *n;
                while left > 0 {
                    let want = (buf.len() as u64).min(left) as usize;
                    let got = f
                        .read(&mut buf[..want])
                        .with_context(|| format!("reading {}", p.display()))?;
                    ensure!(got > 0, "{} is shorter than the layer says", p.display());
                    digest.update(&buf[..got]);
                    sha.update(&buf[..got]);
                    out.write_all(&buf[..got])?;
                    left -= got as u64;
                }
                if let Some(c) = crc {
                    ensure!(
                        digest.finalize() == *c,
                        "{}: content differs from the layer (CRC mismatch)",
                        p.display()
                    );
                }
                size += n;
            }
        }
    }
    Ok((format!("sha256:{}", hex::encode(sha.finalize())), size))
}

/// Checks, without reading contents, that every file a layer's tar-split
/// reads from `diff` exists there as a regular file of the recorded size.
pub fn check_layer_files(diff: &Path, entries: &[TarSplitEntry]) -> Result<()> {
    let dir = File::open(diff).with_context(|| format!("opening {}", diff.display()))?;
    for e in entries {
        if let TarSplitEntry::File { name, size, .. } = e
            && *size > 0
        {
            let rel = crate::stores::tar_walk::normalize(name)?;
            let rel = crate::stores::tar_walk::as_os_str(&rel);
            let p = || diff.join(rel);
            match rustix::fs::statat(&dir, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st)
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::RegularFile =>
                {
                    bail!("{} is not a regular file", p().display())
                }
                Ok(st) if st.st_size as u64 != *size => bail!(
                    "{} has {} bytes, the layer says {size}",
                    p().display(),
                    st.st_size
                ),
                Ok(_) => {}
                Err(e) => bail!("{}: {}", p().display(), std::io::Error::from(e)),
            }
        }
    }
    Ok(())
}

/// A writer that only counts and hashes.
#[derive(Default)]
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a directory below `base` with mode bits for new ones.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} exists and is not a directory", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                ensure_dir(parent, 0o700)?;
            }
            match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
            // Not subject to the umask.
            rustix::fs::chmod(path, Mode::from_raw_mode(mode))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containers_storage() {
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[&d1, &d2]).unwrap();
        assert_eq!(ids[0], "a".repeat(64));
        assert_eq!(
            ids[1],
            hex::encode(Sha256::digest(format!(
                "{}+{}",
                "a".repeat(64),
                "b".repeat(64)
            )))
        );
        assert!(chain_ids(&["md5:00"]).is_err());
    }

    #[test]
    fn big_data_names() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        // Seen in a store podman wrote.
        assert_eq!(
            big_data_file_name(
                "sha256:c3c89b6c947984767d026ba742e1e1a6cd555cc64810b844057797ad34a5d2d1"
            ),
            "=c2hhMjU2OmMzYzg5YjZjOTQ3OTg0NzY3ZDAyNmJhNzQyZTFlMWE2Y2Q1NTVjYzY0ODEwYjg0NDA1Nzc5N2FkMzRhNWQyZDE="
        );
    }

    #[test]
    fn crc_is_gos_crc64_iso() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)).
        assert_eq!(crc64(b"123456789"), 0xb90956c775a41001);
    }

    #[test]
    fn tar_split_round_trip_and_assembly() {
        let td = tempfile::tempdir().unwrap();
        let diff = td.path().join("diff");
        std::fs::create_dir_all(diff.join("d")).unwrap();
        std::fs::write(diff.join("d/f"), b"content").unwrap();
        let mut w = TarSplitWriter::new(Vec::new());
        w.segment(b"HDR").unwrap();
        w.file(b"./d/f", 7, Some(crc64(b"content"))).unwrap();
        w.segment(b"PAD").unwrap();
        w.file(b"d/", 0, None).unwrap();
        w.file(&[0xff, b'x'], 0, None).unwrap();
        w.segment(b"").unwrap();
        let gz = w.finish().unwrap();
        let path = td.path().join("x.tar-split.gz");
        std::fs::write(&path, &gz).unwrap();
        // The lines look like containers/storage's.
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"type":2,"payload":"SERS","position":0}"#);
        assert!(lines[1].starts_with(r#"{"type":1,"name":"./d/f","size":7,"payload":""#));
        assert_eq!(
            lines[3],
            r#"{"type":1,"name":"d/","payload":null,"position":3}"#
        );
        assert!(lines[4].contains("name_raw"));
        let entries = read_tar_split(&path).unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(
            entries[4],
            TarSplitEntry::File {
                name: vec![0xff, b'x'],
                size: 0,
                crc: None
            }
        );
        let mut out = vec![];
        let (digest, size) = assemble_layer(&diff, &entries, &mut out).unwrap();
        assert_eq!(out, b"HDRcontentPAD");
        assert_eq!(size, 13);
        assert_eq!(digest, sha256_digest(b"HDRcontentPAD"));
        check_layer_files(&diff, &entries).unwrap();
        // A changed file is caught.
        std::fs::write(diff.join("d/f"), b"CONTENT").unwrap();
        assert!(assemble_layer(&diff, &entries, &mut Sink).is_err());
        check_layer_files(&diff, &entries).unwrap();
        // A missing or resized one, even without reading contents.
        std::fs::write(diff.join("d/f"), b"longer content").unwrap();
        assert!(check_layer_files(&diff, &entries).is_err());
        std::fs::remove_file(diff.join("d/f")).unwrap();
        assert!(check_layer_files(&diff, &entries).is_err());
    }

    #[test]
    fn locks_and_atomic_json() {
        let td = tempfile::tempdir().unwrap();
        let lock_path = td.path().join("layers.lock");
        assert!(StoreLock::shared_if_exists(&lock_path).unwrap().is_none());
        assert!(!lock_path.exists(), "a shared lock never creates the file");
        let l = StoreLock::exclusive(&lock_path).unwrap();
        l.record_write().unwrap();
        assert_eq!(std::fs::metadata(&lock_path).unwrap().len(), 64);
        drop(l);
        let json = td.path().join("layers.json");
        assert_eq!(read_json_array(&json).unwrap(), None);
        write_json_array(&json, &[serde_json::json!({"id": "x"})]).unwrap();
        assert_eq!(std::fs::read_to_string(&json).unwrap(), r#"[{"id":"x"}]"#);
        std::fs::write(&json, b"[{\"id\":").unwrap();
        let err = read_json_array(&json).unwrap_err();
        assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
        // Only the file itself is left behind.
        let names: Vec<_> = std::fs::read_dir(td.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2);
    }
}
