//! Install configuration: `[install]` tables in TOML files shipped by the
//! image (`/usr/lib/bootc/install/*.toml`, then `/usr/local/lib`, `/etc`,
//! `/run`), merged in that order and in file-name order.

use std::ffi::OsStr;

use anyhow::{Context, Result};
use composefs::generic_tree::{Inode, LeafContent};
use serde::{Deserialize, Serialize};

use crate::stores::composefs_repo::{ObjectId, Repo};

/// Where install config files live, in merge order.
pub const CONFIG_DIRS: [&str; 4] = [
    "/usr/lib/bootc/install",
    "/usr/local/lib/bootc/install",
    "/etc/bootc/install",
    "/run/bootc/install",
];

/// How an image's files are shared with containers-storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnifiedMode {
    /// No containers-storage copy.
    #[default]
    Disabled,
    /// Shared by reflinks; fails where the filesystem cannot reflink.
    Enabled,
    /// Shared by reflinks where possible, else hardlinks or copies.
    EnabledWithCopy,
}

impl UnifiedMode {
    /// What to do when stores cannot share extents; `None` for `disabled`.
    pub fn policy(self) -> Option<crate::fs::reflink::Policy> {
        use crate::fs::reflink::Policy;
        match self {
            Self::Disabled => None,
            Self::Enabled => Some(Policy::ReflinkOnly),
            Self::EnabledWithCopy => Some(Policy::ReflinkOrCopy),
        }
    }

    /// Fails with a clear message when this mode needs reflinks and `probe`
    /// says the filesystem of `dir` has none.
    pub fn require_reflinks(
        self,
        probe: &crate::fs::reflink::ReflinkProbe,
        dir: &std::path::Path,
    ) -> Result<()> {
        if self == Self::Enabled && !probe.supported {
            anyhow::bail!(
                "unified storage mode \"enabled\" needs reflinks, but the filesystem of {} ({}) does not support reflinks; \
                 use \"enabled-with-copy\" to fall back to copies",
                dir.display(),
                probe.describe()
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for UnifiedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnifiedMode::Disabled => "disabled",
            UnifiedMode::Enabled => "enabled",
            UnifiedMode::EnabledWithCopy => "enabled-with-copy",
        })
    }
}

impl std::str::FromStr for UnifiedMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disabled" => Ok(Self::Disabled),
            "enabled" => Ok(Self::Enabled),
            "enabled-with-copy" => Ok(Self::EnabledWithCopy),
            _ => anyhow::bail!(
                "unknown unified storage mode {s:?} (expected disabled, enabled or enabled-with-copy)"
            ),
        }
    }
}

/// One file's content.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    install: Option<InstallTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct InstallTable {
    kargs: Option<Vec<String>>,
    #[serde(alias = "match_architectures")]
    match_architectures: Option<Vec<String>>,
    storage: Option<StorageTable>,
    // bootc keys that apply to block-device installs; accepted and ignored.
    root_fs_type: Option<toml::Value>,
    block: Option<toml::Value>,
    filesystem: Option<toml::Value>,
    stateroot: Option<toml::Value>,
    boot: Option<toml::Value>,
    ostree: Option<toml::Value>,
    bootupd: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageTable {
    unified: Option<UnifiedMode>,
}

/// The merged configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallConfig {
    /// Kernel arguments, in order.
    pub kargs: Vec<String>,
    /// `[install.storage] unified`, if any file set it.
    pub unified: Option<UnifiedMode>,
    /// The root filesystem `install to-disk` makes without `--filesystem`:
    /// `[install.filesystem.root] type` (bootc), or the older
    /// `root-fs-type`.
    pub root_fs_type: Option<String>,
}

impl InstallConfig {
    /// Merges one file's text into this config. `arch` is the image's
    /// architecture, for `match-architectures`.
    pub fn merge_text(&mut self, name: &str, text: &str, arch: &str) -> Result<()> {
        let f: File = toml::from_str(text).with_context(|| format!("install config {name}"))?;
        let Some(t) = f.install else { return Ok(()) };
        if let Some(archs) = &t.match_architectures
            && !archs
                .iter()
                .any(|a| a == arch || (a == "x86_64" && arch == "amd64"))
        {
            return Ok(());
        }
        let fs_type = t
            .filesystem
            .as_ref()
            .and_then(|f| f.get("root"))
            .and_then(|r| r.get("type"))
            .or(t.root_fs_type.as_ref());
        if let Some(v) = fs_type {
            let Some(v) = v.as_str() else {
                anyhow::bail!("install config {name}: the root filesystem type must be a string");
            };
            self.root_fs_type = Some(v.to_string());
        }
        let _ = (&t.block, &t.stateroot, &t.boot, &t.ostree, &t.bootupd);
        if let Some(k) = t.kargs {
            self.kargs.extend(k);
        }
        if let Some(s) = t.storage
            && let Some(u) = s.unified
        {
            self.unified = Some(u);
        }
        Ok(())
    }

    /// Reads and merges every config file of an image tree.
    pub fn from_image(
        fs: &composefs::tree::FileSystem<ObjectId>,
        repo: &Repo,
        arch: &str,
    ) -> Result<Self> {
        let mut cfg = Self::default();
        for dir in CONFIG_DIRS {
            for (path, text) in toml_files(fs, repo, dir)? {
                cfg.merge_text(&path, &text, arch)?;
            }
        }
        Ok(cfg)
    }
}

