//! The composefs repository under `composefs/` (composefs-rs format, SHA-512).
//!
//! A thin layer over `composefs` / `composefs-oci`: repository init and open,
//! pulls, the `localhost/bootc-<manifest digest>` tags, and the boot EROFS
//! image whose digest is a deployment's id.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use composefs::fsverity::{Algorithm, FsVerityHashValue, Sha512HashValue};
use composefs::repository::{Repository, RepositoryConfig};
use composefs_oci::OciDigest;
use composefs_oci::oci_image::OciImage;

use crate::fs::reflink;
use crate::sysroot::{BOOTC_TAG_PREFIX, COMPOSEFS_DIR, Sysroot};

/// Object ids of the host repository: fs-verity SHA-512 digests.
pub type ObjectId = Sha512HashValue;
/// The host repository.
pub type Repo = Repository<ObjectId>;

/// Whether the filesystem holding `sysroot` can enable fs-verity.
pub fn probe_fsverity(sysroot: &Sysroot) -> bool {
    let Ok(mut f) = tempfile::tempfile_in(sysroot.path()) else {
        return false;
    };
    if f.write_all(&[0u8; 4096]).is_err() || f.flush().is_err() {
        return false;
    }
    // fs-verity needs a read-only fd.
    let Ok(ro) = reopen_readonly(&f) else {
        return false;
    };
    drop(f);
    composefs::fsverity::enable_verity_raw::<ObjectId>(&ro).is_ok()
}

fn reopen_readonly(f: &std::fs::File) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    Ok(std::fs::File::open(format!(
        "/proc/self/fd/{}",
        f.as_raw_fd()
    ))?)
}

/// Creates the repository (SHA-512; insecure where fs-verity is missing) or
/// opens it if it exists with the same settings. Returns whether it was new.
pub fn init(sysroot: &Sysroot) -> Result<(Arc<Repo>, bool)> {
    init_at(sysroot, COMPOSEFS_DIR)
}

/// [`init`] for a repository at `rel` below the root (a staging repository).
pub fn init_at(sysroot: &Sysroot, rel: &str) -> Result<(Arc<Repo>, bool)> {
    let mut config = RepositoryConfig::new(Algorithm::SHA512);
    if !probe_fsverity(sysroot) {
        tracing::info!("no fs-verity on target: repository in insecure mode");
        config = config.set_insecure();
    }
    let (mut repo, created) = Repo::init_path(sysroot.dir(), rel, config)
        .context("initializing the composefs repository")?;
    repo.set_write_concurrency(write_concurrency());
    Ok((Arc::new(repo), created))
}

/// Opens the existing repository.
pub fn open(sysroot: &Sysroot) -> Result<Arc<Repo>> {
    let mut repo = Repo::open_path(sysroot.dir(), COMPOSEFS_DIR).map_err(|e| {
        anyhow!(
            "opening the composefs repository {}: {e}",
            sysroot.join(COMPOSEFS_DIR).display()
        )
    })?;
    repo.set_write_concurrency(write_concurrency());
    Ok(Arc::new(repo))
}

/// How many object files a pull writes at once: twice the CPUs. composefs
/// defaults to one per CPU, and each object's writer waits on its channel
/// and the page cache about as much as it computes: the sample's plain
/// install from its layout took 1.80–1.84 s with 2 writers, 1.61–1.64 s
/// with 4, no better with 6 to 16 (2 CPUs); from the registry, 7 runs of
/// `scripts/bench --only ab` alternating with and without: 0.93× (6 of 7
/// pairs faster).
fn write_concurrency() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The content identifier of a layer's splitstream.
pub fn layer_stream_id(diff_id: &str) -> Result<String> {
    let d: OciDigest = diff_id
        .parse()
        .with_context(|| format!("bad diff id {diff_id}"))?;
    Ok(composefs_oci::layer_content_id(&d))
}

/// The tag every deployment's manifest carries (a GC root).
pub fn bootc_tag(manifest_digest: &str) -> String {
    format!("{BOOTC_TAG_PREFIX}{manifest_digest}")
}

/// Opens an image by manifest digest.
pub fn open_image(repo: &Repo, manifest_digest: &str) -> Result<OciImage<ObjectId>> {
    let digest: OciDigest = manifest_digest
        .parse()
        .with_context(|| format!("bad manifest digest {manifest_digest}"))?;
    OciImage::open(repo, &digest, None)
        .with_context(|| format!("image {manifest_digest} is not in the composefs repository"))
}

/// Finds the manifest of a tagged image whose config has `config_digest`.
pub fn manifest_for_config(repo: &Repo, config_digest: &str) -> Result<Option<String>> {
    for (_, manifest) in composefs_oci::oci_image::list_refs(repo)? {
        if let Ok(img) = OciImage::open(repo, &manifest, None)
            && img.config_digest().to_string() == config_digest
        {
            return Ok(Some(manifest.to_string()));
        }
    }
    Ok(None)
}

/// A reader over the content of a file of an image tree (streamed from the
/// object store, never loaded whole).
pub fn open_file_content(
    f: &composefs::tree::RegularFile<ObjectId>,
    repo: &Repo,
) -> Result<Box<dyn std::io::Read>> {
    use composefs::tree::RegularFile;
    use std::io::Read;
    Ok(match f {
        RegularFile::Inline(data) => Box::new(std::io::Cursor::new(data.to_vec())),
        RegularFile::External(id, _) | RegularFile::ExternalNoVerity(id, _) => {
            Box::new(std::fs::File::from(repo.open_object(id)?))
        }
        RegularFile::Sparse(size) => Box::new(std::io::repeat(0).take(*size)),
    })
}

/// Writes the content of a file of an image tree into `dst`, a new empty
/// file: an object by reflink where `dst`'s filesystem can share its extents
/// (else a copy, see [`reflink::clone_or_copy`]), inline content by writing
/// it, a sparse file by its length. Counts what it did in `tally`.
pub fn write_file_content(
    f: &composefs::tree::RegularFile<ObjectId>,
    repo: &Repo,
    dst: &std::fs::File,
    tally: &mut reflink::Tally,
) -> Result<()> {
    use composefs::tree::RegularFile;
    match f {
        RegularFile::Inline(data) => {
            (&*dst).write_all(data)?;
            tally.record(reflink::Method::Copied, data.len() as u64);
        }
        RegularFile::External(id, size) | RegularFile::ExternalNoVerity(id, size) => {
            let obj = std::fs::File::from(repo.open_object(id)?);
            let method = reflink::clone_or_copy(&obj, dst, reflink::Policy::ReflinkOrCopy)
                .with_context(|| format!("writing the content of object {}", id.to_hex()))?;
            tally.record(method, *size);
        }
        RegularFile::Sparse(size) => dst.set_len(*size)?,
    }
    Ok(())
}

/// Reads a small regular file of an image tree by absolute path; `None`
/// when it is absent or not a regular file.
pub fn read_image_file(
    fs: &composefs::tree::FileSystem<ObjectId>,
    repo: &Repo,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    let p = std::path::Path::new(path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Ok(None);
    };
    let Ok(Some(dir)) = fs.root.get_directory_opt(parent.as_os_str()) else {
        return Ok(None);
    };
    match dir.get_file_opt(name, &fs.leaves) {
        Ok(Some(f)) => Ok(Some(composefs::fs::read_file(f, repo)?.into_vec())),
        _ => Ok(None),
    }
}
