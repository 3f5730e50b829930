//! Byte ranges of a registry blob, through oci-client, reaching the
//! registry as the containers tools do: `registries.conf` (insecure
//! registries over plain HTTP or unverified TLS, mirrors, blocked
//! registries), the credentials file every pull gets, and the CA
//! certificates of `/etc/containers/certs.d/<registry>/`.
//!
//! What this cannot do as skopeo would, it declines ([`Declined`]), and the
//! layer is fetched whole through skopeo: a registry with mirrors (skopeo
//! tries them in order), a blocked one, one that wants credentials this
//! pull was not given, one that ignores `Range`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::source::fetch_config::FetchConfig;

/// Why a layer is fetched whole instead: said to the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Declined(pub String);

/// What `registries.conf` says of a registry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Endpoint {
    insecure: bool,
    blocked: bool,
    mirrors: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ConfFile {
    #[serde(default)]
    registry: Vec<ConfRegistry>,
    #[serde(default)]
    registries: Option<ConfV1>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ConfRegistry {
    #[serde(default)]
    location: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<toml::Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ConfV1 {
    #[serde(default)]
    insecure: Option<ConfV1List>,
    #[serde(default)]
    block: Option<ConfV1List>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ConfV1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// Whether `prefix` (a registries.conf prefix) covers `name` (`host/repo`).
fn covers(prefix: &str, name: &str) -> bool {
    name == prefix || name.starts_with(&format!("{prefix}/"))
}

/// What the `registries.conf` files `texts` say of `name` (`host/repo`):
/// the longest matching `[[registry]]` entry of the last file that has one.
fn endpoint(texts: &[String], name: &str) -> Result<Endpoint> {
    let host = name.split('/').next().unwrap_or_default();
    let mut out = Endpoint::default();
    let mut best = 0;
    for t in texts {
        let conf: ConfFile = toml::from_str(t).context("reading registries.conf")?;
        for r in &conf.registry {
            let prefix = if r.prefix.is_empty() {
                &r.location
            } else {
                &r.prefix
            };
            if !prefix.is_empty() && covers(prefix, name) && prefix.len() >= best {
                best = prefix.len();
                out = Endpoint {
                    insecure: r.insecure,
                    blocked: r.blocked,
                    mirrors: !r.mirror.is_empty(),
                };
            }
        }
        if let Some(v1) = &conf.registries {
            let has = |l: &Option<ConfV1List>| {
                l.as_ref()
                    .is_some_and(|l| l.registries.iter().any(|r| r == host))
            };
            out.insecure |= has(&v1.insecure);
            out.blocked |= has(&v1.block);
        }
    }
    Ok(out)
}

/// The registries.conf files in force: the one given, or the system's and
/// its drop-ins.
fn conf_texts(fetch: &FetchConfig) -> Result<Vec<String>> {
    let mut paths: Vec<PathBuf> = vec![];
    match &fetch.registries_conf {
        Some(p) => paths.push(p.clone()),
        None => {
            paths.push("/etc/containers/registries.conf".into());
            if let Ok(rd) = std::fs::read_dir("/etc/containers/registries.conf.d") {
                let mut d: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                d.sort();
                paths.extend(
                    d.into_iter()
                        .filter(|p| p.extension().is_some_and(|e| e == "conf")),
                );
            }
        }
    }
    let mut out = vec![];
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(t) => out.push(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(out)
}

/// The credentials `authfile` holds for `name` (`host/repo`): the entry of
/// the longest matching key, as the containers tools pick it.
fn credentials(authfile: &Path, name: &str) -> Result<Option<(String, String)>> {
    use base64::Engine;
    let text = match std::fs::read_to_string(authfile) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", authfile.display())),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", authfile.display()))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let mut best: Option<(usize, &serde_json::Value)> = None;
    for (k, val) in auths {
        let key = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let key = key.trim_end_matches('/');
        if covers(key, name) && best.is_none_or(|(l, _)| key.len() > l) {
            best = Some((key.len(), val));
        }
    }
    let Some(auth) = best.and_then(|(_, v)| v.get("auth")?.as_str()) else {
        return Ok(None);
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .with_context(|| {
            format!(
                "{}: credentials for {name} are not base64",
                authfile.display()
            )
        })?;
    let s = String::from_utf8(raw).context("credentials are not UTF-8")?;
    Ok(s.split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string())))
}

/// CA certificates the containers tools trust for `host`.
fn certs(host: &str) -> Vec<Certificate> {
    let dir = Path::new("/etc/containers/certs.d").join(host);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "crt"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|data| Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        })
        .collect()
}

/// A connection to one registry repository, authorized to pull.
pub struct Ranged {
    client: Client,
    reference: Reference,
}

