//! Cells: a cgroup v2 node plus the namespaces of its holder process. Executables started
//! in a cell join those namespaces, so they share a process tree, localhost, hostname and
//! the cell's /tmp. Nested cells (`a/b`) nest both the cgroup and the namespaces.

use crate::init::reaper::Exit;
use crate::runtime::cgroup::{CgroupDir, Usage, CONTROLLERS};
use crate::runtime::confine::ExecLimits;
use crate::runtime::error::Lack;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::events::What;
use crate::runtime::executable;
use crate::runtime::holder::Setup;
use crate::runtime::host::Host;
use crate::runtime::launcher::StartError;
use crate::runtime::launcher::{ExecStarter, Launcher};
use crate::runtime::names::{CellName, ExecName};
use crate::runtime::spec::{CellSpec, Confinement, ExecutableSpec, ImageRoot, Isolation, Resources};
use crate::runtime::{poll_until, terminate, Kind, Phase, KILL_WAIT};
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The leaf cgroup of a cell's holder.
mod checks;

use checks::{check, publish};
pub(super) use checks::{dialer, port_error};

pub const HOLDER_LEAF: &str = "_init";

#[derive(Debug, Clone)]
struct CellState {
    phase: Phase,
    error: String,
    stopping: bool,
}

pub struct Cell {
    pub name: CellName,
    pub isolation: Isolation,
    pub confinement: Confinement,
    /// What each of its processes gets at exec (capabilities, no_new_privs, seccomp).
    pub limits: ExecLimits,
    /// Made for one executable that named no cell; it ends when that executable does.
    pub implicit: bool,
    /// The image that is its root, if any.
    pub image: Option<ImageRoot>,
    pub dir: CgroupDir,
    sys: Arc<dyn Launcher>,
    /// The holder's pidfd, once it runs.
    holder: OnceLock<Arc<OwnedFd>>,
    /// Its user namespace (a cell with `confinement.userns`), which executables join, and
    /// the node uid its root is.
    userns: OnceLock<(Arc<OwnedFd>, u32)>,
    /// Starts the cell's executables while the cell runs.
    starter: std::sync::Mutex<Option<Arc<dyn ExecStarter>>>,
    /// Its ports published on the node, released when it ends.
    ports: std::sync::Mutex<Vec<crate::net::proxy::Published>>,
    state: watch::Sender<CellState>,
    /// Serialises stop, freeze and thaw.
    op: tokio::sync::Mutex<()>,
    /// Where its start and end are told (the table's).
    events: Arc<crate::runtime::events::Events<Kind>>,
}

/// A cell's status.
#[derive(Debug, Clone)]
pub struct CellView {
    pub name: String,
    pub phase: Phase,
    pub resources: Resources,
    pub isolation: Isolation,
    pub confinement: Confinement,
    /// The node uid of root in its user namespace, if it has one.
    pub userns_base: Option<u32>,
    pub usage: Usage,
    pub executables: Vec<String>,
    pub error: String,
    pub image: Option<ImageRoot>,
    /// Published ports: (node port, cell port).
    pub ports: Vec<(u16, u16)>,
}

/// Namespaces the holder creates. The cgroup namespace is per executable (see sys::start).
fn clone_flags(i: &Isolation) -> libc::c_int {
    [
        (i.pid, libc::CLONE_NEWPID),
        (i.mount, libc::CLONE_NEWNS),
        (i.network, libc::CLONE_NEWNET),
        (i.ipc, libc::CLONE_NEWIPC),
        (i.uts, libc::CLONE_NEWUTS),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |f, (_, flag)| f | flag)
}

impl Cell {
    fn new(spec: &CellSpec, limits: ExecLimits, implicit: bool, dir: CgroupDir, host: &Host) -> Cell {
        let sys = host.sys.clone();
        let events = host.table().events.clone();
        Cell {
            name: spec.name.clone(),
            isolation: spec.isolation,
            confinement: spec.confinement,
            limits,
            implicit,
            image: spec.image.clone(),
            dir,
            sys,
            holder: OnceLock::new(),
            userns: OnceLock::new(),
            starter: std::sync::Mutex::new(None),
            ports: std::sync::Mutex::new(Vec::new()),
            state: watch::channel(CellState {
                phase: Phase::Starting,
                error: String::new(),
                stopping: false,
            })
            .0,
            op: tokio::sync::Mutex::new(()),
            events,
        }
    }

