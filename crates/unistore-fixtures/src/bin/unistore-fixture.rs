//! `unistore-fixture`: build test images from the command line.
//!
//! * `unistore-fixture test-image --out DIR --tag TAG [--version V] [--variant N] [--no-kernel]`
//! * `unistore-fixture from-rootfs ROOTFS --out DIR --tag TAG [--version V]`
//! * `unistore-fixture scale-image --out DIR --files N --layers L --mib M [--versions K] [--seed S]`
//! * `unistore-fixture compare TREE --oci DIR --tag TAG [--xattrs MODE] [--ignore PATH]...`
//! * `unistore-fixture boot DISK [--log FILE] [--extra-disk IMG]... [--append ARG]...`
//!
//! The first two print the manifest digest on stdout, `scale-image` a JSON summary (tags
//! `v1` .. `vK` and their manifest digests); `compare` prints the differences
//! between a real tree (a mount, an unpacked bundle) and the image's merged layers, and
//! exits with status 1 if there are any. `boot` boots an installed disk image in
//! QEMU (TCG) from its primary boot entry (docs/boot.md); without `--log` the
//! serial console is this terminal.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use unistore_fixtures::image::{
    CompareOpts, ScaleImageOpts, TestImageOpts, XattrCheck, build_from_rootfs, build_scale_image,
    build_test_image, compare_tree, expected_from_oci,
};

#[derive(Parser, Debug)]
#[command(
    name = "unistore-fixture",
    about = "Build OCI test images for unistore"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate the small deterministic multi-layer test image.
    TestImage {
        /// OCI layout directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Tag in the layout.
        #[arg(long)]
        tag: String,
        /// Version (os-release VERSION_ID and the image version label).
        #[arg(long, default_value = "1.0")]
        version: String,
        /// os-release ID.
        #[arg(long, default_value = "testos")]
        os_id: String,
        /// Content variant: different kernels and a few files.
        #[arg(long, default_value_t = 1)]
        variant: u32,
        /// Leave out the kernel and initramfs under /usr/lib/modules/6.1.0-test/.
        #[arg(long)]
        no_kernel: bool,
        /// Add deterministic pseudo-random payload files of this many MiB in total
        /// (8 MiB files under /usr/share/unistore-payload, the same for every variant),
        /// as a last layer.
        #[arg(long, default_value_t = 0)]
        payload_mib: u64,
        /// Also write the expected merged tree as JSON to this file.
        #[arg(long)]
        expected_json: Option<PathBuf>,
    },
    /// Generate a benchmark-sized image: the test image's three base layers, `--layers`
    /// content layers holding `--files` files of `--mib` MiB in total (mixed sizes, text
    /// and binary), and a small top layer that differs per version (tags v1 .. vK).
    ScaleImage {
        /// OCI layout directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Regular files in the content layers.
        #[arg(long)]
        files: u64,
        /// Content layers.
        #[arg(long)]
        layers: u32,
        /// MiB of file content in the content layers.
        #[arg(long)]
        mib: u64,
        /// Versions to write (tags v1 .. vK; each differs from v1 only in its top layer).
        #[arg(long, default_value_t = 2)]
        versions: u32,
        /// Seed of every pseudo-random choice.
        #[arg(long, default_value = "unistore-scale")]
        seed: String,
        /// gzip level of the layers.
        #[arg(long, default_value_t = 6)]
        level: u32,
    },
    /// Pack an existing root filesystem directory into a 2-layer image (/usr, rest).
    FromRootfs {
        /// The root filesystem directory.
        rootfs: PathBuf,
        /// OCI layout directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Tag in the layout.
        #[arg(long)]
        tag: String,
        /// The image version label.
        #[arg(long, default_value = "1.0")]
        version: String,
        /// Also write the expected merged tree as JSON to this file.
        #[arg(long)]
        expected_json: Option<PathBuf>,
    },
    /// Boot an installed disk image in QEMU (TCG), playing the boot loader:
    /// the primary BLS entry's kernel, initrd and options (+ console=ttyS0).
    Boot {
        /// The raw disk image (a whole-disk filesystem holding an installed root).
        disk: PathBuf,
        /// Write the serial console here (default: this terminal, interactive).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Another raw disk image for the VM (repeatable).
        #[arg(long = "extra-disk")]
        extra_disks: Vec<PathBuf>,
        /// A kernel argument after the entry's (repeatable).
        #[arg(long)]
        append: Vec<String>,
        /// Kill the VM after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Boot through firmware (q35, OVMF, the disk's systemd-boot), not
        /// from the entry's kernel: a disk made by `install to-disk`.
        #[arg(long)]
        uefi: bool,
    },
    /// Compare a real directory tree with the merged layers of an image.
    Compare {
        /// The tree to check (e.g. a composefs mount).
        tree: PathBuf,
        /// OCI layout directory holding the image.
        #[arg(long)]
        oci: PathBuf,
        /// Tag of the image.
        #[arg(long)]
        tag: String,
        /// Which xattrs to compare: composefs (security.capability), layer (also user.*),
        /// ignore.
        #[arg(long, default_value = "composefs")]
        xattrs: String,
        /// Absolute paths to leave out (with everything below), repeatable.
        #[arg(long)]
        ignore: Vec<String>,
    },
}

