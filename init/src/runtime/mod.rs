//! The runtime: every workload kind, and the table of workloads. The server hands it
//! validated specs (`spec`), it answers with plain status structs; it never sees protobuf.
//!
//! `Runtime` (here) is the façade, one method per rpc. What the kinds share is the `Host`
//! (`host.rs`); each kind's file creates one with free functions (`vm::run(host, spec)`)
//! and runs the rest of its life as methods of its own type (`vm.stop(grace)`,
//! `cell.free(host)`), which `table.rs` dispatches to by kind.
//!
//! cgroup layout under the workloads root (`/sys/fs/cgroup/aurae` on the appliance):
//!
//! ```text
//! aurae/<cell>/            the cell: its limits apply here; controllers enabled for children
//! aurae/<cell>/_init       the cell's holder (`aurae-cell-init`), owner of its namespaces
//! aurae/<cell>/_x.<exe>    one leaf per executable: its own usage, peak memory, OOM count
//! aurae/<cell>/<child>/    a nested cell, same shape
//! ```
//! Processes live only in leaves, which is cgroup v2's no-internal-process rule. Names never
//! start with `_`, so these leaves cannot collide with cells.

pub(crate) mod attach;
pub(crate) mod cell;
pub(crate) mod cgroup;
pub(crate) mod confine;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod executable;
pub mod holder;
pub(crate) mod host;
pub(crate) mod launcher;
pub(crate) mod logs;
pub(crate) use crate::values::names;
pub(crate) mod pod;
pub(crate) mod process;
pub(crate) mod rootfs;
pub(crate) mod spawn;
pub(crate) mod spec;
pub(crate) mod sys;
pub(crate) mod table;
pub(crate) mod tap;
pub(crate) mod vm;
pub(crate) mod volume;

use cgroup::CgroupDir;
use error::Result;
use host::{Allocations, Host};
use launcher::Launcher;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sys::start::SysLauncher;
use table::{Table, Workload};

pub use cell::{Cell, CellView};
pub use process::{ExecView, Process};
pub use spawn::instance::{InstanceSpec, InstanceView, SpawnIdentity};
pub use spec::NetAttachment;
pub use vm::VmView;

/// Where a workload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Exited,
    Killed,
    Failed,
    Frozen,
    Stopped,
}

impl Phase {
    pub fn ended(self) -> bool {
        matches!(self, Phase::Exited | Phase::Killed | Phase::Failed | Phase::Stopped)
    }
}

/// Workload kinds, in the order `List` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Cell,
    Executable,
    VirtualMachine,
    Instance,
    Pod,
}

#[derive(Debug, Clone)]
pub enum View {
    Executable(ExecView),
    Cell(Box<CellView>),
    VirtualMachine(VmView),
    Instance(Box<InstanceView>),
    Pod(Box<pod::PodView>),
}

/// Polling interval for cgroup state changes (populated, frozen): starts short, because a
/// killed cgroup usually empties within a millisecond, and backs off to `POLL_MAX`.
const POLL_MIN: Duration = Duration::from_micros(500);
const POLL_MAX: Duration = Duration::from_millis(10);
/// How long a stopped workload gets to end by itself before it is killed, unless the
/// request says otherwise. The one definition; the API and the CLI use it.
pub const DEFAULT_GRACE_MS: u32 = 10_000;
/// How long to wait for the kernel to empty a killed cgroup, or to freeze one.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn is_cgroup2(path: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// What the daemon sets up before the runtime serves (see [`Runtime::configure`]).
/// What `Runtime::container` does to a sandbox's container.
#[derive(Debug, Clone, Copy)]
pub enum ContainerStep {
    /// Start its entrypoint, within this long.
    Start(Duration),
    /// SIGTERM, this grace, then a kill.
    Stop(Duration),
    Remove,
}

pub struct Settings {
    /// The node bridge VM TAPs and instances join, with its address.
    pub bridge: Option<(String, crate::net::Ipv4Cidr)>,
    /// The bridges a pod's extra interfaces may name.
    pub named_bridges: Vec<crate::net::NamedBridge>,
    /// At most this many workloads at once (see `table::Table::insert`).
    pub max_workloads: Option<usize>,
    /// How often served children are checked (`spawn::instance::health`).
    pub child_check: Option<Duration>,
    /// The node's PKI directory, added to what confined cells never see.
    pub pki_dir: Option<PathBuf>,
    /// Spawn's CA and policy; without it Spawn is refused.
    pub spawn_identity: Option<SpawnIdentity>,
    /// The node's image store and registries, which cells and pods run from.
    pub images: crate::image::Catalog,
}