    pub fn phase(&self) -> Phase {
        self.state.borrow().phase
    }

    fn set_phase(&self, phase: Phase) {
        self.state.send_modify(|s| s.phase = phase);
    }

    /// The holder's pidfd: what a process joins to live in this cell.
    pub fn pidfd(&self) -> Option<Arc<OwnedFd>> {
        self.holder.get().cloned()
    }

    /// The cell's user namespace, if it has one of its own.
    pub fn userns(&self) -> Option<Arc<OwnedFd>> {
        self.userns.get().map(|(fd, _)| fd.clone())
    }

    /// The node uid of root in the cell's user namespace.
    pub fn userns_base(&self) -> Option<u32> {
        self.userns.get().map(|(_, base)| *base)
    }

    /// The root its processes see, from the node (see `rootfs`).
    pub fn root(&self) -> Result<super::rootfs::CellRoot> {
        let not_running = || RuntimeError::WrongPhase(format!("cell '{}' is not running", self.name));
        self.starter().and_then(|s| s.root()).ok_or_else(not_running)?
    }

    /// Pids of the cell's workloads (everything but holders), here and in nested cells.
    pub fn workload_pids(&self) -> Vec<i32> {
        self.dir.procs_below(HOLDER_LEAF)
    }

    /// What starts executables in this cell; None once the cell has ended.
    pub fn starter(&self) -> Option<Arc<dyn ExecStarter>> {
        self.starter.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Called when the holder is reaped.
    fn holder_ended(&self, exit: Option<Exit>) {
        // Its thread lets go of the cell's namespaces; its node ports are free again.
        self.starter.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let stopping = self.state.borrow().stopping;
        if !stopping {
            tracing::warn!("cell {}: its init process ended unexpectedly ({exit:?})", self.name);
            // Whatever else is left (with a shared pid namespace nothing else dies with
            // the holder) goes too: a cell without its namespaces is not a cell.
            let _ = self.sys.kill(&self.dir);
        }
        self.state.send_modify(|s| {
            if stopping {
                s.phase = Phase::Stopped;
            } else {
                s.phase = Phase::Failed;
                s.error = format!("the cell's init process ended unexpectedly ({exit:?}); its processes were killed");
            }
        });
        let what = match stopping {
            true => What::Stopped,
            false => What::Failed(self.state.borrow().error.clone()),
        };
        self.events.emit(Kind::Cell, self.name.as_str(), what);
    }

    /// Ends a private cell because its executable ended: everything left in it is killed.
    pub(super) fn end_with_owner(&self) {
        self.state.send_modify(|s| s.stopping = true);
        if let Err(e) = self.sys.kill(&self.dir) {
            tracing::error!("cell {}: cgroup.kill: {e}", self.name);
        }
    }

    /// The scratch volumes it listed (held until it is freed).
    pub fn volumes(&self) -> &[super::volume::VolumeSpec] {
        self.image.as_ref().map_or(&[], |i| &i.volumes)
    }

    /// Waits until the cell has ended.
    pub async fn wait(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.phase.ended()).await;
    }
}

fn start_error(e: StartError, what: &str) -> RuntimeError {
    e.into_error(what, "out of processes or memory")
}

