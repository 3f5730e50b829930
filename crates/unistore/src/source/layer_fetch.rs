//! A registry image's layers into the composefs repository, ahead of
//! composefs-oci's pull.
//!
//! composefs-oci 0.9.4 reads every blob through containers-image-proxy's
//! `get_blob`, whose reader is a `tokio::fs::File` on skopeo's pipe behind an
//! 8 KiB buffer: each 8 KiB is one round trip through tokio's blocking pool,
//! and the gzip inflate runs in the same task as the tar split. On the sample
//! image (105 MB compressed, one layer) that pipeline kept 2 CPUs only about
//! 70% busy.
//!
//! Here each layer the repository lacks is read from the same reader with
//! 256 KiB buffers, which the reader passes whole to the pipe (each round trip
//! then brings whatever the pipe holds, not 8 KiB), inflated on a thread of
//! its own (zlib-ng), its tar stream hashed there, and handed in 1 MiB chunks
//! to [`composefs_oci::import_layer`], which splits it into objects on the
//! tokio side meanwhile. composefs-oci's pull then finds
//! every layer present, and only stores the config and manifest and makes the
//! EROFS images, as always.
//!
//! Checks, before the layer is registered under its diff-id (a failure ends
//! the stream with an error, so nothing is registered):
//! * the blob's digest and size: skopeo's (the proxy's "driver" future),
//!   awaited before the end of the stream is passed on;
//! * the diff-id: the SHA-256 of the inflated tar stream must be the one the
//!   config names, as `podman pull` checks (composefs-oci 0.9.4 does not).
//!
//! Anything this module does not handle (zstd layers, a digest other than
//! SHA-256, a manifest whose layers do not match the config's diff-ids) is
//! left to composefs-oci's pull, unchanged.

use std::io::{BufReader, Read};
use std::sync::Arc;

use anyhow::{Context, Result};
use containers_image_proxy::oci_spec::image::{Descriptor, MediaType};
use containers_image_proxy::{ImageProxy, OpenedImage};
use futures_util::stream::{self, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::progress::{ComponentId, Progress, ProgressEvent};
use crate::source::chunk_stream::ChunkReader;
use crate::stores::composefs_repo::Repo;

/// Size of one read from the pipe (the reader passes it whole), and of one
/// compressed chunk handed to the inflating thread.
const RAW_CHUNK: usize = 256 << 10;
/// Size of one chunk of the tar stream handed to the import.
const CHUNK: usize = 1 << 20;
/// Chunks in flight on each of the two hand-offs: with [`RAW_CHUNK`] and
/// [`CHUNK`], about 5 MiB a layer.
const IN_FLIGHT: usize = 4;

/// Fetches the layers of registry image `spec` that the repository lacks;
/// returns the manifest's digest.
pub async fn prefetch(
    repo: &Arc<Repo>,
    spec: &str,
    fetch: &crate::source::fetch_config::FetchConfig,
    progress: Progress,
) -> Result<String> {
    let proxy = ImageProxy::new_with_config(fetch.proxy_config().unwrap_or_default())
        .await
        .context("starting skopeo")?;
    let img = proxy
        .open_image(spec)
        .await
        .with_context(|| format!("opening {spec}"))?;
    let r = fetch_missing(repo, &proxy, &img, spec, fetch, &progress).await;
    let _ = proxy.close_image(&img).await;
    let _ = proxy.finalize().await;
    r
}

/// The layers to fetch: (blob descriptor, diff-id), those the repository
/// lacks and this module handles.
fn missing_layers(
    repo: &Repo,
    layers: &[Descriptor],
    diff_ids: &[String],
) -> Result<Vec<(Descriptor, String)>> {
    if layers.len() != diff_ids.len() {
        // composefs-oci's pull reports it.
        return Ok(vec![]);
    }
    let mut out = vec![];
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        if gzip(layer.media_type()).is_none() || !diff_id.starts_with("sha256:") {
            continue;
        }
        let stream = crate::stores::composefs_repo::layer_stream_id(diff_id)?;
        if repo.has_stream(&stream)?.is_none() {
            out.push((layer.clone(), diff_id.clone()));
        }
    }
    Ok(out)
}

/// Whether a layer of this media type is gzip'd; `None`: not handled here.
fn gzip(media_type: &MediaType) -> Option<bool> {
    match media_type {
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Some(true),
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(false),
        MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(true)
        }
        _ => None,
    }
}

