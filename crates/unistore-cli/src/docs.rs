//! Man pages and shell completions, generated from the clap definitions so
//! they never drift from the commands (`unistore internals man DIR`,
//! `unistore internals completions SHELL`; `scripts/install` installs them).

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::Cli;

/// Writes `unistore.8` and one page per subcommand (`unistore-install-to-filesystem.8`,
/// ...), hidden commands left out, into `dir`.
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut written = 0;
    write_page(dir, &cmd, "unistore", "unistore", &mut written)?;
    eprintln!("{written} man pages written to {}", dir.display());
    Ok(())
}

/// The page of `cmd`, named `name` (`unistore-image-list`), invoked as
/// `bin` (`unistore image list`), then its subcommands'.
fn write_page(
    dir: &Path,
    cmd: &clap::Command,
    name: &str,
    bin: &str,
    written: &mut usize,
) -> Result<()> {
    let cmd = cmd
        .clone()
        .display_name(name.to_string())
        .bin_name(bin.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("8")
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.8"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let n = sub.get_name();
        write_page(
            dir,
            sub,
            &format!("{name}-{n}"),
            &format!("{bin} {n}"),
            written,
        )?;
    }
    Ok(())
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    use std::io::Write;
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "unistore", &mut out);
    match std::io::stdout().write_all(&out) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the completion script"),
    }
}
