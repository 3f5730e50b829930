//! Human output.

use std::io::Write;

use anyhow::Result;
use unistore::command::status::{BootEntry, Host};

/// Renders `status` for people.
pub fn status(w: &mut impl Write, host: &Host, _tty: bool) -> Result<()> {
    let s = &host.status;
    if s.booted.is_none() && s.staged.is_none() && s.rollback.is_none() {
        writeln!(w, "No deployments.")?;
        return Ok(());
    }
    if s.booted_is_primary_entry {
        writeln!(
            w,
            "Note: this root is not the running system; the primary boot entry is shown as booted."
        )?;
    }
    let rows: [(&str, &str, Option<&BootEntry>); 3] = [
        ("Staged image", " ", s.staged.as_ref()),
        ("Booted image", "●", s.booted.as_ref()),
        ("Rollback image", " ", s.rollback.as_ref()),
    ];
    let mut first = true;
    for (label, mark, entry) in rows {
        let Some(e) = entry else { continue };
        if !first {
            writeln!(w)?;
        }
        first = false;
        entry_lines(w, mark, label, e, label == "Booted image", host)?;
    }
    for e in &s.other_deployments {
        writeln!(w)?;
        entry_lines(w, " ", "Other image", e, false, host)?;
    }
    if s.rollback_queued {
        writeln!(
            w,
            "\nRollback queued: the next boot starts the rollback deployment."
        )?;
    }
    Ok(())
}

fn entry_lines(
    w: &mut impl Write,
    mark: &str,
    label: &str,
    e: &BootEntry,
    booted: bool,
    host: &Host,
) -> Result<()> {
    match &e.image {
        Some(img) => {
            let transport = match img.image.transport.as_str() {
                "registry" => "docker://".to_string(),
                t => format!("{t}:"),
            };
            writeln!(w, "{mark} {label}: {transport}{}", img.image.image)?;
            writeln!(w, "{:>16}: {}", "Digest", img.image_digest)?;
            let version = img.version.as_deref().unwrap_or("<none>");
            match &img.timestamp {
                Some(t) => writeln!(w, "{:>16}: {version} ({t})", "Version")?,
                None => writeln!(w, "{:>16}: {version}", "Version")?,
            }
            writeln!(w, "{:>16}: {}", "Architecture", img.architecture)?;
            // An update an update check found (bootc's rows), unless it is
            // this very image.
            if let Some(u) = e
                .cached_update
                .as_ref()
                .filter(|u| u.image_digest != img.image_digest)
            {
                match (&u.version, &u.timestamp) {
                    (Some(v), Some(t)) => writeln!(w, "{:>16}: {v} ({t})", "UpdateVersion")?,
                    (Some(v), None) => writeln!(w, "{:>16}: {v}", "UpdateVersion")?,
                    (None, _) => writeln!(w, "{:>16}: Available", "Update")?,
                }
                writeln!(w, "{:>16}: {}", "UpdateDigest", u.image_digest)?;
            }
        }
        None => writeln!(w, "{mark} {label}: <unreadable>")?,
    }
    if let Some(c) = &e.composefs {
        writeln!(w, "{:>16}: {}", "Verity", c.verity)?;
        writeln!(w, "{:>16}: {} ({})", "Boot", c.boot_type, e.entry_file)?;
    }
    if let Some(o) = &e.ostree {
        let field = |k: &str| {
            o.get(k)
                .map(|v| v.to_string().trim_matches('"').to_string())
        };
        writeln!(
            w,
            "{:>16}: {}.{}",
            "Commit",
            field("checksum").unwrap_or_default(),
            field("deploySerial").unwrap_or_default()
        )?;
        writeln!(
            w,
            "{:>16}: {}",
            "Stateroot",
            field("stateroot").unwrap_or_default()
        )?;
        writeln!(w, "{:>16}: bls ({})", "Boot", e.entry_file)?;
    }
    if booted && let Some(o) = &host.status.usr_overlay {
        writeln!(w, "{:>16}: {o}", "/usr overlay")?;
    }
    if booted && let Some(st) = &host.status.storage {
        if st.ostree_composefs_bound && st.unified == "disabled" {
            writeln!(w, "{:>16}: ostree-composefs-bound", "Storage")?;
        } else {
            writeln!(w, "{:>16}: unified ({})", "Storage", st.unified)?;
        }
    }
    for err in &e.errors {
        writeln!(w, "{:>16}: {err}", "Error")?;
    }
    Ok(())
}
