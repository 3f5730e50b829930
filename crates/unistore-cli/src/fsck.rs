//! `internals fsck [images] [--repair] [--json] [--verify-content]`.
//!
//! Prints `[OK]`, `[FAIL]`, `[NOTE]` and `[REPAIRED]` lines and a summary
//! (or the report as JSON), and exits with status 1 unless all is well.

use std::io::Write;

use anyhow::Result;
use unistore::Sysroot;
use unistore::command::fsck::{FsckOpts, FullReport, ImageReport, ImagesReport, Verdict};

#[derive(clap::Args, Clone, Copy)]
pub struct FsckFlags {
    /// Fix what can be fixed from another copy on the host.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Re-hash the content of every object, layer and image.
    #[arg(long)]
    pub verify_content: bool,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FsckArgs {
    #[command(subcommand)]
    pub what: Option<FsckWhat>,
    #[command(flatten)]
    pub flags: FsckFlags,
}

#[derive(clap::Subcommand)]
pub enum FsckWhat {
    /// Only the host images: composefs repository, boot entries and (on a
    /// unified host) containers-storage.
    Images(FsckFlags),
}

fn opts(f: FsckFlags) -> FsckOpts {
    FsckOpts {
        repair: f.repair,
        verify_content: f.verify_content,
    }
}

fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn image_lines(out: &mut impl Write, img: &ImageReport, unified: bool) -> Result<()> {
    let label = format!("{} ({})", img.name, short(&img.manifest_digest));
    for r in &img.repairs {
        writeln!(out, "[REPAIRED] {label}: {r}")?;
    }
    for i in &img.issues {
        writeln!(out, "[FAIL]     {label}: {i}")?;
    }
    for n in &img.notes {
        writeln!(out, "[NOTE]     {label}: {n}")?;
    }
    if img.ok() {
        let mut where_ = vec![];
        if img.in_ostree == Some(true) {
            where_.push("ostree");
        }
        if img.in_composefs || img.in_ostree.is_none() {
            where_.push("composefs");
        }
        if img.in_containers_storage {
            where_.push("containers-storage");
        }
        let live = if img.is_live {
            format!("live ({} deployment(s))", img.deployments.len())
        } else {
            "not live".to_string()
        };
        let cs = if unified || img.in_containers_storage {
            ""
        } else {
            " (not in containers-storage: unified storage is off)"
        };
        writeln!(
            out,
            "[OK]       {label}: in {}; {live}{cs}",
            where_.join(", ")
        )?;
    }
    Ok(())
}

fn images_section(out: &mut impl Write, r: &ImagesReport) -> Result<()> {
    for i in &r.containers_storage.issues {
        writeln!(out, "[FAIL]     containers-storage: {i}")?;
    }
    for i in &r.issues {
        writeln!(out, "[FAIL]     {i}")?;
    }
    for img in &r.images {
        image_lines(out, img, r.unified_storage_enabled)?;
    }
    Ok(())
}

fn images_summary(r: &ImagesReport) -> String {
    let failed = r.images.iter().filter(|i| !i.ok()).count();
    let repaired = r.images.iter().filter(|i| i.repaired).count();
    let storage = match r.unified_mode {
        Some(m) => format!("unified ({m})"),
        None => "not unified".to_string(),
    };
    format!(
        "{} image(s): {} ok, {failed} failed, {repaired} repaired; storage {storage}; reflinks {}",
        r.images.len(),
        r.images.len() - failed,
        yes_no(r.reflinks_supported)
    )
}

fn finish(ok: bool) -> Result<()> {
    std::io::stdout().flush()?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// `internals fsck images`.
pub fn images(sysroot: &Sysroot, f: FsckFlags) -> Result<()> {
    let r = unistore::backends::detect(sysroot)?.fsck_images(sysroot, opts(f))?;
    let out = std::io::stdout();
    let mut out = out.lock();
    if f.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        images_section(&mut out, &r)?;
        writeln!(
            out,
            "{}: {}",
            if r.ok { "OK" } else { "FAILED" },
            images_summary(&r)
        )?;
    }
    finish(r.ok)
}

/// `[OK] label: ok_text` when the check passed, then its `[FAIL]` and
/// `[NOTE]` lines.
fn check_lines(
    out: &mut impl Write,
    label: &str,
    ok_text: &str,
    check: &impl Verdict,
) -> Result<()> {
    if check.ok() {
        writeln!(out, "[OK]       {label}{ok_text}")?;
    }
    for i in check.issues() {
        writeln!(out, "[FAIL]     {label}: {i}")?;
    }
    for n in check.notes() {
        writeln!(out, "[NOTE]     {label}: {n}")?;
    }
    Ok(())
}

fn full_human(out: &mut impl Write, r: &FullReport) -> Result<()> {
    let repo = &r.repository;
    let what = if repo.content_verified {
        "content verified"
    } else {
        "structure only; --verify-content re-hashes objects"
    };
    let label = if repo.store.is_empty() {
        "composefs repository".to_string()
    } else {
        format!("{} repository", repo.store)
    };
    check_lines(
        out,
        &label,
        &format!(
            ": {} objects, {} streams ({what})",
            repo.objects_checked, repo.streams_checked
        ),
        repo,
    )?;
    for e in &r.boot_entries {
        check_lines(out, &format!("boot entry {}", e.file), "", e)?;
    }
    for d in &r.deployments {
        let ok_text = format!(
            ": origin resolves to {}",
            d.manifest_digest.as_deref().map(short).unwrap_or("-")
        );
        check_lines(out, &format!("deployment {}", short(&d.id)), &ok_text, d)?;
    }
    images_section(out, &r.images)?;
    let failed_other = usize::from(!repo.ok())
        + r.boot_entries.iter().filter(|e| !e.ok()).count()
        + r.deployments.iter().filter(|d| !d.ok()).count();
    writeln!(
        out,
        "{}: repository {}, {} boot entr(y/ies), {} deployment(s), {} other problem(s); {}",
        if r.ok { "OK" } else { "FAILED" },
        if repo.ok() { "ok" } else { "damaged" },
        r.boot_entries.len(),
        r.deployments.len(),
        failed_other,
        images_summary(&r.images)
    )?;
    Ok(())
}

/// `internals fsck` (everything) or `internals fsck images`.
pub async fn run(sysroot: &Sysroot, a: FsckArgs) -> Result<()> {
    if let Some(FsckWhat::Images(f)) = a.what {
        return images(sysroot, f);
    }
    let r = unistore::backends::detect(sysroot)?
        .fsck(sysroot, opts(a.flags))
        .await?;
    let out = std::io::stdout();
    let mut out = out.lock();
    if a.flags.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        full_human(&mut out, &r)?;
    }
    drop(out);
    finish(r.ok)
}
