//! The host-owned containers-storage at `composefs/bootc/storage`.
//!
//! A normal overlay store: podman uses it with `--root`, or read-only as an
//! `additionalimagestore`. unistore never writes its JSON itself:
//!
//! * reading ([`read_images`], [`read_layers`], [`find_complete_image`]) parses
//!   `overlay-images/images.json` and `overlay-layers/layers.json`, which
//!   containers/storage replaces atomically, so it needs no lock and no
//!   process (status and `image list` stay read-only);
//! * writing goes through the real peers, in a [`Session`]: podman (a
//!   transient `podman system service` on a private unix socket, whose
//!   streaming pull reports per-layer bytes) and skopeo.
//!
//! A session writes its own `containers.conf`, `storage.conf` and
//! `policy.json` in a private directory under the root's run directory, so
//! neither the library nor the peers depend on `/etc/containers` for the
//! store's settings (podman still reads the host's `policy.json` and
//! registries for registry pulls: that is the host's trust policy).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::progress::{ComponentId, Progress, ProgressEvent};
use crate::sysroot::{HOST_STORAGE_DIR, OSTREE_BOOTC_LINK, Sysroot};

/// Where sessions put their private directories, below the run directory.
const RUN_SUBDIR: &str = "unistore";
/// podman refuses a runroot longer than this.
const MAX_RUNROOT_LEN: usize = 50;

static RUNTIME_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the directory where sessions create their private run directories
/// (podman's runroot, socket and configuration), for this process. The CLI
/// sets `/run/unistore`. Without it, `<run dir of the root>/unistore`,
/// which is often too long for podman (runroots of at most 50 characters).
pub fn set_runtime_dir(dir: impl Into<PathBuf>) {
    let _ = RUNTIME_DIR.set(dir.into());
}

fn runtime_dir(sysroot: &Sysroot) -> PathBuf {
    RUNTIME_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| sysroot.run_dir().join(RUN_SUBDIR))
}
/// Where large temporary files go (blob staging, exported layers): on the
/// target filesystem, next to the store.
pub const BIG_TMP_DIR: &str = "composefs/bootc/tmp";

/// The store's absolute path.
pub fn store_path(sysroot: &Sysroot) -> PathBuf {
    sysroot.join(HOST_STORAGE_DIR)
}

/// Whether the store exists (read-only check).
pub fn store_exists(sysroot: &Sysroot) -> Result<bool> {
    Ok(sysroot.dir().try_exists(HOST_STORAGE_DIR)?)
}

/// Creates the store directory and the `ostree/bootc -> ../composefs/bootc`
/// compatibility link (left alone when `ostree/bootc` exists, as on ostree
/// hosts where it is a real directory).
pub fn ensure_store(sysroot: &Sysroot) -> Result<()> {
    let dir = sysroot.dir();
    dir.create_dir_all(HOST_STORAGE_DIR)
        .with_context(|| format!("creating {HOST_STORAGE_DIR}"))?;
    if dir.symlink_metadata(OSTREE_BOOTC_LINK).is_err() {
        dir.create_dir_all("ostree")?;
        dir.symlink("../composefs/bootc", OSTREE_BOOTC_LINK)
            .with_context(|| format!("creating the {OSTREE_BOOTC_LINK} link"))?;
    }
    Ok(())
}

/// One entry of `overlay-images/images.json`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct StoreImage {
    /// Image id: the config digest's hex.
    pub id: String,
    /// The manifest digest the image was stored with.
    #[serde(default)]
    pub digest: Option<String>,
    /// Every manifest digest it is known by.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Its names (`registry/repo:tag`).
    #[serde(default)]
    pub names: Vec<String>,
    /// The top layer id.
    #[serde(default)]
    pub layer: Option<String>,
}

