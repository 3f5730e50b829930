//! A [`Session`] on the store: private `containers.conf`, `storage.conf`
//! and `policy.json` in its own run directory, and the podman and skopeo
//! commands that use them.

use super::*;

/// Where sessions put their private directories, below the run directory.
pub(super) const RUN_SUBDIR: &str = "unistore";
/// podman refuses a runroot longer than this.
pub(super) const MAX_RUNROOT_LEN: usize = 50;

pub(super) static RUNTIME_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the directory where sessions create their private run directories
/// (podman's runroot, socket and configuration), for this process. The CLI
/// sets `/run/unistore`. Without it, `<run dir of the root>/unistore`,
/// which is often too long for podman (runroots of at most 50 characters).
pub fn set_runtime_dir(dir: impl Into<PathBuf>) {
    let _ = RUNTIME_DIR.set(dir.into());
}

pub(super) fn runtime_dir(sysroot: &Sysroot) -> PathBuf {
    RUNTIME_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| sysroot.run_dir().join(RUN_SUBDIR))
}
/// The `containers.conf` of a session: settings podman needs on this kind
/// of host (runc, cgroupfs, limits below the hard limits, no network), no
/// global event log or tmp dir, and podman's own database (`static_dir`)
/// in the session's private directory: podman records the run root in that
/// database and refuses a store whose database names another run root, so
/// unistore must not leave one in the store for the user's podman to trip on.
pub(super) fn containers_conf(run: &Path, tmp: &Path) -> String {
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

pub(super) fn toml_escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// A private directory removed on drop, plus the parents it had to create.
#[derive(Debug)]
pub(super) struct OwnedTempDir {
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

    pub(super) fn path(&self) -> &Path {
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
pub(super) fn remove_stale(parent: &Path, prefix: &str) {
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
    pub(super) run: OwnedTempDir,
    big_tmp: OwnedTempDir,
    registries_conf: Option<PathBuf>,
    /// Registry credentials for podman and skopeo (`REGISTRY_AUTH_FILE`).
    authfile: Option<PathBuf>,
}

impl Session {
    /// Creates the store if needed and a session on it. `fetch` (its
    /// `registries.conf` and credentials) is passed to podman and skopeo as
    /// `CONTAINERS_REGISTRIES_CONF` and `REGISTRY_AUTH_FILE`.
    pub fn new(
        sysroot: &Sysroot,
        fetch: Option<&crate::source::fetch_config::FetchConfig>,
    ) -> Result<Self> {
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
            registries_conf: fetch.and_then(|f| f.registries_conf.clone()),
            authfile: fetch.and_then(|f| f.authfile.clone()),
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
        if let Some(a) = &self.authfile {
            env.push(("REGISTRY_AUTH_FILE".into(), a.into()));
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
        // The Docker API takes credentials from the client only: the same
        // ones skopeo and the image proxy use.
        let mut headers = vec![];
        if let Some(a) = &self.authfile
            && let Some(h) = super::service::registry_auth_header(a, reference)?
        {
            headers.push(("X-Registry-Auth", h));
        }
        let mut tracker = PullTracker::default();
        let mut error = None;
        let status = http_stream(&svc.socket, "POST", &path, &headers, |line| {
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
            &[],
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
