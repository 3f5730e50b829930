//! The host as its boot entries describe it: current entries, staged
//! entries (only when the staged marker exists), and which is booted.

use std::collections::BTreeSet;

use anyhow::Result;

use crate::boot::bls::{self, BlsEntry};
use crate::deployment::staged::{self, StagedMarker};
use crate::sysroot::{BootedMode, Sysroot};

/// What the loader directories say.
#[derive(Debug, Clone)]
pub struct HostState {
    /// `boot/loader/entries`, primary first.
    pub entries: Vec<BlsEntry>,
    /// `boot/loader/entries.staged` when a staged deployment exists.
    pub staged_entries: Vec<BlsEntry>,
    /// The staged-deployment marker.
    pub marker: Option<StagedMarker>,
    /// Index in `entries` of the booted deployment.
    pub booted: Option<usize>,
}

impl HostState {
    /// Reads the loader directories and the marker. Writes nothing.
    pub fn read(sysroot: &Sysroot) -> Result<Self> {
        let entries = bls::read_entries(sysroot, sysroot.entries_dir())?;
        let marker = staged::read(sysroot)?;
        let staged_entries = if marker.is_some() {
            bls::read_entries(sysroot, sysroot.staged_entries_dir())?
        } else {
            vec![]
        };
        let booted = match sysroot.booted_mode() {
            BootedMode::Offline => (!entries.is_empty()).then_some(0),
            BootedMode::Running { booted_id } => entries
                .iter()
                .position(|e| e.deployment_id() == Some(booted_id.as_str())),
        };
        Ok(Self {
            entries,
            staged_entries,
            marker,
            booted,
        })
    }

    /// The booted entry.
    pub fn booted_entry(&self) -> Option<&BlsEntry> {
        self.booted.map(|i| &self.entries[i])
    }

    /// The booted deployment id.
    pub fn booted_id(&self) -> Option<&str> {
        self.booted_entry().and_then(|e| e.deployment_id())
    }

    /// The staged deployment's entry (primary of the staged entries).
    pub fn staged_entry(&self) -> Option<&BlsEntry> {
        let m = self.marker.as_ref()?;
        self.staged_entries
            .iter()
            .find(|e| e.deployment_id() == Some(m.depl_id.as_str()))
    }

    /// Every entry that keeps a deployment alive.
    pub fn live_entries(&self) -> impl Iterator<Item = &BlsEntry> {
        self.entries.iter().chain(self.staged_entries.iter())
    }

    /// Ids of live deployments.
    pub fn live_ids(&self) -> BTreeSet<String> {
        self.live_entries()
            .filter_map(|e| e.deployment_id().map(str::to_string))
            .collect()
    }

    /// Kernel directories named by live entries.
    pub fn live_kernel_dirs(&self) -> BTreeSet<String> {
        self.live_entries()
            .filter_map(|e| e.kernel_dir().map(str::to_string))
            .collect()
    }
}