/// One entry of `overlay-layers/layers.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StoreLayer {
    /// Layer id (the directory under `overlay/`).
    pub id: String,
    /// Parent layer id.
    #[serde(default)]
    pub parent: Option<String>,
    /// `sha256:` of the uncompressed layer (the OCI diff id).
    #[serde(default, rename = "diff-digest")]
    pub diff_digest: Option<String>,
    /// `sha256:` of the blob the layer was pulled from, when pulled.
    #[serde(default, rename = "compressed-diff-digest")]
    pub compressed_digest: Option<String>,
    /// Bytes of the uncompressed layer, when recorded.
    #[serde(default, rename = "diff-size")]
    pub diff_size: Option<u64>,
    /// When the layer was created (RFC 3339), as recorded.
    #[serde(default)]
    pub created: Option<String>,
    /// containers/storage flags; `incomplete` marks an interrupted write.
    #[serde(default)]
    pub flags: HashMap<String, serde_json::Value>,
}

impl StoreLayer {
    /// Whether containers/storage marked the layer as being written.
    pub fn incomplete(&self) -> bool {
        self.flags
            .get("incomplete")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }
}

fn read_json_array<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(vec![]),
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The images of the store at `store` (none if it does not exist).
pub fn read_images(store: &Path) -> Result<Vec<StoreImage>> {
    read_json_array(&store.join("overlay-images/images.json"))
}

/// The layers of the store at `store` (none if it does not exist).
pub fn read_layers(store: &Path) -> Result<Vec<StoreLayer>> {
    read_json_array(&store.join("overlay-layers/layers.json"))
}

/// The layers of `image`, base first; an error names what is missing.
pub fn layer_chain(image: &StoreImage, layers: &[StoreLayer]) -> Result<Vec<StoreLayer>> {
    let by_id: HashMap<&str, &StoreLayer> = layers.iter().map(|l| (l.id.as_str(), l)).collect();
    let mut chain = vec![];
    let mut next = image.layer.clone();
    while let Some(id) = next {
        let l = by_id
            .get(id.as_str())
            .ok_or_else(|| anyhow!("layer {id} of image {} is missing", image.id))?;
        if l.incomplete() {
            bail!("layer {id} of image {} is incomplete", image.id);
        }
        chain.push((*l).clone());
        next = l.parent.clone();
        if chain.len() > 1000 {
            bail!("layer chain of image {} loops", image.id);
        }
    }
    chain.reverse();
    Ok(chain)
}

/// The image with id `image_id` (hex, `sha256:` optional) if the store holds
/// it with all its layers.
pub fn find_complete_image(store: &Path, image_id: &str) -> Result<Option<StoreImage>> {
    let id = image_id.trim_start_matches("sha256:");
    let Some(img) = read_images(store)?.into_iter().find(|i| i.id == id) else {
        return Ok(None);
    };
    let layers = read_layers(store)?;
    match layer_chain(&img, &layers) {
        Ok(chain) if store.join("overlay-images").join(id).is_dir() => {
            let all_dirs = chain
                .iter()
                .all(|l| store.join("overlay").join(&l.id).join("diff").is_dir());
            Ok(all_dirs.then_some(img))
        }
        _ => Ok(None),
    }
}

/// The `containers.conf` of a session: settings podman needs on this kind
/// of host (runc, cgroupfs, limits below the hard limits, no network), no
/// global event log or tmp dir, and podman's own database (`static_dir`)
/// in the session's private directory: podman records the run root in that
/// database and refuses a store whose database names another run root, so
/// unistore must not leave one in the store for the user's podman to trip on.
fn containers_conf(run: &Path, tmp: &Path) -> String {
    format!(
        r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "{engine}"
static_dir = "{engine}/libpod"
volume_path = "{engine}/volumes"
image_copy_tmp_dir = "{tmp}"
"#,
        engine = toml_escape(&run.join("engine")),
        tmp = toml_escape(tmp)
    )
}

fn toml_escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// A private directory removed on drop, plus the parents it had to create.
#[derive(Debug)]
struct OwnedTempDir {
    dir: Option<tempfile::TempDir>,
    parent: Option<PathBuf>,
    created_parents: Vec<PathBuf>,
}

