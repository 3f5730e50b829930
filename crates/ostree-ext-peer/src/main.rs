//! Test-only peer: reads (and, through `cli`, writes) ostree repos with the
//! released `ostree-ext` 0.15.3, the library released bootc uses for ostree hosts.
//!
//! It is not part of unistore and is never shipped. It exists so tests and
//! developers can check that a repo written by unistore is one released bootc
//! reads, by calling the same library functions bootc calls:
//!
//! - `list-images --repo R`                   → `container::store::list_images`
//! - `query-image --repo R --imgref IMGREF`   → `container::store::query_image`
//! - `query-image-commit --repo R --commit C` → `container::store::query_image_commit`
//! - `prune --sysroot S`                      → `container::deploy::prune`
//! - `prepare --repo R --imgref IMGREF [--insecure]` → `ImageImporter::new` + `prepare`
//! - `cli ARGS...`                            → `ostree_ext::cli::run_from_iter`
//! - `escape-ref --prefix P --value S`        → `refescape::prefix_escape_for_ref`
//! - `image-ref --imgref IMGREF`              → the image ref name ostree-ext uses for IMGREF
//!
//! Each subcommand but `cli` prints one JSON object on stdout; when the library
//! call fails it prints the whole error chain on stderr and exits non-zero.
//!
//! It is its own cargo workspace (see its Cargo.toml): ostree-ext 0.15.3 links
//! ostree-sys 0.14, unistore links ostree-sys 0.15, and cargo allows one crate
//! that links the native `ostree-1` per resolve.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use ostree_ext::container::store::{
    self, ImageImporter, ImageProxyConfig, LayeredImageState, ManifestLayerState, PrepareResult,
};
use ostree_ext::container::{OstreeImageReference, deploy};
use ostree_ext::oci_spec::image::{Descriptor, ImageManifest};
use ostree_ext::{gio, ostree, refescape};
use serde_json::{Value, json};

/// Ref prefixes ostree-ext 0.15.3 uses (not public there; the same strings).
const IMAGE_PREFIX: &str = "ostree/container/image";
const LAYER_PREFIX: &str = "ostree/container/blob";

const USAGE: &str = "usage: ostree-ext-peer <subcommand> ...
  list-images --repo R
  query-image --repo R --imgref IMGREF
  query-image-commit --repo R --commit CHECKSUM
  prune --sysroot S
  prepare --repo R --imgref IMGREF [--insecure]
  escape-ref --prefix P --value S
  image-ref --imgref IMGREF
  cli ARGS...   (ostree-ext's own CLI, e.g. `cli container encapsulate ...`)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(Some(v)) => {
            use std::io::Write;
            let text = serde_json::to_string_pretty(&v).expect("json");
            // A closed stdout (e.g. `| head`) is not our failure; anything else is.
            match writeln!(std::io::stdout(), "{text}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: writing stdout: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Flags of the form `--name VALUE` or `--name=VALUE`, plus bare `--switch`es.
struct Flags {
    values: BTreeMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut found_switches = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}\n{USAGE}");
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if with_value.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| anyhow!("--{name} needs a value"))?,
                };
                values.insert(name.to_string(), v);
            } else if switches.contains(&name) && inline.is_none() {
                found_switches.push(name.to_string());
            } else {
                bail!("unknown flag --{name}\n{USAGE}");
            }
        }
        Ok(Self {
            values,
            switches: found_switches,
        })
    }

    fn get(&self, name: &str) -> Result<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("missing --{name}\n{USAGE}"))
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

