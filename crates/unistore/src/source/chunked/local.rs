//! What the host already has of a layer: file contents by SHA-256 and tar
//! headers by name, from every layer of every image in the composefs
//! repository (the repository every host kind keeps: composefs hosts boot
//! from it, a unified store's files are reflinks of its objects, a bound
//! ostree host's objects too).
//!
//! The table of contents names contents by SHA-256; the repository names
//! objects by fs-verity digest. The index maps one to the other lazily:
//! only the local files of the same size as a wanted one are hashed, the
//! same path first, each object at most once.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::toc::TocEntry;
use crate::stores::composefs_repo::{ObjectId, Repo};
use crate::stores::tar_walk::{Body, Entry, Kind, LayerVisitor, walk_layer};

/// The content of a file the host has.
#[derive(Debug, Clone)]
pub enum Content {
    /// An object of the repository.
    Object(ObjectId),
    /// Bytes kept inline in a layer's splitstream (small files).
    Inline(Vec<u8>),
    /// A file object of an ostree repository (under its `objects`).
    Ostree(std::sync::Arc<cap_std_ext::cap_std::fs::Dir>, String),
}

impl Content {
    /// A reader of the content.
    pub fn open(&self, repo: &Repo) -> Result<Box<dyn Read>> {
        Ok(match self {
            Content::Object(id) => Box::new(std::fs::File::from(repo.open_object(id)?)),
            Content::Inline(b) => Box::new(std::io::Cursor::new(b.clone())),
            Content::Ostree(dir, rel) => Box::new(
                dir.open(rel)
                    .with_context(|| format!("opening ostree object {rel}"))?
                    .into_std(),
            ),
        })
    }
}

struct File {
    content: Content,
    size: u64,
}

/// A tar header of a local layer.
struct Header {
    entry: Entry,
    raw: Vec<u8>,
}

/// The index of what the host has.
#[derive(Default)]
pub struct Local {
    files: Vec<File>,
    by_name: HashMap<Vec<u8>, Vec<usize>>,
    by_size: HashMap<u64, Vec<usize>>,
    headers: HashMap<Vec<u8>, Vec<Header>>,
    /// SHA-256 of files hashed so far (by index into `files`).
    hashed: HashMap<usize, [u8; 32]>,
    /// Objects already hashed: the same object in several layers is read once.
    by_object: HashMap<ObjectId, [u8; 32]>,
    /// Bytes hashed to find contents (for the debug log).
    pub hashed_bytes: u64,
}

/// The ustar user and group names of a header's last block.
pub fn owner_names(raw: &[u8]) -> (&[u8], &[u8]) {
    let field = |b: &[u8]| -> usize { b.iter().position(|c| *c == 0).unwrap_or(b.len()) };
    if raw.len() < 512 {
        return (b"", b"");
    }
    let h = &raw[raw.len() - 512..];
    let (u, g) = (&h[265..297], &h[297..329]);
    (&u[..field(u)], &g[..field(g)])
}

impl Local {
    /// Indexes every layer of every image tagged in `repo`.
    pub fn scan(
        repo: &Repo,
        ostree_objects: Option<&std::sync::Arc<cap_std_ext::cap_std::fs::Dir>>,
    ) -> Result<Self> {
        let mut local = Self::default();
        let mut seen = std::collections::HashSet::new();
        for (_, digest) in composefs_oci::oci_image::list_refs(repo)? {
            let Ok(img) = composefs_oci::oci_image::OciImage::open(repo, &digest, None) else {
                continue;
            };
            for diff_id in img.layer_diff_ids() {
                if !seen.insert(diff_id.to_string()) {
                    continue;
                }
                let verity = img.layer_verity(diff_id).cloned();
                let mut v = Collect {
                    local: &mut local,
                    last_raw: Vec::new(),
                };
                // A layer the host cannot read is not a source.
                if let Err(e) = walk_layer(repo, diff_id, verity.as_ref(), &mut v) {
                    tracing::debug!("not indexing layer {diff_id}: {e:#}");
                }
            }
        }
        local.scan_objects(repo)?;
        if let Some(d) = ostree_objects {
            local.scan_ostree(d)?;
        }
        Ok(local)
    }

