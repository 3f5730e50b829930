//! How to reach registries: the settings every peer that fetches an image
//! gets alike (the image proxy, skopeo, podman), and how long a silent
//! source is waited for.

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct FetchConfig {
    /// A containers `registries.conf` to use instead of the system one (for
    /// example one that marks a loopback registry insecure). The CLI takes
    /// it from `CONTAINERS_REGISTRIES_CONF`, which Debian 12's skopeo does
    /// not read by itself.
    pub registries_conf: Option<std::path::PathBuf>,
    /// The registry credentials (`auth.json`) to use; `None`: the
    /// containers tools' default locations. The CLI picks it (`--authfile`,
    /// `REGISTRY_AUTH_FILE`, bootc's `/run|/etc|/usr/lib/ostree/auth.json`)
    /// and every peer that reaches a registry gets the same: the image
    /// proxy, skopeo and podman (the host store's pulls).
    pub authfile: Option<std::path::PathBuf>,
    /// A `containers-policy.json` for the peers to apply instead of the
    /// host's (`--signature-policy`).
    pub signature_policy: Option<std::path::PathBuf>,
    /// Refuse a policy that accepts anything, and images the policy
    /// rejects, before writing (`--enforce-container-sigpolicy`).
    pub enforce_sigpolicy: bool,
    /// Skip the boot EROFS image (ostree hosts boot from their ostree
    /// deployments; the composefs repository only backs their objects).
    pub no_boot_image: bool,
    /// Give up a pull that has received nothing for this long (a registry
    /// that stops sending in the middle of a blob); `None`:
    /// [`DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Option<std::time::Duration>,
    /// An ostree repository's `objects` directory whose file contents a
    /// zstd:chunked partial pull may take besides the composefs
    /// repository's (an ostree host's own repository: a bound host's first
    /// upgrade finds its files there only).
    pub ostree_objects: Option<std::sync::Arc<cap_std_ext::cap_std::fs::Dir>>,
    /// Fetch zstd:chunked layers whole, never partially (the CLI:
    /// `UNISTORE_WHOLE_LAYERS=1`; benchmarks and comparisons).
    pub whole_layers: bool,
}

impl FetchConfig {
    /// `skopeo` with this configuration's global options
    /// (`--registries-conf`, `--policy`).
    pub fn skopeo(&self) -> std::process::Command {
        let mut c = std::process::Command::new("skopeo");
        if let Some(conf) = &self.registries_conf {
            c.arg("--registries-conf").arg(conf);
        }
        if let Some(p) = &self.signature_policy {
            c.arg("--policy").arg(p);
        }
        c
    }

    pub(crate) fn proxy_config(&self) -> Option<containers_image_proxy::ImageProxyConfig> {
        if self.registries_conf.is_none()
            && self.authfile.is_none()
            && self.signature_policy.is_none()
        {
            return None;
        }
        let mut config = containers_image_proxy::ImageProxyConfig::default();
        if self.registries_conf.is_some() || self.signature_policy.is_some() {
            config.skopeo_cmd = Some(self.skopeo());
        }
        config.authfile = self.authfile.clone();
        Some(config)
    }
}

/// How long a pull may receive nothing before it is given up.
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
