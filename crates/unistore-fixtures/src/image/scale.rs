//! Benchmark-sized images: many files of mixed sizes spread over many layers, on top of
//! the test image's bootable base (its base, kernel and config layers), and derived
//! versions that differ from the first only in their small top layer.
//!
//! Layer plan of version `k` (tag `v{k}`, version label `{k}.0`):
//! 1. – 3. the test image's `base`, `kernel` and `config` layers ([`super::synthetic`]);
//! 4. – `3 + layers`: the content layers, the same for every version: `files` regular files
//!    of `mib` MiB in total under `/usr/share/unistore-scale/lNN/dNNNN/`, 50 per directory;
//! 5. last, the update layer of version `k`: 16 small text files and a release marker under
//!    `/usr/share/unistore-scale/update/` and `/etc/unistore-scale-release` (about 64 KiB).
//!
//! File sizes: one file in 500 is large (1 to 8 MiB before scaling), the others are
//! log-uniform between 128 bytes and 96 KiB; all sizes are then scaled so they add up to
//! exactly `mib` MiB. Nine files in ten (half of the large ones) are text made of
//! pseudo-random words from a 2,048-word vocabulary, a few words much more common than the
//! rest; the others are pseudo-random binary (incompressible). gzip (level 6) shrinks the
//! content layers about 1.7 times. Everything is a function of the options (the seed
//! included): the same options write the same blobs.

use super::layer::Meta;
use super::oci::ImageWriter;
use super::synthetic::{Known, Tar, TestImageOpts, add_base_layers, ensure_dirs};
use crate::rng::PseudoRandom;
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

const MIB: u64 = 1024 * 1024;

/// Where the content layers' files go.
pub const SCALE_DIR: &str = "/usr/share/unistore-scale";
const FILES_PER_DIR: u64 = 50;

/// Options of [`build_scale_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleImageOpts {
    /// Regular files in the content layers.
    pub files: u64,
    /// Content layers (the three base layers and the update layer come on top of these).
    pub layers: u32,
    /// MiB of file content in the content layers.
    pub mib: u64,
    /// Versions to write: tags `v1` .. `v{versions}`.
    pub versions: u32,
    /// Seed of every pseudo-random choice.
    pub seed: String,
    /// gzip level of the layers (0 – 9).
    pub level: u32,
}

/// What [`build_scale_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScaleImage {
    /// `(tag, manifest digest)`, `v1` first.
    pub tags: Vec<(String, String)>,
    /// Regular files in the content layers.
    pub files: u64,
    /// Bytes of file content in the content layers.
    pub bytes: u64,
    /// Layers of each version.
    pub layers: usize,
}

/// SplitMix64: small, fast, deterministic.
struct Mix(u64);