impl OwnedTempDir {
    /// `<parent>/<prefix><pid>-XXXX`; removes stale ones of dead processes.
    fn new(parent: &Path, prefix: &str) -> Result<Self> {
        let mut created_parents = vec![];
        let mut missing = vec![];
        let mut p = parent.to_path_buf();
        while !p.exists() {
            missing.push(p.clone());
            if !p.pop() {
                break;
            }
        }
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        missing.reverse();
        created_parents.extend(missing);
        remove_stale(parent, prefix);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}{}-", std::process::id()))
            .tempdir_in(parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        Ok(Self {
            dir: Some(dir),
            parent: Some(parent.to_path_buf()),
            created_parents,
        })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Drop for OwnedTempDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let p = d.path().to_path_buf();
            if let Err(e) = d.close() {
                tracing::warn!("removing {}: {e}", p.display());
            }
        }
        // The parent is unistore's own (the runtime directory, the big
        // temporary directory): removed when no other session uses it.
        if let Some(parent) = &self.parent {
            let _ = std::fs::remove_dir(parent);
        }
        for p in self.created_parents.iter().rev() {
            // Only if empty: another session may use it.
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Removes `<parent>/<prefix><pid>-*` left by processes that no longer run
/// (a crash, a SIGKILL).
fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let alive = !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        );
        if !alive {
            tracing::info!("removing stale {}", e.path().display());
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!("removing stale {}: {err}", e.path().display());
            }
        }
    }
}

/// The peers' view of the host store for one operation: a private run
/// directory (runroot, configuration, socket) and a private directory for
/// large temporary files on the target filesystem. Both go away on drop.
#[derive(Debug)]
pub struct Session {
    store: PathBuf,
    run: OwnedTempDir,
    big_tmp: OwnedTempDir,
    registries_conf: Option<PathBuf>,
}

impl Session {
    /// Creates the store if needed and a session on it. `registries_conf`
    /// is passed to podman and skopeo as `CONTAINERS_REGISTRIES_CONF`.
    pub fn new(sysroot: &Sysroot, registries_conf: Option<&Path>) -> Result<Self> {
        ensure_store(sysroot)?;
        let run = OwnedTempDir::new(&runtime_dir(sysroot), "p")?;
        let runroot = run.path().join("rr");
        if runroot.as_os_str().len() > MAX_RUNROOT_LEN {
            bail!(
                "podman's run root {} would be longer than {MAX_RUNROOT_LEN} characters, which podman refuses; \
                 use a shorter runtime directory",
                runroot.display()
            );
        }
        let big_tmp = OwnedTempDir::new(&sysroot.join(BIG_TMP_DIR), "s")?;
        std::fs::create_dir_all(&runroot)?;
        std::fs::create_dir_all(run.path().join("engine"))?;
        let s = Self {
            store: store_path(sysroot),
            run,
            big_tmp,
            registries_conf: registries_conf.map(Path::to_path_buf),
        };
        std::fs::write(
            s.containers_conf(),
            containers_conf(s.run.path(), s.big_tmp.path()),
        )?;
        std::fs::write(
            s.storage_conf(),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\n\
                 [storage.options.overlay]\n\
                 # No private bind mount of the store's overlay/ on itself:\n\
                 # nothing may stay mounted in the host's root after unistore.\n\
                 skip_mount_home = \"true\"\n",
                toml_escape(&s.store),
                toml_escape(&s.runroot())
            ),
        )?;
        std::fs::write(
            s.local_policy(),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        Ok(s)
    }

    /// The store (`--root`).
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The private run root (`--runroot`).
    pub fn runroot(&self) -> PathBuf {
        self.run.path().join("rr")
    }

    /// A directory for large temporary files, on the target filesystem.
    pub fn big_tmp(&self) -> &Path {
        self.big_tmp.path()
    }

    fn containers_conf(&self) -> PathBuf {
        self.run.path().join("containers.conf")
    }

    fn storage_conf(&self) -> PathBuf {
        self.run.path().join("storage.conf")
    }