async fn fetch_missing(
    repo: &Arc<Repo>,
    proxy: &ImageProxy,
    img: &OpenedImage,
    spec: &str,
    fetch: &crate::source::fetch_config::FetchConfig,
    progress: &Progress,
) -> Result<String> {
    let (digest, manifest) = proxy
        .fetch_manifest(img)
        .await
        .context("fetching the manifest")?;
    let config = proxy
        .fetch_config(img)
        .await
        .context("fetching the config")?;
    let diff_ids = config.rootfs().diff_ids().to_vec();
    partial_layers(repo, manifest.layers(), &diff_ids, spec, fetch, progress).await?;
    let missing = missing_layers(repo, manifest.layers(), &diff_ids)?;
    if !missing.is_empty() {
        let bytes: u64 = missing.iter().map(|(l, _)| l.size()).sum();
        crate::progress::step(
            progress,
            format!(
                "Fetching {} layer{} ({:.1} MiB)",
                missing.len(),
                if missing.len() == 1 { "" } else { "s" },
                bytes as f64 / (1 << 20) as f64
            ),
        );
    }
    // As many layers at once as composefs-oci's pull would take.
    let width = std::thread::available_parallelism().map_or(2, |n| n.get());
    stream::iter(missing.into_iter().map(Ok))
        .try_for_each_concurrent(width, |(layer, diff_id)| async move {
            fetch_layer(repo, proxy, img, &layer, &diff_id, progress)
                .await
                .with_context(|| format!("fetching layer {}", layer.digest()))
        })
        .await?;
    Ok(digest)
}

/// Issue 26: the zstd:chunked layers the repository lacks, pulled partially
/// ([`crate::source::chunked`]) where the host has some of their files;
/// those it declines are left to composefs-oci's pull, whole.
async fn partial_layers(
    repo: &Arc<Repo>,
    layers: &[Descriptor],
    diff_ids: &[String],
    spec: &str,
    fetch: &crate::source::fetch_config::FetchConfig,
    progress: &Progress,
) -> Result<()> {
    use crate::source::chunked;
    if layers.len() != diff_ids.len() {
        return Ok(());
    }
    let image = spec.strip_prefix("docker://").unwrap_or(spec);
    let n = layers.len();
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        if !diff_id.starts_with("sha256:") {
            continue;
        }
        let stream = crate::stores::composefs_repo::layer_stream_id(diff_id)?;
        if repo.has_stream(&stream)?.is_some() {
            continue;
        }
        if !chunked::is_chunked(layer.annotations().as_ref()) {
            if *layer.media_type() == MediaType::ImageLayerZstd {
                crate::progress::step(
                    progress,
                    format!(
                        "Layer {} of {n}: zstd, not zstd:chunked: fetched whole",
                        i + 1
                    ),
                );
            }
            continue;
        }
        let digest = layer.digest().to_string();
        let what = format!("layer {} of {n} ({digest})", i + 1);
        let l = chunked::Layer {
            digest: &digest,
            size: layer.size(),
            annotations: layer.annotations().as_ref(),
            diff_id,
        };
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        match chunked::pull_layer(repo, image, fetch, &l, progress)
            .await
            .with_context(|| format!("{what}: zstd:chunked partial pull"))?
        {
            chunked::Outcome::Imported(f) => crate::progress::step(
                progress,
                format!(
                    "Layer {} of {n}: zstd:chunked, fetched {:.2} MiB of {:.2} MiB ({} of {} files, table of contents {:.2} MiB{}); the rest from this host",
                    i + 1,
                    mib(f.bytes),
                    mib(f.layer_size),
                    f.files_fetched,
                    f.files,
                    mib(f.toc_bytes),
                    if f.headers_refetched {
                        ", tar headers fetched after all"
                    } else {
                        ""
                    }
                ),
            ),
            chunked::Outcome::Declined(why) => crate::progress::step(
                progress,
                format!("Layer {} of {n}: zstd:chunked, fetched whole: {why}", i + 1),
            ),
        }
    }
    Ok(())
}

