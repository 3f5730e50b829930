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
    /// `user:password` of a registry behind htpasswd and TLS.
    creds: Option<String>,
}

/// What kind of registry [`Registry::start_with`] starts.
#[derive(Debug, Clone, Default)]
pub struct RegistryOpts {
    /// Behind TLS (its own CA, see [`Registry::ca_cert`]) with an htpasswd
    /// login `(user, password)`.
    pub tls_login: Option<(String, String)>,
    /// A pull-through mirror of the registry at this `http://` URL.
    pub mirror_of: Option<String>,
}

/// The CA of a TLS registry trusted system-wide, the way the containers
/// tools look for it (`/etc/containers/certs.d/HOST:PORT/ca.crt`), until
/// dropped.
#[derive(Debug)]
pub struct TrustedCa(PathBuf);

impl Drop for TrustedCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate for 127.0.0.1 under `dir`.
fn make_certs(dir: &Path) -> Result<()> {
    let sh = format!(
        "set -e; cd '{}'; \
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=unistore test CA' 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1\\n' > ext; \
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext 2>/dev/null",
        dir.display()
    );
    run(Command::new("sh").arg("-c").arg(sh))?;
    Ok(())
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
        Self::start_with(RegistryOpts::default())
    }

    /// Start a registry of the kind `opts` says.
    pub fn start_with(opts: RegistryOpts) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("unistore-registry-")
            .tempdir_in("/var/tmp")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut yaml = registry_config(&addr, &storage);
        let d = dir.path();
        if let Some((user, password)) = &opts.tls_login {
            make_certs(d)?;
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("running htpasswd (apache2-utils)")?;
            anyhow::ensure!(out.status.success(), "htpasswd failed");
            std::fs::write(d.join("htpasswd"), &out.stdout)?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {0}/server.crt\n    key: {0}/server.key\nauth:\n  htpasswd:\n    realm: unistore-test\n    path: {0}/htpasswd\n",
                d.display()
            ));
        }
        if let Some(remote) = &opts.mirror_of {
            yaml.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        }
        std::fs::write(&config, yaml)?;
        let registries_conf = dir.path().join("registries.conf");
        let insecure = if opts.tls_login.is_some() {
            ""
        } else {
            "insecure = true\n"
        };
        std::fs::write(
            &registries_conf,
            format!("[[registry]]\nlocation = \"{addr}\"\n{insecure}"),
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
            creds: opts.tls_login.as_ref().map(|(u, p)| format!("{u}:{p}")),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A TLS server answers plain HTTP with 400: it is up.
            let want = if reg.creds.is_some() { 400 } else { 200 };
            if v2_status(&reg.addr) == Some(want) {
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

    /// The registry's CA certificate (TLS registries).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Trusts this registry's CA system-wide until the guard drops.
    pub fn trust_ca(&self) -> Result<TrustedCa> {
        let d = PathBuf::from(format!("/etc/containers/certs.d/{}", self.addr));
        std::fs::create_dir_all(&d)?;
        std::fs::copy(self.ca_cert(), d.join("ca.crt"))?;
        Ok(TrustedCa(d))
    }

    /// A containers `auth.json` at `path` with `user:password` for this
    /// registry.
    pub fn write_auth_json(&self, path: &Path, user: &str, password: &str) -> Result<()> {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(
            path,
            format!(
                "{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}",
                self.addr
            ),
        )?;
        Ok(())
    }

    /// A `registries.conf` for this registry with `mirror` as its mirror
    /// (both plain HTTP).
    pub fn registries_conf_with_mirror(&self, mirror: &Registry) -> Result<PathBuf> {
        let p = self.dir.path().join("registries-mirror.conf");
        std::fs::write(
            &p,
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
                self.addr, mirror.addr
            ),
        )?;
        Ok(p)
    }

    /// The registry's log (access lines included).
    pub fn log_text(&self) -> String {
        self.log()
    }

    /// Stops the registry (a registry that is down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    /// The blob file the registry serves for `digest` (`sha256:<hex>`),
    /// for tests that make it serve bad bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

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
        if let Some(creds) = &self.creds {
            c.args(["--dest-creds", creds]);
        }
        if let Some(f) = format {
            c.args(["--format", f]);
        }
        run(c.arg(format!("oci:{}:{tag}", oci_dir.display())).arg(&dest))?;
        Ok(dest)
    }

    /// Push `oci:<oci_dir>:<tag>` as `<repo_name>:<tag>` with its layers
    /// recompressed as zstd:chunked (a table of contents and one zstd frame
    /// per file, as podman pushes them); returns the `docker://` reference.
    pub fn push_oci_zstd_chunked(
        &self,
        oci_dir: &Path,
        tag: &str,
        repo_name: &str,
    ) -> Result<String> {
        let dest = format!("docker://{}/{repo_name}:{tag}", self.addr);
        let mut c = Command::new("skopeo");
        c.env("CONTAINERS_REGISTRIES_CONF", self.registries_conf())
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-compress",
            ])
            .args(["--dest-compress-format", "zstd:chunked"]);
        if let Some(creds) = &self.creds {
            c.args(["--dest-creds", creds]);
        }
        run(c.arg(format!("oci:{}:{tag}", oci_dir.display())).arg(&dest))?;
        Ok(dest)
    }

    /// A mark in the registry's log: [`Self::blob_bytes_since`] counts from
    /// there.
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// The blob GETs the registry answered since `mark` (its access log):
    /// (requests, bytes sent), per blob digest.
    pub fn blob_bytes_since(&self, mark: usize) -> std::collections::BTreeMap<String, (u64, u64)> {
        let log = self.log();
        let mut out = std::collections::BTreeMap::new();
        for line in log.get(mark..).unwrap_or_default().lines() {
            // 127.0.0.1 - - [date] "GET /v2/NAME/blobs/sha256:HEX HTTP/1.1" 206 1234 "" "agent"
            let Some((_, rest)) = line.split_once("\"GET /v2/") else {
                continue;
            };
            let Some((path, tail)) = rest.split_once(" HTTP/") else {
                continue;
            };
            let Some((_, digest)) = path.split_once("/blobs/") else {
                continue;
            };
            let mut f = tail.split_whitespace().skip(1);
            let (Some(status), Some(bytes)) = (f.next(), f.next()) else {
                continue;
            };
            if !status.starts_with('2') {
                continue;
            }
            let e = out.entry(digest.to_string()).or_insert((0, 0));
            e.0 += 1;
            e.1 += bytes.parse::<u64>().unwrap_or(0);
        }
        out
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