    /// A signature policy accepting anything: only for copies of images
    /// that are already on the host (exports from the composefs repository).
    fn local_policy(&self) -> PathBuf {
        self.run.path().join("policy.json")
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env = vec![
            ("CONTAINERS_CONF".into(), self.containers_conf().into()),
            ("CONTAINERS_STORAGE_CONF".into(), self.storage_conf().into()),
            ("TMPDIR".into(), self.big_tmp.path().into()),
        ];
        if let Some(r) = &self.registries_conf {
            env.push(("CONTAINERS_REGISTRIES_CONF".into(), r.into()));
        }
        env
    }

    /// `podman` on the store, with the session's environment. The store,
    /// run root and driver come from the session's `storage.conf`, not
    /// from `--root`: with `--root`, podman puts its database in the store
    /// whatever `static_dir` says.
    pub fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.envs(self.env()).stdin(Stdio::null());
        c
    }

    /// The containers-image reference of `name` in the store.
    pub fn storage_ref(&self, name: &str) -> String {
        format!(
            "containers-storage:[overlay@{}+{}]{name}",
            self.store.display(),
            self.runroot().display()
        )
    }

    /// Runs a podman command (blocking), returning stdout.
    pub fn run_podman(&self, args: &[&str]) -> Result<String> {
        run_cmd(self.podman().args(args))
    }

    /// Adds `name` to the image `id`.
    pub fn tag(&self, id: &str, name: &str) -> Result<()> {
        self.run_podman(&["tag", id, name]).map(drop)
    }

    /// Removes `name` from the image `id`.
    pub fn untag(&self, id: &str, name: &str) -> Result<()> {
        self.run_podman(&["untag", id, name]).map(drop)
    }

    /// Removes the image `id` (refused by podman while a container uses it).
    pub fn remove_image(&self, id: &str) -> Result<()> {
        self.run_podman(&["rmi", id]).map(drop)
    }

    /// `skopeo copy SRC containers-storage:[...]NAME`. `local` uses the
    /// session's accept-anything policy (for images already on the host);
    /// otherwise skopeo applies the host's policy.
    pub async fn skopeo_copy_in(
        &self,
        src: &str,
        name: &str,
        local: bool,
        progress: &Progress,
    ) -> Result<()> {
        let mut c = Command::new("skopeo");
        if local {
            c.arg("--policy").arg(self.local_policy());
        }
        if let Some(r) = &self.registries_conf {
            c.arg("--registries-conf").arg(r);
        }
        c.args(["copy", "--remove-signatures"])
            .arg(src)
            .arg(self.storage_ref(name))
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(c)
            .kill_on_drop(true)
            .spawn()
            .context("spawning skopeo (is it installed?)")?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_task = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            // "Copying blob sha256:...", "Writing manifest to image destination".
            let line = line.trim();
            if !line.is_empty() {
                progress.report(ProgressEvent::Message(format!("  {line}")));
            }
        }
        let status = child.wait().await?;
        let err = err_task.await.unwrap_or_default();
        if !status.success() {
            bail!(
                "skopeo copy {src} into containers-storage failed ({status}): {}",
                err.trim()
            );
        }
        Ok(())
    }

    /// Pulls `reference` (a registry name) into the store with podman,
    /// reporting per-layer bytes; returns the image id (hex).
    pub async fn podman_pull(&self, reference: &str, progress: &Progress) -> Result<String> {
        let t = Instant::now();
        let svc = Service::start(self).await?;
        tracing::debug!("podman service listening after {:?}", t.elapsed());
        let path = format!(
            "/v1.41/images/create?fromImage={}",
            percent_encode(reference, false)
        );
        let mut tracker = PullTracker::default();
        let mut error = None;
        let status = http_stream(&svc.socket, "POST", &path, |line| {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                tracing::debug!("podman: {}", String::from_utf8_lossy(line));
                return;
            };
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                error = Some(e.to_string());
                return;
            }
            tracker.event(&v, progress);
        })
        .await
        .context("talking to podman")?;
        tracker.finish(progress);
        if let Some(e) = error {
            bail!("podman pull {reference}: {e}");
        }
        if status != 200 {
            bail!("podman pull {reference}: HTTP status {status}");
        }
        let mut body = Vec::new();
        let status = http_stream(
            &svc.socket,
            "GET",
            &format!("/v1.41/images/{}/json", percent_encode(reference, true)),
            |l| {
                body.extend_from_slice(l);
                body.push(b'\n');
            },
        )
        .await?;
        if status != 200 {
            bail!(
                "podman does not find {reference} after pulling it (HTTP {status}): {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).context("parsing podman's image inspect")?;
        let id = v["Id"]
            .as_str()
            .ok_or_else(|| anyhow!("podman's image inspect has no Id"))?;
        Ok(id.trim_start_matches("sha256:").to_string())
    }
}

