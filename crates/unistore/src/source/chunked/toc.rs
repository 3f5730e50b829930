//! The table of contents of a zstd:chunked layer: where it is (the layer's
//! annotations), what it says (one entry per file, with the byte range of
//! its content's zstd frames in the blob and its SHA-256), and whether it is
//! consistent before anything is fetched on its word.
//!
//! The format is containers/storage's (podman, buildah, skopeo): the tar
//! stream is compressed one zstd frame (or several) per file content, the
//! headers and padding between contents in frames of their own; the table
//! of contents is a zstd-compressed JSON document in a skippable frame after
//! the tar, and a footer (another skippable frame) repeats its position.

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::stores::tar_walk::{Entry, Kind};

/// The annotation prefixes containers/storage has used: podman 4 writes the
/// first, later versions the second.
const PREFIXES: [&str; 2] = [
    "io.containers.zstd-chunked.",
    "io.github.containers.zstd-chunked.",
];

/// The largest table of contents read (a layer of a million files is about
/// 300 MiB of JSON; this is far above any real image's).
pub const MAX_TOC: u64 = 512 << 20;

/// Where a layer's table of contents is, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocLocation {
    /// Offset of the compressed table in the blob.
    pub offset: u64,
    /// Its compressed length.
    pub length: u64,
    /// Its length once decompressed.
    pub uncompressed: u64,
    /// `sha256:` of the compressed table (the manifest vouches for it).
    pub checksum: String,
}

/// The table's location if the layer's annotations say it is zstd:chunked.
/// `Ok(None)`: not zstd:chunked; an error: annotations that are, but wrong.
pub fn locate(
    annotations: Option<&std::collections::HashMap<String, String>>,
    blob_size: u64,
) -> Result<Option<TocLocation>> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    let get = |key: &str| PREFIXES.iter().find_map(|p| a.get(&format!("{p}{key}")));
    let (Some(pos), Some(sum)) = (get("manifest-position"), get("manifest-checksum")) else {
        return Ok(None);
    };
    let parts: Vec<&str> = pos.split(':').collect();
    ensure!(
        parts.len() == 4,
        "the zstd:chunked manifest position {pos:?} is not offset:length:uncompressed:type"
    );
    let num = |s: &str| -> Result<u64> {
        s.parse()
            .with_context(|| format!("the zstd:chunked manifest position {pos:?} is not numeric"))
    };
    let (offset, length, uncompressed, kind) = (
        num(parts[0])?,
        num(parts[1])?,
        num(parts[2])?,
        num(parts[3])?,
    );
    ensure!(
        kind == 1,
        "zstd:chunked manifest type {kind} (only 1, zstd-compressed JSON, is known)"
    );
    ensure!(
        offset >= 8 && offset.checked_add(length).is_some_and(|e| e <= blob_size),
        "the zstd:chunked manifest position {pos:?} lies outside the {blob_size}-byte blob"
    );
    ensure!(
        length <= MAX_TOC && uncompressed <= MAX_TOC,
        "the zstd:chunked table of contents is too large ({uncompressed} bytes)"
    );
    ensure!(
        sum.starts_with("sha256:") && sum.len() == 71,
        "the zstd:chunked manifest checksum {sum:?} is not a sha256 digest"
    );
    Ok(Some(TocLocation {
        offset,
        length,
        uncompressed,
        checksum: sum.clone(),
    }))
}

/// One entry of the table, as containers/storage writes it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TocEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub link_name: String,
    pub mode: u32,
    pub size: u64,
    pub uid: u64,
    pub gid: u64,
    pub user_name: String,
    pub group_name: String,
    pub modtime: Option<String>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: std::collections::BTreeMap<String, String>,
    pub digest: String,
    pub offset: u64,
    pub end_offset: u64,
    pub chunk_size: Option<u64>,
    pub chunk_offset: u64,
    pub chunk_digest: String,
    pub chunk_type: String,
    /// A file's chunks (content-defined pieces, each its own zstd frames),
    /// from the `chunk` entries that follow it; empty when the table gives
    /// none or gives them inconsistently (the file is then one piece).
    #[serde(skip)]
    pub chunks: Vec<Chunk>,
}

/// A piece of a file's content with zstd frames of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where its frames start in the blob (they end where the next
    /// chunk's, or the file's, start).
    pub blob_offset: u64,
    /// Where it starts in the file.
    pub offset: u64,
    pub size: u64,
    /// `sha256:` of its bytes.
    pub digest: String,
    /// All zeros (`chunkType: zeros`).
    pub zeros: bool,
}

#[derive(Debug, serde::Deserialize)]
struct TocDoc {
    version: u32,
    entries: Vec<TocEntry>,
}

/// A checked table: its file entries in tar order (chunk entries dropped),
/// and where the tar's frames end in the blob.
#[derive(Debug)]
pub struct Toc {
    pub entries: Vec<TocEntry>,
    /// End of the tar frames: the table's skippable frame starts here.
    pub tar_end: u64,
}

