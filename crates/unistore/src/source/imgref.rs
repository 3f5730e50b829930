//! Image references: `docker://`, `oci:`, `oci-archive:`, `containers-storage:`.
//!
//! One type for the forms a user types, the form skopeo and composefs-oci take,
//! the form the `.origin` file stores and the `{image, transport}` pair that
//! `status` shows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How an image is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A registry, `docker://NAME`.
    Registry,
    /// An OCI layout directory, `oci:PATH[:TAG]`.
    Oci,
    /// An OCI archive, `oci-archive:PATH[:TAG]`.
    OciArchive,
    /// A containers-storage store, `containers-storage:[STORE]NAME`.
    ContainersStorage,
}

impl Transport {
    /// The name `status` shows (bootc's spelling).
    pub fn status_name(self) -> &'static str {
        match self {
            Transport::Registry => "registry",
            Transport::Oci => "oci",
            Transport::OciArchive => "oci-archive",
            Transport::ContainersStorage => "containers-storage",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Transport::Registry => "docker://",
            Transport::Oci => "oci:",
            Transport::OciArchive => "oci-archive:",
            Transport::ContainersStorage => "containers-storage:",
        }
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    /// How to fetch it.
    pub transport: Transport,
    /// Everything after the transport prefix.
    pub name: String,
}

/// A reference that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    /// `foo:bar` where `foo` is no transport we know.
    #[error(
        "unknown transport {transport:?} in image reference {input:?} (expected docker://, oci:, oci-archive: or containers-storage:)"
    )]
    UnknownTransport { input: String, transport: String },
    /// A known transport with nothing after it.
    #[error("image reference {0:?} names no image")]
    Empty(String),
}

const ORIGIN_IMAGE_PREFIX: &str = "ostree-unverified-image:";
const ORIGIN_REGISTRY_PREFIX: &str = "ostree-unverified-registry:";

