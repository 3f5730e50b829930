//! zstd:chunked partial pulls: a layer's files the host lacks fetched by
//! byte range, everything else taken from the host, the layer's tar stream
//! rebuilt byte for byte and checked against its diff-id before it is
//! imported (issue 26).
//!
//! Why this route and not podman's own partial pull into the host store:
//! podman 4.3 (Debian 12) stores a partially pulled layer without its
//! tar-split and under its compressed digest, so neither the layer's tar
//! nor its diff-id can be had back from the store; and a pull through
//! podman would not serve composefs-only hosts at all. Here the table of
//! contents and the ranges come through [`registry`] (oci-client), with the
//! same registries.conf, credentials and CA certificates as skopeo's pull;
//! the manifest (and so the table's checksum and the layer digests) still
//! comes through skopeo.
//!
//! The steps, for each zstd:chunked layer the repository lacks:
//! 1. [`local::Local::scan`]: what the host has (contents by SHA-256 and
//!    tar headers by name, from every layer of every image in the
//!    repository, and an ostree host's own objects when it has them). An
//!    empty repository (a first install) fetches whole;
//! 2. the table of contents, by range, checked against the manifest's
//!    checksum ([`toc`]);
//! 3. [`rebuild::Plan`]: each file content local or fetched, the headers
//!    between contents predicted from local headers where every entry's
//!    metadata is the table's, else fetched; the last gap always fetched.
//!    A layer of which the host has less than half the content fetches
//!    whole (one stream costs less than many ranges);
//! 4. the ranges fetched into a spool file (an unlinked temporary file);
//! 5. [`rebuild::verify`]: fetched contents against their size and digest,
//!    the stream's entries against the table, its SHA-256 against the
//!    diff-id. A mismatch of the diff-id after predictions: the predicted
//!    gaps are fetched and the check runs again;
//! 6. the import into the repository, as for a whole layer.
//!
//! Nothing is written to the repository before step 6, so a table that
//! lies, a range that returns other bytes or is cut short fails the pull
//! with one line naming the layer and the file, and leaves nothing.
//! When this route cannot be taken ([`registry::Declined`]: a registry
//! that ignores ranges, mirrors, ...) the layer is fetched whole, and the
//! progress says why.

pub mod local;
pub mod rebuild;
pub mod registry;
pub mod toc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::progress::{ComponentId, Progress, ProgressEvent};
use crate::source::fetch_config::FetchConfig;
use crate::stores::composefs_repo::{ObjectId, Repo};
use rebuild::{From, Plan, Sink};
use registry::{Declined, Ranged};

/// Ranges closer than this are fetched as one (a request costs about as
/// much as this many bytes).
const SLACK: u64 = 512;

/// A layer to pull partially.
pub struct Layer<'a> {
    /// `sha256:` of the blob.
    pub digest: &'a str,
    /// The blob's size.
    pub size: u64,
    pub annotations: Option<&'a std::collections::HashMap<String, String>>,
    pub diff_id: &'a str,
}

/// What a partial pull of a layer did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The layer is in the repository.
    Imported(Fetched),
    /// Not pulled partially (the reason): fetch it whole.
    Declined(String),
}

/// Figures of a partial pull, for the progress and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Bytes fetched from the registry (table of contents included).
    pub bytes: u64,
    /// Of which the table of contents.
    pub toc_bytes: u64,
    /// The blob's size.
    pub layer_size: u64,
    /// Files with content, and how many were fetched.
    pub files: usize,
    pub files_fetched: usize,
    /// Whether the predicted headers had to be fetched after all.
    pub headers_refetched: bool,
}

/// Whether `annotations` mark a zstd:chunked layer.
pub fn is_chunked(annotations: Option<&std::collections::HashMap<String, String>>) -> bool {
    annotations.is_some_and(|a| {
        a.keys()
            .any(|k| k.ends_with("zstd-chunked.manifest-position"))
    })
}

fn declined(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Declined>())
        .map(|d| d.0.clone())
}