    /// Adds every object of the repository no layer names, by size only:
    /// an ostree host bound to composefs keeps its files there without
    /// layers (no names, no headers to take).
    fn scan_objects(&mut self, repo: &Repo) -> Result<()> {
        use composefs::fsverity::FsVerityHashValue;
        use rustix::fs::{AtFlags, Dir, Mode, OFlags, openat, statat};
        let known: std::collections::HashSet<ObjectId> = self
            .files
            .iter()
            .filter_map(|f| match &f.content {
                Content::Object(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let objects = repo.objects_dir()?;
        for n in 0..=255u8 {
            let sub = format!("{n:02x}");
            let Ok(fd) = openat(
                objects,
                &sub,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            for e in Dir::read_from(&fd)? {
                let e = e?;
                let name = e.file_name().to_bytes();
                let Ok(id) = ObjectId::from_object_dir_and_basename(n, name) else {
                    continue;
                };
                if known.contains(&id) {
                    continue;
                }
                let Ok(st) = statat(&fd, e.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
                    continue;
                };
                if st.st_mode & 0o170000 != 0o100000 || st.st_size <= 0 {
                    continue;
                }
                let i = self.files.len();
                self.files.push(File {
                    content: Content::Object(id),
                    size: st.st_size as u64,
                });
                self.by_size.entry(st.st_size as u64).or_default().push(i);
            }
        }
        Ok(())
    }

    /// Adds the file objects of an ostree repository, by size only.
    fn scan_ostree(
        &mut self,
        objects: &std::sync::Arc<cap_std_ext::cap_std::fs::Dir>,
    ) -> Result<()> {
        for sub in objects.entries()? {
            let sub = sub?;
            let name = sub.file_name();
            let Some(prefix) = name.to_str().filter(|n| n.len() == 2) else {
                continue;
            };
            let Ok(d) = sub.open_dir() else { continue };
            for e in d.entries()? {
                let e = e?;
                let f = e.file_name();
                let Some(f) = f.to_str().filter(|f| f.ends_with(".file")) else {
                    continue;
                };
                let Ok(md) = e.metadata() else { continue };
                if !md.is_file() || md.len() == 0 {
                    continue;
                }
                let i = self.files.len();
                self.files.push(File {
                    content: Content::Ostree(objects.clone(), format!("{prefix}/{f}")),
                    size: md.len(),
                });
                self.by_size.entry(md.len()).or_default().push(i);
            }
        }
        Ok(())
    }

    /// Number of files indexed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the host has no file to take from.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// A local file with the content `e` names (its size and SHA-256).
    pub fn content(&mut self, repo: &Repo, e: &TocEntry) -> Result<Option<Content>> {
        let Ok(want) = hex::decode(e.digest.trim_start_matches("sha256:")) else {
            return Ok(None);
        };
        let same_name = self
            .by_name
            .get(e.name.as_bytes())
            .cloned()
            .unwrap_or_default();
        let same_size = self.by_size.get(&e.size).cloned().unwrap_or_default();
        for i in same_name.into_iter().chain(same_size) {
            if self.files[i].size != e.size {
                continue;
            }
            if self.sha256(repo, i)?[..] == want[..] {
                return Ok(Some(self.files[i].content.clone()));
            }
        }
        Ok(None)
    }

    /// A local file of the same path as `name` whose bytes at the chunk's
    /// place have the chunk's SHA-256 (a file changed elsewhere).
    pub fn chunk(&self, repo: &Repo, name: &str, c: &super::toc::Chunk) -> Result<Option<Content>> {
        let Ok(want) = hex::decode(c.digest.trim_start_matches("sha256:")) else {
            return Ok(None);
        };
        for &i in self.by_name.get(name.as_bytes()).into_iter().flatten() {
            let f = &self.files[i];
            if f.size < c.offset + c.size {
                continue;
            }
            let mut r = f.content.open(repo)?;
            std::io::copy(&mut (&mut r).take(c.offset), &mut std::io::sink())?;
            let mut sha = Sha256::new();
            let n = std::io::copy(&mut r.take(c.size), &mut sha)?;
            if n == c.size && sha.finalize()[..] == want[..] {
                return Ok(Some(f.content.clone()));
            }
        }
        Ok(None)
    }

    /// The raw header bytes (extension headers included) of a local entry
    /// that says what `e` says.
    pub fn header(&self, e: &TocEntry) -> Option<&[u8]> {
        self.headers
            .get(e.name.as_bytes())?
            .iter()
            .find(|h| e.same_as(&h.entry, owner_names(&h.raw)))
            .map(|h| &h.raw[..])
    }

    fn sha256(&mut self, repo: &Repo, i: usize) -> Result<[u8; 32]> {
        if let Some(h) = self.hashed.get(&i) {
            return Ok(*h);
        }
        let h = match &self.files[i].content {
            Content::Inline(b) => Sha256::digest(b).into(),
            Content::Object(id) if self.by_object.contains_key(id) => self.by_object[id],
            c => {
                let h = hash(c.open(repo)?)?;
                self.hashed_bytes += self.files[i].size;
                if let Content::Object(id) = c {
                    self.by_object.insert(id.clone(), h);
                }
                h
            }
        };
        self.hashed.insert(i, h);
        Ok(h)
    }
}

fn hash(mut f: Box<dyn Read>) -> Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.finalize().into())
}

struct Collect<'a> {
    local: &'a mut Local,
    last_raw: Vec<u8>,
}

impl LayerVisitor for Collect<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        // The header's bytes are the last raw bytes before its entry.
        self.last_raw.clear();
        self.last_raw.extend_from_slice(bytes);
        Ok(())
    }

    fn entry(&mut self, entry: &Entry, body: Body<'_>) -> Result<()> {
        let l = &mut *self.local;
        if entry.kind == Kind::GlobalHeader {
            return Ok(());
        }
        let content = match body {
            Body::Empty => None,
            Body::Inline(b) => Some(Content::Inline(b.to_vec())),
            Body::External(id) => Some(Content::Object(id.clone())),
        };
        if let Some(content) = content {
            let i = l.files.len();
            l.files.push(File {
                content,
                size: entry.size,
            });
            l.by_name.entry(entry.name.clone()).or_default().push(i);
            l.by_size.entry(entry.size).or_default().push(i);
        }
        let headers = l.headers.entry(entry.name.clone()).or_default();
        if !headers.iter().any(|h| h.raw == self.last_raw) {
            headers.push(Header {
                entry: entry.clone(),
                raw: std::mem::take(&mut self.last_raw),
            });
        }
        Ok(())
    }
}
