//! Container signature policy (`containers-policy.json`), enforced when
//! asked (bootc's `--enforce-container-sigpolicy`).
//!
//! The policy itself is applied by the peers that fetch images, given
//! `--policy`. Debian 12's image proxy (skopeo 1.9.3) does not apply it, so
//! when it is enforced a registry image is fetched with `skopeo copy` into
//! a temporary directory first ([`crate::source::pull::pull`]):
//! skopeo checks the signatures before any blob, and an image the policy
//! rejects (unsigned where a `signedBy` key is required, signed by another
//! key) fails with one clear error before the host's stores change. This
//! module refuses a policy that would accept anything.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::source::fetch_config::FetchConfig;

/// Whether a policy accepts every image: its default is
/// `insecureAcceptAnything` and no scope asks for anything else.
pub fn accepts_anything(policy: &Value) -> bool {
    let lax = |reqs: &Value| {
        reqs.as_array().is_some_and(|r| {
            !r.is_empty() && r.iter().all(|x| x["type"] == "insecureAcceptAnything")
        })
    };
    let scopes_lax = policy["transports"].as_object().is_none_or(|t| {
        t.values()
            .all(|scopes| scopes.as_object().is_none_or(|s| s.values().all(lax)))
    });
    lax(&policy["default"]) && scopes_lax
}

/// With `fetch.enforce_sigpolicy`: refuses a policy that accepts anything.
/// Does nothing otherwise.
pub fn check(fetch: &FetchConfig) -> Result<()> {
    if !fetch.enforce_sigpolicy {
        return Ok(());
    }
    let path = fetch
        .signature_policy
        .as_deref()
        .unwrap_or(Path::new("/etc/containers/policy.json"));
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--enforce-container-sigpolicy: reading the signature policy {}",
            path.display()
        )
    })?;
    let policy: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "--enforce-container-sigpolicy: {} is not a containers-policy.json",
            path.display()
        )
    })?;
    if accepts_anything(&policy) {
        bail!(
            "--enforce-container-sigpolicy: the signature policy {} accepts any image (insecureAcceptAnything); give a policy that requires signatures",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_anything_is_told_apart() {
        let any = serde_json::json!({"default": [{"type": "insecureAcceptAnything"}]});
        assert!(accepts_anything(&any));
        let scoped = serde_json::json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {"127.0.0.1:5000": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}]}}
        });
        assert!(!accepts_anything(&scoped));
        let reject = serde_json::json!({"default": [{"type": "reject"}]});
        assert!(!accepts_anything(&reject));
        assert!(!accepts_anything(&serde_json::json!({})));
    }
}