/// What the node's workloads hold (`Runtime::usage`).
pub struct Usage {
    /// The node-wide log ceiling and what all logs hold now (bytes).
    pub log_budget: usize,
    pub log_held: usize,
    /// Log bytes lost so far (evicted for newer lines, or never stored).
    pub log_dropped: u64,
    /// The whole workloads tree's cgroup figures (its OOM kills count every cell's).
    pub workloads: cgroup::Usage,
    /// Every image a cell or pod runs from, and who runs it (what a removal keeps).
    pub images: Vec<crate::image::catalog::InUse>,
}

/// A channel to a child auraed and what ends when the child does (see `Runtime::channel`).
pub struct ChildChannel {
    pub channel: tonic::transport::Channel,
    pub ended: std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>,
}

/// The runtime as the server sees it: one method per rpc, each handing the node's `Host` to
/// the kind that does the work.
pub struct Runtime {
    /// Shared with what outlives a call: a pod's keeper, which makes the pod a new instance
    /// when its own ends.
    host: Arc<Host>,
}

impl Runtime {
    /// A runtime creating workloads under `root`. `init_error` is set when bring-up could
    /// not prepare the cgroup tree; every Run* then fails with it.
    pub fn new(root: PathBuf, init_error: Option<String>) -> Runtime {
        let own_exe = PathBuf::from("/proc/self/exe");
        let exe = std::fs::File::open(&own_exe).map(|f| Arc::new(OwnedFd::from(f)));
        let unusable = match (&init_error, &exe) {
            (Some(e), _) => Some(e.clone()),
            _ if !root.is_dir() || !is_cgroup2(&root) => Some(format!(
                "{} is not a cgroup v2 directory auraed owns (is cgroup2 mounted at /sys/fs/cgroup?)",
                root.display()
            )),
            (None, Err(e)) => Some(format!("cannot open auraed's own executable: {e}")),
            _ => None,
        };
        if let Some(why) = &unusable {
            tracing::warn!("workloads cannot run on this node: {why}");
        }
        let host = Host {
            root: CgroupDir::new(root),
            unusable,
            exe: exe.ok(),
            table: Mutex::new(Table::default()),
            sys: Arc::new(SysLauncher),
            devices: Arc::new(launcher::NodeDevices),
            children: Arc::new(launcher::ChildApi),
            instance_dir: PathBuf::from(spawn::instance::INSTANCE_DIR),
            node_kernel: PathBuf::from(crate::vmm::NODE_KERNEL),
            child_check: spawn::instance::health::DEFAULT_EVERY,
            own_exe,
            vm_file_dirs: vm::VM_FILE_DIRS.iter().map(PathBuf::from).collect(),
            bridge: None,
            named_bridges: Vec::new(),
            spawn_identity: None,
            hidden: confine::hidden_paths(std::path::Path::new("/etc/aurae")),
            alloc: Allocations::default(),
            images: Err(Arc::new(crate::image::ImageError::NoStore)),
            // RAM unknown (0): budgeted as 1 GiB.
            logs: logs::LogPool::new(logs::node_budget(match crate::node::mem_total_bytes() {
                0 => 1 << 30,
                m => m,
            })),
        };
        Runtime { host: Arc::new(host) }
    }

    /// The host while nothing else holds it: before the runtime serves (tests only).
    #[cfg(test)]
    pub(crate) fn host_mut(&mut self) -> &mut Host {
        Arc::get_mut(&mut self.host).expect("the host is not shared yet")
    }

    /// A runtime on a fixture directory whose processes `sys` fakes (tests only).
    #[cfg(test)]
    pub(crate) fn with_launcher(root: PathBuf, sys: Arc<dyn Launcher>) -> Runtime {
        let mut rt = Runtime::new(root, None);
        rt.host_mut().unusable = None;
        rt.host_mut().sys = sys;
        rt
    }

    /// With fake devices too, a bridge for TAPs, and clients' VM files taken from
    /// `vm_files` (tests only).
    #[cfg(test)]
    pub(crate) fn with_fakes(
        root: PathBuf,
        sys: Arc<dyn Launcher>,
        devices: Arc<dyn launcher::Devices>,
        vm_files: PathBuf,
    ) -> Runtime {
        let mut rt = Runtime::with_launcher(root, sys);
        let host = rt.host_mut();
        host.devices = devices;
        host.vm_file_dirs = vec![vm_files];
        host.bridge = Some((
            "aurae0".into(),
            crate::net::Ipv4Cidr {
                addr: std::net::Ipv4Addr::new(10, 254, 0, 1),
                prefix: 24,
            },
        ));
        rt
    }