/// The `*.toml` regular files of directory `dir` of an image tree, in name
/// order: (path, text).
fn toml_files(
    fs: &composefs::tree::FileSystem<ObjectId>,
    repo: &Repo,
    dir: &str,
) -> Result<Vec<(String, String)>> {
    let root = fs.as_dir();
    let Ok(Some(d)) = root.get_directory_opt(OsStr::new(dir)) else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for (name, inode) in d.sorted_entries() {
        let name = name.to_string_lossy();
        if !name.ends_with(".toml") {
            continue;
        }
        let Inode::Leaf(id, _) = inode else { continue };
        let LeafContent::Regular(f) = &fs.leaves[id.0].content else {
            continue;
        };
        let data = composefs::fs::read_file(f, repo)?;
        out.push((
            format!("{dir}/{name}"),
            String::from_utf8_lossy(&data).into_owned(),
        ));
    }
    Ok(out)
}

/// Where kernel argument files live (`kargs = [...]`, optional
/// `match-architectures`), in file-name order.
pub const KARGS_D: &str = "/usr/lib/bootc/kargs.d";

/// One `kargs.d` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KargsFile {
    #[serde(default)]
    kargs: Vec<String>,
    #[serde(alias = "match_architectures")]
    match_architectures: Option<Vec<String>>,
}

/// Parses one `kargs.d` file; no kargs when it is for other architectures.
pub fn parse_kargs_d(name: &str, text: &str, arch: &str) -> Result<Vec<String>> {
    let f: KargsFile = toml::from_str(text).with_context(|| format!("kargs file {name}"))?;
    if let Some(archs) = &f.match_architectures
        && !archs
            .iter()
            .any(|a| a == arch || (a == "x86_64" && arch == "amd64"))
    {
        return Ok(vec![]);
    }
    Ok(f.kargs)
}

/// The kernel arguments an image asks for: its install config's `kargs`,
/// then those of its `kargs.d` files.
pub fn image_kargs(
    fs: &composefs::tree::FileSystem<ObjectId>,
    repo: &Repo,
    arch: &str,
) -> Result<Vec<String>> {
    let mut kargs = InstallConfig::from_image(fs, repo, arch)?.kargs;
    for (path, text) in toml_files(fs, repo, KARGS_D)? {
        kargs.extend(parse_kargs_d(&path, &text, arch)?);
    }
    Ok(kargs)
}

/// bootc's kargs.d rule for an upgrade: the booted entry's arguments, less
/// those the old image asked for and the new one does not, plus those the
/// new image asks for that the old one did not (arguments the user added
/// stay).
pub fn upgrade_kargs(booted: &[String], old_image: &[String], new_image: &[String]) -> Vec<String> {
    let mut out: Vec<String> = booted
        .iter()
        .filter(|k| !old_image.contains(k) || new_image.contains(k))
        .cloned()
        .collect();
    for k in new_image {
        if !old_image.contains(k) && !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn kargs_d_and_upgrade_diff() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_kargs_d("a", "kargs = [\"x\", \"y=1\"]\n", "amd64").unwrap(),
            k(&["x", "y=1"])
        );
        assert!(
            parse_kargs_d(
                "b",
                "kargs = [\"x\"]\nmatch-architectures = [\"aarch64\"]\n",
                "amd64"
            )
            .unwrap()
            .is_empty()
        );
        assert!(parse_kargs_d("c", "karg = []\n", "amd64").is_err());
        assert_eq!(
            upgrade_kargs(
                &k(&["quiet", "img=1", "user=1"]),
                &k(&["quiet", "img=1"]),
                &k(&["quiet", "img=2", "new"])
            ),
            k(&["quiet", "user=1", "img=2", "new"])
        );
    }

    use super::*;

    #[test]
    fn merges_in_order() {
        let mut c = InstallConfig::default();
        c.merge_text(
            "a",
            "[install]\nkargs = [\"a=1\"]\n[install.storage]\nunified = \"enabled\"\n",
            "amd64",
        )
        .unwrap();
        c.merge_text("b", "[install]\nkargs = [\"b\"]\nroot-fs-type = \"xfs\"\n[install.storage]\nunified = \"enabled-with-copy\"\n", "amd64")
            .unwrap();
        c.merge_text(
            "c",
            "[install]\nkargs = [\"c\"]\nmatch-architectures = [\"aarch64\"]\n",
            "amd64",
        )
        .unwrap();
        assert_eq!(c.kargs, vec!["a=1", "b"]);
        assert_eq!(c.unified, Some(UnifiedMode::EnabledWithCopy));
        assert_eq!(c.root_fs_type.as_deref(), Some("xfs"));
        c.merge_text(
            "d",
            "[install.filesystem.root]\ntype = \"btrfs\"\n",
            "amd64",
        )
        .unwrap();
        assert_eq!(c.root_fs_type.as_deref(), Some("btrfs"));
        assert!(
            c.clone()
                .merge_text("e", "[install.filesystem.root]\ntype = 3\n", "amd64")
                .is_err()
        );
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        let mut c = InstallConfig::default();
        let e = c
            .merge_text("x.toml", "[install]\nkarg = [\"a\"]\n", "amd64")
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("x.toml") && msg.contains("karg"), "{msg}");
        let e = c
            .merge_text(
                "y.toml",
                "[install.storage]\nunified = \"maybe\"\n",
                "amd64",
            )
            .unwrap_err();
        assert!(format!("{e:#}").contains("maybe"));
        assert_eq!(c, InstallConfig::default());
    }
}