async fn fetch_layer(
    repo: &Arc<Repo>,
    proxy: &ImageProxy,
    img: &OpenedImage,
    layer: &Descriptor,
    diff_id: &str,
    progress: &Progress,
) -> Result<()> {
    let gz = gzip(layer.media_type()).unwrap_or(true);
    let size = layer.size();
    let (reader, driver) = proxy.get_blob(img, layer.digest(), size).await?;
    let id = ComponentId::from(diff_id.to_string());
    progress.report(ProgressEvent::Started {
        id: id.clone(),
        total: Some(size),
        unit: composefs::progress::ProgressUnit::Bytes,
    });
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let (raw_tx, raw_rx) = mpsc::channel(IN_FLIGHT);
    let (verdict_tx, verdict_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let feeder = Feeder {
        gzip: gz,
        diff_id: diff_id.to_string(),
        tx,
        verdict: verdict_rx,
    };
    let thread = std::thread::Builder::new()
        .name("layer-inflate".into())
        .spawn(move || feeder.run(raw_rx))
        .context("starting the layer reader")?;
    let digest: composefs_oci::OciDigest = diff_id
        .parse()
        .with_context(|| format!("bad diff id {diff_id}"))?;
    let import = composefs_oci::import_layer(repo, &digest, None, ChunkReader::new(rx));
    let drive = async {
        let r = driver.await.map_err(|e| e.to_string());
        // The reader waits for this at the end of the blob.
        let _ = verdict_tx.send(r.clone());
        r
    };
    let pump = pump(reader, raw_tx, size, &id, progress);
    let (imported, driven, ()) = tokio::join!(import, drive, pump);
    let _ = thread.join();
    // The import's error says what was wrong with the stream (the digest
    // checks end it with theirs); the driver's, what skopeo saw.
    imported.context("importing the layer")?;
    driven.map_err(|e| anyhow::anyhow!("skopeo: {e}"))?;
    progress.report(ProgressEvent::Done {
        id,
        transferred: size,
    });
    Ok(())
}

/// Reads the blob with [`RAW_CHUNK`] buffers into `raw`, reporting progress; stops
/// when the other side is gone (the reader's drop then closes the pipe).
async fn pump(
    mut reader: impl tokio::io::AsyncBufRead + Unpin,
    raw: mpsc::Sender<std::io::Result<Vec<u8>>>,
    size: u64,
    id: &ComponentId,
    progress: &Progress,
) {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;
    // A slow registry still gets its bytes passed on, and reported (the
    // stall guard watches the reports), within these.
    const HOLD: Duration = Duration::from_millis(100);
    const TELL: Duration = Duration::from_millis(250);
    let (mut n, mut told, mut told_at) = (0u64, 0u64, Instant::now());
    loop {
        let mut buf = vec![0u8; RAW_CHUNK];
        let mut have = 0;
        let since = Instant::now();
        // Whole chunks, but no waiting for one when the pipe is slow.
        let r = loop {
            match reader.read(&mut buf[have..]).await {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    have += k;
                    if have == RAW_CHUNK || since.elapsed() >= HOLD {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        n += have as u64;
        if n != told && (n - told >= CHUNK as u64 || have == 0 || told_at.elapsed() >= TELL) {
            told = n;
            told_at = Instant::now();
            progress.report(ProgressEvent::Progress {
                id: id.clone(),
                fetched: n,
                total: Some(size),
            });
        }
        let end = have == 0;
        buf.truncate(have);
        let sent = match r {
            Ok(()) if end => return,
            Ok(()) => raw.send(Ok(buf)).await,
            Err(e) => {
                if have > 0 {
                    let _ = raw.send(Ok(buf)).await;
                }
                let _ = raw.send(Err(e)).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The inflating thread: raw chunks -> inflate -> hash -> tar chunks.
struct Feeder {
    gzip: bool,
    diff_id: String,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    verdict: std::sync::mpsc::Receiver<Result<(), String>>,
}

impl Feeder {
    fn run(self, raw: mpsc::Receiver<std::io::Result<Vec<u8>>>) {
        let raw = BufReader::with_capacity(RAW_CHUNK, ChunkReader::new(raw));
        let mut src: Box<dyn Read> = if self.gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(raw))
        } else {
            Box::new(raw)
        };
        let mut sha = Sha256::new();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match fill(&mut src, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    // A pipe skopeo closed early: its own error (the
                    // driver's) says why.
                    let why = match self.verdict.recv() {
                        Ok(Err(s)) => format!("{e} (skopeo: {s})"),
                        _ => e.to_string(),
                    };
                    let _ = self.tx.blocking_send(Err(std::io::Error::other(why)));
                    return;
                }
            };
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sha.update(&buf);
            if self.tx.blocking_send(Ok(buf)).is_err() {
                // The import gave up: dropping the pipe ends skopeo's side.
                return;
            }
        }
        let end = match self.verdict.recv() {
            Ok(Ok(())) => {
                let got = format!("sha256:{}", hex::encode(sha.finalize()));
                if got == self.diff_id {
                    return; // dropping the sender ends the stream
                }
                format!(
                    "the layer's tar stream has digest {got}, not the diff-id {} its config names",
                    self.diff_id
                )
            }
            Ok(Err(e)) => format!("skopeo: {e}"),
            Err(_) => "the pull was given up".to_string(),
        };
        let _ = self.tx.blocking_send(Err(std::io::Error::other(end)));
    }
}

/// Reads until `buf` is full or the end.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gzip_and_plain_tar_layers_are_fetched_here() {
        assert_eq!(gzip(&MediaType::ImageLayerGzip), Some(true));
        assert_eq!(gzip(&MediaType::ImageLayer), Some(false));
        assert_eq!(gzip(&MediaType::ImageLayerZstd), None);
        assert_eq!(gzip(&MediaType::ImageConfig), None);
    }
}