impl Cell {
    async fn start(self: &Arc<Self>, host: &Host, spec: &CellSpec, parent: Option<&Cell>) -> Result<()> {
        self.dir.create()?;
        self.dir.enable_all_for_children()?;
        for c in CONTROLLERS {
            (c.apply)(&self.dir, &spec.resources)?;
        }
        let leaf = self.dir.child(HOLDER_LEAF);
        leaf.create()?;
        let exe = host.exe.clone().ok_or(Lack::OwnExecutable)?;
        let i = spec.isolation;
        let setup = Setup {
            new_mount: i.mount,
            new_pid: i.pid,
            new_net: i.network,
            new_uts: i.uts,
            own_root: i.mount && (!spec.confinement.privileged || spec.image.is_some()),
            userns: spec.confinement.userns,
        };
        let userns_base = spec.confinement.userns.then(|| host.alloc.next_userns_base());
        let mut config = crate::runtime::holder::Config {
            setup,
            hostname: spec.name.leaf().to_owned(),
            ..Default::default()
        };
        if setup.own_root {
            match &spec.image {
                // The image is the whole root: nothing of the node is in it to cover.
                Some(image) => {
                    config.layers = image.layers.clone();
                    config.volumes = image.mounts.iter().map(crate::runtime::volume::bind_of).collect();
                }
                None => config.hidden = host.hidden.clone(),
            }
            config.binds = spec.binds.clone();
        }
        let started = host
            .sys
            .start_holder(
                parent.and_then(Cell::pidfd),
                leaf.open_fd()?,
                clone_flags(&i),
                exe,
                config,
                userns_base,
            )
            .await
            .map_err(|e| start_error(e, &format!("cell '{}'", spec.name)))?;
        // The holder must outlive every workload of the cell: never the OOM killer's pick.
        let _ = std::fs::write(format!("/proc/{}/oom_score_adj", started.pid), "-1000");
        if let Some(base) = userns_base {
            let ns =
                std::fs::File::open(format!("/proc/{}/ns/user", started.pid)).map_err(|source| RuntimeError::Io {
                    what: "open the cell's user namespace",
                    path: format!("/proc/{}/ns/user", started.pid).into(),
                    source,
                })?;
            let _ = self.userns.set((Arc::new(ns.into()), base));
        }
        let pidfd = started
            .pidfd
            .map(Arc::new)
            .ok_or_else(|| RuntimeError::StartFailed(format!("cell '{}': the kernel returned no pidfd", spec.name)))?;
        let starter = host
            .sys
            .starter(pidfd.clone())
            .map_err(|e| start_error(e, &format!("cell '{}'", spec.name)));
        let _ = self.holder.set(pidfd);
        *self.starter.lock().unwrap_or_else(|p| p.into_inner()) = Some(starter?);
        self.set_phase(Phase::Running);
        self.events.emit(Kind::Cell, self.name.as_str(), What::Started);
        let watcher = self.clone();
        let exit = started.exit;
        tokio::spawn(async move { watcher.holder_ended(exit.await.ok()) });
        tracing::info!("cell {} running (holder pid {})", spec.name, started.pid);
        Ok(())
    }

    /// Kills whatever a cell holds and removes it from the node and the table.
    pub(super) async fn discard_now(&self, host: &Host) {
        if let Err(e) = self.discard(host).await {
            tracing::error!("cell {}: {e}", self.name);
        }
    }

    /// As `discard_now`, saying why the cell could not be removed. It is then still
    /// listed (as failed) so the name is not reused over a cgroup that holds processes;
    /// another try (Free) removes it. An executable's own cell is discarded this way, and
    /// the executable stays listed on failure: its cell can never be freed on its own.
    pub(super) async fn discard(&self, host: &Host) -> Result<()> {
        self.state.send_modify(|s| s.stopping = true);
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Err(e) = super::remove_for_good(&*host.sys, &self.dir).await {
            self.state.send_modify(|s| s.error = e.to_string());
            self.set_phase(Phase::Failed);
            return Err(e);
        }
        host.table().remove::<Cell>(self.name.as_str());
        host.alloc.volumes().release(self.volumes());
        Ok(())
    }

    pub(crate) fn view(&self, host: &Host) -> CellView {
        let executables = executable::in_cell(host, &self.name, false)
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        let (phase, error) = {
            let s = self.state.borrow();
            (s.phase, s.error.clone())
        };
        CellView {
            name: self.name.to_string(),
            phase,
            resources: self.dir.resources(),
            isolation: self.isolation,
            confinement: self.confinement,
            userns_base: self.userns_base(),
            usage: self.dir.usage(),
            executables,
            error,
            image: self.image.clone(),
            ports: self
                .ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|p| (p.host_port, p.cell_port))
                .collect(),
        }
    }

    /// Graceful stop: `signal` to every workload process of the cell and its nested cells,
    /// `grace`, then `cgroup.kill` of the whole subtree (holders included).
    pub(super) async fn stop(self: &Arc<Self>, host: &Host, signal: i32, grace: Duration) {
        let _op = self.op.lock().await;
        if self.phase().ended() {
            return;
        }
        let nested: Vec<Arc<Cell>> = host
            .table()
            .all::<Cell>()
            .filter(|c| c.name.is_within(&self.name))
            .cloned()
            .collect();
        for c in &nested {
            c.state.send_modify(|s| s.stopping = true);
        }
        if self.dir.frozen() {
            let _ = self.dir.set_frozen(false);
        }
        terminate(&*host.sys, &self.dir, || self.workload_pids(), signal, grace).await;
        for c in &nested {
            let _ = tokio::time::timeout(KILL_WAIT, c.wait()).await;
        }
    }

    pub(super) async fn free(self: &Arc<Self>, host: &Host) -> Result<()> {
        let name = &self.name;
        if self.implicit {
            return Err(RuntimeError::Taken(format!(
                "cell '{name}' belongs to executable '{name}'; free the executable instead"
            )));
        }
        if !self.phase().ended() {
            return Err(RuntimeError::WrongPhase(format!(
                "cell '{name}' is {:?}; stop it first (aer cell stop {name})",
                self.phase()
            )));
        }
        let cells: Vec<Arc<Cell>> = host
            .table()
            .all::<Cell>()
            .filter(|c| c.name.is_within(&self.name))
            .cloned()
            .collect();
        let execs = executable::in_cell(host, &self.name, true);
        for e in &execs {
            e.wait().await;
        }
        super::remove_for_good(&*host.sys, &self.dir).await?;
        executable::forget(host, &execs);
        let mut t = host.table();
        for c in &cells {
            t.remove::<Cell>(c.name.as_str());
        }
        drop(t);
        for c in &cells {
            host.alloc.volumes().release(c.volumes());
        }
        tracing::info!("cell {name} freed with {} executable(s)", execs.len());
        Ok(())
    }
}

