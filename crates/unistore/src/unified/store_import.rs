//! The import of one containers-storage layer into the composefs
//! repository, by reflinks, on several threads.
//!
//! composefs-oci's own containers-storage import (`LocalFetchOpt`) turns a
//! layer into its splitstream on a single thread: for each file larger than
//! the inline limit it clones the store file into an object (`FICLONE`),
//! then computes the object's fs-verity digest in userspace (SHA-512 of the
//! whole content: the kernel here has no fs-verity). That thread is the
//! bottleneck of a unified pull. This module produces the same splitstream
//! (same tar-split walk, same inline chunks and padding, same object
//! references, in the same order) with the objects stored by a pool of
//! worker threads, then registers it under the layer's content id; the
//! `composefs_oci::pull` that follows finds the layer present and only
//! writes the manifest, the config and the EROFS images.
//!
//! Each worker also makes the store file share its object's extents when the
//! object was already in the repository (a file duplicated inside the image,
//! or one an earlier image brought): `FIDEDUPERANGE`, which compares the
//! bytes first. So after a layer is imported every one of its store files
//! shares the extents of its object, and no later pass has to read it again.
//!
//! Before the walk, one `syncfs`: podman leaves the layer's data dirty, and
//! `FICLONE` would write back each source file on its own first.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result, anyhow};
use composefs::repository::{ImportContext, ObjectStoreMethod};
use composefs::splitstream::SplitStreamWriter;
use composefs_oci::{ImportStats, OciDigest};
use composefs_storage::{Layer, Storage, TarSplitFdStream, TarSplitItem};

use super::ShareStats;
use crate::fs::reflink::{self, Method, Policy};
use crate::stores::composefs_repo::{ObjectId, Repo};

/// How to store a layer's files.
#[derive(Debug, Clone, Copy)]
pub(super) struct ImportOpts {
    /// Fail rather than copy when a file can be neither reflinked nor
    /// hardlinked (`LocalFetchOpt::ZeroCopy`).
    pub zerocopy: bool,
    /// Make store files share the extents of objects that were already in
    /// the repository (only where the filesystem has reflinks), with this
    /// policy for files that cannot.
    pub share: Option<Policy>,
    /// Worker threads storing objects.
    pub threads: usize,
}

/// What importing a layer did.
#[derive(Debug, Default)]
pub(super) struct LayerImport {
    /// Objects and bytes, as composefs-oci counts them.
    pub stats: ImportStats,
    /// How the store files share extents with their objects.
    pub share: ShareStats,
}

/// A piece of the splitstream, in order.
enum Piece {
    Inline(Vec<u8>),
    /// The `n`-th external file (its object comes from a worker).
    External(usize, u64),
}

struct Job {
    n: usize,
    file: File,
    size: u64,
    name: String,
}

struct Done {
    n: usize,
    size: u64,
    result: Result<(ObjectId, ObjectStoreMethod, Option<Method>)>,
}

/// The number of worker threads to use by default: one per CPU.
pub(super) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

/// Stores one file as an object; shares the store file's extents with the
/// object when the object was already there.
fn store_one(
    repo: &Repo,
    job: &Job,
    opts: ImportOpts,
    ctx: &mut ImportContext,
) -> Result<(ObjectId, ObjectStoreMethod, Option<Method>)> {
    let (id, method) = if opts.zerocopy {
        repo.ensure_object_from_file_zerocopy(&job.file, job.size, ctx)
    } else {
        repo.ensure_object_from_file(&job.file, job.size, ctx)
    }
    .with_context(|| format!("storing {} as a composefs object", job.name))?;
    let shared = match (method, opts.share) {
        // A copy (no reflink between these two files) is tried too, as the
        // share pass would.
        (ObjectStoreMethod::AlreadyPresent | ObjectStoreMethod::Copied, Some(policy)) => {
            let obj = File::from(repo.open_object(&id)?);
            Some(
                reflink::share_identical(&obj, &job.file, policy)
                    .with_context(|| format!("sharing {} with its composefs object", job.name))?,
            )
        }
        (ObjectStoreMethod::Reflinked | ObjectStoreMethod::Hardlinked, Some(_)) => {
            Some(Method::AlreadyShared)
        }
        _ => None,
    };
    Ok((id, method, shared))
}