impl TocEntry {
    /// Whether the entry has content frames of its own.
    pub fn has_content(&self) -> bool {
        self.kind == "reg" && self.size > 0
    }

    /// The tar entry kind the table's `type` names.
    fn tar_kind(&self) -> Option<Kind> {
        Some(match self.kind.as_str() {
            "reg" => Kind::Regular,
            "dir" => Kind::Directory,
            "symlink" => Kind::Symlink,
            "hardlink" => Kind::Hardlink,
            "char" => Kind::CharDevice,
            "block" => Kind::BlockDevice,
            "fifo" => Kind::Fifo,
            _ => return None,
        })
    }

    /// Whether a tar entry (of a layer the host holds) says what this entry
    /// says: then its header bytes are, in all likelihood, this entry's
    /// (the layer's diff-id proves it or not). `names` is the header's
    /// ustar user and group names.
    pub fn same_as(&self, e: &Entry, names: (&[u8], &[u8])) -> bool {
        let Some(kind) = self.tar_kind() else {
            return false;
        };
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut v = Vec::new();
            for (k, val) in &self.xattrs {
                let Ok(bytes) = b64.decode(val) else {
                    return false;
                };
                v.push((k.as_bytes().to_vec(), bytes));
            }
            v
        };
        let mut theirs = e.xattrs.clone();
        theirs.sort();
        let Some((sec, nsec)) = self.mtime() else {
            return false;
        };
        e.kind == kind
            && e.name == self.name.as_bytes()
            && e.size == if kind == Kind::Regular { self.size } else { 0 }
            && e.mode == self.mode & 0o7777
            && e.uid == self.uid
            && e.gid == self.gid
            && e.mtime_sec == sec
            && e.mtime_nsec == nsec
            && e.link_target.as_deref().unwrap_or_default() == self.link_name.as_bytes()
            && (e.dev_major, e.dev_minor) == (self.dev_major, self.dev_minor)
            && theirs == xattrs
            && names == (self.user_name.as_bytes(), self.group_name.as_bytes())
    }

    /// The modification time, seconds and nanoseconds.
    fn mtime(&self) -> Option<(i64, u32)> {
        let t = chrono::DateTime::parse_from_rfc3339(self.modtime.as_deref()?).ok()?;
        Some((t.timestamp(), t.timestamp_subsec_nanos()))
    }
}

/// Parses and checks the decompressed table `json` of a `blob_size`-byte
/// blob whose table starts at `toc_offset`: contents in blob order, inside
/// the tar frames, not overlapping, each with a SHA-256.
pub fn parse(json: &[u8], toc_offset: u64) -> Result<Toc> {
    let doc: TocDoc =
        serde_json::from_slice(json).context("the zstd:chunked table of contents is not valid")?;
    ensure!(
        doc.version == 1,
        "zstd:chunked table of contents version {} (only 1 is known)",
        doc.version
    );
    let tar_end = toc_offset - 8;
    let mut entries: Vec<TocEntry> = Vec::with_capacity(doc.entries.len());
    let mut chunks: Vec<Chunk> = vec![];
    for e in doc.entries {
        if e.kind == "chunk" {
            chunks.push(Chunk {
                blob_offset: e.offset,
                offset: e.chunk_offset,
                size: e.chunk_size.unwrap_or(0),
                digest: e.chunk_digest,
                zeros: e.chunk_type == "zeros",
            });
            continue;
        }
        if let Some(last) = entries.last_mut() {
            attach_chunks(last, std::mem::take(&mut chunks));
        }
        entries.push(e);
    }
    if let Some(last) = entries.last_mut() {
        attach_chunks(last, chunks);
    }
    let mut end = 0u64;
    for e in &entries {
        if e.tar_kind().is_none() {
            bail!(
                "file {:?}: unknown entry type {:?} in the table of contents",
                e.name,
                e.kind
            );
        }
        if !e.has_content() {
            continue;
        }
        ensure!(
            e.offset >= end && e.end_offset > e.offset && e.end_offset <= tar_end,
            "file {:?}: the table of contents puts its content at bytes {}..{}, which is not after the previous file's (ending at {end}) and inside the tar ({tar_end} bytes)",
            e.name,
            e.offset,
            e.end_offset
        );
        ensure!(
            e.digest.starts_with("sha256:") && e.digest.len() == 71,
            "file {:?}: the table of contents gives no sha256 digest of its content",
            e.name
        );
        end = e.end_offset;
    }
    Ok(Toc { entries, tar_end })
}