pub(super) fn named(host: &Host, name: &str) -> Result<Arc<Cell>> {
    host.table().get::<Cell>(name)
}

/// Checks a spec against this node before anything is created.
/// The cell `field` names as the home of a client's process (an executable or an
/// exec): one a client made with RunCell, never a private cell of auraed's own. A VM's
/// VMM cell is privileged with the node's whole filesystem, an instance's holds the
/// child's keys with every capability: a process there would be root on the node.
pub(super) fn target(host: &Host, name: &str, field: &'static str) -> Result<Arc<Cell>> {
    let c = named(host, name)?;
    if c.implicit {
        let owner = [Kind::VirtualMachine, Kind::Instance, Kind::Pod, Kind::Executable]
            .into_iter()
            .find(|k| host.table().lookup(*k, name).is_ok())
            .map_or_else(|| "auraed's own".to_owned(), |k| format!("{} '{name}'", k.noun()));
        return Err(RuntimeError::PrivateCell {
            field,
            cell: name.to_owned(),
            owner,
        });
    }
    Ok(c)
}

/// Creates a cell and starts its holder, then (a cell from an image) its entrypoint as
/// the executable named after the cell. On any failure nothing is left behind.
/// Layers held for a cell being made: an image removal waits until the cell lists it.
pub type ImageHold = tokio::sync::OwnedRwLockReadGuard<()>;

/// Pulls (as its policy says) the image `spec` asks for and makes it the cell's root, its
/// volumes owned by `owner`. The request was checked at the edge; this is the first step
/// that touches the store or a registry.
pub(crate) async fn prepare_image(
    host: &Host,
    spec: &mut CellSpec,
    req: crate::runtime::spec::ImageRequest,
    owner: &str,
) -> Result<ImageHold> {
    let images = host.images.as_ref().map_err(|why| Lack::ImageStore {
        field: "image",
        of: "",
        why: why.to_string(),
    })?;
    let prepared = images
        .prepare(&req.reference, req.policy, req.credentials.clone())
        .await
        .map_err(|source| RuntimeError::Image {
            field: "image".into(),
            source,
        })?;
    spec.ports = req.ports.clone();
    let mut root = ImageRoot::from_prepared(&prepared, req)?;
    for v in &mut root.volumes {
        v.owner = owner.to_owned();
    }
    spec.image = Some(root);
    Ok(prepared.hold)
}

pub(crate) async fn run(host: &Host, spec: CellSpec) -> Result<CellView> {
    let entrypoint = match spec.image.as_ref().filter(|i| i.start).map(|i| (i.argv.clone(), i.io)) {
        None => None,
        Some((argv, io)) => {
            let name = ExecName::parse(spec.name.leaf()).map_err(|e| RuntimeError::invalid("name", e.to_string()))?;
            if !executable::name_free(host, &name) {
                return Err(RuntimeError::AlreadyExists(format!(
                    "an executable named '{name}' exists, and a cell's image entrypoint runs as the executable named after the cell; free it or choose another cell name"
                )));
            }
            Some((name, argv, io))
        }
    };
    let c = create(host, spec, false).await?;
    if let Some((name, argv, io)) = entrypoint {
        let e = ExecutableSpec {
            name,
            argv,
            env: Default::default(),
            cwd: None,
            uid: None,
            gid: None,
            cell: Some(c.name.clone()),
            io,
        };
        if let Err(err) = executable::run(host, e).await {
            c.discard_now(host).await;
            return Err(err.in_entrypoint());
        }
    }
    Ok(c.view(host))
}

