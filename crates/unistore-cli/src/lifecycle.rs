//! upgrade, switch, rollback, finalize-staged, gc: parse, call, print.

use anyhow::{Result, bail};
use unistore::Sysroot;
use unistore::command::finalize::FinalizeOutcome;
use unistore::command::gc::{GcOpts, GcReport};
use unistore::command::upgrade::{UpgradeOpts, UpgradeOutcome};
use unistore::source::fetch_config::FetchConfig;
use unistore::source::imgref::ImageRef;

use crate::progress;

#[derive(clap::Args)]
pub struct JsonArg {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct UpgradeArgs {
    /// Only report whether an update exists (digest, version); fetch no layers.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub out: JsonArg,
}

#[derive(clap::Args)]
pub struct SwitchArgs {
    /// The image to follow from now on.
    pub target: String,
    #[command(flatten)]
    pub out: JsonArg,
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail (exit 1) if anything would be removed. Implies --dry-run.
    #[arg(long)]
    pub assert_no_op: bool,
    #[command(flatten)]
    pub out: JsonArg,
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(16)]
}

fn print_upgrade(o: &UpgradeOutcome, json: bool) -> Result<()> {
    if json {
        return print_json(o);
    }
    match o {
        UpgradeOutcome::NoChange {
            image,
            manifest_digest,
            staged,
        } => {
            if *staged {
                println!("Already staged: {image} ({manifest_digest})");
            } else {
                println!("No update available: {image} is {manifest_digest}");
            }
        }
        UpgradeOutcome::UpdateAvailable {
            image,
            booted_digest,
            remote,
        } => {
            println!("Update available for {image}");
            println!(
                "  booted:  {}",
                booted_digest.as_deref().unwrap_or("<unknown>")
            );
            println!("  new:     {}", remote.manifest_digest);
            if let Some(v) = &remote.version {
                println!("  version: {v}");
            }
        }
        UpgradeOutcome::OriginUpdated {
            image,
            previous_image,
            manifest_digest,
            deployment_id,
        } => {
            println!("Now following {image} (was {previous_image})");
            println!(
                "  same image {manifest_digest} as deployment {}: no new deployment",
                short(deployment_id)
            );
        }
        UpgradeOutcome::Deployed {
            image,
            deployment_id,
            manifest_digest,
            version,
            gc,
            commit,
        } => {
            print_new_deployment(
                &format!(
                    "Deployed {image} as the next boot (not the running system: nothing to stage)"
                ),
                deployment_id,
                manifest_digest,
                version.as_deref(),
                false,
                gc.as_deref(),
            );
            print_commit(commit.as_deref());
        }
        UpgradeOutcome::Staged {
            image,
            deployment_id,
            manifest_digest,
            version,
            kernel_reused,
            gc,
            commit,
        } => {
            print_new_deployment(
                &format!("Staged {image} for the next boot"),
                deployment_id,
                manifest_digest,
                version.as_deref(),
                *kernel_reused,
                gc.as_deref(),
            );
            print_commit(commit.as_deref());
        }
    }
    Ok(())
}

/// The ostree commit an upgrade wrote (ostree hosts).
fn print_commit(c: Option<&unistore::stores::ostree_repo::commit::Imported>) {
    let Some(c) = c else { return };
    println!(
        "  ostree commit {} ({}): {} content objects written, {} reused; {} files read for checksums, {} from the cache",
        &c.checksum[..12],
        if c.synthesized {
            "synthesized from composefs"
        } else {
            "classic"
        },
        c.objects_written,
        c.objects_reused,
        c.files_read,
        c.checksums_cached
    );
}

/// The lines of a new deployment (staged, or written as the next boot).
fn print_new_deployment(
    header: &str,
    deployment_id: &str,
    manifest_digest: &str,
    version: Option<&str>,
    kernel_reused: bool,
    gc: Option<&unistore::command::gc::GcReport>,
) {
    println!("{header}");
    println!("  deployment: {deployment_id}");
    println!("  digest:     {manifest_digest}");
    if let Some(v) = version {
        println!("  version:    {v}");
    }
    if kernel_reused {
        println!("  kernel:     shared with an existing deployment");
    }
    if let Some(g) = gc {
        print_gc_summary(g);
    }
}

