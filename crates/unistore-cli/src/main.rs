//! `unistore`: the porcelain. Parses arguments, calls one library function
//! per command, prints the result, renders progress.

mod docs;
mod fsck;
mod image;
mod lifecycle;
mod progress;
mod render;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use unistore::Sysroot;
use unistore::source::imgref::ImageRef;
use unistore::sysroot::BootedMode;

#[derive(Parser)]
#[command(
    name = "unistore",
    version,
    about = "Unified storage for image-based Linux hosts"
)]
struct Cli {
    /// The physical root to operate on. Without it, /sysroot of the running
    /// system, whose booted deployment is read from the kernel command line.
    #[arg(long, global = true)]
    sysroot: Option<PathBuf>,
    /// The ESP the host boots from through systemd-boot (its loader
    /// entries and kernels). Without it: the running system's /boot, /efi
    /// or /boot/efi, or SYSROOT/boot/efi, whichever holds systemd-boot's
    /// `loader/entries.srel`; else the entries are under SYSROOT/boot.
    #[arg(long, global = true)]
    esp: Option<PathBuf>,
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Registry credentials (a containers `auth.json`). Without it:
    /// `REGISTRY_AUTH_FILE`, then bootc's `/run/ostree/auth.json`,
    /// `/etc/ostree/auth.json`, `/usr/lib/ostree/auth.json`, then the
    /// containers tools' own locations (`$XDG_RUNTIME_DIR/containers/auth.json`, ...).
    #[arg(long, global = true)]
    authfile: Option<PathBuf>,
    /// A containers-policy.json for fetching images instead of the host's
    /// (/etc/containers/policy.json).
    #[arg(long, global = true)]
    signature_policy: Option<PathBuf>,
    /// Refuse a signature policy that accepts any image, and check that the
    /// policy accepts the image before writing anything (bootc's flag).
    #[arg(long, global = true)]
    enforce_container_sigpolicy: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install a host.
    #[command(subcommand)]
    Install(InstallCmd),
    /// Show the host's deployments.
    Status(StatusArgs),
    /// Stage the newest version of the booted image for the next boot.
    Upgrade(lifecycle::UpgradeArgs),
    /// Stage another image for the next boot.
    Switch(lifecycle::SwitchArgs),
    /// Make the rollback deployment the next boot (again: undo).
    Rollback(lifecycle::JsonArg),
    /// The host's images and unified storage.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Low-level operations.
    #[command(subcommand)]
    Internals(InternalsCmd),
}

#[derive(Subcommand)]
enum InstallCmd {
    /// Install an OCI image as a host (native composefs, or ostree with
    /// `--backend ostree`) into the mounted filesystem at ROOT.
    ToFilesystem(InstallArgs),
    /// Install onto a whole disk (or a disk image file with
    /// --via-loopback): GPT with BIOS boot, a 1 GiB ESP and the root;
    /// systemd-boot from the image; a native composefs host.
    ToDisk(ToDiskArgs),
}

#[derive(clap::Args)]
struct InstallArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// What the boot entry's `root=` names, e.g. `UUID=...` or
    /// `/dev/vda2`; empty: no `root=`. Default: `UUID=<uuid>` of the
    /// filesystem ROOT is on (as bootc's install to-filesystem).
    #[arg(long)]
    root_mount_spec: Option<String>,
    /// The mounted ESP to boot from through systemd-boot: loader entries
    /// and kernels go there, and systemd-boot from the image (composefs
    /// backend). Default: ROOT/boot/efi when an ESP is mounted there
    /// (bootc's convention); else entries go to ROOT/boot (GRUB layout).
    #[arg(long)]
    esp: Option<PathBuf>,
    /// The mounted target filesystem.
    root: PathBuf,
}