pub(super) async fn create(host: &Host, spec: CellSpec, implicit: bool) -> Result<Arc<Cell>> {
    host.usable()?;
    let (parent, parent_dir) = check(host, &spec)?;
    let dir = parent_dir.child(spec.name.leaf());
    let limits = spec.confinement.exec_limits();
    // The node's ports first: one taken is refused before anything is made.
    let mut bound = Vec::with_capacity(spec.ports.len());
    for (i, (node_port, inside)) in spec.ports.iter().enumerate() {
        bound.push(
            crate::net::proxy::bind(*node_port, *inside)
                .map_err(|e| port_error(&format!("image.ports[{i}].host_port"), *node_port, e))?,
        );
    }
    let cell = Arc::new(Cell::new(&spec, limits, implicit, dir, host));
    host.table().insert(cell.clone())?;
    if let Err(e) = host.alloc.volumes().take(cell.volumes()) {
        host.table().remove::<Cell>(cell.name.as_str());
        return Err(e);
    }
    let r = {
        let start = async {
            cell.start(host, &spec, parent.as_deref()).await?;
            publish(&cell, bound)
        };
        tokio::pin!(start);
        tokio::select! {
            r = &mut start => r,
            () = tokio::time::sleep(spec.ready_within) => {
                // The start is never dropped half way: its holder may be cloned into the
                // cell's cgroup on another thread at any moment. Kill what is there (an
                // init blocked before it is ready dies and its report pipe closes), let the
                // start end, then remove the cell with whatever it made.
                if let Err(e) = host.sys.kill(&cell.dir) {
                    tracing::warn!("cell {}: cgroup.kill after its deadline: {e}", spec.name);
                }
                let _ = start.await;
                Err(RuntimeError::DeadlineExceeded(format!(
                    "cell '{}': its init did not report ready within {:.1} s (the caller's deadline); the cell was removed",
                    spec.name,
                    spec.ready_within.as_secs_f64()
                )))
            }
        }
    };
    match r {
        Ok(()) => Ok(cell),
        Err(e) => {
            cell.discard_now(host).await;
            Err(e)
        }
    }
}

/// Every image a workload uses: (who, "cell 'web'" or "pod 'p'", the image's
/// reference, its layers' chain IDs).
/// (user, reference, chain IDs) of every image a cell runs from.
pub(crate) fn images(host: &Host) -> Vec<(String, String, Vec<String>)> {
    host.table()
        .all::<Cell>()
        .filter_map(|c| {
            let i = c.image.as_ref()?;
            Some((format!("cell '{}'", c.name), i.reference.clone(), i.chains.clone()))
        })
        .collect()
}

pub(crate) async fn freeze(host: &Host, name: &str, frozen: bool) -> Result<CellView> {
    let cell = named(host, name)?;
    let _op = cell.op.lock().await;
    let want = if frozen { Phase::Running } else { Phase::Frozen };
    if cell.phase() != want {
        return Err(RuntimeError::WrongPhase(format!(
            "cell '{name}' is {:?}; only a {} cell can be {}",
            cell.phase(),
            if frozen { "running" } else { "frozen" },
            if frozen { "frozen" } else { "thawed" }
        )));
    }
    cell.dir.set_frozen(frozen)?;
    if !poll_until(Instant::now() + KILL_WAIT, || cell.dir.frozen() == frozen).await {
        return Err(RuntimeError::WrongPhase(format!(
            "cell '{name}' did not {} within {KILL_WAIT:?}",
            if frozen { "freeze" } else { "thaw" }
        )));
    }
    cell.set_phase(if frozen { Phase::Frozen } else { Phase::Running });
    Ok(cell.view(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_isolation() {
        let all = clone_flags(&Isolation::default());
        assert_eq!(all & libc::CLONE_NEWNET, libc::CLONE_NEWNET);
        let host_net = Isolation {
            network: false,
            ..Isolation::default()
        };
        assert_eq!(clone_flags(&host_net) & libc::CLONE_NEWNET, 0);
        assert_eq!(clone_flags(&host_net) & libc::CLONE_NEWPID, libc::CLONE_NEWPID);
    }
}