    /// What the node's bring-up and PKI give the runtime: bridges, the workload ceiling,
    /// what cells never see, Spawn's identity and the image store.
    /// Called once, before the runtime is shared (auraed's bring-up); later it changes
    /// nothing and says so.
    pub fn configure(&mut self, s: Settings) {
        let Some(host) = Arc::get_mut(&mut self.host) else {
            tracing::error!("the runtime is configured once, before it serves; these settings are ignored");
            return;
        };
        host.bridge = s.bridge;
        host.named_bridges = s.named_bridges;
        if let Some(max) = s.max_workloads {
            host.table().max = max;
        }
        host.child_check = s.child_check.unwrap_or(host.child_check);
        if let Some(d) = &s.pki_dir {
            host.hidden = confine::hidden_paths(d);
        }
        host.spawn_identity = s.spawn_identity;
        host.images = s.images;
    }

    pub async fn run_executable(&self, spec: spec::ExecutableSpec) -> Result<ExecView> {
        executable::run(&self.host, spec).await
    }

    /// A cell; with `image`, pulled (as its policy says) and made the cell's root, its
    /// volumes owned by `owner`, the layers held until the cell exists.
    pub async fn run_cell(
        &self,
        mut spec: spec::CellSpec,
        image: Option<spec::ImageRequest>,
        owner: &str,
    ) -> Result<CellView> {
        let _hold = match image {
            Some(req) => Some(cell::prepare_image(&self.host, &mut spec, req, owner).await?),
            None => None,
        };
        cell::run(&self.host, spec).await
    }

    pub async fn run_vm(&self, spec: spec::VmSpec) -> Result<VmView> {
        vm::run(&self.host, spec).await
    }

    pub async fn spawn(&self, spec: InstanceSpec) -> Result<InstanceView> {
        spawn::instance::spawn(&self.host, spec).await
    }

    /// A pod: each image its containers name pulled (as its policy says) into this node's
    /// store once, then the pod's instance spawned and its containers started.
    pub async fn run_pod(&self, spec: crate::runtime::pod::spec::PodSpec) -> Result<pod::PodView> {
        let images = pod::prepare_images(&self.host, &spec).await?;
        pod::run(&self.host, spec, images).await
    }

    /// Makes a container in sandbox `pod` (pulling its image here as its policy says), not
    /// started; within `timeout`.
    pub async fn create_container(
        &self,
        pod: &str,
        spec: pod::spec::ContainerSpec,
        timeout: Duration,
    ) -> Result<pod::ContainerView> {
        let deadline = tokio::time::Instant::now() + timeout;
        let image = pod::prepare_container_image(&self.host, &spec).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        pod::create_container(&self.host, pod, spec, image, left).await
    }

    /// A sandbox's container: `Start` its entrypoint, `Stop` it (SIGTERM, the grace, a
    /// kill), or `Remove` it with its cell. Remove answers no view.
    pub async fn container(&self, pod: &str, name: &str, step: ContainerStep) -> Result<Option<pod::ContainerView>> {
        match step {
            ContainerStep::Start(timeout) => pod::start_container(&self.host, pod, name, timeout).await.map(Some),
            ContainerStep::Stop(grace) => pod::stop_container(&self.host, pod, name, grace).await.map(Some),
            ContainerStep::Remove => pod::remove_container(&self.host, pod, name).await.map(|()| None),
        }
    }

    /// What a sandbox's container uses now (the CRI's stats).
    pub async fn container_usage(&self, pod: &str, name: &str) -> Result<cgroup::Usage> {
        pod::container_usage(&self.host, pod, name).await
    }

    /// Runs `argv` in a sandbox's running container to its end (the CRI's `ExecSync`):
    /// killed after `timeout`, at most `cap` bytes kept of each stream.
    pub async fn exec_in_container(
        &self,
        pod: &str,
        name: &str,
        argv: Vec<String>,
        timeout: Duration,
        cap: usize,
    ) -> Result<spawn::child::ExecOutput> {
        pod::exec_in_container(&self.host, pod, name, argv, timeout, cap).await
    }

    /// The channel to the instance of pod `pod` while its container `name` runs: where
    /// a client's Exec and Attach go (`kubelets`: the CRI's, to its sandboxes too).
    pub fn container_channel(&self, pod: &str, name: &str, kubelets: bool) -> Result<tonic::transport::Channel> {
        pod::running_container(&self.host, pod, name, kubelets)
    }