pub async fn upgrade(sysroot: &Sysroot, a: UpgradeArgs, fetch: FetchConfig) -> Result<()> {
    let opts = UpgradeOpts {
        target: None,
        check: a.check,
        fetch,
    };
    let o = unistore::backends::detect(sysroot)?
        .upgrade(sysroot, &opts, progress::reporter())
        .await?;
    print_upgrade(&o, a.out.json)
}

pub async fn switch(sysroot: &Sysroot, a: SwitchArgs, fetch: FetchConfig) -> Result<()> {
    let target = ImageRef::parse(&a.target)?;
    let opts = UpgradeOpts {
        target: Some(target),
        check: false,
        fetch,
    };
    let o = unistore::backends::detect(sysroot)?
        .upgrade(sysroot, &opts, progress::reporter())
        .await?;
    print_upgrade(&o, a.out.json)
}

pub fn rollback(sysroot: &Sysroot, a: JsonArg) -> Result<()> {
    let r = unistore::backends::detect(sysroot)?.rollback(sysroot)?;
    if a.json {
        return print_json(&r);
    }
    if let Some(s) = &r.discarded_staged {
        println!("Discarded staged deployment {}", short(s));
    }
    println!("Next boot: {}", short(&r.next_boot));
    println!("Rollback:  {}", short(&r.rollback));
    if r.rollback_queued {
        println!("Rollback queued: reboot to start it.");
    }
    Ok(())
}

pub fn finalize(sysroot: &Sysroot, a: JsonArg) -> Result<()> {
    let o = unistore::backends::detect(sysroot)?.finalize(sysroot)?;
    if a.json {
        return print_json(&o);
    }
    match o {
        FinalizeOutcome::NothingStaged => println!("No staged deployment."),
        FinalizeOutcome::Locked { deployment_id } => {
            println!(
                "Staged deployment {} is locked; not finalized.",
                short(&deployment_id)
            )
        }
        FinalizeOutcome::Finalized {
            deployment_id,
            etc_local_changes_kept,
        } => {
            println!("Finalized {}: it boots next.", short(&deployment_id));
            println!("  /etc: {etc_local_changes_kept} local change(s) carried over");
        }
    }
    Ok(())
}

fn print_gc_summary(r: &GcReport) {
    let verb = if r.dry_run { "Would remove" } else { "Removed" };
    println!(
        "{verb} {} kernel dir(s), {} state dir(s), {} tag(s), {} object(s), {} store image(s); {} bytes freed",
        r.kernel_dirs.len(),
        r.state_dirs.len(),
        r.tags_removed.len(),
        r.objects_removed,
        r.store_images_removed.len(),
        r.bytes_freed()
    );
}

pub fn gc(sysroot: &Sysroot, a: GcArgs) -> Result<()> {
    let opts = GcOpts {
        dry_run: a.dry_run || a.assert_no_op,
    };
    let r = unistore::backends::detect(sysroot)?.gc(sysroot, opts)?;
    if a.out.json {
        print_json(&r)?;
    } else {
        print_gc_summary(&r);
        for k in &r.kernel_dirs {
            println!("  kernel dir  boot/{k}");
        }
        for s in &r.state_dirs {
            println!("  state dir   state/deploy/{s}");
        }
        for t in &r.tags_removed {
            println!("  tag         {t}");
        }
        for t in &r.tags_added {
            println!("  tag added   {t}");
        }
        for t in &r.layer_refs_removed {
            println!("  layer ref   {t}");
        }
        for i in &r.store_images_removed {
            println!("  store image {i}");
        }
        for u in &r.store_images_untagged {
            println!("  store name  {u} (image kept)");
        }
        if !r.store_layers_removed.is_empty() {
            println!(
                "  store       {} layer(s), {} bytes uncompressed",
                r.store_layers_removed.len(),
                r.store_layer_bytes
            );
        }
        for e in &r.store_errors {
            println!("  store error {e}");
        }
    }
    if a.assert_no_op && !r.is_no_op() {
        bail!("gc is not a no-op: there is garbage to collect");
    }
    Ok(())
}
