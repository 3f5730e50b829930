//! The ostree bare repository under `ostree/repo` (libostree 2022.7).
//!
//! Images become a merge commit ([`commit`]), kept by the ref
//! `ostree/container/image/<escaped image reference>`, and one commit per
//! layer ([`layers`]) under `ostree/container/blob/<escaped blob digest>`:
//! the layout released bootc (ostree-ext) reads. Content objects are
//! reflinks of composefs objects ([`objects`]). Everything else (dirtree,
//! dirmeta, commit objects, refs, transactions, prune) is libostree's.

pub mod checksum_cache;
pub mod commit;
mod content;
pub mod layers;
pub mod objects;

use anyhow::{Context, Result, anyhow, bail};
use ostree::{gio, glib};

use crate::source::imgref::ImageRef;
use crate::sysroot::Sysroot;

/// `ostree/repo`: the bare repository.
pub const REPO_DIR: &str = "ostree/repo";
/// Prefix of the refs that keep image commits.
pub const IMAGE_REF_PREFIX: &str = "ostree/container/image/";

/// Escapes `s` for a ref below a prefix as ostree-ext (bootc) does:
/// ASCII letters, digits and `-` stay; `/` stays when it follows a letter
/// or digit and is not the last character; `_` becomes `__`; every other
/// character `_XX_` (its code point in hex, at least two digits).
pub fn escape_ref(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    let mut prev_alnum = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let last = chars.peek().is_none();
        if c.is_ascii_alphanumeric() || c == '-' || (c == '/' && prev_alnum && !last) {
            out.push(c);
        } else if c == '_' {
            out.push_str("__");
        } else {
            out.push_str(&format!("_{:02X}_", c as u32));
        }
        prev_alnum = c.is_ascii_alphanumeric();
    }
    out
}

/// Reverses [`escape_ref`], and the escaping of older unistore versions
/// (which escaped every `/` and `-`): `None` for a string neither wrote.
pub fn unescape_ref(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '_' {
            if let Some(r) = rest.strip_prefix("__") {
                out.push('_');
                rest = r;
                continue;
            }
            let end = rest[1..].find('_')? + 1;
            let code = u32::from_str_radix(&rest[1..end], 16).ok()?;
            out.push(char::from_u32(code)?);
            rest = &rest[end + 1..];
        } else if c.is_ascii_alphanumeric() || c == '-' || c == '/' {
            out.push(c);
            rest = &rest[1..];
        } else {
            return None;
        }
    }
    Some(out)
}

/// The ref that keeps the commit of `image`.
pub fn image_ref(image: &ImageRef) -> String {
    format!("{IMAGE_REF_PREFIX}{}", escape_ref(&image.to_string()))
}

/// Opens the bare repository of a root; any other mode is refused.
pub fn open(sysroot: &Sysroot) -> Result<ostree::Repo> {
    let path = sysroot.join(REPO_DIR);
    let repo = ostree::Repo::new_for_path(&path);
    repo.open(gio::Cancellable::NONE)
        .map_err(|e| anyhow!("opening the ostree repository {}: {e}", path.display()))?;
    check_mode(&repo, &path)?;
    Ok(repo)
}

/// Refuses a repository that is not in `bare` mode.
pub fn check_mode(repo: &ostree::Repo, path: &std::path::Path) -> Result<()> {
    let mode = repo.mode();
    if mode != ostree::RepoMode::Bare {
        bail!(
            "the ostree repository {} is in mode {}, not bare: unistore manages only bare repositories, as bootc's hosts have",
            path.display(),
            mode_name(mode)
        );
    }
    Ok(())
}

fn mode_name(m: ostree::RepoMode) -> &'static str {
    match m {
        ostree::RepoMode::Bare => "bare",
        ostree::RepoMode::Archive => "archive",
        ostree::RepoMode::BareUser => "bare-user",
        ostree::RepoMode::BareUserOnly => "bare-user-only",
        ostree::RepoMode::BareSplitXattrs => "bare-split-xattrs",
        _ => "unknown",
    }
}

/// What a commit says about its image.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// `ostree.manifest-digest`.
    pub manifest_digest: Option<String>,
    /// `ostree.container.image-config`, parsed.
    pub config: Option<serde_json::Value>,
    /// `ostree.manifest`, parsed (`None` if absent or not JSON).
    pub manifest: Option<serde_json::Value>,
    /// The commit's timestamp (the image's creation time).
    pub timestamp: u64,
    /// Synthesized from the host's composefs repository: the image's
    /// manifest digest there (`None`: a classic commit).
    pub composefs_manifest: Option<String>,
}

impl CommitInfo {
    /// `org.opencontainers.image.version` of the config.
    pub fn version(&self) -> Option<String> {
        self.config
            .as_ref()?
            .pointer("/config/Labels/org.opencontainers.image.version")?
            .as_str()
            .map(str::to_string)
    }
    /// The config's architecture.
    pub fn architecture(&self) -> Option<String> {
        Some(
            self.config
                .as_ref()?
                .get("architecture")?
                .as_str()?
                .to_string(),
        )
    }
    /// The config's `created`.
    pub fn created(&self) -> Option<String> {
        Some(self.config.as_ref()?.get("created")?.as_str()?.to_string())
    }
}

