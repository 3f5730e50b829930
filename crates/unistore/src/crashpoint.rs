//! Crash points for tests. [`hit`]`(name)` marks a step of an operation
//! where a crash must leave a host that is whole (the old state or the new
//! one, plus garbage the GC removes). Without `UNISTORE_CRASHPOINT` it does
//! nothing. With it:
//!
//! * `<name>`: the process SIGKILLs itself there (what a killed process
//!   leaves: everything written reached the page cache);
//! * `powercut:<name>`: the filesystem mounted at `UNISTORE_POWERCUT_FS`
//!   is shut down without flushing its log (`XFS_IOC_GOINGDOWN` with
//!   `NOLOGFLUSH`, what `xfs_io -x -c shutdown` does; ext4's
//!   `EXT4_IOC_SHUTDOWN` has the same number and flag), then the process
//!   SIGKILLs itself: what was not synced is lost, as in a power cut, once
//!   the test unmounts and mounts it again (log recovery);
//! * `panic:<name>`: a panic there, to test that a panic reaches the user as
//!   one error line after the unwinding has run the cleanup guards.
//!
//! Every point is listed in [`ALL`] with the scenario that reaches it; a
//! unit test fails when the code calls [`hit`] with a name [`ALL`] lacks (or
//! [`ALL`] lists a name no code reaches), and the end-to-end crash walk
//! runs every point of [`ALL`] both ways.

/// What a test runs to reach a crash point, from a prepared host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// `install to-filesystem` (composefs) onto an empty root.
    Install,
    /// `install to-filesystem --unified enabled` (composefs, reflinks).
    InstallUnified,
    /// `install to-filesystem --unified enabled-with-copy` without reflinks
    /// (ext4): podman pulls into the store first.
    InstallUnifiedCopy,
    /// `upgrade` of a composefs host to a new image.
    Upgrade,
    /// `switch` to the booted image under another reference (origin only).
    Switch,
    /// `internals finalize-staged` of a staged upgrade.
    Finalize,
    /// `rollback` of a host with two deployments.
    Rollback,
    /// `internals gc` of a host with a dead deployment.
    Gc,
    /// The first writing command on a root an older version wrote.
    Migrate,
    /// `image set-unified full` of a composefs host.
    SetUnified,
    /// `internals fsck images --repair` of a unified host with a missing
    /// object and a missing store image.
    FsckRepair,
    /// `install to-filesystem --backend ostree --unified enabled`.
    OstreeInstall,
    /// `upgrade` of an ostree host.
    OstreeUpgrade,
    /// `rollback` of an ostree host.
    OstreeRollback,
    /// `internals gc` of a unified ostree host with a dead image.
    OstreeGc,
    /// `image set-unified full` of an ostree host.
    OstreeSetUnified,
    /// The first writing command (`internals gc`) on a unified ostree host
    /// an older version wrote (old ref names, no layer commits).
    OstreeMigrate,
    /// `install to-filesystem` onto a root with an ESP (systemd-boot).
    InstallEsp,
    /// `install to-disk --via-loopback` onto a disk image file.
    ToDisk,
}

/// A crash point: its name and the scenario that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPoint {
    pub name: &'static str,
    pub scenario: Scenario,
}

const fn p(name: &'static str, scenario: Scenario) -> CrashPoint {
    CrashPoint { name, scenario }
}

use Scenario::*;

/// Every crash point of the library, in the order the scenarios reach them.
pub const ALL: &[CrashPoint] = &[
    p("install:after-pull", Install),
    p("install:after-deploy", Install),
    p("unified:after-composefs-pull", InstallUnified),
    p("unified:after-store-write", InstallUnified),
    p("cstor-writer:after-layer", InstallUnified),
    p("cstor-writer:after-images-json", InstallUnified),
    p("unified:after-share", InstallUnified),
    p("install:after-flag", InstallUnified),
    p("unified:after-store-pull", InstallUnifiedCopy),
    p("upgrade:after-pull", Upgrade),
    p("upgrade:after-deploy", Upgrade),
    p("upgrade:after-entries", Upgrade),
    p("upgrade:after-marker", Upgrade),
    p("switch:after-origin", Switch),
    p("finalize:after-etc", Finalize),
    p("finalize:after-swap", Finalize),
    p("finalize:after-unmark", Finalize),
    p("rollback:before-swap", Rollback),
    p("rollback:after-swap", Rollback),
    p("gc:after-kernels", Gc),
    p("gc:after-state-dirs", Gc),
    p("gc:after-tags", Gc),
    p("gc:before-repo-gc", Gc),
    p("migrate:after-rename", Migrate),
    p("migrate:after-entries", Migrate),
    p("set-unified:start", SetUnified),
    p("set-unified:after-image", SetUnified),
    p("set-unified:before-flag", SetUnified),
    p("set-unified:after-flag", SetUnified),
    p("fsck-repair:after-object-restore", FsckRepair),
    p("fsck-repair:after-record-pending", FsckRepair),
    p("fsck-repair:after-store-write", FsckRepair),
    p("ostree-install:after-pull", OstreeInstall),
    p("ostree-install:after-commit", OstreeInstall),
    p("ostree-install:after-deploy", OstreeInstall),
    p("ostree-install:after-write-deployment", OstreeInstall),
    p("ostree-install:before-flag", OstreeInstall),
    p("ostree-upgrade:after-pull", OstreeUpgrade),
    p("ostree-upgrade:after-commit", OstreeUpgrade),
    p("ostree-upgrade:after-deploy", OstreeUpgrade),
    p("ostree-upgrade:after-write", OstreeUpgrade),
    p("ostree-rollback:before-write", OstreeRollback),
    p("ostree-rollback:after-write", OstreeRollback),
    p("ostree-gc:before-cleanup", OstreeGc),
    p("ostree-gc:before-composefs-gc", OstreeGc),
    p("ostree-set-unified:start", OstreeSetUnified),
    p("ostree-set-unified:after-composefs", OstreeSetUnified),
    p("ostree-set-unified:after-share", OstreeSetUnified),
    p("ostree-set-unified:after-image", OstreeSetUnified),
    p("ostree-set-unified:before-flag", OstreeSetUnified),
    p("ostree-set-unified:after-flag", OstreeSetUnified),
    p("ostree-migrate:after-new-ref", OstreeMigrate),
    p("ostree-migrate:after-layers", OstreeMigrate),
    p("install:after-loader", InstallEsp),
    p("to-disk:after-partition", ToDisk),
    p("to-disk:after-mkfs", ToDisk),
    p("to-disk:after-install", ToDisk),
    p("to-disk:after-esp", ToDisk),
];