/// The splitstream being written: pieces wait in order until the objects
/// of the external ones are stored.
struct Ordered {
    writer: SplitStreamWriter<ObjectId>,
    queue: VecDeque<Piece>,
    ready: HashMap<usize, ObjectId>,
    sent: usize,
    received: usize,
    error: Option<anyhow::Error>,
}

impl Ordered {
    /// Takes a worker's result.
    fn take(&mut self, d: Done, out: &mut LayerImport) {
        self.received += 1;
        match d.result {
            Ok((id, method, shared)) => {
                count_object(&mut out.stats, method, d.size);
                if let Some(m) = shared {
                    count_share(&mut out.share, m, d.size);
                }
                self.ready.insert(d.n, id);
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Writes the pieces at the front of the queue that are complete.
    fn flush(&mut self) -> Result<()> {
        while let Some(p) = self.queue.front() {
            match p {
                Piece::Inline(data) => self.writer.write_inline(data),
                Piece::External(n, size) => {
                    let Some(id) = self.ready.remove(n) else {
                        break;
                    };
                    self.writer.add_external_size(*size);
                    self.writer.write_reference(id)?;
                }
            }
            self.queue.pop_front();
        }
        Ok(())
    }
}

/// Imports the layer `layer_id` of the store `storage` as the splitstream
/// of `diff_id`. Blocking; uses `opts.threads` worker threads. The layer
/// must be complete in the store.
pub(super) fn import_layer(
    repo: &Arc<Repo>,
    storage: &Storage,
    layer_id: &str,
    diff_id: &OciDigest,
    opts: ImportOpts,
) -> Result<(ObjectId, LayerImport)> {
    // FICLONE writes back the dirty pages of its source first, file after
    // file; podman leaves the whole layer dirty: write it all back at once.
    {
        use rustix::fs::{Mode, OFlags};
        let dir = rustix::fs::openat(
            storage.root_dir(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::syncfs(&dir).context("syncfs on the store")?;
    }
    let layer = Layer::open(storage, layer_id)
        .map_err(|e| anyhow!("opening store layer {layer_id}: {e}"))?;
    let mut tar = TarSplitFdStream::new(storage, &layer)
        .map_err(|e| anyhow!("reading the tar-split of store layer {layer_id}: {e}"))?;
    let threads = opts.threads.max(1);
    let mut out = LayerImport::default();
    let mut ordered = Ordered {
        writer: repo.create_stream(composefs_oci::LAYER_CONTENT_TYPE)?,
        queue: VecDeque::new(),
        ready: HashMap::new(),
        sent: 0,
        received: 0,
        error: None,
    };
    // Set by a worker that failed: the others skip what is left, the
    // producer stops.
    let abort = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        // Bounded: at most this many store files open at once. Both ends
        // live in this closure, so that the workers end when it returns.
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 16);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..threads {
            let (job_rx, done_tx, abort) = (job_rx.clone(), done_tx.clone(), &abort);
            s.spawn(move || {
                let mut ctx = ImportContext::default();
                loop {
                    let job = match job_rx.lock().map(|rx| rx.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    let result = if abort.load(Ordering::Relaxed) {
                        Err(anyhow!("skipped after an earlier failure"))
                    } else {
                        store_one(repo, &job, opts, &mut ctx)
                    };
                    if result.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    let done = Done {
                        n: job.n,
                        size: job.size,
                        result,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // The producer: the tar-split walk of composefs-storage, turned into
        // splitstream pieces as composefs-oci's producer and consumer do
        // (the padding after a file's content is an inline piece of its
        // own, left out of the next segment), so that the splitstream is
        // the same byte for byte.
        const ZERO_PADDING: [u8; 512] = [0u8; 512];
        let mut prev_pad = 0usize;
        let mut inline: Vec<u8> = vec![];
        while !abort.load(Ordering::Relaxed)
            && let Some(item) = tar
                .next()
                .map_err(|e| anyhow!("reading store layer {layer_id}: {e}"))?
        {
            match item {
                TarSplitItem::Segment(bytes) => {
                    if prev_pad <= bytes.len() {
                        inline.extend_from_slice(&bytes[prev_pad..]);
                    }
                    prev_pad = 0;
                }
                TarSplitItem::FileContent { fd, size, name, .. } => {
                    let file = File::from(fd);
                    if (size as usize) <= composefs::INLINE_CONTENT_MAX_V0 {
                        let mut buf = vec![0u8; size as usize];
                        file.read_exact_at(&mut buf, 0)
                            .with_context(|| format!("reading {name}"))?;
                        inline.extend_from_slice(&buf);
                    } else {
                        if !inline.is_empty() {
                            out.stats.bytes_inlined += inline.len() as u64;
                            ordered
                                .queue
                                .push_back(Piece::Inline(std::mem::take(&mut inline)));
                        }
                        let n = ordered.sent;
                        ordered.queue.push_back(Piece::External(n, size));
                        job_tx
                            .send(Job {
                                n,
                                file,
                                size,
                                name,
                            })
                            .map_err(|_| anyhow!("the import workers are gone"))?;
                        ordered.sent += 1;
                        for d in done_rx.try_iter() {
                            ordered.take(d, &mut out);
                        }
                        ordered.flush()?;
                    }
                    let pad = (size.next_multiple_of(512) - size) as usize;
                    inline.extend_from_slice(&ZERO_PADDING[..pad]);
                    prev_pad = pad;
                }
            }
        }
        drop(job_tx);
        if !inline.is_empty() {
            out.stats.bytes_inlined += inline.len() as u64;
            ordered.queue.push_back(Piece::Inline(inline));
        }
        while ordered.received < ordered.sent {
            let d = done_rx
                .recv()
                .map_err(|_| anyhow!("the import workers are gone"))?;
            ordered.take(d, &mut out);
        }
        Ok(())
    })
    .with_context(|| format!("importing store layer {layer_id}"))?;
    if let Some(e) = ordered.error.take() {
        return Err(e.context(format!("importing store layer {layer_id}")));
    }
    ordered.flush()?;
    anyhow::ensure!(
        ordered.queue.is_empty(),
        "store layer {layer_id}: objects missing from the splitstream"
    );
    let verity = repo
        .write_stream(
            ordered.writer,
            &composefs_oci::layer_content_id(diff_id),
            None,
        )
        .with_context(|| format!("writing the splitstream of layer {diff_id}"))?;
    out.stats.layers = 1;
    Ok((verity, out))
}

fn count_share(share: &mut ShareStats, m: Method, size: u64) {
    share.files += 1;
    match m {
        Method::Reflinked => {
            share.reflinked += 1;
            share.shared_bytes += size;
        }
        Method::AlreadyShared => {
            share.already_shared += 1;
            share.shared_bytes += size;
        }
        Method::Copied => share.copied += 1,
    }
}

fn count_object(stats: &mut ImportStats, method: ObjectStoreMethod, size: u64) {
    match method {
        ObjectStoreMethod::Reflinked => {
            stats.objects_reflinked += 1;
            stats.bytes_reflinked += size;
        }
        ObjectStoreMethod::Hardlinked => {
            stats.objects_hardlinked += 1;
            stats.bytes_hardlinked += size;
        }
        ObjectStoreMethod::Copied => {
            stats.objects_copied += 1;
            stats.bytes_copied += size;
        }
        ObjectStoreMethod::AlreadyPresent => stats.objects_already_present += 1,
    }
}