impl Ranged {
    /// Connects to the repository of `image` (`host/repo[:tag|@digest]`).
    /// [`Declined`] when the pull must go through skopeo instead.
    pub async fn connect(image: &str, fetch: &FetchConfig) -> Result<Self> {
        let reference: Reference = image
            .parse()
            .with_context(|| format!("{image} is not a registry reference"))?;
        let host = reference.resolve_registry().to_string();
        let name = format!("{host}/{}", reference.repository());
        let ep = endpoint(&conf_texts(fetch)?, &name)?;
        if ep.blocked {
            return Err(Declined(format!("{host} is blocked in registries.conf")).into());
        }
        if ep.mirrors {
            return Err(Declined(format!(
                "registries.conf gives {host} mirrors, which skopeo tries in turn"
            ))
            .into());
        }
        let auth = match &fetch.authfile {
            Some(f) => credentials(f, &name)?
                .map_or(RegistryAuth::Anonymous, |(u, p)| RegistryAuth::Basic(u, p)),
            None => RegistryAuth::Anonymous,
        };
        // An insecure registry: plain HTTP, else TLS unverified (the
        // containers tools' order is the other way; a loopback registry is
        // the common case).
        let protocols: Vec<(ClientProtocol, bool)> = if ep.insecure {
            vec![(ClientProtocol::Http, false), (ClientProtocol::Https, true)]
        } else {
            vec![(ClientProtocol::Https, false)]
        };
        let mut last = None;
        for (protocol, unverified) in protocols {
            let client = Client::new(ClientConfig {
                protocol,
                accept_invalid_certificates: unverified,
                extra_root_certificates: certs(&host),
                connect_timeout: Some(std::time::Duration::from_secs(30)),
                read_timeout: Some(std::time::Duration::from_secs(120)),
                ..Default::default()
            });
            match client
                .auth(&reference, &auth, RegistryOperation::Pull)
                .await
            {
                Ok(_) => return Ok(Self { client, reference }),
                Err(e) => last = Some(e),
            }
        }
        Err(Declined(format!(
            "could not reach {host} for byte ranges ({})",
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
        .into())
    }

    /// Fetches the `ranges` (start, end) of blob `digest` into `spool` at
    /// the offsets given, up to four at a time; calls `fetched` with the
    /// bytes of each range done. An error names the range's index.
    pub async fn fetch(
        &self,
        digest: &str,
        ranges: &[(u64, u64, u64)],
        spool: &std::fs::File,
        fetched: &(dyn Fn(u64) + Sync),
    ) -> std::result::Result<(), RangeError> {
        let jobs = ranges
            .iter()
            .enumerate()
            .map(|(i, &(start, end, at))| async move {
                self.fetch_one(digest, start, end, at, spool, fetched)
                    .await
                    .map_err(|e| RangeError { index: i, error: e })
            });
        let mut s = futures_util::stream::iter(jobs).buffer_unordered(4);
        while let Some(r) = s.next().await {
            r?;
        }
        Ok(())
    }

    async fn fetch_one(
        &self,
        digest: &str,
        start: u64,
        end: u64,
        at: u64,
        spool: &std::fs::File,
        fetched: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let want = end - start;
        let resp = self
            .client
            .pull_blob_stream_partial(&self.reference, digest, start, Some(want))
            .await
            .map_err(|e| Declined(format!("the registry refused a byte range ({e})")))?;
        let mut stream = match resp {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(_) => {
                return Err(Declined("the registry does not serve byte ranges".into()).into());
            }
        };
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading a byte range")?;
            anyhow::ensure!(
                got + chunk.len() as u64 <= want,
                "the registry sent more than the {want} bytes asked for"
            );
            spool
                .write_all_at(&chunk, at + got)
                .context("spooling a byte range")?;
            got += chunk.len() as u64;
            fetched(chunk.len() as u64);
        }
        anyhow::ensure!(
            got == want,
            "the registry sent {got} of the {want} bytes of range {start}..{end}"
        );
        Ok(())
    }
}

/// A range that could not be fetched.
#[derive(Debug)]
pub struct RangeError {
    pub index: usize,
    pub error: anyhow::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_conf_longest_prefix_wins() {
        let t = vec![
            "[[registry]]\nlocation = \"r.example:5000\"\ninsecure = true\n\n[[registry]]\nprefix = \"r.example:5000/os\"\nlocation = \"m.example\"\n[[registry.mirror]]\nlocation = \"m2.example\"\n".to_string(),
        ];
        let e = endpoint(&t, "r.example:5000/app").unwrap();
        assert!(e.insecure && !e.mirrors);
        let e = endpoint(&t, "r.example:5000/os/base").unwrap();
        assert!(e.mirrors && !e.insecure);
        assert_eq!(
            endpoint(&t, "other.example/x").unwrap(),
            Endpoint::default()
        );
        let v1 = vec!["[registries.insecure]\nregistries = [\"r.example:5000\"]\n".to_string()];
        assert!(endpoint(&v1, "r.example:5000/x").unwrap().insecure);
        assert!(endpoint(&["[[registry]\n".to_string()], "x/y").is_err());
    }

    #[test]
    fn credentials_pick_the_longest_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth.json");
        // user:a and user:b
        std::fs::write(
            &p,
            r#"{"auths":{"https://r.example:5000":{"auth":"dXNlcjph"},"r.example:5000/os":{"auth":"dXNlcjpi"}}}"#,
        )
        .unwrap();
        assert_eq!(
            credentials(&p, "r.example:5000/app").unwrap().unwrap().1,
            "a"
        );
        assert_eq!(
            credentials(&p, "r.example:5000/os").unwrap().unwrap().1,
            "b"
        );
        assert!(credentials(&p, "q.example/os").unwrap().is_none());
        assert!(
            credentials(&d.path().join("none"), "x/y")
                .unwrap()
                .is_none()
        );
    }
}