    /// Connections to a port of running pod `pod` (its address) or cell `cell` (inside its
    /// network namespace): PortForward's.
    pub fn dialer(&self, pod: Option<&str>, cell: Option<&str>) -> Result<crate::net::proxy::Dialer> {
        match (pod, cell) {
            (Some(p), _) => pod::dialer(&self.host, p),
            (None, Some(c)) => cell::dialer(&self.host, c),
            (None, None) => Err(error::RuntimeError::invalid(
                "start.pod",
                "empty; name the pod or the cell",
            )),
        }
    }

    /// Exec: a process started in a running cell, attached to the caller.
    pub async fn attach(&self, spec: attach::AttachSpec) -> Result<attach::Attached> {
        attach::start(&self.host, spec).await
    }

    /// Attach: running executable `name` and its output from now on.
    pub fn attach_to(
        &self,
        name: &str,
        stdin: bool,
    ) -> Result<(Arc<Process>, tokio::sync::broadcast::Receiver<tap::Piece>)> {
        attach::to_running(&self.host, name, stdin)
    }

    /// What happens to workloads (`Workloads.Events`).
    pub fn events(&self) -> Arc<events::Events<Kind>> {
        self.host.table().events.clone()
    }

    /// Ends an attached process and forgets it.
    pub async fn detach(&self, p: &Process) {
        attach::end(&self.host, p).await
    }

    /// Makes kubelet's pod CIDR the subnet CRI sandboxes take their addresses from (its
    /// first address joins the bridge); what the bridge then carries for them.
    pub fn use_pod_subnet(&self, cidr: crate::net::Ipv4Cidr) -> Result<crate::net::Ipv4Cidr> {
        spawn::instance::use_pod_subnet(&self.host, cidr)
    }

    /// Replaces files of files volume `name` and reads files back from it.
    pub fn volume_files(
        &self,
        name: &str,
        write: &[volume::VolumeFile],
        replace: bool,
        read: &[String],
        max: usize,
    ) -> Result<Vec<volume::VolumeFile>> {
        let volumes = self.host.alloc.volumes();
        volume::files(&volumes, name, write, replace, read, max)
    }

    pub async fn freeze(&self, name: &str, frozen: bool) -> Result<CellView> {
        cell::freeze(&self.host, name, frozen).await
    }

    /// What the node's workloads hold: the log pool and the images they run from.
    pub fn usage(&self) -> Usage {
        let (log_budget, log_held) = self.host.logs.usage();
        let mut images = cell::images(&self.host);
        images.extend(pod::images(&self.host));
        let images = (images.into_iter())
            .map(|(by, reference, chains)| crate::image::catalog::InUse { by, reference, chains })
            .collect();
        Usage {
            log_budget,
            log_held,
            log_dropped: self.host.logs.dropped(),
            workloads: self.host.root.usage(),
            images,
        }
    }

    /// The channel to the child auraed of instance `name`, or of the instance pod `name`
    /// runs in, and what ends when that child does (with how it ended).
    pub fn channel(&self, kind: Kind, name: &str) -> Result<ChildChannel> {
        match kind {
            Kind::Pod => pod::channel(&self.host, name),
            _ => spawn::instance::channel(&self.host, name),
        }
    }

    pub fn status(&self, kind: Kind, name: &str) -> Result<View> {
        Ok(view_of(&self.host, &self.host.lookup(kind, name)?))
    }

    /// The log buffer of a workload that has one (executables, VMs, instances).
    pub fn logs_of(&self, kind: Kind, name: &str) -> Result<Arc<logs::LogBuffer>> {
        self.host.lookup(kind, name)?.logs()
    }

    pub fn list(&self, kind: Option<Kind>) -> Vec<View> {
        let all = self.host.table().list(kind);
        all.iter().map(|w| view_of(&self.host, w)).collect()
    }

    pub async fn stop(&self, kind: Kind, name: &str, signal: i32, grace: Duration) -> Result<View> {
        let w = self.host.lookup(kind, name)?;
        stop_of(&self.host, &w, signal, grace).await;
        Ok(view_of(&self.host, &w))
    }

    pub async fn wait(&self, kind: Kind, name: &str) -> Result<View> {
        let w = self.host.lookup(kind, name)?;
        w.wait().await;
        Ok(view_of(&self.host, &w))
    }

    pub async fn free(&self, kind: Kind, name: &str) -> Result<()> {
        free_of(&self.host, &self.host.lookup(kind, name)?).await
    }

