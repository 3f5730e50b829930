//! Issue 25: random layered trees for the differential test. A seed gives
//! the same layers every time (`ONE_TREE_SEED=N` reproduces one case).
//!
//! Every layer writes below `gen/` and declares the parents of what it
//! writes with their current metadata, as image builders do (a layer that
//! omits a parent a lower layer declares is a documented difference:
//! docs/differential.md). Each path appears at most once per layer; an
//! opaque marker (or `trusted.overlay.opaque=y` on a directory entry) comes
//! before anything the layer puts in the directory; hard links name a file of their own layer.

use std::collections::{BTreeMap, BTreeSet};

use super::trees::E;

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_F00D)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "bin",
    "lib",
    " sp ace",
    "ünïcode",
    "-dash",
    "..dots",
    ".hidden",
    "x.wh",
    "wh..x",
    "tab\tname",
    "new\nline",
    "back\\slash",
    "a-rather-long-name-that-goes-on-and-on-for-quite-a-while-0123456789",
];
const FILE_MODES: &[u32] = &[0o644, 0o755, 0o600, 0o444, 0o4755, 0o2755, 0o700, 0o640];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o1777, 0o750, 0o2775];
const OWNERS: &[(u64, u64)] = &[(0, 0), (1000, 1000), (65534, 65534), (0, 1001)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other,
}

/// The merged tree so far: path -> (kind, mode, owner).
#[derive(Default)]
struct Model {
    nodes: BTreeMap<String, (Kind, u32, (u64, u64))>,
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, (k, ..))| *k == Kind::Dir)
            .map(|(p, _)| p.clone())
            .collect()
    }
    fn remove_tree(&mut self, p: &str) {
        let prefix = format!("{p}/");
        self.nodes.retain(|k, _| k != p && !k.starts_with(&prefix));
    }
}

/// One layer being written.
struct Layer<'m> {
    model: &'m mut Model,
    out: Vec<E>,
    /// Paths this layer wrote (each once).
    written: BTreeSet<String>,
}

impl Layer<'_> {
    /// Declares the ancestors of `p` (existing ones with their metadata,
    /// missing ones as 0755 root).
    fn parents(&mut self, p: &str) {
        let mut acc = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            if self.written.contains(&acc) {
                continue;
            }
            let (mode, owner) = match self.model.nodes.get(&acc) {
                Some((Kind::Dir, m, o)) => (*m, *o),
                _ => (0o755, (0, 0)),
            };
            self.model
                .nodes
                .insert(acc.clone(), (Kind::Dir, mode, owner));
            self.written.insert(acc.clone());
            self.out
                .push(E::dir(&format!("{acc}/"), mode).owner(owner.0, owner.1));
        }
    }
    /// Puts `p` in the model as `kind` over whatever was there (its
    /// parents declared first); the caller writes its entry.
    fn place(&mut self, p: &str, kind: Kind, mode: u32, owner: (u64, u64)) {
        self.parents(p);
        self.model.remove_tree(p);
        self.model.nodes.insert(p.to_string(), (kind, mode, owner));
        self.written.insert(p.to_string());
    }
    fn free(&self, p: &str) -> bool {
        // Nothing written at p or below it, nor a parent of it replaced.
        let prefix = format!("{p}/");
        !self
            .written
            .iter()
            .any(|w| w == p || w.starts_with(&prefix))
    }
}

fn content(rng: &mut Rng, seed: u64) -> Vec<u8> {
    match rng.below(6) {
        0 => vec![],
        1 => vec![0u8; 200 * 1024],
        2 => unistore_fixtures::rng::pseudo_random_bytes(
            &format!("gen{seed}-{}", rng.next()),
            70_000,
        ),
        _ => format!("content {}\n", rng.next()).into_bytes(),
    }
}

fn xattrs(rng: &mut Rng, e: E) -> E {
    let mut e = e;
    if rng.chance(25) {
        e = e.xattr("user.gen", format!("{}", rng.next()).as_bytes());
    }
    if rng.chance(10) {
        e = e.xattr("user.empty", b"");
    }
    if rng.chance(10) {
        e = e.xattr("trusted.overlay.metacopy", b"");
    }
    if rng.chance(5) {
        e = e.xattr("trusted.overlay.whiteout", b"");
    }
    e
}

