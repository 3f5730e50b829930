//! A podman configuration that can run containers on this kind of host.

use super::cmd::run;
use super::mounts::unmount_all_under;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `containers.conf` that [`podman_env`] writes.
///
/// crun fails on this host's hybrid cgroups and root lacks `CAP_SYS_RESOURCE`, hence runc,
/// cgroupfs and ulimits below the hard limits; networking is disabled.
pub const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

/// Write `dir/containers.conf` and return the environment to run podman with, e.g.
/// `podman --root R --runroot RR run --rm --network=none IMG cmd`.
///
/// # Panics
/// If `dir` cannot be created or written: this is a test fixture.
pub fn podman_env(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
    let conf = dir.join("containers.conf");
    std::fs::write(&conf, CONTAINERS_CONF).unwrap_or_else(|e| panic!("writing {conf:?}: {e}"));
    vec![(
        "CONTAINERS_CONF".to_string(),
        conf.to_string_lossy().into_owned(),
    )]
}

/// A private podman store (`--root`, `--runroot`) configured by [`podman_env`]; dropping it
/// unmounts whatever podman left mounted below it and removes it.
#[derive(Debug)]
pub struct PodmanStore {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl PodmanStore {
    /// A new store in a fresh directory under `/var/tmp`.
    pub fn new() -> Result<Self> {
        Self::new_in(Path::new("/var/tmp"))
    }

    /// A new store in a fresh directory under `parent` (e.g. a [`super::LoopFs`] mount;
    /// drop the store before the filesystem).
    pub fn new_in(parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("unistore-podman-")
            .tempdir_in(parent)?;
        let env = podman_env(&dir.path().join("conf"));
        Ok(Self { dir, env })
    }

    /// The graph root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The run root (`--runroot`).
    pub fn runroot(&self) -> PathBuf {
        self.dir.path().join("runroot")
    }

    /// The environment podman runs with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Add (or replace) an environment variable for podman, e.g.
    /// `CONTAINERS_REGISTRIES_CONF` from [`super::Registry::registries_conf`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// `podman --root R --runroot RR` with the environment set; add the arguments.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.root())
            .arg("--runroot")
            .arg(self.runroot())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Run podman with `args`, returning its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run(self.command().args(args))
    }

    /// The skopeo/containers-image reference of image `name` in this store.
    pub fn storage_ref(&self, name: &str) -> String {
        format!(
            "containers-storage:[overlay@{}+{}]{name}",
            self.root().display(),
            self.runroot().display()
        )
    }

    /// Copy `oci:<oci_dir>:<tag>` into the store as `name` (e.g. `localhost/test:1`).
    ///
    /// `podman pull oci:DIR` is avoided on purpose: podman 4.3 names the image after DIR
    /// and fails when DIR has capital letters (as random temp dirs do).
    pub fn import_oci(&self, oci_dir: &Path, tag: &str, name: &str) -> Result<()> {
        run(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:{tag}", oci_dir.display()))
            .arg(self.storage_ref(name)))?;
        Ok(())
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        unmount_all_under(self.dir.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_conf() {
        let td = tempfile::tempdir().unwrap();
        let env = podman_env(&td.path().join("sub"));
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].0, "CONTAINERS_CONF");
        let text = std::fs::read_to_string(&env[0].1).unwrap();
        assert!(text.contains("runtime = \"runc\""));
        assert!(text.contains("netns = \"none\""));
    }
}
