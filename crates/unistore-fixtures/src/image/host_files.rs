//! Host executables to put in a test image, so that `podman run IMAGE BIN`
//! works: the binary and the shared libraries `ldd` says it loads.

use std::process::Command;

use anyhow::{Context, Result};

use crate::env::cmd::run;

/// `(path in the image, content)` of the host executable `bin` and of every
/// library it loads, for `TestImageOpts::extra_files`. The generated image's
/// `/lib` and `/lib64` are symlinks into `/usr`, so paths outside `/usr` are
/// mapped below it.
pub fn host_executable_files(bin: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let to_usr = |p: &str| -> String {
        if p.starts_with("/usr/") {
            p.to_string()
        } else {
            format!("/usr{p}")
        }
    };
    let read = |p: &str| -> Result<Vec<u8>> {
        let real = std::fs::canonicalize(p).with_context(|| format!("resolving {p}"))?;
        std::fs::read(&real).with_context(|| format!("reading {}", real.display()))
    };
    let mut files = vec![(to_usr(bin), read(bin)?)];
    for line in run(Command::new("ldd").arg(bin))?.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push((to_usr(p), read(p)?));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cat_and_its_libraries() {
        let files = host_executable_files("/usr/bin/cat").unwrap();
        assert_eq!(files[0].0, "/usr/bin/cat");
        assert_eq!(files[0].1, std::fs::read("/usr/bin/cat").unwrap());
        assert!(
            files.iter().any(|(p, _)| p.contains("libc.so")),
            "{:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(
            files
                .iter()
                .all(|(p, c)| p.starts_with("/usr/") && !c.is_empty())
        );
    }
}
