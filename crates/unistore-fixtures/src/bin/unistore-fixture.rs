//! `unistore-fixture`: build test images from the command line.
//!
//! * `unistore-fixture test-image --out DIR --tag TAG [--version V] [--variant N] [--no-kernel]`
//! * `unistore-fixture from-rootfs ROOTFS --out DIR --tag TAG [--version V]`
//!
//! Both print the manifest digest on stdout.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use unistore_fixtures::image::{TestImageOpts, build_from_rootfs, build_test_image};

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
        /// Leave out /usr/lib/modules/<kver>/{vmlinuz,initramfs.img}.
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
}

fn payload(total_mib: u64) -> Vec<(String, Vec<u8>)> {
    const CHUNK: u64 = 8;
    let mut files = Vec::new();
    let mut left = total_mib;
    let mut i = 0;
    while left > 0 {
        let mib = left.min(CHUNK);
        let seed = format!("payload-{i}");
        files.push((
            format!("/usr/share/unistore-payload/blob-{i:03}.bin"),
            unistore_fixtures::rng::pseudo_random_bytes(&seed, (mib * 1024 * 1024) as usize),
        ));
        left -= mib;
        i += 1;
    }
    files
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (built, expected_json) = match cli.cmd {
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
                extra_files: payload(payload_mib),
                etc_files: Vec::new(),
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