/// Pulls `layer` of registry image `image` (`host/repo:tag`) partially into
/// `repo`; see the module.
pub async fn pull_layer(
    repo: &Arc<Repo>,
    image: &str,
    fetch: &FetchConfig,
    layer: &Layer<'_>,
    progress: &Progress,
) -> Result<Outcome> {
    let Some(loc) = toc::locate(layer.annotations, layer.size)? else {
        return Ok(Outcome::Declined("not zstd:chunked".into()));
    };
    if fetch.whole_layers {
        return Ok(Outcome::Declined("UNISTORE_WHOLE_LAYERS=1".into()));
    }
    let (r, o) = (repo.clone(), fetch.ostree_objects.clone());
    let mut local = tokio::task::spawn_blocking(move || local::Local::scan(&r, o.as_ref()))
        .await
        .context("indexing the host's files")??;
    if local.is_empty() {
        return Ok(Outcome::Declined(
            "the host has no files yet to take from".into(),
        ));
    }
    let client = match Ranged::connect(image, fetch).await {
        Ok(c) => c,
        Err(e) => match declined(&e) {
            Some(why) => return Ok(Outcome::Declined(why)),
            None => return Err(e),
        },
    };
    let id = ComponentId::from(layer.diff_id.to_string());
    progress.report(ProgressEvent::Started {
        id: id.clone(),
        total: Some(layer.size),
        unit: composefs::progress::ProgressUnit::Bytes,
    });
    let counter = AtomicU64::new(0);
    let report = |n: u64| {
        let total = counter.fetch_add(n, Ordering::Relaxed) + n;
        progress.report(ProgressEvent::Progress {
            id: id.clone(),
            fetched: total,
            total: Some(layer.size),
        });
    };
    // A decline from here on ends the bar where it stands.
    let decline = |why: String| {
        progress.report(ProgressEvent::Done {
            id: id.clone(),
            transferred: counter.load(Ordering::Relaxed),
        });
        Ok(Outcome::Declined(why))
    };
    // 2. The table of contents.
    let spool = tempfile::tempfile().context("creating the spool file")?;
    let range = [(loc.offset, loc.offset + loc.length, 0)];
    if let Err(e) = client.fetch(layer.digest, &range, &spool, &report).await {
        if let Some(why) = declined(&e.error) {
            return decline(why);
        }
        return Err(e.error.context("fetching the table of contents"));
    }
    let mut raw = vec![0u8; loc.length as usize];
    std::os::unix::fs::FileExt::read_exact_at(&spool, &mut raw, 0)?;
    let json = toc::open(&raw, &loc)?;
    let table = toc::parse(&json, loc.offset)?;
    let mut out = Fetched {
        toc_bytes: loc.length,
        layer_size: layer.size,
        files: table.entries.iter().filter(|e| e.has_content()).count(),
        ..Default::default()
    };
    // 3. The plan.
    let (r, t) = (repo.clone(), table);
    let (mut plan, local_bytes, t) = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let plan = Plan::new(&t, &mut local, &r, true)?;
        let have =
            plan.bytes(|s| s.file.is_some() && matches!(s.from, From::Local(_) | From::Zeros));
        tracing::debug!(
            "planned in {:?}: {} local files indexed, {} bytes hashed",
            started.elapsed(),
            local.len(),
            local.hashed_bytes
        );
        anyhow::Ok((plan, have, t))
    })
    .await
    .context("planning the partial pull")??;
    let table = Arc::new(t);
    let all = plan.bytes(|s| s.file.is_some());
    if local_bytes == 0 {
        return decline("the host has none of this layer's files".into());
    }
    // Mostly new: one stream costs less than many ranges.
    if local_bytes * 2 < all {
        return decline(format!(
            "the host has only {}% of this layer's content",
            local_bytes * 100 / all.max(1)
        ));
    }
    let mut fetched_files: Vec<usize> = plan
        .segs
        .iter()
        .filter(|s| matches!(s.from, From::Fetch))
        .filter_map(|s| s.file)
        .collect();
    fetched_files.dedup();
    out.files_fetched = fetched_files.len();
    // 4-5. Fetch, check; once more without predictions if need be.
    let mut spooled = loc.length;
    for attempt in 0..2 {
        let ranges = plan.ranges(SLACK, spooled);
        spooled = ranges.last().map_or(spooled, |r| r.2 + (r.1 - r.0));
        if let Err(e) = client.fetch(layer.digest, &ranges, &spool, &report).await {
            if let Some(why) = declined(&e.error) {
                return decline(why);
            }
            let (start, end, _) = ranges[e.index];
            return Err(e.error.context(name_range(&table, start, end)));
        }
        let (r, p, t, f, d) = (
            repo.clone(),
            plan,
            table.clone(),
            spool.try_clone()?,
            layer.diff_id.to_string(),
        );
        let (p, verdict) = tokio::task::spawn_blocking(move || {
            let v = rebuild::verify(&p, &t, &r, &f, &d);
            (p, v)
        })
        .await
        .context("checking the rebuilt layer")?;
        plan = p;
        match verdict {
            Ok(()) => break,
            Err(e) if attempt == 0 && e.is::<rebuild::DiffIdMismatch>() => {
                tracing::debug!("predicted headers did not hold ({e:#}): fetching them");
                out.headers_refetched = true;
                plan.unpredict();
            }
            Err(e) => return Err(e),
        }
    }
    out.bytes = counter.load(Ordering::Relaxed);
    // 6. The import.
    import(repo, plan, table, spool, layer.diff_id).await?;
    progress.report(ProgressEvent::Done {
        id,
        transferred: out.bytes,
    });
    Ok(Outcome::Imported(out))
}