/// `n` layers of a random tree below `gen/`.
pub fn layers(seed: u64, n: usize) -> Vec<Vec<E>> {
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let mut out = vec![];
    for _ in 0..n {
        let mut l = Layer {
            model: &mut model,
            out: vec![],
            written: BTreeSet::new(),
        };
        if !l.model.nodes.contains_key("gen") {
            l.model
                .nodes
                .insert("gen".into(), (Kind::Dir, 0o755, (0, 0)));
        }
        let mut files_here: Vec<String> = vec![];
        for _ in 0..(15 + rng.below(40)) {
            let dirs = l.model.dirs();
            let parent = rng.pick(&dirs).clone();
            let p = format!("{parent}/{}", rng.pick(NAMES));
            if p.len() >= 200 {
                continue;
            }
            let (uid, gid) = *rng.pick(OWNERS);
            match rng.below(10) {
                // A directory (over whatever is there: a file becomes a
                // directory again).
                0 | 1 => {
                    if !l.free(&p) {
                        continue;
                    }
                    let mode = *rng.pick(DIR_MODES);
                    l.parents(&p);
                    if !matches!(l.model.nodes.get(&p), Some((Kind::Dir, ..))) {
                        l.model.remove_tree(&p);
                    }
                    l.model
                        .nodes
                        .insert(p.clone(), (Kind::Dir, mode, (uid, gid)));
                    l.written.insert(p.clone());
                    let mut e = xattrs(&mut rng, E::dir(&format!("{p}/"), mode).owner(uid, gid));
                    // Opaque by xattr: hides what lower layers have below.
                    if rng.chance(10) {
                        e = e.xattr("trusted.overlay.opaque", b"y");
                        let prefix = format!("{p}/");
                        l.model.nodes.retain(|k, _| !k.starts_with(&prefix));
                    }
                    l.out.push(e);
                }
                // A file (over whatever is there: a directory becomes a
                // file).
                2..=4 => {
                    if !l.free(&p) || p == "gen" {
                        continue;
                    }
                    let mode = *rng.pick(FILE_MODES);
                    l.place(&p, Kind::File, mode, (uid, gid));
                    let data = content(&mut rng, seed);
                    let e = xattrs(&mut rng, E::file(&p, mode, &data).owner(uid, gid));
                    l.out.push(e);
                    files_here.push(p);
                }
                5 => {
                    if !l.free(&p) {
                        continue;
                    }
                    l.place(&p, Kind::Other, 0o777, (uid, gid));
                    let target = rng
                        .pick(&["a", "../b", "/usr/bin/cat", "no/such"])
                        .to_string();
                    l.out.push(E::symlink(&p, &target).owner(uid, gid));
                }
                // A hard link to a file of this layer, its header with its
                // own mode and owner.
                6 => {
                    if files_here.is_empty() || !l.free(&p) {
                        continue;
                    }
                    let target = rng.pick(&files_here).clone();
                    if target == p || !l.model.nodes.contains_key(&target) {
                        continue;
                    }
                    let mode = *rng.pick(FILE_MODES);
                    l.place(&p, Kind::File, mode, (uid, gid));
                    l.out.push(E::hardlink(&p, &target, mode).owner(uid, gid));
                }
                // A whiteout of something a lower layer has (or not).
                7 | 8 => {
                    let existing: Vec<String> = l
                        .model
                        .nodes
                        .keys()
                        .filter(|k| k.as_str() != "gen" && l.free(k))
                        .cloned()
                        .collect();
                    let target = if existing.is_empty() || rng.chance(20) {
                        p.clone()
                    } else {
                        rng.pick(&existing).clone()
                    };
                    let (dir, name) = target.rsplit_once('/').unwrap();
                    let wh = format!("{dir}/.wh.{name}");
                    if !l.free(&target) || !l.free(&wh) {
                        continue;
                    }
                    l.parents(&wh);
                    l.model.remove_tree(&target);
                    l.written.insert(target.clone());
                    l.written.insert(wh.clone());
                    l.out.push(E::file(&wh, 0o644, b""));
                }
                // An opaque marker on a directory below gen/ this layer has
                // not written into yet.
                _ => {
                    let cands: Vec<String> = dirs
                        .iter()
                        .filter(|d| d.as_str() != "gen" && l.free(d))
                        .cloned()
                        .collect();
                    if cands.is_empty() {
                        continue;
                    }
                    let d = rng.pick(&cands).clone();
                    let (mode, owner) = match l.model.nodes.get(&d) {
                        Some((_, m, o)) => (*m, *o),
                        None => continue,
                    };
                    l.parents(&d);
                    let prefix = format!("{d}/");
                    l.model.nodes.retain(|k, _| !k.starts_with(&prefix));
                    l.written.insert(d.clone());
                    l.out
                        .push(E::dir(&format!("{d}/"), mode).owner(owner.0, owner.1));
                    l.out
                        .push(E::file(&format!("{d}/.wh..wh..opq"), 0o644, b""));
                }
            }
        }
        if l.out.is_empty() {
            l.out.push(E::dir("gen/", 0o755));
        }
        out.push(l.out);
    }
    out
}
