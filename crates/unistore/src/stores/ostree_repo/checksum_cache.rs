//! The ostree checksums of composefs objects, remembered.
//!
//! An ostree `.file` checksum covers the content and the metadata (owner,
//! mode, xattrs); a composefs object id covers the content. So the pair
//! (object id, metadata) determines the ostree checksum, and an upgrade
//! that shares most files with the image before need not read them again:
//! [`ChecksumCache::lookup`] answers for every file whose object and
//! metadata were seen, and whose ostree object is still in the repository.
//!
//! The cache lives in `ostree/unistore-checksums.json`
//! (`{"version":1,"entries":{"<key>":"<ostree checksum>"}}`), written with
//! write-temp + fsync + rename after each commit; a lost or damaged cache
//! costs reading, never correctness of what is kept: `fsck` compares each
//! entry's object with its key's metadata and size (and, with
//! `--verify-content`, recomputes the checksum from the composefs object).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::objects::object_path;
use crate::sysroot::Sysroot;
use crate::util;

/// Where the cache lives, relative to the root.
pub const CACHE_FILE: &str = "ostree/unistore-checksums.json";

/// The cache key of a composefs object given the metadata of a file:
/// `<object id>:<uid>:<gid>:<mode, octal, with type>:<sha256 of xattrs>`.
pub fn key(
    object_id: &str,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: &BTreeMap<Box<OsStr>, Box<[u8]>>,
) -> String {
    let mut h = Sha256::new();
    for (k, v) in xattrs {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_encoded_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let x = hex::encode(&h.finalize()[..16]);
    format!("{object_id}:{uid}:{gid}:{mode:o}:{x}")
}

/// The parts of a key: object id, uid, gid, mode.
pub fn parse_key(key: &str) -> Option<(&str, u32, u32, u32)> {
    let mut it = key.split(':');
    let id = it.next()?;
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    it.next()?;
    Some((id, uid, gid, mode))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: HashMap<String, String>,
    /// Keys whose ostree object was seen sharing its composefs object's
    /// extents (written by reflink, or deduplicated): a synthesized commit
    /// need not check them again.
    #[serde(default)]
    shared: HashSet<String>,
}

/// The cache, in memory.
#[derive(Debug, Default)]
pub struct ChecksumCache {
    entries: HashMap<String, String>,
    shared: HashSet<String>,
    dirty: bool,
}

impl ChecksumCache {
    /// Reads the cache of `sysroot`; a missing or unreadable one is empty
    /// (it is only a cache: the unreadable one is replaced at the next
    /// save).
    pub fn load(sysroot: &Sysroot) -> Self {
        sysroot
            .dir()
            .read(CACHE_FILE)
            .ok()
            .and_then(|b| Self::parse(&b).ok())
            .unwrap_or_default()
    }

    /// Parses the bytes of a cache file.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let f: CacheFile = serde_json::from_slice(bytes)
            .with_context(|| format!("{CACHE_FILE} is not a checksum cache"))?;
        anyhow::ensure!(
            f.version == 1,
            "{CACHE_FILE}: unknown version {}",
            f.version
        );
        Ok(Self {
            entries: f.entries,
            shared: f.shared,
            dirty: false,
        })
    }

    /// Reads the cache for a check: an unreadable file is an error.
    pub fn load_strict(sysroot: &Sysroot) -> Result<Option<Self>> {
        match sysroot.dir().read(CACHE_FILE) {
            Ok(b) => Self::parse(&b).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {CACHE_FILE}")),
        }
    }

    /// The checksum of `key` when known and its object is in the
    /// repository opened at `repo_dir`.
    pub fn lookup(&self, repo_dir: &Dir, key: &str) -> Option<String> {
        let c = self.entries.get(key)?;
        if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        repo_dir
            .try_exists(object_path(c))
            .unwrap_or(false)
            .then(|| c.clone())
    }

    /// The checksum remembered for `key`, whether or not its object exists.
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries
            .get(key)
            .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .cloned()
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        self.shared.remove(key);
        self.dirty |= self.entries.remove(key).is_some();
    }

    /// Remembers a computed checksum.
    pub fn insert(&mut self, key: String, checksum: String) {
        if self.entries.get(&key) != Some(&checksum) {
            self.shared.remove(&key);
            self.entries.insert(key, checksum);
            self.dirty = true;
        }
    }

    /// Whether `key`'s ostree object was seen sharing its composefs
    /// object's extents.
    pub fn is_shared(&self, key: &str) -> bool {
        self.shared.contains(key)
    }

    /// Records that `key`'s ostree object shares its composefs object's
    /// extents.
    pub fn mark_shared(&mut self, key: &str) {
        if self.entries.contains_key(key) && self.shared.insert(key.to_string()) {
            self.dirty = true;
        }
    }

    /// Forgets that `key`'s object shares (it was seen holding a copy).
    pub fn mark_unshared(&mut self, key: &str) {
        self.dirty |= self.shared.remove(key);
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &String)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the entries whose object the repository no longer has (after
    /// a prune) or for which `keep` says no.
    pub fn retain(&mut self, repo_dir: &Dir, mut keep: impl FnMut(&str, &str) -> bool) {
        let before = self.entries.len();
        self.entries
            .retain(|k, c| keep(k, c) && repo_dir.try_exists(object_path(c)).unwrap_or(false));
        let entries = &self.entries;
        self.shared.retain(|k| entries.contains_key(k));
        self.dirty |= self.entries.len() != before;
    }

    /// Writes the cache when it changed (write-temp, fsync, rename).
    pub fn save(&mut self, sysroot: &Sysroot) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let f = CacheFile {
            version: 1,
            entries: std::mem::take(&mut self.entries),
            shared: std::mem::take(&mut self.shared),
        };
        let r = serde_json::to_vec(&f)
            .map_err(anyhow::Error::from)
            .and_then(|b| util::atomic_write(sysroot.dir(), CACHE_FILE, &b));
        self.entries = f.entries;
        self.shared = f.shared;
        r.with_context(|| format!("writing {CACHE_FILE}"))?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_object_and_metadata() {
        let none = BTreeMap::new();
        let mut caps: BTreeMap<Box<OsStr>, Box<[u8]>> = BTreeMap::new();
        caps.insert(
            OsStr::new("security.capability").into(),
            b"x".to_vec().into(),
        );
        let k = key("ab", 0, 0, 0o100644, &none);
        assert_ne!(k, key("ac", 0, 0, 0o100644, &none));
        assert_ne!(k, key("ab", 1, 0, 0o100644, &none));
        assert_ne!(k, key("ab", 0, 1, 0o100644, &none));
        assert_ne!(k, key("ab", 0, 0, 0o100755, &none));
        assert_ne!(k, key("ab", 0, 0, 0o100644, &caps));
        assert_eq!(parse_key(&k), Some(("ab", 0, 0, 0o100644)));
        assert_eq!(parse_key("ab:x:0:644:y"), None);
    }

    #[test]
    fn entries_count_only_while_their_object_exists() {
        let td = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(td.path().join("ostree/repo/objects/ab")).unwrap();
        let s = Sysroot::open(td.path()).unwrap();
        let repo = s.dir().open_dir("ostree/repo").unwrap();
        let c = "ab".to_string() + &"1".repeat(62);
        let mut cache = ChecksumCache::load(&s);
        cache.insert("k".into(), c.clone());
        assert_eq!(cache.lookup(&repo, "k"), None);
        std::fs::write(td.path().join("ostree/repo").join(object_path(&c)), b"").unwrap();
        assert_eq!(cache.lookup(&repo, "k"), Some(c.clone()));
        cache.insert("bad".into(), "../../etc".into());
        assert_eq!(cache.lookup(&repo, "bad"), None);
        cache.save(&s).unwrap();
        let again = ChecksumCache::load(&s);
        assert_eq!(again.len(), 2);
        // A damaged file is an empty cache, or an error for a check.
        std::fs::write(td.path().join(CACHE_FILE), b"{").unwrap();
        assert!(ChecksumCache::load(&s).is_empty());
        assert!(ChecksumCache::load_strict(&s).is_err());
    }
}