/// What every install takes: the image, the host's kind and storage.
#[derive(clap::Args)]
struct ImageArgs {
    /// The image to install (docker://, oci:DIR[:TAG], oci-archive:FILE,
    /// containers-storage:REF).
    #[arg(long)]
    source_imgref: Option<String>,
    /// The image the host follows afterwards (default: the source).
    #[arg(long)]
    target_imgref: Option<String>,
    /// An extra kernel argument (repeatable).
    #[arg(long = "karg")]
    kargs: Vec<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Unified storage: share the image's files with the host
    /// containers-storage (`enabled`: by reflinks, else fail;
    /// `enabled-with-copy`: fall back to copies). Wins over
    /// `[install.storage] unified` of the image's and the host's install
    /// config files.
    #[arg(long, value_parser = parse_unified)]
    unified: Option<unistore::unified::UnifiedMode>,
    /// An extra install config file, merged after the image's and the
    /// host's (/etc/bootc/install, /run/bootc/install) (repeatable).
    #[arg(long = "install-config")]
    install_config: Vec<PathBuf>,
    /// The kind of host: `composefs` (native composefs, the default) or
    /// `ostree` (bootc's default backend: deployments in an ostree repo).
    #[arg(long, default_value = "composefs", value_parser = parse_backend)]
    backend: unistore::backends::BackendKind,
    /// The ostree stateroot (`--backend ostree`; default `default`).
    #[arg(long)]
    stateroot: Option<String>,
    /// The loader to install onto the ESP: systemd (systemd-boot, from the
    /// image's usr/lib/systemd/boot/efi) or none.
    #[arg(long, default_value = "systemd", value_parser = parse_bootloader)]
    bootloader: unistore::command::install::Bootloader,
    /// Install without fs-verity on ext4 or btrfs, where bootc requires it
    /// (entries then say composefs=?<id>: the host is not sealed).
    #[arg(long)]
    allow_missing_verity: bool,
}

#[derive(clap::Args)]
struct ToDiskArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Overwrite the partitions or filesystem already on the disk
    /// (without it such a disk is refused, untouched).
    #[arg(long)]
    wipe: bool,
    /// The root filesystem: xfs, ext4 (with the verity feature) or btrfs.
    /// Default: the image's `[install.filesystem.root] type`.
    #[arg(long, value_parser = parse_root_fs)]
    filesystem: Option<unistore::disk::to_disk::RootFs>,
    /// The root partition's size (e.g. 20G, 512M); default: the rest of
    /// the disk.
    #[arg(long, value_parser = parse_size)]
    root_size: Option<u64>,
    /// DEVICE is a regular file (a disk image), built as a new file and
    /// renamed over it at the end; implies --generic-image.
    #[arg(long)]
    via_loopback: bool,
    /// Write no firmware boot variables (unistore never does: firmware
    /// finds systemd-boot at the removable-media path EFI/BOOT/BOOTX64.EFI).
    #[arg(long)]
    generic_image: bool,
    /// The disk: a block device, or a file with --via-loopback.
    device: PathBuf,
}

fn parse_root_fs(s: &str) -> Result<unistore::disk::to_disk::RootFs> {
    s.parse()
}

fn parse_bootloader(s: &str) -> Result<unistore::command::install::Bootloader> {
    s.parse()
}

/// `ROOT/boot/efi` when a filesystem other than ROOT's is mounted there
/// (bootc's place for the ESP at install time).
fn esp_under(root: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let esp = root.join("boot/efi");
    let (r, e) = (std::fs::metadata(root).ok()?, std::fs::metadata(&esp).ok()?);
    (e.is_dir() && e.dev() != r.dev()).then_some(esp)
}

/// `20G`, `512M`, `1T`, `4096` (bytes), `10GiB`.
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("unknown size unit in {s:?} (K, M, G, T)"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

fn parse_backend(s: &str) -> Result<unistore::backends::BackendKind> {
    s.parse()
}

fn parse_unified(s: &str) -> Result<unistore::unified::UnifiedMode> {
    s.parse()
}

/// The host's install config files: `/etc/bootc/install/*.toml`, then
/// `/run/bootc/install/*.toml`, each directory in file-name order.
fn host_install_configs() -> Vec<PathBuf> {
    let mut out = vec![];
    for dir in ["/etc/bootc/install", "/run/bootc/install"] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        out.extend(v);
    }
    out
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Human,
    Json,
    Yaml,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Show only the booted deployment.
    #[arg(long)]
    booted: bool,
}