impl ImageRef {
    /// Parses what a user typed. A bare name (`quay.io/org/img:tag`) is a
    /// registry image, as in bootc.
    pub fn parse(input: &str) -> Result<Self, ImageRefError> {
        let s = input.trim();
        let known = [
            (Transport::Registry, "docker://"),
            (Transport::Registry, "registry:"),
            (Transport::Oci, "oci:"),
            (Transport::OciArchive, "oci-archive:"),
            (Transport::ContainersStorage, "containers-storage:"),
        ];
        for (transport, prefix) in known {
            if let Some(rest) = s.strip_prefix(prefix) {
                if rest.is_empty() {
                    return Err(ImageRefError::Empty(input.to_string()));
                }
                return Ok(Self {
                    transport,
                    name: rest.to_string(),
                });
            }
        }
        if s.is_empty() {
            return Err(ImageRefError::Empty(input.to_string()));
        }
        // `host:port/repo` and `host/repo:tag` are registry names; `word:rest`
        // where `word` has no dot or slash is a transport we do not know.
        if let Some((head, rest)) = s.split_once(':') {
            let host_port = rest.split('/').next().is_some_and(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && rest.contains('/')
            });
            if !head.contains('/') && !head.contains('.') && !host_port {
                return Err(ImageRefError::UnknownTransport {
                    input: input.to_string(),
                    transport: head.to_string(),
                });
            }
        }
        Ok(Self {
            transport: Transport::Registry,
            name: s.to_string(),
        })
    }

    /// Parses the `container-image-reference` value of an `.origin` file.
    pub fn from_origin(value: &str) -> Result<Self, ImageRefError> {
        if let Some(rest) = value.strip_prefix(ORIGIN_IMAGE_PREFIX) {
            Self::parse(rest)
        } else if let Some(rest) = value.strip_prefix(ORIGIN_REGISTRY_PREFIX) {
            // Checked like any registry reference: a name, and nothing
            // that reads as another transport (found by fuzzing: an empty
            // name was accepted, and written back as `docker://`, which
            // no longer parses).
            Self::parse(&format!("{}{rest}", Transport::Registry.prefix()))
        } else {
            Self::parse(value)
        }
    }

    /// The value written to an `.origin` file.
    pub fn to_origin(&self) -> String {
        format!("{ORIGIN_IMAGE_PREFIX}{self}")
    }

    /// For `containers-storage:[driver@root+runroot]name`: the store root
    /// and the bare name. `None` for other forms.
    pub fn containers_storage_store(&self) -> Option<(std::path::PathBuf, String)> {
        if self.transport != Transport::ContainersStorage {
            return None;
        }
        let rest = self.name.strip_prefix('[')?;
        let (spec, name) = rest.split_once(']')?;
        let spec = spec.split_once('@').map(|(_, s)| s).unwrap_or(spec);
        let root = spec.split('+').next().filter(|r| !r.is_empty())?;
        Some((std::path::PathBuf::from(root), name.to_string()))
    }

    /// The registry host of a `docker://` reference, if any.
    pub fn registry_host(&self) -> Option<&str> {
        (self.transport == Transport::Registry)
            .then(|| self.name.split('/').next())
            .flatten()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.transport.prefix(), self.name)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports() {
        let r = ImageRef::parse("docker://127.0.0.1:5000/os:v1").unwrap();
        assert_eq!(r.transport, Transport::Registry);
        assert_eq!(r.name, "127.0.0.1:5000/os:v1");
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/os:v1");
        assert_eq!(r.registry_host(), Some("127.0.0.1:5000"));
        let r = ImageRef::parse("oci:/tmp/x:v1").unwrap();
        assert_eq!(
            (r.transport, r.name.as_str()),
            (Transport::Oci, "/tmp/x:v1")
        );
        let r = ImageRef::parse("oci-archive:/tmp/x.tar").unwrap();
        assert_eq!(r.transport, Transport::OciArchive);
        let r = ImageRef::parse("containers-storage:localhost/os").unwrap();
        assert_eq!(r.transport, Transport::ContainersStorage);
        assert!(ImageRef::from_origin("ostree-unverified-registry:").is_err());
        assert_eq!(
            ImageRef::from_origin("ostree-unverified-registry:quay.io/a/b:1")
                .unwrap()
                .to_string(),
            "docker://quay.io/a/b:1"
        );
        let r = ImageRef::parse("quay.io/org/img:tag").unwrap();
        assert_eq!(r.transport, Transport::Registry);
        let r = ImageRef::parse("localhost:5000/img").unwrap();
        assert_eq!(r.transport, Transport::Registry);
    }

    #[test]
    fn rejects_unknown_transport_and_empty() {
        let e = ImageRef::parse("ftp:/x").unwrap_err();
        assert!(
            matches!(e, ImageRefError::UnknownTransport { ref transport, .. } if transport == "ftp")
        );
        assert!(e.to_string().contains("unknown transport"));
        assert!(matches!(
            ImageRef::parse("oci:"),
            Err(ImageRefError::Empty(_))
        ));
        assert!(matches!(ImageRef::parse(""), Err(ImageRefError::Empty(_))));
    }

    #[test]
    fn containers_storage_store() {
        let r =
            ImageRef::parse("containers-storage:[overlay@/s/root+/s/run]localhost/os:v1").unwrap();
        assert_eq!(
            r.containers_storage_store(),
            Some((
                std::path::PathBuf::from("/s/root"),
                "localhost/os:v1".to_string()
            ))
        );
        let r = ImageRef::parse("containers-storage:localhost/os").unwrap();
        assert_eq!(r.containers_storage_store(), None);
    }

    #[test]
    fn origin_round_trip() {
        let r = ImageRef::parse("docker://quay.io/a/b:1").unwrap();
        let o = r.to_origin();
        assert_eq!(o, "ostree-unverified-image:docker://quay.io/a/b:1");
        assert_eq!(ImageRef::from_origin(&o).unwrap(), r);
        let r2 = ImageRef::from_origin("ostree-unverified-registry:quay.io/a/b:1").unwrap();
        assert_eq!(r2, r);
    }
}
