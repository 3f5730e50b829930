//! `image list`, `image set-unified`: parse, call, print.

use std::io::Write;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use unistore::Sysroot;
use unistore::command::image_list::ImageList;
use unistore::command::set_unified::{SetUnifiedOpts, SetUnifiedOutcome, Target};
use unistore::unified::UnifiedMode;

use crate::progress;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// List the host's images and where each is present (composefs,
    /// containers-storage).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Share the host's images with the host containers-storage (`full`),
    /// or bind composefs to ostree (`composefs`, ostree hosts only).
    SetUnified {
        #[arg(value_enum)]
        target: TargetArg,
        /// Where the filesystem has no reflinks, keep copies instead of
        /// failing.
        #[arg(long)]
        enabled_with_copy: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TargetArg {
    Full,
    Composefs,
}

pub async fn run(sysroot: &Sysroot, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::List { json } => {
            let list = unistore::backends::detect(sysroot)?.image_list(sysroot)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_list(&mut std::io::stdout().lock(), &list)?;
            }
            Ok(())
        }
        ImageCmd::SetUnified {
            target,
            enabled_with_copy,
            json,
        } => {
            let opts = SetUnifiedOpts {
                target: match target {
                    TargetArg::Full => Target::Full,
                    TargetArg::Composefs => Target::Composefs,
                },
                mode: if enabled_with_copy {
                    UnifiedMode::EnabledWithCopy
                } else {
                    UnifiedMode::Enabled
                },
                fetch: crate::fetch_config(),
            };
            let p = progress::reporter();
            let backend = unistore::backends::detect(sysroot)?;
            let o = backend.set_unified(sysroot, &opts, p.clone()).await?;
            progress::finish(&p);
            if json {
                println!("{}", serde_json::to_string_pretty(&o)?);
                return Ok(());
            }
            match o {
                SetUnifiedOutcome::NoOp { message } => println!("Nothing to do: {message}"),
                SetUnifiedOutcome::Bound { message } => {
                    println!("Storage: ostree-composefs-bound");
                    println!("{message}");
                }
                SetUnifiedOutcome::AlreadyUnified { mode, images } => println!(
                    "Already unified ({mode}): {} image(s) in containers-storage; nothing to do",
                    images.len()
                ),
                SetUnifiedOutcome::Unified {
                    mode,
                    images,
                    filesystem,
                    ..
                } => {
                    println!(
                        "Storage: unified ({mode}) on {filesystem}: {} image(s) in containers-storage",
                        images.len()
                    );
                    for r in images {
                        println!(
                            "  {} {}",
                            r.manifest_digest,
                            if r.copied_into_store {
                                "imported from composefs"
                            } else {
                                "already present"
                            }
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn print_list(w: &mut impl Write, l: &ImageList) -> Result<()> {
    match l.unified {
        Some(m) => writeln!(w, "Storage: unified ({m})")?,
        None if l.ostree_composefs_bound => writeln!(w, "Storage: ostree-composefs-bound")?,
        None => writeln!(w, "Storage: composefs only (not unified)")?,
    }
    let ostree = l.images.iter().any(|i| i.in_ostree.is_some());
    if ostree {
        writeln!(
            w,
            "{:<20} {:<10} {:<6} {:<9} {:<8} IMAGE",
            "DIGEST", "ROLES", "OSTREE", "COMPOSEFS", "STORAGE"
        )?;
    } else {
        writeln!(
            w,
            "{:<20} {:<10} {:<9} {:<8} IMAGE",
            "DIGEST", "ROLES", "COMPOSEFS", "STORAGE"
        )?;
    }
    for e in &l.errors {
        writeln!(w, "! {e}")?;
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    for i in &l.images {
        let d = i.manifest_digest.trim_start_matches("sha256:");
        let roles = if i.roles.is_empty() {
            "tagged".to_string()
        } else {
            i.roles.join(",")
        };
        if ostree {
            writeln!(
                w,
                "{:<20} {:<10} {:<6} {:<9} {:<8} {}",
                &d[..d.len().min(19)],
                roles,
                yes(i.in_ostree == Some(true)),
                yes(i.in_composefs),
                yes(i.in_containers_storage),
                i.image.as_deref().unwrap_or("-")
            )?;
        } else {
            writeln!(
                w,
                "{:<20} {:<10} {:<9} {:<8} {}",
                &d[..d.len().min(19)],
                roles,
                yes(i.in_composefs),
                yes(i.in_containers_storage),
                i.image.as_deref().unwrap_or("-")
            )?;
        }
    }
    Ok(())
}