async fn run(args: Vec<String>) -> Result<Option<Value>> {
    let Some((sub, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match sub.as_str() {
        "list-images" => {
            let f = Flags::parse(rest, &["repo"], &[])?;
            let repo = open_repo(f.get("repo")?)?;
            let images = store::list_images(&repo).context("list_images")?;
            let mut detail = Vec::new();
            for img in &images {
                let r = refescape::prefix_escape_for_ref(IMAGE_PREFIX, img)?;
                let commit = repo.resolve_rev(&r, true)?.map(|s| s.to_string());
                detail.push(json!({ "image": img, "ref": r, "commit": commit }));
            }
            Ok(Some(json!({ "images": images, "detail": detail })))
        }
        "query-image" => {
            let f = Flags::parse(rest, &["repo", "imgref"], &[])?;
            let repo = open_repo(f.get("repo")?)?;
            let imgref = parse_imgref(f.get("imgref")?)?;
            let image_ref = refescape::prefix_escape_for_ref(IMAGE_PREFIX, &imgref.imgref.to_string())?;
            let state = store::query_image(&repo, &imgref.imgref).context("query_image")?;
            Ok(Some(json!({
                "imgref": imgref.to_string(),
                "image": imgref.imgref.to_string(),
                "image_ref": image_ref,
                "present": state.is_some(),
                "state": state.as_deref().map(|s| state_json(&repo, s)).transpose()?,
            })))
        }
        "query-image-commit" => {
            let f = Flags::parse(rest, &["repo", "commit"], &[])?;
            let repo = open_repo(f.get("repo")?)?;
            let state = store::query_image_commit(&repo, f.get("commit")?)
                .context("query_image_commit")?;
            Ok(Some(json!({ "state": state_json(&repo, &state)? })))
        }
        "prune" => {
            let f = Flags::parse(rest, &["sysroot"], &[])?;
            prune(f.get("sysroot")?).await.map(Some)
        }
        "prepare" => {
            let f = Flags::parse(rest, &["repo", "imgref"], &["insecure"])?;
            let repo = open_repo(f.get("repo")?)?;
            let imgref = parse_imgref(f.get("imgref")?)?;
            prepare(&repo, &imgref, f.has("insecure")).await.map(Some)
        }
        "escape-ref" => {
            let f = Flags::parse(rest, &["prefix", "value"], &[])?;
            let (prefix, value) = (f.get("prefix")?, f.get("value")?);
            let r = refescape::prefix_escape_for_ref(prefix, value)?;
            let back = refescape::unprefix_unescape_ref(prefix, &r)?;
            Ok(Some(json!({ "prefix": prefix, "value": value, "ref": r, "unescaped": back })))
        }
        "image-ref" => {
            // ostree-ext escapes the transport-qualified image (ImageReference's
            // Display, `docker://` for the registry transport), not the whole
            // string with its signature-verification prefix.
            let f = Flags::parse(rest, &["imgref"], &[])?;
            let imgref = parse_imgref(f.get("imgref")?)?;
            let image = imgref.imgref.to_string();
            let r = refescape::prefix_escape_for_ref(IMAGE_PREFIX, &image)?;
            Ok(Some(json!({ "imgref": imgref.to_string(), "image": image, "ref": r })))
        }
        "cli" => {
            let argv = std::iter::once("ostree-ext-cli".to_string()).chain(rest.iter().cloned());
            ostree_ext::cli::run_from_iter(argv).await?;
            Ok(None)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(None)
        }
        o => bail!("unknown subcommand {o:?}\n{USAGE}"),
    }
}

fn open_repo(path: &str) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening ostree repo {path}"))?;
    Ok(repo)
}

fn parse_imgref(s: &str) -> Result<OstreeImageReference> {
    s.parse::<OstreeImageReference>()
        .with_context(|| format!("parsing image reference {s:?}"))
}

/// A layer descriptor with the ref ostree-ext derives for it and that ref's commit.
fn layer_json(repo: &ostree::Repo, l: &Descriptor) -> Result<Value> {
    let digest = l.digest().to_string();
    let r = refescape::prefix_escape_for_ref(LAYER_PREFIX, &digest)?;
    let commit = repo.resolve_rev(&r, true)?.map(|s| s.to_string());
    Ok(json!({
        "digest": digest,
        "size": l.size(),
        "media_type": l.media_type().to_string(),
        "ref": r,
        "commit": commit,
    }))
}

fn manifest_layers_json(repo: &ostree::Repo, m: &ImageManifest) -> Result<Vec<Value>> {
    m.layers().iter().map(|l| layer_json(repo, l)).collect()
}

fn state_json(repo: &ostree::Repo, s: &LayeredImageState) -> Result<Value> {
    let cached = s.cached_update.as_ref().map(|c| {
        json!({
            "manifest_digest": c.manifest_digest.to_string(),
            "version": c.version(),
            "config_digest": c.manifest.config().digest().to_string(),
            "n_layers": c.manifest.layers().len(),
        })
    });
    Ok(json!({
        "merge_commit": s.merge_commit,
        "base_commit": s.base_commit,
        "manifest_digest": s.manifest_digest.to_string(),
        "config_digest": s.manifest.config().digest().to_string(),
        "version": s.version(),
        "labels": s.configuration.config().as_ref().and_then(|c| c.labels().clone()),
        "layers": manifest_layers_json(repo, &s.manifest)?,
        "cached_update_present": s.cached_update.is_some(),
        "cached_update": cached,
    }))
}

fn manifest_layer_state_json(l: &ManifestLayerState) -> Value {
    json!({
        "digest": l.layer().digest().to_string(),
        "size": l.layer().size(),
        "media_type": l.layer().media_type().to_string(),
        "ref": l.ostree_ref,
        "commit": l.commit,
        "stored": l.commit.is_some(),
    })
}

async fn prepare(repo: &ostree::Repo, imgref: &OstreeImageReference, insecure: bool) -> Result<Value> {
    let mut config = ImageProxyConfig::default();
    if insecure {
        config.insecure_skip_tls_verification = Some(true);
    }
    let mut imp = ImageImporter::new(repo, imgref, config)
        .await
        .context("ImageImporter::new")?;
    let r = imp.prepare().await.context("prepare")?;
    Ok(match r {
        PrepareResult::AlreadyPresent(state) => json!({
            "result": "AlreadyPresent",
            "state": state_json(repo, &state)?,
        }),
        PrepareResult::Ready(p) => {
            let all: Vec<&ManifestLayerState> = p.all_layers().collect();
            let stored: Vec<Value> = all
                .iter()
                .filter(|l| l.commit.is_some())
                .map(|l| manifest_layer_state_json(l))
                .collect();
            let to_fetch: Vec<Value> = all
                .iter()
                .filter(|l| l.commit.is_none())
                .map(|l| manifest_layer_state_json(l))
                .collect();
            json!({
                "result": "Ready",
                "manifest_digest": p.manifest_digest.to_string(),
                "config_digest": p.manifest.config().digest().to_string(),
                "version": p.version(),
                "previous_manifest_digest": p.previous_manifest_digest.as_ref().map(|d| d.to_string()),
                "previous_imageid": p.previous_imageid,
                "ostree_commit_layer": manifest_layer_state_json(&p.ostree_commit_layer),
                "ostree_layers": p.ostree_layers.iter().map(manifest_layer_state_json).collect::<Vec<_>>(),
                "derived_layers": p.layers.iter().map(manifest_layer_state_json).collect::<Vec<_>>(),
                "stored": stored,
                "to_fetch": to_fetch,
            })
        }
    })
}

/// Refs under `ostree/container/` with their commits.
fn container_refs(repo: &ostree::Repo) -> Result<BTreeMap<String, String>> {
    let refs = repo.list_refs_ext(
        Some("ostree/container"),
        ostree::RepoListRefsExtFlags::empty(),
        gio::Cancellable::NONE,
    )?;
    Ok(refs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

async fn prune(path: &str) -> Result<Value> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading sysroot {path}"))?;
    let lock = ostree_ext::sysroot::SysrootLock::new_from_sysroot(&sysroot).await?;
    let repo = lock.repo();
    let deployments: Vec<Value> = lock
        .deployments()
        .iter()
        .map(|d| {
            let origin = d
                .origin()
                .and_then(|o| o.string("origin", deploy::ORIGIN_CONTAINER).ok())
                .map(|s| s.to_string());
            json!({
                "stateroot": d.osname().to_string(),
                "csum": d.csum().to_string(),
                "serial": d.deployserial(),
                "origin_container_image_reference": origin,
            })
        })
        .collect();
    let before = container_refs(&repo)?;
    let pruned = deploy::prune(&lock).context("container::deploy::prune")?;
    let after = container_refs(&repo)?;
    let removed: BTreeMap<&String, &String> =
        before.iter().filter(|(k, _)| !after.contains_key(*k)).collect();
    Ok(json!({
        "deployments": deployments,
        "n_images": pruned.n_images,
        "n_layers": pruned.n_layers,
        "n_objects_pruned": pruned.n_objects_pruned,
        "objsize": pruned.objsize,
        "refs_removed": removed,
        "refs_kept": after,
    }))
}
