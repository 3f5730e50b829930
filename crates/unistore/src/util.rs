//! Small filesystem helpers: atomic writes, fsync of directories.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use cap_std_ext::cap_std::fs::Dir;

/// Writes `name` in `dir` through a temporary file, fsyncs it, renames it
/// into place and fsyncs the directory: after return the file is either the
/// old one or the new one, on disk, even across a crash.
pub fn atomic_write(dir: &Dir, name: impl AsRef<Path>, contents: &[u8]) -> Result<()> {
    let name = name.as_ref();
    let tmp = Path::new(&format!(
        ".tmp-{}-{}",
        std::process::id(),
        name.file_name().unwrap_or_default().to_string_lossy()
    ))
    .to_path_buf();
    let tmp = match name.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(tmp),
        _ => tmp,
    };
    {
        let mut f = dir
            .create(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    dir.rename(&tmp, dir, name)
        .with_context(|| format!("renaming into {}", name.display()))?;
    fsync_dir(dir, name.parent())?;
    Ok(())
}

/// fsyncs a directory (relative to `dir`; `None` or empty means `dir`).
pub fn fsync_dir(dir: &Dir, rel: Option<&Path>) -> Result<()> {
    // cap-std directory handles may be O_PATH, which cannot be fsynced.
    let rel = match rel {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let d = rustix::fs::openat(
        dir,
        rel,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {} to fsync it", rel.display()))?;
    rustix::fs::fsync(&d)?;
    Ok(())
}

/// Removes a path (file or directory tree) if present.
pub fn remove_all(dir: &Dir, rel: impl AsRef<Path>) -> Result<()> {
    let rel = rel.as_ref();
    match dir.symlink_metadata(rel) {
        Ok(m) if m.is_dir() => dir
            .remove_dir_all(rel)
            .with_context(|| format!("removing {}", rel.display())),
        Ok(_) => dir
            .remove_file(rel)
            .with_context(|| format!("removing {}", rel.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Lists the names in a directory, or nothing if it does not exist.
pub fn list_names(dir: &Dir, rel: impl AsRef<Path>) -> Result<Vec<String>> {
    let rel = rel.as_ref();
    let d = match dir.open_dir(rel) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("opening {}", rel.display())),
    };
    let mut names = vec![];
    for e in d.entries()? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Gives the memory the process has freed back to the system. glibc keeps
/// what a thread frees in that thread's arena: the pull builds the
/// repository's EROFS image of the whole tree on one thread, and the boot
/// image built next on another thread (beside the store writer) would
/// otherwise not reuse it, and the peaks would add up.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The first 12 hex digits of a digest (`sha256:` dropped), for messages.
pub fn short_digest(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}