#[derive(Subcommand)]
enum InternalsCmd {
    /// Mount a deployment read-only the way the initramfs would.
    Mount {
        /// Deployment id (default: the booted one).
        #[arg(long)]
        deployment: Option<String>,
        mountpoint: PathBuf,
    },
    /// Make the staged deployment the next boot (the shutdown step).
    FinalizeStaged(lifecycle::JsonArg),
    /// Write the man pages (one per command, section 8) into DIR.
    #[command(hide = true)]
    Man {
        /// Where to write `unistore.8`, `unistore-install.8`, ...
        dir: PathBuf,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Remove what no boot entry needs.
    Gc(lifecycle::GcArgs),
    /// Check the host's storage (everything, or only `images`); repair
    /// with --repair.
    Fsck(fsck::FsckArgs),
}

fn main() {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNISTORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .without_time()
        // Colour codes only on a terminal, not in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // A panic (ours or a library's) must not reach the user as a backtrace:
    // it is caught here, after the unwinding has run every cleanup guard
    // (an install removes what it created), and told as one error line.
    static PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut p) = PANIC.lock() {
            p.get_or_insert(format!("{msg}{at}"));
        }
    }));
    let _ = AUTHFILE.set(cli.authfile.clone());
    let _ = SIGPOLICY.set((
        cli.signature_policy.clone(),
        cli.enforce_container_sigpolicy,
    ));
    if let Some(a) = &cli.authfile
        && !a.is_file()
    {
        eprintln!("error: --authfile {}: no such file", a.display());
        std::process::exit(1);
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // One line naming the problem, the whole chain of causes.
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        Err(_) => {
            let what = PANIC
                .lock()
                .ok()
                .and_then(|mut p| p.take())
                .unwrap_or_else(|| "unknown panic".into());
            eprintln!(
                "error: internal failure (a panic: {what}); this is a bug in unistore or a library it uses, please report it"
            );
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // podman's private run roots (sockets, locks) live on the host's /run:
    // short paths podman accepts, gone at reboot.
    unistore::stores::containers_storage::set_runtime_dir("/run/unistore");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = run_on(cli, &rt);
    // A pull given up (a registry that stopped sending) leaves skopeo's
    // helpers blocked on their reads: dropping the runtime would wait for
    // them for ever.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

fn run_on(cli: Cli, rt: &tokio::runtime::Runtime) -> Result<()> {
    match cli.cmd {
        Cmd::Install(InstallCmd::ToFilesystem(a)) => rt.block_on(install(a)),
        Cmd::Install(InstallCmd::ToDisk(a)) => rt.block_on(install_to_disk(a)),
        Cmd::Status(a) => status(
            &open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?,
            a,
        ),
        Cmd::Internals(InternalsCmd::Mount {
            deployment,
            mountpoint,
        }) => {
            let sysroot = open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?;
            let id = unistore::backends::detect(&sysroot)?.mount(
                &sysroot,
                deployment.as_deref(),
                &mountpoint,
            )?;
            eprintln!("Mounted deployment {id} at {}", mountpoint.display());
            Ok(())
        }
        Cmd::Upgrade(a) => {
            let sysroot = open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?;
            rt.block_on(lifecycle::upgrade(&sysroot, a, fetch_config()))
        }
        Cmd::Switch(a) => {
            let sysroot = open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?;
            rt.block_on(lifecycle::switch(&sysroot, a, fetch_config()))
        }
        Cmd::Image(c) => {
            let sysroot = open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?;
            rt.block_on(image::run(&sysroot, c))
        }
        Cmd::Rollback(a) => lifecycle::rollback(
            &open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?,
            a,
        ),
        Cmd::Internals(InternalsCmd::Man { dir }) => docs::man_pages(&dir),
        Cmd::Internals(InternalsCmd::Completions { shell }) => docs::completions(shell),
        Cmd::Internals(InternalsCmd::FinalizeStaged(a)) => lifecycle::finalize(
            &open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?,
            a,
        ),
        Cmd::Internals(InternalsCmd::Fsck(a)) => rt.block_on(fsck::run(
            &open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?,
            a,
        )),
        Cmd::Internals(InternalsCmd::Gc(a)) => lifecycle::gc(
            &open_sysroot(cli.sysroot.as_deref(), cli.esp.as_deref())?,
            a,
        ),
    }
}

/// `--sysroot DIR` is an offline root; without it, /sysroot of the running
/// system, booted as the kernel command line says.
fn open_sysroot(path: Option<&Path>, esp: Option<&Path>) -> Result<Sysroot> {
    let s = open_root(path)?;
    let candidates: Vec<PathBuf> = match (esp, path) {
        (Some(e), _) => {
            if !e.join("loader").is_dir() {
                bail!(
                    "--esp {}: no systemd-boot loader directory (loader/) there",
                    e.display()
                );
            }
            return s.with_esp(e);
        }
        (None, Some(p)) => vec![p.join("boot/efi")],
        (None, None) => ["/boot", "/efi", "/boot/efi"].map(PathBuf::from).to_vec(),
    };
    match candidates
        .into_iter()
        .find(|c| c.join("loader/entries.srel").is_file())
    {
        Some(e) => s.with_esp(e),
        None => Ok(s),
    }
}

fn open_root(path: Option<&Path>) -> Result<Sysroot> {
    match path {
        Some(p) => Sysroot::open(p),
        None => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            // composefs=<id>, or ostree=/ostree/boot.N/<stateroot>/<csum>/<serial>
            // (the ostree backend follows that path to its deployment).
            let Some(id) = cmdline.split_whitespace().find_map(|a| {
                a.strip_prefix("composefs=")
                    .map(|v| v.trim_start_matches('?').to_string())
                    .or_else(|| a.strip_prefix("ostree=").map(str::to_string))
            }) else {
                bail!(
                    "this system was not booted from a composefs or ostree deployment; use --sysroot DIR"
                );
            };
            let ostree = id.starts_with('/');
            let s = Sysroot::open_with_mode("/sysroot", BootedMode::Running { booted_id: id })?
                .with_run_dir("/run");
            // libostree recognizes the booted deployment (and stages) only
            // when it opens `/`.
            Ok(if ostree { s.with_ostree_root("/") } else { s })
        }
    }
}

/// `--authfile`, kept for [`fetch_config`].
static AUTHFILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
/// `--signature-policy` and `--enforce-container-sigpolicy`.
static SIGPOLICY: std::sync::OnceLock<(Option<PathBuf>, bool)> = std::sync::OnceLock::new();

/// The registry credentials to use: `--authfile`, `REGISTRY_AUTH_FILE`,
/// bootc's locations; `None` leaves it to the containers tools' defaults.
fn authfile() -> Option<PathBuf> {
    if let Some(Some(a)) = AUTHFILE.get() {
        return Some(a.clone());
    }
    if let Some(a) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|a| !a.is_empty()) {
        return Some(PathBuf::from(a));
    }
    // bootc's, then the containers tools' own default (named here so that
    // the host store's pulls through podman's API get it too).
    let xdg =
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json"));
    [
        "/run/ostree/auth.json",
        "/etc/ostree/auth.json",
        "/usr/lib/ostree/auth.json",
    ]
    .into_iter()
    .map(PathBuf::from)
    .chain(xdg)
    .find(|p| p.is_file())
}