impl Mix {
    fn new(seed: &str) -> Self {
        let d = Sha256::digest(seed.as_bytes());
        Self(u64::from_le_bytes(d[..8].try_into().expect("8 bytes")))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One content file: size and whether it is text.
#[derive(Debug, Clone, Copy)]
struct FileSpec {
    size: u64,
    text: bool,
}

/// Sizes and kinds of all content files, scaled to `total` bytes.
fn plan_files(files: u64, total: u64, seed: &str) -> Vec<FileSpec> {
    let mut rng = Mix::new(&format!("{seed}/sizes"));
    let (lo, hi) = ((128f64).ln(), ((96 * 1024) as f64).ln());
    let mut specs: Vec<FileSpec> = (0..files)
        .map(|i| {
            let large = i % 500 == 499;
            let size = if large {
                MIB + (rng.unit() * (7 * MIB) as f64) as u64
            } else {
                (lo + rng.unit() * (hi - lo)).exp() as u64
            };
            let text = rng.unit() < if large { 0.5 } else { 0.9 };
            FileSpec { size, text }
        })
        .collect();
    let sum: u128 = specs.iter().map(|s| s.size as u128).sum();
    let mut acc = 0u64;
    for s in specs.iter_mut() {
        s.size = (s.size as u128 * total as u128)
            .checked_div(sum)
            .unwrap_or(0) as u64;
        acc += s.size;
    }
    // Rounding: the remainder goes to the largest file.
    if let Some(big) = specs.iter_mut().max_by_key(|s| s.size) {
        big.size += total - acc;
    }
    specs
}

/// Text made of pseudo-random words from a fixed vocabulary, `len` bytes.
struct WordText {
    rng: Mix,
    vocab: std::sync::Arc<Vec<Vec<u8>>>,
    line: Vec<u8>,
    pos: usize,
    remaining: u64,
}

fn vocabulary(seed: &str) -> Vec<Vec<u8>> {
    let mut rng = Mix::new(&format!("{seed}/vocabulary"));
    (0..2048)
        .map(|_| {
            let n = 2 + (rng.next() % 9) as usize;
            (0..n).map(|_| b'a' + (rng.next() % 26) as u8).collect()
        })
        .collect()
}

impl WordText {
    fn new(vocab: std::sync::Arc<Vec<Vec<u8>>>, seed: &str, len: u64) -> Self {
        Self {
            rng: Mix::new(seed),
            vocab,
            line: Vec::new(),
            pos: 0,
            remaining: len,
        }
    }

    fn refill(&mut self) {
        self.line.clear();
        self.pos = 0;
        let words = 4 + self.rng.next() % 12;
        for i in 0..words {
            if i > 0 {
                self.line.push(b' ');
            }
            // Skewed towards the first words, as in real text (u^4: a few words are common).
            let u = self.rng.unit();
            let w = &self.vocab[((u * u * u * u) * self.vocab.len() as f64) as usize];
            self.line.extend_from_slice(w);
        }
        self.line.push(b'\n');
    }
}

impl Read for WordText {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < out.len() && self.remaining > 0 {
            if self.pos == self.line.len() {
                self.refill();
            }
            let take = (self.line.len() - self.pos)
                .min(out.len() - n)
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            out[n..n + take].copy_from_slice(&self.line[self.pos..self.pos + take]);
            self.pos += take;
            n += take;
            self.remaining -= take as u64;
        }
        Ok(n)
    }
}

fn content_file(
    t: &mut Tar,
    vocab: &std::sync::Arc<Vec<Vec<u8>>>,
    path: &str,
    seed: &str,
    spec: FileSpec,
) -> Result<()> {
    let meta = Meta::root(0o644);
    if spec.text {
        let r = WordText::new(vocab.clone(), seed, spec.size);
        t.file_from_reader(path, meta, spec.size, r, &[])
    } else {
        let r = PseudoRandom::new(seed, spec.size);
        t.file_from_reader(path, meta, spec.size, r, &[])
    }
}

fn update_layer(
    t: &mut Tar,
    dirs: &mut Known,
    vocab: &std::sync::Arc<Vec<Vec<u8>>>,
    seed: &str,
    k: u32,
) -> Result<()> {
    let d = format!("{SCALE_DIR}/update");
    ensure_dirs(t, dirs, &d)?;
    t.file(
        &format!("{d}/release"),
        Meta::root(0o644),
        format!("{k}\n").as_bytes(),
    )?;
    for i in 0..16 {
        let spec = FileSpec {
            size: 4096,
            text: true,
        };
        content_file(
            t,
            vocab,
            &format!("{d}/file-{i:02}.txt"),
            &format!("{seed}/update-{k}/{i}"),
            spec,
        )?;
    }
    t.file(
        "/etc/unistore-scale-release",
        Meta::root(0o644),
        format!("VERSION={k}\n").as_bytes(),
    )
}

/// Writes versions `v1` .. `v{versions}` of the scale image into `oci_dir` (created if
/// needed). The content layers are written once and shared by every version.
pub fn build_scale_image(oci_dir: &Path, opts: &ScaleImageOpts) -> Result<ScaleImage> {
    anyhow::ensure!(opts.layers >= 1, "--layers must be at least 1");
    anyhow::ensure!(opts.versions >= 1, "--versions must be at least 1");
    anyhow::ensure!(opts.files >= opts.layers as u64, "fewer files than layers");
    let specs = plan_files(opts.files, opts.mib * MIB, &opts.seed);
    let vocab = std::sync::Arc::new(vocabulary(&opts.seed));
    let mut w = ImageWriter::new(
        oci_dir,
        "1.0",
        &[("containers.bootc", "1")],
        flate2::Compression::new(opts.level),
    )?;
    let base = TestImageOpts::default();
    let mut dirs = add_base_layers(&mut w, &base)?;
    let per_layer = opts.files.div_ceil(opts.layers as u64);
    for l in 0..opts.layers as u64 {
        let range = (l * per_layer).min(opts.files)..((l + 1) * per_layer).min(opts.files);
        w.add_layer(&format!("unistore-fixture: scale content {l}"), |t| {
            for i in range {
                let dir = format!("{SCALE_DIR}/l{l:02}/d{:04}", i / FILES_PER_DIR);
                ensure_dirs(t, &mut dirs, &dir)?;
                let spec = specs[i as usize];
                let ext = if spec.text { "txt" } else { "bin" };
                let seed = format!("{}/file-{i}", opts.seed);
                content_file(t, &vocab, &format!("{dir}/f{i:06}.{ext}"), &seed, spec)?;
            }
            Ok(())
        })?;
    }
    let mut tags = Vec::new();
    for k in 1..=opts.versions {
        let mut v = w.fork(&format!("{k}.0"))?;
        let mut d = dirs.clone();
        v.add_layer(&format!("unistore-fixture: scale update {k}"), |t| {
            update_layer(t, &mut d, &vocab, &opts.seed, k)
        })?;
        let tag = format!("v{k}");
        let digest = v.finish_untracked(&tag)?;
        tags.push((tag, digest));
    }
    Ok(ScaleImage {
        tags,
        files: opts.files,
        bytes: specs.iter().map(|s| s.size).sum(),
        layers: 3 + opts.layers as usize + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_adds_up_and_mixes() {
        let specs = plan_files(2500, 50 * MIB, "s");
        assert_eq!(specs.iter().map(|s| s.size).sum::<u64>(), 50 * MIB);
        let small = specs.iter().filter(|s| s.size < 16 * 1024).count();
        let large = specs.iter().filter(|s| s.size >= MIB / 2).count();
        assert!(small > 1000, "{small} small files");
        assert!(large >= 3, "{large} large files");
        assert!(specs.iter().any(|s| s.text) && specs.iter().any(|s| !s.text));
    }

    #[test]
    fn text_is_deterministic_and_exact() {
        let v = std::sync::Arc::new(vocabulary("s"));
        let mut a = Vec::new();
        WordText::new(v.clone(), "x", 10_000)
            .read_to_end(&mut a)
            .unwrap();
        let mut b = Vec::new();
        WordText::new(v, "x", 10_000).read_to_end(&mut b).unwrap();
        assert_eq!(a.len(), 10_000);
        assert_eq!(a, b);
        assert!(
            a.iter()
                .all(|c| c.is_ascii_lowercase() || *c == b' ' || *c == b'\n')
        );
    }

    #[test]
    fn versions_share_all_but_the_top_layer() {
        let td = tempfile::tempdir().unwrap();
        let opts = ScaleImageOpts {
            files: 40,
            layers: 2,
            mib: 1,
            versions: 2,
            seed: "t".into(),
            level: 1,
        };
        let img = build_scale_image(td.path(), &opts).unwrap();
        assert_eq!(img.tags.len(), 2);
        let l1 = super::super::layer_blobs(td.path(), "v1").unwrap();
        let l2 = super::super::layer_blobs(td.path(), "v2").unwrap();
        assert_eq!(l1.len(), 3 + 2 + 1);
        assert_eq!(l1[..5], l2[..5]);
        assert_ne!(l1[5], l2[5]);
        let tree = super::super::expected_from_oci(td.path(), "v2").unwrap();
        let files = tree
            .iter()
            .filter(|e| e.path.starts_with(&format!("{SCALE_DIR}/l")) && e.is_file_like())
            .count();
        assert_eq!(files, 40);
        // The same options write the same blobs.
        let again = build_scale_image(td.path(), &opts).unwrap();
        assert_eq!(again.tags, img.tags);
    }
}
