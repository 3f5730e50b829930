//! A transient `podman system service` on a private unix socket, and the
//! streaming pull of its REST API that reports per-layer bytes.

use super::*;

/// A transient `podman system service` on a private socket; stopped on drop.
pub(super) struct Service {
    child: std::process::Child,
    pub(super) socket: PathBuf,
}

impl Service {
    pub(super) async fn start(session: &Session) -> Result<Self> {
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
pub(super) fn percent_encode(s: &str, path: bool) -> String {
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
pub(super) async fn http_stream(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    mut on_line: impl FnMut(&[u8]),
) -> Result<u16> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (r, mut w) = stream.into_split();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    w.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: podman\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
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
pub(super) struct PullTracker {
    /// Per short id: last byte count, whether done.
    layers: HashMap<String, (u64, bool)>,
}

impl PullTracker {
    pub(super) fn event(&mut self, v: &serde_json::Value, progress: &Progress) {
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

    pub(super) fn finish(&mut self, progress: &Progress) {
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

/// The `X-Registry-Auth` header value (base64url JSON, as the Docker API
/// takes it) for the registry of `reference`, from the containers
/// `auth.json` at `authfile`; `None` when it holds nothing for it.
pub(super) fn registry_auth_header(authfile: &Path, reference: &str) -> Result<Option<String>> {
    use base64::Engine;
    let text = std::fs::read_to_string(authfile)
        .with_context(|| format!("reading registry credentials {}", authfile.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a containers auth.json", authfile.display()))?;
    let name = reference.trim_start_matches("docker://");
    let host = name.split('/').next().unwrap_or(name);
    // The most specific key first: `host/ns/repo`, ..., `host`.
    let mut keys = vec![];
    let mut k = crate::source::docker_schema2::repository(name);
    loop {
        keys.push(k);
        match k.rfind('/') {
            Some(i) => k = &k[..i],
            None => break,
        }
    }
    let Some(entry) = keys.iter().find_map(|k| v["auths"].get(*k)) else {
        return Ok(None);
    };
    let Some(auth) = entry["auth"].as_str() else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            anyhow!(
                "{}: the credentials for {host} are not base64 of user:password",
                authfile.display()
            )
        })?;
    let (user, password) = decoded.split_once(':').ok_or_else(|| {
        anyhow!(
            "{}: the credentials for {host} are not user:password",
            authfile.display()
        )
    })?;
    let json = serde_json::json!({"username": user, "password": password, "serveraddress": host});
    Ok(Some(
        base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&json)?),
    ))
}

#[cfg(test)]
mod auth_tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn credentials_for_the_most_specific_key() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("auth.json");
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &p,
            serde_json::json!({"auths": {
                "127.0.0.1:5000": {"auth": enc("a:1")},
                "127.0.0.1:5000/team/os": {"auth": enc("b:2")},
            }})
            .to_string(),
        )
        .unwrap();
        let decode = |h: String| -> serde_json::Value {
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE.decode(h).unwrap())
                .unwrap()
        };
        let h = decode(
            registry_auth_header(&p, "127.0.0.1:5000/team/os:v1")
                .unwrap()
                .unwrap(),
        );
        assert_eq!(h["username"], "b");
        assert_eq!(h["serveraddress"], "127.0.0.1:5000");
        let h = decode(
            registry_auth_header(&p, "docker://127.0.0.1:5000/other:v1")
                .unwrap()
                .unwrap(),
        );
        assert_eq!(
            (h["username"].as_str(), h["password"].as_str()),
            (Some("a"), Some("1"))
        );
        assert!(registry_auth_header(&p, "quay.io/x:1").unwrap().is_none());
    }
}