/// The files whose content lies in blob bytes `start..end`, for messages.
fn name_range(t: &toc::Toc, start: u64, end: u64) -> String {
    let names: Vec<&str> = t
        .entries
        .iter()
        .filter(|e| e.has_content() && e.offset < end && e.end_offset > start)
        .map(|e| e.name.as_str())
        .collect();
    match names.as_slice() {
        [] => match t
            .entries
            .iter()
            .find(|e| e.has_content() && e.offset >= end)
        {
            Some(e) => format!("the tar headers before file {:?}", e.name),
            None => format!("bytes {start}..{end} of the blob (the end of the tar)"),
        },
        [one] => format!("file {one:?}"),
        [first, rest @ ..] => format!("file {first:?} (and {} more in the same range)", rest.len()),
    }
}

/// Feeds the rebuilt stream to composefs-oci's import, checking its
/// SHA-256 against the diff-id once more on the way (the import fails, and
/// registers nothing, if it differs).
async fn import(
    repo: &Arc<Repo>,
    plan: Plan,
    table: Arc<toc::Toc>,
    spool: std::fs::File,
    diff_id: &str,
) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = mpsc::channel(4);
    let (r, want) = (repo.clone(), diff_id.to_string());
    let producer = tokio::task::spawn_blocking(move || {
        let mut sink = ImportSink {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            sha: Sha256::new(),
        };
        let end = match plan
            .produce(&table, &r, &spool, &mut sink)
            .and_then(|()| sink.flush())
        {
            Ok(()) => {
                let got = format!("sha256:{}", hex::encode(sink.sha.finalize()));
                if got == want {
                    return;
                }
                format!("the rebuilt tar stream changed: digest {got}, not {want}")
            }
            Err(e) => format!("{e:#}"),
        };
        let _ = tx.blocking_send(Err(std::io::Error::other(end)));
    });
    let digest: composefs_oci::OciDigest = diff_id
        .parse()
        .with_context(|| format!("bad diff id {diff_id}"))?;
    let reader = crate::source::chunk_stream::ChunkReader::new(rx);
    let imported = composefs_oci::import_layer(repo, &digest, None, reader).await;
    producer.await.context("rebuilding the layer")?;
    imported.context("importing the rebuilt layer")?;
    Ok(())
}

struct ImportSink {
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    sha: Sha256,
}

impl ImportSink {
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let b = std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20));
            self.tx
                .blocking_send(Ok(b))
                .map_err(|_| anyhow::anyhow!("the import stopped"))?;
        }
        Ok(())
    }
}

impl Sink for ImportSink {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.sha.update(b);
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn content_start(&mut self, _: u64, _: Option<&ObjectId>) -> Result<()> {
        Ok(())
    }

    fn content(&mut self, b: &[u8]) -> Result<()> {
        self.bytes(b)
    }
}
