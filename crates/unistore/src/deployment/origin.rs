//! The `<id>.origin` file of a deployment (INI), and the legacy `.imginfo`.
//!
//! ```text
//! [origin]
//! container-image-reference=ostree-unverified-image:<transport>:<name>
//! [boot]
//! boot_type=bls
//! digest=<hex sha256 of vmlinuz followed by initrd>
//! [image]
//! manifest_digest=sha256:<hex>
//! ```

use anyhow::{Context, Result, anyhow, ensure};
use ini::Ini;

use crate::source::imgref::ImageRef;

/// The parsed content of an `.origin` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The image this deployment follows (upgrade fetches it again).
    pub image: ImageRef,
    /// `bls` for Type 1 entries.
    pub boot_type: String,
    /// Hex SHA-256 of the kernel followed by the initrd.
    pub boot_digest: Option<String>,
    /// The manifest digest; absent in origins written by old versions.
    pub manifest_digest: Option<String>,
    /// The registry's manifest digest when it differs from
    /// `manifest_digest` (an image in Docker's format, held in composefs as
    /// its OCI conversion): the image's identity for people and upgrades.
    pub registry_digest: Option<String>,
}

impl Origin {
    /// Parses the text of an origin file.
    pub fn parse(text: &str) -> Result<Self> {
        let ini = Ini::load_from_str(text).map_err(|e| anyhow!("not a valid INI file: {e}"))?;
        let get = |sec: &str, key: &str| ini.get_from(Some(sec), key).map(str::to_string);
        let image = get("origin", "container-image-reference")
            .ok_or_else(|| anyhow!("missing [origin] container-image-reference"))?;
        let image = ImageRef::from_origin(&image)
            .with_context(|| format!("bad container-image-reference {image:?}"))?;
        let manifest_digest = get("image", "manifest_digest");
        if let Some(d) = &manifest_digest {
            validate_digest(d).context("bad [image] manifest_digest")?;
        }
        let registry_digest = get("image", "registry_digest");
        if let Some(d) = &registry_digest {
            validate_digest(d).context("bad [image] registry_digest")?;
        }
        let boot_type = get("boot", "boot_type").unwrap_or_else(|| "bls".into());
        ensure!(
            !boot_type.is_empty()
                && boot_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad [boot] boot_type {boot_type:?}"
        );
        let boot_digest = get("boot", "digest");
        if let Some(d) = &boot_digest {
            ensure!(
                d.bytes().all(|b| b.is_ascii_hexdigit()),
                "bad [boot] digest {d:?}"
            );
        }
        Ok(Self {
            registry_digest,
            image,
            boot_type,
            boot_digest,
            manifest_digest,
        })
    }

    /// Renders the file.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "[origin]\ncontainer-image-reference={}\n\n[boot]\nboot_type={}\n",
            ini_escape(&self.image.to_origin()),
            ini_escape(&self.boot_type)
        );
        if let Some(d) = &self.boot_digest {
            s.push_str(&format!("digest={d}\n"));
        }
        if let Some(d) = &self.manifest_digest {
            s.push_str(&format!("\n[image]\nmanifest_digest={d}\n"));
            if let Some(r) = &self.registry_digest {
                s.push_str(&format!("registry_digest={r}\n"));
            }
        }
        s
    }

    /// The digest that names the image for people and upgrade checks: the
    /// registry's, else the manifest's.
    pub fn identity_digest(&self) -> Option<&str> {
        self.registry_digest
            .as_deref()
            .or(self.manifest_digest.as_deref())
    }
}

/// Checks `sha256:<64 hex>`.
pub fn validate_digest(d: &str) -> Result<()> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("{d:?} is not a sha256 digest"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(anyhow!("{d:?} is not a sha256 digest"));
    }
    Ok(())
}

/// Escapes a value for an INI file the way `rust-ini` and GLib's key
/// files read escapes back (found by fuzzing: a reference with a
/// backslash did not read back the same).
fn ini_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            ';' => out.push_str("\\;"),
            '#' => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out
}

/// What the legacy `<id>.imginfo` JSON (`{config, manifest}`, written by old
/// versions) tells about the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImgInfoRef {
    /// A manifest digest (some writers stored it as a string).
    Manifest(String),
    /// The config digest named by the stored manifest object; the manifest is
    /// then found in the repository by its config.
    Config(String),
}

/// Reads a legacy `.imginfo` file.
pub fn parse_imginfo(text: &str) -> Result<ImgInfoRef> {
    let v: serde_json::Value = serde_json::from_str(text).context("imginfo is not JSON")?;
    let manifest = v
        .get("manifest")
        .ok_or_else(|| anyhow!("imginfo has no manifest"))?;
    if let Some(d) = manifest.as_str() {
        validate_digest(d)?;
        return Ok(ImgInfoRef::Manifest(d.to_string()));
    }
    let d = manifest
        .pointer("/config/digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| anyhow!("imginfo manifest names no config digest"))?;
    validate_digest(d)?;
    Ok(ImgInfoRef::Config(d.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip() {
        let o = Origin {
            image: ImageRef::parse("docker://127.0.0.1:5000/os:v1").unwrap(),
            boot_type: "bls".into(),
            boot_digest: Some("ab".repeat(32)),
            manifest_digest: Some(D.into()),
            registry_digest: None,
        };
        let t = o.to_text();
        assert!(t.contains(
            "container-image-reference=ostree-unverified-image:docker://127.0.0.1:5000/os:v1"
        ));
        assert_eq!(Origin::parse(&t).unwrap(), o);
    }

    #[test]
    fn broken_files_are_errors() {
        assert!(
            Origin::parse("[origin]\n")
                .unwrap_err()
                .to_string()
                .contains("container-image-reference")
        );
        let bad = "[origin]\ncontainer-image-reference=ostree-unverified-image:docker://x/y\n[image]\nmanifest_digest=md5:1\n";
        assert!(Origin::parse(bad).is_err());
        let no_digest =
            "[origin]\ncontainer-image-reference=ostree-unverified-image:docker://x/y\n";
        assert_eq!(Origin::parse(no_digest).unwrap().manifest_digest, None);
    }

    #[test]
    fn imginfo_fallback() {
        let t = format!(r#"{{"config": {{}}, "manifest": "{D}"}}"#);
        assert_eq!(parse_imginfo(&t).unwrap(), ImgInfoRef::Manifest(D.into()));
        let t = format!(r#"{{"config": {{}}, "manifest": {{"config": {{"digest": "{D}"}}}}}}"#);
        assert_eq!(parse_imginfo(&t).unwrap(), ImgInfoRef::Config(D.into()));
        assert!(parse_imginfo("{}").is_err());
    }
}
