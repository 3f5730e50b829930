//! A dry run of the composefs repository's GC as it will run after tags are
//! removed.
//!
//! `internals gc` untags dead deployments' images and then collects the
//! repository. A dry run removes no tag, so composefs-rs's own
//! `gc_dry_run` would still see those images as roots and count nothing
//! (found on btrfs: the dry run said 0 objects, the real run removed 8).
//! Instead of re-implementing composefs-rs's reachability walk, the dry run
//! runs composefs-rs's real GC on a *view* of the repository: a scratch
//! directory (on `/tmp`) with `meta.json`, `objects/XX/` holding one symlink
//! per real object, and the `streams/` and `images/` trees re-created as
//! symlinks (their entries are symlinks into `objects/` already) less the
//! refs the real run will remove. The GC unlinks the view's symlinks and
//! prunes the view's dangling entries, so every count (objects, bytes: it
//! stats through the links; streams and images pruned) is the real run's.
//! Nothing of the real repository is written. Cost: one symlink per object
//! (about a second for 100,000 objects), only when tags would be removed.

use std::path::Path;

use anyhow::{Context, Result};
use cap_std_ext::cap_std::{self, fs::Dir};

use super::composefs_repo::Repo;
use crate::sysroot::{COMPOSEFS_DIR, Sysroot};

/// What composefs-rs's dry run counts when the tags `dropped` are gone.
pub fn gc_dry_run_without(
    sysroot: &Sysroot,
    dropped: &[String],
) -> Result<composefs::repository::GcResult> {
    let real = sysroot.join(COMPOSEFS_DIR);
    let view = tempfile::Builder::new()
        .prefix("unistore-gc-view.")
        .tempdir()
        .context("making the GC dry run's view")?;
    std::fs::copy(real.join("meta.json"), view.path().join("meta.json"))
        .context("copying meta.json into the GC view")?;
    link_objects(&real.join("objects"), &view.path().join("objects"))?;
    for top in ["streams", "images"] {
        if real.join(top).is_dir() {
            mirror(&real.join(top), &view.path().join(top), &real, top, dropped)?;
        }
    }
    let dir = Dir::open_ambient_dir(view.path(), cap_std::ambient_authority())?;
    let repo = Repo::open_path(&dir, ".").context("opening the GC view")?;
    repo.gc(&[])
}

/// `view/XX/<rest>` -> `objects/XX/<rest>` for every object.
fn link_objects(objects: &Path, view: &Path) -> Result<()> {
    std::fs::create_dir_all(view)?;
    for d in std::fs::read_dir(objects)? {
        let d = d?;
        if !d.file_type()?.is_dir() {
            continue;
        }
        let sub = view.join(d.file_name());
        std::fs::create_dir(&sub)?;
        for f in std::fs::read_dir(d.path())? {
            let f = f?;
            std::os::unix::fs::symlink(f.path(), sub.join(f.file_name()))?;
        }
    }
    Ok(())
}

/// The name a ref file stands for (`/` is written `%2F`, `%` as `%25`).
fn ref_name(file: &str) -> String {
    file.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%25", "%")
}

fn mirror(src: &Path, dst: &Path, real: &Path, rel: &str, dropped: &[String]) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{rel}/{name}");
        let (from, to) = (e.path(), dst.join(&name));
        let ft = e.file_type()?;
        if ft.is_dir() {
            mirror(&from, &to, real, &rel, dropped)?;
        } else if rel.contains("/refs/") && dropped.contains(&ref_name(&name)) {
            continue;
        } else if ft.is_symlink() {
            // Relative links (into ../objects, or to a stream) resolve the
            // same way in the view.
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else {
            std::os::unix::fs::symlink(real.join(&rel), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ref_names() {
        assert_eq!(
            super::ref_name("localhost%2Fbootc-sha256:ab"),
            "localhost/bootc-sha256:ab"
        );
        assert_eq!(super::ref_name("a%25b"), "a%b");
    }
}