/// Runs a command, returning stdout; the error names it and carries stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let desc = format!("{:?}", cmd.get_program());
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = cmd
        .output()
        .with_context(|| format!("spawning {desc} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{desc} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A transient `podman system service` on a private socket; stopped on drop.
struct Service {
    child: std::process::Child,
    socket: PathBuf,
}

impl Service {
    async fn start(session: &Session) -> Result<Self> {
        let socket = session.run.path().join("api.sock");
        // sun_path holds 108 bytes.
        if socket.as_os_str().len() > 100 {
            bail!(
                "the run directory path {} is too long for a unix socket",
                session.run.path().display()
            );
        }
        let log_path = session.run.path().join("service.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = session.podman();
        // `--time`: exit when idle, should this process die without
        // stopping it; the parent-death signal covers the rest.
        cmd.args(["system", "service", "--time=30"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().context("spawning podman (is it installed?)")?;
        let mut svc = Service { child, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::UnixStream::connect(&svc.socket).await.is_ok() {
                return Ok(svc);
            }
            if let Some(st) = svc.child.try_wait()? {
                bail!(
                    "podman system service exited ({st}): {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "podman system service did not listen on {} within 60 s",
                    svc.socket.display()
                );
            }
            // Short: this wait is on the critical path of every pull.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Percent-encodes `s` for a query value (or a path, keeping `/` and `:`).
fn percent_encode(s: &str, path: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (path && matches!(b, b'/' | b':' | b'@'));
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.1 client over a unix socket: sends a request without a
/// body and hands each line of the (chunked or plain) response body to
/// `on_line`, as it arrives. Returns the status code.
async fn http_stream(
    socket: &Path,
    method: &str,
    path: &str,
    mut on_line: impl FnMut(&[u8]),
) -> Result<u16> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (r, mut w) = stream.into_split();
    w.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: podman\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed in the HTTP headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    let mut pending: Vec<u8> = Vec::new();
    let emit = |pending: &mut Vec<u8>, data: &[u8], on_line: &mut dyn FnMut(&[u8])| {
        pending.extend_from_slice(data);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = pending.drain(..=pos).collect();
            let l = l.trim_ascii();
            if !l.is_empty() {
                on_line(l);
            }
        }
    };
    if chunked {
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                break;
            }
            let size_str = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_str, 16)
                .with_context(|| format!("bad chunk size {size_str:?}"))?;
            if size == 0 {
                break;
            }
            let mut buf = vec![0u8; size];
            r.read_exact(&mut buf).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
            emit(&mut pending, &buf, &mut on_line);
        }
    } else {
        let mut buf = Vec::new();
        match length {
            Some(n) => {
                buf.resize(n, 0);
                r.read_exact(&mut buf).await?;
            }
            None => {
                r.read_to_end(&mut buf).await?;
            }
        }
        emit(&mut pending, &buf, &mut on_line);
    }
    if !pending.trim_ascii().is_empty() {
        on_line(pending.trim_ascii());
    }
    Ok(status)
}

/// Turns podman's Docker-style pull stream into progress events.
#[derive(Default)]
struct PullTracker {
    /// Per short id: last byte count, whether done.
    layers: HashMap<String, (u64, bool)>,
}

impl PullTracker {
    fn event(&mut self, v: &serde_json::Value, progress: &Progress) {
        let status = v["status"].as_str().unwrap_or_default();
        let Some(short) = v["id"].as_str() else {
            if !status.is_empty() {
                progress.report(ProgressEvent::Message(status.to_string()));
            }
            return;
        };
        let id = ComponentId::from(format!("sha256:{short}"));
        let entry = self.layers.entry(short.to_string());
        let new = matches!(entry, std::collections::hash_map::Entry::Vacant(_));
        let state = entry.or_insert((0, false));
        if new {
            progress.report(ProgressEvent::Started {
                id: id.clone(),
                total: None,
                unit: composefs::progress::ProgressUnit::Bytes,
            });
        }
        match status {
            "Downloading" => {
                let cur = v["progressDetail"]["current"].as_u64().unwrap_or(0);
                let total = v["progressDetail"]["total"].as_u64();
                state.0 = cur;
                progress.report(ProgressEvent::Progress {
                    id,
                    fetched: cur,
                    total,
                });
            }
            "Download complete" | "Already exists" | "Pull complete" if !state.1 => {
                state.1 = true;
                progress.report(ProgressEvent::Done {
                    id,
                    transferred: state.0,
                });
            }
            _ => {}
        }
    }

    fn finish(&mut self, progress: &Progress) {
        for (short, (bytes, done)) in &mut self.layers {
            if !*done {
                *done = true;
                progress.report(ProgressEvent::Done {
                    id: ComponentId::from(format!("sha256:{short}")),
                    transferred: *bytes,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_references() {
        assert_eq!(
            percent_encode("127.0.0.1:5000/os:v1", false),
            "127.0.0.1%3A5000%2Fos%3Av1"
        );
        assert_eq!(
            percent_encode("127.0.0.1:5000/os@sha256:ab", true),
            "127.0.0.1:5000/os@sha256:ab"
        );
    }

    #[test]
    fn layer_chains() {
        let l = |id: &str, parent: Option<&str>, incomplete: bool| StoreLayer {
            id: id.into(),
            parent: parent.map(str::to_string),
            diff_digest: None,
            compressed_digest: None,
            diff_size: None,
            created: None,
            flags: if incomplete {
                [("incomplete".to_string(), serde_json::Value::Bool(true))].into()
            } else {
                HashMap::new()
            },
        };
        let img = StoreImage {
            id: "i".into(),
            digest: None,
            digests: vec![],
            names: vec![],
            layer: Some("c".into()),
        };
        let layers = vec![
            l("a", None, false),
            l("b", Some("a"), false),
            l("c", Some("b"), false),
        ];
        let chain = layer_chain(&img, &layers).unwrap();
        assert_eq!(
            chain.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(layer_chain(&img, &layers[1..]).is_err());
        let broken = vec![
            l("a", None, false),
            l("b", Some("a"), true),
            l("c", Some("b"), false),
        ];
        assert!(layer_chain(&img, &broken).is_err());
    }

    #[test]
    fn pull_stream_to_progress() {
        use std::sync::Mutex;
        struct Rec(Mutex<Vec<ProgressEvent>>);
        impl crate::progress::ProgressReporter for Rec {
            fn report(&self, e: ProgressEvent) {
                self.0.lock().unwrap().push(e);
            }
        }
        let rec = std::sync::Arc::new(Rec(Mutex::new(vec![])));
        let p: Progress = rec.clone();
        let mut t = PullTracker::default();
        for l in [
            r#"{"status":"Pulling fs layer","progressDetail":{},"id":"aaa"}"#,
            r#"{"status":"Downloading","progressDetail":{"current":10,"total":20},"id":"aaa"}"#,
            r#"{"status":"Download complete","progressDetail":{},"id":"aaa"}"#,
            r#"{"status":"Download complete","progressDetail":{},"id":"aaa"}"#,
            r#"{"status":"Pulling fs layer","progressDetail":{},"id":"bbb"}"#,
        ] {
            t.event(&serde_json::from_str(l).unwrap(), &p);
        }
        t.finish(&p);
        let ev = rec.0.lock().unwrap();
        let done = ev
            .iter()
            .filter(|e| matches!(e, ProgressEvent::Done { .. }))
            .count();
        assert_eq!(done, 2);
        assert!(ev.iter().any(|e| matches!(
            e,
            ProgressEvent::Progress {
                fetched: 10,
                total: Some(20),
                ..
            }
        )));
    }
}