/// The points a scenario reaches.
pub fn of(scenario: Scenario) -> Vec<&'static str> {
    ALL.iter()
        .filter(|c| c.scenario == scenario)
        .map(|c| c.name)
        .collect()
}

/// The variable naming the point.
pub const ENV: &str = "UNISTORE_CRASHPOINT";
/// The variable naming the mount point a power cut shuts down.
pub const POWERCUT_FS_ENV: &str = "UNISTORE_POWERCUT_FS";

/// `_IOR('X', 125, __u32)`: `XFS_IOC_GOINGDOWN` (and `EXT4_IOC_SHUTDOWN`).
const GOINGDOWN: libc::c_ulong = 0x8004_587d;
/// `XFS_FSOP_GOING_FLAGS_NOLOGFLUSH` (`EXT4_GOING_FLAGS_NOLOGFLUSH`).
const NOLOGFLUSH: u32 = 2;

fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort();
}

/// Shuts the filesystem at `mnt` down without a log flush.
fn power_cut(mnt: &std::ffi::OsStr) -> ! {
    use std::os::fd::AsRawFd;
    match std::fs::File::open(mnt) {
        Ok(f) => {
            let flags: u32 = NOLOGFLUSH;
            // SAFETY: the ioctl reads one u32 from the pointer, which lives
            // across the call.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), GOINGDOWN, &flags as *const u32) };
            if r != 0 {
                tracing::error!(
                    "power cut: shutting down {mnt:?}: {}",
                    std::io::Error::last_os_error()
                );
                std::process::abort();
            }
        }
        Err(e) => {
            tracing::error!("power cut: opening {mnt:?}: {e}");
            std::process::abort();
        }
    }
    kill_self()
}

/// Dies here if `UNISTORE_CRASHPOINT` names this point (see the module).
pub fn hit(name: &str) {
    debug_assert!(
        ALL.iter().any(|c| c.name == name),
        "crash point {name} is not in crashpoint::ALL"
    );
    let Some(v) = std::env::var_os(ENV) else {
        return;
    };
    let Some(v) = v.to_str() else { return };
    if v.strip_prefix("panic:") == Some(name) {
        panic!("test panic at crash point {name}");
    }
    if v.strip_prefix("powercut:") == Some(name) {
        match std::env::var_os(POWERCUT_FS_ENV) {
            Some(mnt) => power_cut(&mnt),
            None => {
                tracing::error!("power cut at {name}: {POWERCUT_FS_ENV} is not set");
                std::process::abort();
            }
        }
    }
    if v == name {
        kill_self();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every `hit("...")` of the crate's sources.
    fn names_in_sources() -> BTreeSet<String> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = BTreeSet::new();
        let mut stack = vec![src];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") || p.ends_with("crashpoint.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, _) in text.match_indices("crashpoint::hit(") {
                    let rest = &text[i + "crashpoint::hit(".len()..];
                    let rest = rest.trim_start();
                    assert!(
                        rest.starts_with('"'),
                        "{}: crashpoint::hit must take a string literal",
                        p.display()
                    );
                    let name = rest[1..].split('"').next().unwrap();
                    out.insert(name.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn every_point_in_the_code_is_registered_and_reached() {
        let code = names_in_sources();
        let listed: BTreeSet<String> = ALL.iter().map(|c| c.name.to_string()).collect();
        assert_eq!(listed.len(), ALL.len(), "a name is listed twice");
        let unlisted: Vec<_> = code.difference(&listed).collect();
        assert!(
            unlisted.is_empty(),
            "crash points in the code but not in crashpoint::ALL (the walk would miss them): {unlisted:?}"
        );
        let dead: Vec<_> = listed.difference(&code).collect();
        assert!(
            dead.is_empty(),
            "crash points in crashpoint::ALL that no code reaches: {dead:?}"
        );
        assert!(ALL.len() >= 50, "{} crash points", ALL.len());
    }
}
