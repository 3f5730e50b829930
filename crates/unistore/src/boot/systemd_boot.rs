//! systemd-boot on the ESP, installed from the image being deployed.
//!
//! bootc installs the loader with `bootctl install --root <image> --esp-path
//! <esp>`, so the loader binary is the one the image ships
//! (`usr/lib/systemd/boot/efi/systemd-bootx64.efi`, Debian's
//! `systemd-boot-efi`). `bootctl` 252 only writes onto a mounted ESP, and an
//! ESP cannot be mounted where the kernel has no vfat (disk images built
//! here are filled with mtools instead), so this writes the same files
//! `bootctl install --no-variables` writes, into the ESP directory it is
//! given:
//!
//! | file | content |
//! |---|---|
//! | `EFI/systemd/systemd-bootx64.efi` | the image's loader |
//! | `EFI/BOOT/BOOTX64.EFI` | the same: firmware without boot variables starts it (removable-media path) |
//! | `loader/loader.conf` | bootctl's commented defaults (no menu, the first entry by sort key boots) |
//! | `loader/entries.srel` | `type1`: the entries directory holds BLS Type 1 entries |
//! | `EFI/Linux/` | where the kernel directories go |
//!
//! Each file is written to a temporary name, synced and renamed into place.

use anyhow::{Context, Result, bail};
use cap_std_ext::cap_std::fs::Dir;

use crate::stores::composefs_repo::{self, ObjectId, Repo};
use crate::util;

/// Where the loader binary is in the image.
pub const IMAGE_LOADER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The files [`install`] writes, relative to the ESP.
pub const LOADER_FILES: [&str; 4] = [
    "EFI/systemd/systemd-bootx64.efi",
    "EFI/BOOT/BOOTX64.EFI",
    "loader/loader.conf",
    "loader/entries.srel",
];

/// The image's systemd-boot binary, or an error saying why the image cannot
/// boot through systemd-boot.
pub fn image_loader(fs: &composefs::tree::FileSystem<ObjectId>, repo: &Repo) -> Result<Vec<u8>> {
    let Some(bin) = composefs_repo::read_image_file(fs, repo, IMAGE_LOADER)? else {
        bail!(
            "the image has no {} (Debian's systemd-boot-efi package): it cannot boot through systemd-boot; add it to the image or pass --bootloader none",
            IMAGE_LOADER.trim_start_matches('/')
        );
    };
    // A PE/COFF executable starts "MZ".
    if !bin.starts_with(b"MZ") {
        bail!(
            "the image's {} is not an EFI executable",
            IMAGE_LOADER.trim_start_matches('/')
        );
    }
    Ok(bin)
}

/// Writes systemd-boot (`loader`, from [`image_loader`]) and its
/// configuration onto the ESP `esp`. Existing files of an older loader are
/// replaced, as `bootctl install` does.
pub fn install(esp: &Dir, loader: &[u8]) -> Result<()> {
    for d in ["EFI/systemd", "EFI/BOOT", "EFI/Linux", "loader/entries"] {
        esp.create_dir_all(d)
            .with_context(|| format!("creating {d} on the ESP"))?;
    }
    let conf = "#timeout 3\n#console-mode keep\n";
    for (path, bytes) in [
        (LOADER_FILES[0], loader),
        (LOADER_FILES[1], loader),
        (LOADER_FILES[2], conf.as_bytes()),
        (LOADER_FILES[3], b"type1\n".as_slice()),
    ] {
        util::atomic_write(esp, path, bytes)
            .with_context(|| format!("writing {path} on the ESP"))?;
    }
    for d in ["EFI/systemd", "EFI/BOOT", "loader", "EFI", "."] {
        util::fsync_dir(esp, Some(std::path::Path::new(d)))?;
    }
    Ok(())
}

/// Whether `esp` holds a systemd-boot installation with BLS Type 1 entries
/// (what [`install`] writes): the ESP a host boots its deployments from.
pub fn is_installed(esp: &Dir) -> bool {
    esp.try_exists(LOADER_FILES[3]).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std_ext::cap_std;

    #[test]
    fn writes_what_bootctl_writes() {
        let t = tempfile::tempdir().unwrap();
        let esp = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        assert!(!is_installed(&esp));
        install(&esp, b"MZloader").unwrap();
        for f in LOADER_FILES {
            assert!(t.path().join(f).is_file(), "{f}");
        }
        assert_eq!(
            std::fs::read(t.path().join("EFI/BOOT/BOOTX64.EFI")).unwrap(),
            b"MZloader"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("loader/entries.srel")).unwrap(),
            "type1\n"
        );
        assert!(t.path().join("EFI/Linux").is_dir());
        assert!(is_installed(&esp));
        // Again: replaced, not failed.
        install(&esp, b"MZnewer").unwrap();
        assert_eq!(
            std::fs::read(t.path().join("EFI/systemd/systemd-bootx64.efi")).unwrap(),
            b"MZnewer"
        );
    }
}