/// Gives file `e` its chunks (`rest`: the `chunk` entries after it) when
/// they tile its content and its frames in order; else none.
fn attach_chunks(e: &mut TocEntry, rest: Vec<Chunk>) {
    if !e.has_content() || rest.is_empty() {
        return;
    }
    let mut all = vec![Chunk {
        blob_offset: e.offset,
        offset: 0,
        size: e.chunk_size.unwrap_or(0),
        digest: e.chunk_digest.clone(),
        zeros: e.chunk_type == "zeros",
    }];
    all.extend(rest);
    let mut pos = 0u64;
    let mut blob = e.offset;
    for (i, c) in all.iter().enumerate() {
        let ok = c.offset == pos
            && c.size > 0
            && (i == 0 || c.blob_offset > blob)
            && c.blob_offset < e.end_offset
            && c.digest.starts_with("sha256:")
            && c.digest.len() == 71;
        if !ok {
            return;
        }
        pos += c.size;
        blob = c.blob_offset;
    }
    if pos == e.size {
        e.chunks = all;
    }
}

/// Checks the compressed table against the manifest's checksum and
/// decompresses it.
pub fn open(compressed: &[u8], loc: &TocLocation) -> Result<Vec<u8>> {
    let got = format!("sha256:{}", hex::encode(Sha256::digest(compressed)));
    ensure!(
        got == loc.checksum,
        "the table of contents has digest {got}, not {} as the manifest says",
        loc.checksum
    );
    let mut out = Vec::with_capacity(loc.uncompressed as usize);
    let d = zstd::stream::read::Decoder::new(compressed)
        .context("decompressing the table of contents")?;
    use std::io::Read;
    d.take(loc.uncompressed + 1)
        .read_to_end(&mut out)
        .context("decompressing the table of contents")?;
    ensure!(
        out.len() as u64 == loc.uncompressed,
        "the table of contents decompresses to {} bytes, not {}",
        out.len(),
        loc.uncompressed
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pos: &str) -> std::collections::HashMap<String, String> {
        [
            (
                "io.containers.zstd-chunked.manifest-position".to_string(),
                pos.to_string(),
            ),
            (
                "io.containers.zstd-chunked.manifest-checksum".to_string(),
                format!("sha256:{}", "0".repeat(64)),
            ),
        ]
        .into()
    }

    #[test]
    fn locations_outside_the_blob_or_malformed_are_refused() {
        assert!(locate(None, 10).unwrap().is_none());
        let l = locate(Some(&ann("100:20:300:1")), 200).unwrap().unwrap();
        assert_eq!((l.offset, l.length, l.uncompressed), (100, 20, 300));
        for bad in [
            "100:20:300",
            "100:200:300:1",
            "a:1:1:1",
            "100:20:300:2",
            "2:1:1:1",
        ] {
            assert!(locate(Some(&ann(bad)), 200).is_err(), "{bad}");
        }
    }

    #[test]
    fn contents_out_of_order_or_past_the_tar_are_refused() {
        let e = |name: &str, off: u64, end: u64| {
            format!(
                r#"{{"type":"reg","name":"{name}","size":3,"digest":"sha256:{}","offset":{off},"endOffset":{end}}}"#,
                "a".repeat(64)
            )
        };
        let doc = |es: &[String]| format!(r#"{{"version":1,"entries":[{}]}}"#, es.join(","));
        assert_eq!(
            parse(doc(&[e("a", 10, 20), e("b", 30, 40)]).as_bytes(), 108)
                .unwrap()
                .entries
                .len(),
            2
        );
        let err = parse(doc(&[e("a", 10, 20), e("b", 15, 40)]).as_bytes(), 108).unwrap_err();
        assert!(format!("{err:#}").contains("file \"b\""), "{err:#}");
        assert!(parse(doc(&[e("a", 10, 120)]).as_bytes(), 108).is_err());
        assert!(parse(br#"{"version":2,"entries":[]}"#, 108).is_err());
    }

    #[test]
    fn chunks_that_tile_the_file_are_kept_others_dropped() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let doc = |second_offset: u64| {
            format!(
                r#"{{"version":1,"entries":[
                {{"type":"reg","name":"f","size":10,"digest":"{}","offset":10,"endOffset":40,"chunkSize":4,"chunkDigest":"{}"}},
                {{"type":"chunk","name":"f","offset":20,"chunkOffset":{second_offset},"chunkSize":6,"chunkDigest":"{}","chunkType":"zeros"}},
                {{"type":"reg","name":"g","size":3,"digest":"{}","offset":40,"endOffset":50}}]}}"#,
                d('a'),
                d('b'),
                d('c'),
                d('d')
            )
        };
        let t = parse(doc(4).as_bytes(), 108).unwrap();
        assert_eq!(t.entries.len(), 2);
        let c = &t.entries[0].chunks;
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].blob_offset, c[0].offset, c[0].size), (10, 0, 4));
        assert_eq!(
            (c[1].blob_offset, c[1].offset, c[1].size, c[1].zeros),
            (20, 4, 6, true)
        );
        assert!(t.entries[1].chunks.is_empty());
        // A chunk that does not start where the previous ends: none kept.
        let t = parse(doc(5).as_bytes(), 108).unwrap();
        assert!(t.entries[0].chunks.is_empty());
    }
}
