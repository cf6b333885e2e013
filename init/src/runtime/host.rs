//! What every workload kind borrows: the workloads' root cgroup, the launcher (the seam
//! over the system calls that start and kill), auraed's own executable, the bridges, the
//! log pool, the workload table and one `Allocations` with every counter and shared set.
//! Kinds own their lifecycles (`cell.rs`, `vm.rs`, ...); they take a `&Host`, and the
//! `Runtime` façade in `mod.rs` hands it to them.

use super::cgroup::CgroupDir;
use super::error::Result;
use super::launcher::Launcher;
use super::logs;
use super::table::{Table, Workload};
use super::volume;
use super::Kind;
use crate::runtime::error::Lack;
use crate::runtime::spawn::identity::SpawnIdentity;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The node's resources the workloads share.
pub struct Host {
    pub(super) root: CgroupDir,
    /// Why workloads cannot run on this node, when they cannot.
    pub(super) unusable: Option<String>,
    /// auraed's own executable, re-executed as each cell's holder.
    pub(super) exe: Option<Arc<OwnedFd>>,
    pub(super) table: Mutex<Table>,
    /// How the runtime speaks to spawned children: their API, or a fake in tests.
    pub(super) children: Arc<dyn super::launcher::ChildLink>,
    /// Where instances' initramfs images and PKI directories are written.
    pub(super) instance_dir: PathBuf,
    /// The kernel instances boot (and are given, to spawn in turn).
    pub(super) node_kernel: PathBuf,
    /// Between a served child's health checks, and for each answer (`aurae.child_check`).
    pub(super) child_check: std::time::Duration,
    /// auraed's own executable as a file: what `process::launch_self` runs (a VMM, a cell
    /// fallback's child) and an instance's `/init`; `exe` is the same file, opened once.
    pub(super) own_exe: PathBuf,
    /// KVM and TAPs: the node's, or a fake in tests.
    pub(super) devices: Arc<dyn super::launcher::Devices>,
    /// Starts and kills processes: the system calls, or a fake in tests.
    pub(super) sys: Arc<dyn Launcher>,
    /// The bridge for VM TAPs and its subnet, when the node has one.
    pub(super) bridge: Option<(String, crate::net::Ipv4Cidr)>,
    /// The named bridges (`aurae.bridges=`) instances' extra interfaces attach to.
    pub(super) named_bridges: Vec<crate::net::NamedBridge>,
    pub(super) spawn_identity: Option<SpawnIdentity>,
    /// Where clients' VM files (kernels, initramfs images, disks) may be (`vm::VM_FILE_DIRS`).
    pub(super) vm_file_dirs: Vec<PathBuf>,
    /// Directories of the node no confined cell sees (its keys, VM files).
    pub(super) hidden: Vec<PathBuf>,
    /// Every counter and shared set workloads draw from.
    pub(super) alloc: Allocations,
    /// What every workload's log draws on: the node-wide ceiling on logs.
    pub(super) logs: Arc<logs::LogPool>,
    /// The node's images (cells and pods run from them), or why it has none.
    pub(super) images: crate::image::Catalog,
}

/// Numbers and names workloads take from the node, each handed out here only.
#[derive(Default)]
pub struct Allocations {
    /// TAP/MAC numbers handed out so far.
    taps: AtomicU32,
    /// VMM uids handed out so far (see `vm::VMM_UID_BASE`).
    vmm_uids: AtomicU32,
    /// User namespace id ranges handed out so far (see `next_userns_base`).
    userns_ranges: AtomicU32,
    /// Scratch volumes cells share, with how many cells list each.
    volumes: Mutex<volume::Volumes>,
    /// The subnet CRI sandboxes take their addresses from (kubelet's pod CIDR, carried by
    /// the bridge beside its own), once kubelet gave one.
    pod_subnet: Mutex<Option<crate::net::Ipv4Cidr>>,
}

impl Allocations {
    /// The next TAP/MAC number.
    pub fn next_tap_number(&self) -> u32 {
        self.taps.fetch_add(1, Ordering::Relaxed)
    }

    /// The next VMM uid number (the caller maps it into its range).
    pub fn next_vmm_uid_number(&self) -> u32 {
        self.vmm_uids.fetch_add(1, Ordering::Relaxed)
    }

    /// The node uid that root in the next cell with a user namespace maps to: 65536 ids
    /// each, from 1000000 on, a range of its own per cell (so cells cannot signal, trace or
    /// share files with one another's root), reused after 1000 cells.
    pub fn next_userns_base(&self) -> u32 {
        let n = self.userns_ranges.fetch_add(1, Ordering::Relaxed) % 1000;
        1_000_000 + n * 65_536
    }

    /// The pod subnet kubelet gave, once it gave one.
    pub fn pod_subnet(&self) -> std::sync::MutexGuard<'_, Option<crate::net::Ipv4Cidr>> {
        self.pod_subnet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The volumes cells share.
    pub fn volumes(&self) -> std::sync::MutexGuard<'_, volume::Volumes> {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Host {
    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn usable(&self) -> Result<()> {
        match &self.unusable {
            Some(why) => Err(Lack::Workloads(why.clone()).into()),
            None => Ok(()),
        }
    }

    pub(super) fn lookup(&self, kind: Kind, name: &str) -> Result<Workload> {
        self.table().lookup(kind, name)
    }
}
