//! The ostree bare repository under `ostree/repo` (libostree 2022.7).
//!
//! Images become one flattened commit each ([`commit`]), kept by the ref
//! `ostree/container/image/<escaped image reference>`; content objects are
//! reflinks of composefs objects ([`objects`]). Everything else (dirtree,
//! dirmeta, commit objects, refs, transactions, prune) is libostree's.

pub mod checksum_cache;
pub mod commit;
pub mod objects;

use anyhow::{Context, Result, anyhow, bail};
use ostree::{gio, glib};

use crate::source::imgref::ImageRef;
use crate::sysroot::Sysroot;

/// `ostree/repo`: the bare repository.
pub const REPO_DIR: &str = "ostree/repo";
/// Prefix of the refs that keep image commits.
pub const IMAGE_REF_PREFIX: &str = "ostree/container/image/";

/// Escapes `s` for a ref component as bootc does: ASCII letters and digits
/// stay, `_` becomes `__`, every other character `_XX_` (its code in hex).
pub fn escape_ref(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if c == '_' {
            out.push_str("__");
        } else {
            out.push_str(&format!("_{:02X}_", c as u32));
        }
    }
    out
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
    let refs = repo
        .list_refs(
            Some(IMAGE_REF_PREFIX.trim_end_matches('/')),
            gio::Cancellable::NONE,
        )
        .map_err(|e| anyhow!("listing refs: {e}"))?;
    let mut out: Vec<(String, String)> = refs
        .into_iter()
        .map(|(k, v)| {
            let k = k.to_string();
            let k = if k.starts_with(IMAGE_REF_PREFIX) {
                k
            } else {
                format!("{IMAGE_REF_PREFIX}{k}")
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
    fn escaping_follows_bootc() {
        assert_eq!(escape_ref("docker://"), "docker_3A__2F__2F_");
        assert_eq!(escape_ref("a_b"), "a__b");
        assert_eq!(
            escape_ref("docker://127.0.0.1:5000/os:v1"),
            "docker_3A__2F__2F_127_2E_0_2E_0_2E_1_3A_5000_2F_os_3A_v1"
        );
    }
}