/// Registry settings from the command line and the environment, as podman
/// and bootc read them.
pub(crate) fn fetch_config() -> unistore::source::fetch_config::FetchConfig {
    unistore::source::fetch_config::FetchConfig {
        registries_conf: std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(PathBuf::from),
        authfile: authfile(),
        signature_policy: SIGPOLICY.get().and_then(|(p, _)| p.clone()),
        enforce_sigpolicy: SIGPOLICY.get().is_some_and(|(_, e)| *e),
        no_boot_image: false,
        // `UNISTORE_STALL_TIMEOUT_SECS`: how long a pull may receive
        // nothing before it is given up (default 300).
        stall_timeout: std::env::var("UNISTORE_STALL_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs),
        ostree_objects: None,
        // `UNISTORE_WHOLE_LAYERS=1`: no zstd:chunked partial pulls.
        whole_layers: std::env::var_os("UNISTORE_WHOLE_LAYERS").is_some_and(|v| v == "1"),
    }
}

/// The install options every install shares, from the command line.
fn install_opts(a: &ImageArgs) -> Result<unistore::command::install::InstallOpts> {
    let Some(src) = &a.source_imgref else {
        bail!("--source-imgref is required (unistore does not run from a container image)");
    };
    if a.stateroot.is_some() && a.backend != unistore::backends::BackendKind::Ostree {
        bail!("--stateroot applies to --backend ostree only");
    }
    Ok(unistore::command::install::InstallOpts {
        source: ImageRef::parse(src)?,
        target: a
            .target_imgref
            .as_deref()
            .map(ImageRef::parse)
            .transpose()?,
        kargs: a.kargs.clone(),
        fetch: fetch_config(),
        unified: a.unified,
        host_config_files: {
            let mut v = host_install_configs();
            v.extend(a.install_config.iter().cloned());
            v
        },
        stateroot: a.stateroot.clone(),
        root_mount_spec: None,
        root_flags: None,
        esp: None,
        bootloader: a.bootloader,
        allow_missing_verity: a.allow_missing_verity,
        kernel_verity: Some(kernel_has_verity()),
    })
}

/// Whether the running kernel has fs-verity: ext4 or btrfs say so in their
/// sysfs features (both are built with it when CONFIG_FS_VERITY is set).
fn kernel_has_verity() -> bool {
    [
        "/sys/fs/ext4/features/verity",
        "/sys/fs/btrfs/features/verity",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

async fn install(a: InstallArgs) -> Result<()> {
    let mut opts = install_opts(&a.image)?;
    opts.root_mount_spec = match a.root_mount_spec {
        Some(spec) => Some(spec),
        // A root that is not a directory gets the library's error.
        None if a.root.is_dir() => {
            let fs = root_filesystem(&a.root)?;
            opts.root_flags = fs.subvol.map(|s| format!("subvol={s}"));
            Some(format!("UUID={}", fs.uuid))
        }
        None => None,
    };
    opts.esp = a.esp.or_else(|| esp_under(&a.root));
    let progress = progress::reporter();
    let r = unistore::backends::for_kind(a.image.backend)
        .install(&a.root, &opts, progress.clone())
        .await
        .with_context(|| format!("installing to {}", a.root.display()))?;
    progress::finish(&progress);
    if a.image.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_installed(&opts, &r);
    }
    Ok(())
}

fn print_installed(
    opts: &unistore::command::install::InstallOpts,
    r: &unistore::command::install::InstallResult,
) {
    println!(
        "Installed deployment {}\n  image   {}\n  digest  {}\n  kernel  {}\n  entry   {}",
        r.deployment_id, opts.source, r.manifest_digest, r.kernel_version, r.entry_file
    );
    if let Some(u) = &r.unified {
        println!("  storage {}", u.message);
    }
    // Not the image's files (the storage line above): the deployment's own
    // copies of /etc, the first /var and the kernel and initrd.
    println!(
        "  deployment's own files (/etc, /var, kernel): {}",
        r.deployment_files.describe()
    );
}

async fn install_to_disk(a: ToDiskArgs) -> Result<()> {
    if a.image.backend != unistore::backends::BackendKind::Composefs {
        bail!(
            "install to-disk makes native composefs hosts only: libostree 2022.7 keeps its entries under /boot/loader, a symlink it swaps (loader -> loader.N) that an ESP (vfat) cannot hold, and installs no systemd-boot; use --backend composefs, or install to-filesystem with --backend ostree"
        );
    }
    let opts = install_opts(&a.image)?;
    // Devices in use, for the library's "is mounted" check.
    let mounted_sources = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(" - ")?
                .1
                .split_whitespace()
                .nth(1)
                .map(PathBuf::from)
        })
        .filter(|p| p.starts_with("/dev/"))
        .filter_map(|p| std::fs::canonicalize(&p).ok().or(Some(p)))
        .collect();
    let o = unistore::disk::to_disk::ToDiskOpts {
        device: a.device.clone(),
        wipe: a.wipe,
        filesystem: a.filesystem,
        root_size: a.root_size,
        via_loopback: a.via_loopback,
        install: opts.clone(),
        mounted_sources,
        work_dir: std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp")),
    };
    let _ = a.generic_image;
    let progress = progress::reporter();
    let r = unistore::disk::to_disk::install_to_disk(o, progress.clone())
        .await
        .with_context(|| format!("installing to {}", a.device.display()))?;
    progress::finish(&progress);
    if a.image.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("Disk {}: GPT", r.device.display());
    for p in &r.partitions {
        println!(
            "  {:<11} {}  {:>9.1} MiB at {} MiB",
            p.name,
            p.type_guid,
            p.bytes as f64 / 1048576.0,
            p.offset >> 20
        );
    }
    println!(
        "  root filesystem {:?} UUID {} (label root); ESP vfat UUID {} (label EFI-SYSTEM), systemd-boot",
        r.filesystem, r.root_uuid, r.esp_uuid
    );
    print_installed(&opts, &r.install);
    Ok(())
}