    /// At power-off: stop every top-level cell (and so every workload) within `grace`.
    /// With `remove` (a daemon, not PID 1), then remove every cell's cgroup and the
    /// workloads root itself, so the host's cgroup tree is left as auraed found it.
    pub async fn stop_all(&self, grace: Duration, remove: bool) {
        let tops: Vec<Arc<Cell>> = self
            .host
            .table()
            .all::<Cell>()
            .filter(|c| c.name.parent().is_none())
            .cloned()
            .collect();
        let stops = tops.iter().map(|c| c.stop(&self.host, libc::SIGTERM, grace));
        futures_join_all(stops).await;
        if !remove {
            return;
        }
        // Every top-level cell, including one made while the others stopped.
        let cells: Vec<Arc<Cell>> = self.host.table().all::<Cell>().cloned().collect();
        for c in cells.iter().filter(|c| c.name.parent().is_none()) {
            if let Err(e) = self.host.sys.remove(&c.dir) {
                tracing::warn!("cell {}: {e}", c.name);
            }
        }
        if self.host.unusable.is_none() {
            if let Err(e) = std::fs::remove_dir(self.host.root.path()) {
                tracing::warn!("remove {}: {e}", self.host.root.path().display());
            }
        }
    }
}

// What a workload does, handed to its kind with the node's Host. The table only holds
// workloads (it knows no Host); the façade dispatches.

fn view_of(host: &Host, w: &Workload) -> View {
    match w {
        Workload::Cell(c) => View::Cell(Box::new(c.view(host))),
        Workload::Executable(e) => View::Executable(e.view()),
        Workload::VirtualMachine(v) => View::VirtualMachine(v.view()),
        Workload::Instance(i) => View::Instance(Box::new(i.view())),
        Workload::Pod(p) => View::Pod(Box::new(p.view())),
    }
}

/// Graceful stop: `signal` (processes) or the workload's own polite request (a VM's
/// Power key, a child's Shutdown rpc), `grace`, then everything is killed.
async fn stop_of(host: &Host, w: &Workload, signal: i32, grace: Duration) {
    match w {
        Workload::Cell(c) => c.stop(host, signal, grace).await,
        Workload::Executable(e) => e.stop(signal, grace).await,
        Workload::VirtualMachine(v) => v.stop(grace).await,
        Workload::Instance(i) => i.stop(host, grace).await,
        Workload::Pod(p) => p.stop(host, signal, grace).await,
    }
}

/// Removes an ended workload and everything it holds; FAILED_PRECONDITION while it runs.
async fn free_of(host: &Host, w: &Workload) -> Result<()> {
    match w {
        Workload::Cell(c) => c.free(host).await,
        Workload::Executable(e) => executable::free(host, e).await,
        Workload::VirtualMachine(v) => v.free(host).await,
        Workload::Instance(i) => i.free(host).await,
        Workload::Pod(p) => p.free(host).await,
    }
}

/// Runs futures concurrently on this task and waits for all (no extra dependency).
pub(crate) async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// `cgroup.kill`s `dir` and its descendants and waits (up to `KILL_WAIT`) until no process
/// is left in them.
async fn kill_and_wait(sys: &dyn Launcher, dir: &CgroupDir) {
    if let Err(e) = sys.kill(dir) {
        tracing::error!("{}: cgroup.kill: {e}", dir.path().display());
    }
    poll_until(tokio::time::Instant::now() + KILL_WAIT, || !dir.populated()).await;
}

/// Kills what is in `dir` and below, waits for it to empty, and removes it; again while a
/// process still lands in it (a start that lost the race with its own rollback clones into
/// the cgroup after the first kill). A rollback that could not remove the cgroup has not
/// rolled back: the caller keeps the name taken until this succeeds.
async fn remove_for_good(sys: &dyn Launcher, dir: &CgroupDir) -> Result<()> {
    let mut last = Ok(());
    for _ in 0..REMOVE_TRIES {
        kill_and_wait(sys, dir).await;
        last = sys.remove(dir);
        if last.is_ok() {
            break;
        }
    }
    last
}

/// How often [`remove_for_good`] kills and retries: one racing start can land only once.
const REMOVE_TRIES: usize = 5;

/// A graceful end: `signal` to every process `pids` lists, up to `grace` for them to go,
/// then [`kill_and_wait`] for whatever is left in `dir`.
async fn terminate(sys: &dyn Launcher, dir: &CgroupDir, pids: impl Fn() -> Vec<i32>, signal: i32, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
        for pid in pids() {
            // Through a pidfd, and only to a member of this workload's cgroup.
            let _ = sys::signal_member(pid, sig, dir.path());
        }
    }
    poll_until(deadline, || pids().is_empty()).await;
    kill_and_wait(sys, dir).await;
}

/// Waits until `cond` holds or `deadline` passes; true when it held.
async fn poll_until(deadline: tokio::time::Instant, mut cond: impl FnMut() -> bool) -> bool {
    let mut pause = POLL_MIN;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
pub(crate) mod tests;
