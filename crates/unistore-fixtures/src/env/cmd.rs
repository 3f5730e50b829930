//! Running host tools with useful errors.

use anyhow::{Context, Result};
use std::process::Command;

/// Run `cmd`, returning its stdout; on failure the error names the command and carries
/// its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("spawning {desc} (is the tool installed?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_and_failures() {
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("oops") && msg.contains("exit status: 3"),
            "{msg}"
        );
        assert!(run(&mut Command::new("/nonexistent/tool")).is_err());
    }
}
