//! A throwaway `docker-registry` listening on a loopback port.

use super::cmd::run;
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry on `127.0.0.1:<free port>` with its own config and storage;
/// dropping it kills the process and removes its files.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: String,
    registries_conf: PathBuf,
    dir: tempfile::TempDir,
}

/// Ask the kernel for a free loopback port.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The status code of `GET /v2/` at `addr`, if something answers HTTP there.
fn v2_status(addr: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // The status line may arrive in more than one read.
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]).ok()? {
            0 => break,
            k => n += k,
        }
    }
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// The registry configuration (YAML) for `addr` storing under `storage`.
pub fn registry_config(addr: &str, storage: &Path) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        storage.display()
    )
}

impl Registry {
    /// Start `docker-registry serve` and wait (up to 30 s) until `/v2/` answers 200.
    pub fn start() -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("unistore-registry-")
            .tempdir_in("/var/tmp")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(&config, registry_config(&addr, &storage))?;
        let registries_conf = dir.path().join("registries.conf");
        std::fs::write(
            &registries_conf,
            format!("[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry (is it installed?)")?;
        let mut reg = Registry {
            child,
            addr,
            registries_conf,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if v2_status(&reg.addr) == Some(200) {
                return Ok(reg);
            }
            if let Some(status) = reg.child.try_wait()? {
                anyhow::bail!("docker-registry exited ({status}): {}", reg.log());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "docker-registry did not answer on {}: {}",
                    reg.addr,
                    reg.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// A `registries.conf` marking this registry insecure (plain HTTP); point
    /// `CONTAINERS_REGISTRIES_CONF` at it.
    pub fn registries_conf(&self) -> &Path {
        &self.registries_conf
    }

    /// Push `oci:<oci_dir>:<tag>` as `<repo_name>:<tag>`; returns the `docker://` reference.
    pub fn push_oci(&self, oci_dir: &Path, tag: &str, repo_name: &str) -> Result<String> {
        self.push_oci_as(oci_dir, tag, repo_name, None)
    }

    /// [`Self::push_oci`] in Docker's format (schema 2), as `docker push`
    /// and many CI systems store images.
    pub fn push_oci_docker(&self, oci_dir: &Path, tag: &str, repo_name: &str) -> Result<String> {
        self.push_oci_as(oci_dir, tag, repo_name, Some("v2s2"))
    }

    fn push_oci_as(
        &self,
        oci_dir: &Path,
        tag: &str,
        repo_name: &str,
        format: Option<&str>,
    ) -> Result<String> {
        let dest = format!("docker://{}/{repo_name}:{tag}", self.addr);
        let mut c = Command::new("skopeo");
        c.env("CONTAINERS_REGISTRIES_CONF", self.registries_conf())
            .args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(f) = format {
            c.args(["--format", f]);
        }
        run(c.arg(format!("oci:{}:{tag}", oci_dir.display())).arg(&dest))?;
        Ok(dest)
    }

    /// The manifest `repo_name:reference` as the registry serves it, and
    /// its digest (`sha256:` of the bytes).
    pub fn raw_manifest(&self, repo_name: &str, reference: &str) -> Result<(String, Vec<u8>)> {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{repo_name}:{reference}", self.addr))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "skopeo inspect --raw: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use sha2::Digest;
        Ok((
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout))),
            out.stdout,
        ))
    }

    /// Stores `body` as the manifest `repo_name:tag` (HTTP PUT, for
    /// manifest lists skopeo 1.9 cannot make).
    pub fn put_manifest(
        &self,
        repo_name: &str,
        tag: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<()> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "PUT /v2/{repo_name}/manifests/{tag} HTTP/1.0\r\nHost: {}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )?;
        s.write_all(body)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let status = resp.get(9..12).unwrap_or("");
        anyhow::ensure!(
            status == "201",
            "PUT manifest {repo_name}:{tag}: {}",
            resp.lines().next().unwrap_or("")
        );
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_listens_on_loopback_only() {
        let c = registry_config("127.0.0.1:5000", Path::new("/x/y"));
        assert!(c.contains("addr: 127.0.0.1:5000\n"), "{c}");
        assert!(c.contains("rootdirectory: /x/y\n"), "{c}");
        assert!(free_port().unwrap() > 0);
    }

    #[test]
    fn status_line_parsing() {
        // Nothing listens on tcpmux (a port just released could be taken
        // by a registry another test starts meanwhile).
        assert_eq!(v2_status("127.0.0.1:1"), None);
        // A fake server answering 401 is seen as such.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\n\r\n").unwrap();
        });
        assert_eq!(v2_status(&addr), Some(401));
        t.join().unwrap();
    }
}