/// Reads a commit's image metadata.
pub fn commit_info(repo: &ostree::Repo, checksum: &str) -> Result<CommitInfo> {
    let (commit, _) = repo
        .load_commit(checksum)
        .map_err(|e| anyhow!("loading commit {checksum}: {e}"))?;
    commit_info_of(&commit, checksum)
}

/// The image metadata of a commit object (the GVariant `(a{sv}aya(say)sstayay)`
/// libostree loads), named `checksum` in errors.
pub fn commit_info_of(commit: &glib::Variant, checksum: &str) -> Result<CommitInfo> {
    anyhow::ensure!(
        commit.type_().as_str() == "(a{sv}aya(say)sstayay)",
        "commit {checksum}: not a commit object"
    );
    let meta = glib::VariantDict::new(Some(&commit.child_value(0)));
    let get = |k: &str| meta.lookup::<String>(k).ok().flatten();
    let config = get("ostree.container.image-config")
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .with_context(|| format!("commit {checksum}: ostree.container.image-config is not JSON"))?;
    Ok(CommitInfo {
        manifest_digest: get("ostree.manifest-digest"),
        config,
        manifest: get("ostree.manifest").and_then(|m| serde_json::from_str(&m).ok()),
        timestamp: ostree::commit_get_timestamp(commit),
        composefs_manifest: meta
            .lookup::<bool>("ostree-ext.composefs-synthesized")
            .ok()
            .flatten()
            .unwrap_or(false)
            .then(|| get(commit::COMPOSEFS_MANIFEST_KEY))
            .flatten(),
    })
}

/// Whether the repository is bound to the host's composefs repository
/// (`[composefs] unified=true` in its config, bootc's proposed marker).
pub fn is_bound(repo: &ostree::Repo) -> bool {
    let c = repo.config();
    c.boolean("composefs", "unified")
        .or_else(|_| c.string("composefs", "unified").map(|s| s == "true"))
        .unwrap_or(false)
}

/// Records the binding in the repository's config (libostree replaces
/// the file atomically).
pub fn bind(repo: &ostree::Repo) -> Result<()> {
    let c = repo.copy_config();
    c.set_boolean("composefs", "unified", true);
    repo.write_config(&c)
        .map_err(|e| anyhow!("writing the ostree repository's config: {e}"))?;
    repo.reload_config(gio::Cancellable::NONE)
        .map_err(|e| anyhow!("reloading the ostree repository's config: {e}"))
}

/// Every ref below [`IMAGE_REF_PREFIX`] with its commit.
pub fn image_refs(repo: &ostree::Repo) -> Result<Vec<(String, String)>> {
    refs_below(repo, IMAGE_REF_PREFIX)
}

/// Every ref below `prefix` (ending in `/`), with its commit, sorted.
pub fn refs_below(repo: &ostree::Repo, prefix: &str) -> Result<Vec<(String, String)>> {
    let refs = repo
        .list_refs(Some(prefix.trim_end_matches('/')), gio::Cancellable::NONE)
        .map_err(|e| anyhow!("listing refs: {e}"))?;
    let mut out: Vec<(String, String)> = refs
        .into_iter()
        .map(|(k, v)| {
            let k = k.to_string();
            let k = if k.starts_with(prefix) {
                k
            } else {
                format!("{prefix}{k}")
            };
            (k, v.to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_ostree_ext() {
        // ostree-ext's own example (refescape.rs), and what its
        // `ref_for_image` gives for the references of our hosts.
        assert_eq!(
            escape_ref("registry:quay.io/coreos/fedora:latest"),
            "registry_3A_quay_2E_io/coreos/fedora_3A_latest"
        );
        assert_eq!(
            escape_ref("docker://127.0.0.1:42091/probe/os:v1"),
            "docker_3A__2F__2F_127_2E_0_2E_0_2E_1_3A_42091/probe/os_3A_v1"
        );
        assert_eq!(
            escape_ref("docker://quay.io/my_org/os-base:latest"),
            "docker_3A__2F__2F_quay_2E_io/my__org/os-base_3A_latest"
        );
        assert_eq!(escape_ref("oci:/tmp/x:t"), "oci_3A__2F_tmp/x_3A_t");
        // `/` after a non-alphanumeric, or last, is escaped.
        assert_eq!(escape_ref("a-/b/"), "a-_2F_b_2F_");
        assert_eq!(escape_ref("a_b"), "a__b");
    }

    #[test]
    fn unescaping_reads_both_spellings() {
        for s in [
            "docker://127.0.0.1:42091/probe/os:v1",
            "oci:/tmp/x:t",
            "a_b-c//d/",
            "containers-storage:[overlay@/a+/b]x",
        ] {
            assert_eq!(unescape_ref(&escape_ref(s)).as_deref(), Some(s));
        }
        // What unistore wrote before (every `/`, `-` escaped).
        assert_eq!(
            unescape_ref("docker_3A__2F__2F_127_2E_0_2E_0_2E_1_3A_42091_2F_probe_2F_os_3A_v1")
                .as_deref(),
            Some("docker://127.0.0.1:42091/probe/os:v1")
        );
        assert_eq!(unescape_ref("bad_zz_"), None);
        assert_eq!(unescape_ref("a.b"), None);
        assert_eq!(unescape_ref("open_3A"), None);
    }
}