/// The filesystem a root is on, as the initramfs must mount it.
struct RootFilesystem {
    uuid: String,
    /// The btrfs subvolume mounted there (`subvol=` in mountinfo), when not
    /// the top level.
    subvol: Option<String>,
}

/// The filesystem `path` is on: its mount in /proc/self/mountinfo (by the
/// `st_dev` of `path`; on btrfs, whose subvolumes have devices of their
/// own that mountinfo does not list, by the longest mount point holding
/// `path`), then `blkid` probing that mount's device (no udev needed).
fn root_filesystem(path: &Path) -> Result<RootFilesystem> {
    use std::os::unix::fs::MetadataExt;
    let hint = "pass --root-mount-spec (empty for no root=)";
    let dev = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .dev();
    let (major, minor) = (
        ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
        ((dev >> 12) & 0xffff_ff00) | (dev & 0xff),
    );
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let want = format!("{major}:{minor}");
    let canon = std::fs::canonicalize(path)?;
    // <id> <parent> <maj:min> <root> <mountpoint> <options> [<optional>...] - <fstype> <source> <super options>
    struct Mount<'a> {
        dev: &'a str,
        mountpoint: String,
        fstype: &'a str,
        source: &'a str,
        super_opts: &'a str,
    }
    let mounts: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|l| {
            let (head, rest) = l.split_once(" - ")?;
            let h: Vec<&str> = head.split_whitespace().collect();
            let mut f = rest.split_whitespace();
            Some(Mount {
                dev: h.get(2)?,
                mountpoint: h.get(4)?.replace("\\040", " "),
                fstype: f.next()?,
                source: f.next()?,
                super_opts: f.next().unwrap_or(""),
            })
        })
        .collect();
    let by_dev = mounts.iter().rev().find(|m| m.dev == want);
    let by_path = || {
        mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| canon.starts_with(&m.mountpoint))
            .max_by_key(|(i, m)| (m.mountpoint.len(), *i))
            .map(|(_, m)| m)
    };
    let m = by_dev.or_else(by_path).with_context(|| {
        format!(
            "the filesystem of {} (device {want}) is not in /proc/self/mountinfo; {hint}",
            path.display()
        )
    })?;
    let (fstype, source) = (m.fstype, m.source);
    if !source.starts_with("/dev/") {
        bail!(
            "{} is on a {fstype} filesystem without a block device ({source}): no UUID for root=; {hint}",
            path.display()
        );
    }
    let subvol = (fstype == "btrfs")
        .then(|| {
            m.super_opts
                .split(',')
                .find_map(|o| o.strip_prefix("subvol="))
                .map(|s| s.trim_start_matches('/').to_string())
                .filter(|s| !s.is_empty())
        })
        .flatten();
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID", source])
        .output()
        .context("running blkid")?;
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || uuid.is_empty() {
        bail!(
            "blkid found no filesystem UUID on {source} (the device of {}): {}; {hint}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(RootFilesystem { uuid, subvol })
}

fn status(sysroot: &Sysroot, a: StatusArgs) -> Result<()> {
    let backend = unistore::backends::detect(sysroot)?;
    let mut host = backend.status(sysroot)?;
    if a.booted {
        host.status.staged = None;
        host.status.rollback = None;
        host.status.other_deployments.clear();
    }
    let format = match (a.json, a.format) {
        (true, _) => Format::Json,
        (false, Some(f)) => f,
        (false, None) => Format::Human,
    };
    let out = std::io::stdout();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&host)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&host)?),
        Format::Human => render::status(&mut out.lock(), &host, out.is_terminal())?,
    }
    Ok(())
}

/// At most two glibc malloc arenas (its default is eight per CPU): a pull
/// builds an EROFS image of the whole tree on one thread and the boot image
/// on another, and memory one arena freed is not reused by the next. A
/// unified install of a 500 MiB image with 25,000 files: peak RSS 167 MiB
/// with the default, 91 MiB with two arenas (and the library's
/// `malloc_trim` between the two), the same time.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter, before any thread
    // is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