fn compare(
    tree: PathBuf,
    oci: PathBuf,
    tag: String,
    xattrs: String,
    ignore: Vec<String>,
) -> Result<()> {
    let xattrs = match xattrs.as_str() {
        "composefs" => XattrCheck::Composefs,
        "layer" => XattrCheck::Layer,
        "ignore" => XattrCheck::Ignore,
        other => anyhow::bail!("unknown --xattrs {other:?}"),
    };
    let expected = expected_from_oci(&oci, &tag)?;
    let opts = CompareOpts {
        xattrs,
        ignore,
        ignore_owners: false,
    };
    let diffs = compare_tree(&tree, &expected, &opts)?;
    for d in &diffs {
        println!("{d}");
    }
    if !diffs.is_empty() {
        eprintln!(
            "{} difference(s) in {} expected entries",
            diffs.len(),
            expected.len()
        );
        std::process::exit(1);
    }
    eprintln!("{} entries match", expected.len());
    Ok(())
}

fn boot(
    disk: PathBuf,
    log: Option<PathBuf>,
    extra_disks: Vec<PathBuf>,
    append: Vec<String>,
    timeout: u64,
    uefi: bool,
) -> Result<()> {
    use unistore_fixtures::env::vm;
    let work = tempfile::tempdir()?;
    let console = work.path().join("console");
    let mut opts = vm::VmOpts::new(log.as_deref().unwrap_or(&console));
    opts.interactive = log.is_none();
    opts.extra_disks = extra_disks;
    opts.extra_append = append;
    opts.timeout = std::time::Duration::from_secs(timeout);
    let r = if uefi {
        eprintln!(
            "booting {} through firmware (q35, OVMF, systemd-boot on its ESP)",
            disk.display()
        );
        vm::boot_uefi(&disk, &opts)?
    } else {
        let spec = vm::primary_entry_of_image(&disk, work.path())?;
        eprintln!(
            "booting {} ({}): {}",
            disk.display(),
            spec.entry_file,
            vm::append_line(&spec, &opts)
        );
        vm::boot(&disk, &spec, &opts)?
    };
    eprintln!(
        "{} after {:.0} s{}",
        if r.exited {
            "QEMU exited"
        } else {
            "timed out, killed"
        },
        r.elapsed.as_secs_f64(),
        log.map(|l| format!("; console in {}", l.display()))
            .unwrap_or_default()
    );
    if !r.exited {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (built, expected_json) = match cli.cmd {
        Cmd::Compare {
            tree,
            oci,
            tag,
            xattrs,
            ignore,
        } => return compare(tree, oci, tag, xattrs, ignore),
        Cmd::Boot {
            disk,
            log,
            extra_disks,
            append,
            timeout,
            uefi,
        } => return boot(disk, log, extra_disks, append, timeout, uefi),
        Cmd::ScaleImage {
            out,
            files,
            layers,
            mib,
            versions,
            seed,
            level,
        } => {
            let opts = ScaleImageOpts {
                files,
                layers,
                mib,
                versions,
                seed,
                level,
            };
            let img = build_scale_image(&out, &opts)?;
            println!("{}", serde_json::to_string(&img)?);
            return Ok(());
        }
        Cmd::TestImage {
            out,
            tag,
            version,
            os_id,
            variant,
            no_kernel,
            payload_mib,
            expected_json,
        } => {
            let opts = TestImageOpts {
                version,
                os_id,
                with_kernel: !no_kernel,
                variant,
                extra_files: Vec::new(),
                etc_files: Vec::new(),
                payload_mib,
            };
            (build_test_image(&out, &tag, &opts)?, expected_json)
        }
        Cmd::FromRootfs {
            rootfs,
            out,
            tag,
            version,
            expected_json,
        } => (
            build_from_rootfs(&rootfs, &out, &tag, &version)?,
            expected_json,
        ),
    };
    if let Some(p) = expected_json {
        let f = std::fs::File::create(&p).with_context(|| format!("creating {p:?}"))?;
        serde_json::to_writer(std::io::BufWriter::new(f), &built)?;
    }
    println!("{}", built.manifest_digest);
    Ok(())
}
